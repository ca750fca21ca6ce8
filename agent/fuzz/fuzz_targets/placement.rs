//! Probe placement must not panic on any file, however malformed its ELF.
//!
//! The body is `tokenscope::fuzzing::placement`, which the corpus replay test
//! (`agent/tests/fuzz_corpus.rs`) runs on stable for every committed input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| tokenscope::fuzzing::placement(input));
