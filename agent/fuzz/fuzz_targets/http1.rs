//! HTTP/1.1 parser: no panic and bounded output on any bytes, gaps and
//! closes; without gaps, the same events however the bytes are split.
//!
//! The body is `tokenscope::fuzzing::http1`, which the corpus replay test
//! (`agent/tests/fuzz_corpus.rs`) runs on stable for every committed input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| tokenscope::fuzzing::http1(input));
