//! Raw bytes of both directions through the connection parser and the call
//! assembler together: no panic, every call counted.
//!
//! The body is `tokenscope::fuzzing::calls`, which the corpus replay test
//! (`agent/tests/fuzz_corpus.rs`) runs on stable for every committed input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| tokenscope::fuzzing::calls(input));
