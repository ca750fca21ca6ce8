//! HTTP/2 parser (with and without the client preface): no panic and bounded
//! output on any bytes, gaps and closes; without gaps, the same events
//! however the bytes are split.
//!
//! The body is `tokenscope::fuzzing::http2`, which the corpus replay test
//! (`agent/tests/fuzz_corpus.rs`) runs on stable for every committed input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| tokenscope::fuzzing::http2(input));
