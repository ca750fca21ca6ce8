//! Arbitrary sequences of HTTP events, with arbitrary bodies, on paths and
//! content types that reach every decoder: the assembler must not panic.
//!
//! The body is `tokenscope::fuzzing::providers`, which the corpus replay test
//! (`agent/tests/fuzz_corpus.rs`) runs on stable for every committed input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| tokenscope::fuzzing::providers(input));
