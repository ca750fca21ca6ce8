//! The NDJSON line splitter and the streamed JSON array splitter must not
//! panic on any bytes, and must give the same items however they are split.
//!
//! The body is `tokenscope::fuzzing::ndjson`, which the corpus replay test
//! (`agent/tests/fuzz_corpus.rs`) runs on stable for every committed input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| tokenscope::fuzzing::ndjson(input));
