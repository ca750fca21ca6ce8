//! The NDJSON line splitter and the streamed JSON array splitter must not
//! panic on any bytes, and must give the same items however they are split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenscope::providers::ndjson::{JsonArraySplitter, LineSplitter};

fn lines(chunks: &[&[u8]], max: usize) -> (Vec<Vec<u8>>, u64) {
    let mut s = LineSplitter::new(max);
    let mut out = Vec::new();
    for chunk in chunks {
        s.feed(chunk, |l| out.push(l.to_vec()));
    }
    s.finish(|l| out.push(l.to_vec()));
    (out, s.oversized())
}

fn elements(chunks: &[&[u8]], max: usize) -> (Vec<Vec<u8>>, u64, bool) {
    let mut s = JsonArraySplitter::new(max);
    let mut out = Vec::new();
    for chunk in chunks {
        s.feed(chunk, |e| out.push(e.to_vec()));
    }
    (out, s.oversized(), s.closed())
}

fuzz_target!(|input: &[u8]| {
    let Some((&control, bytes)) = input.split_first() else {
        return;
    };
    let max = usize::from(control % 64) + 1;
    let step = usize::from(control / 64) + 1;
    let pieces: Vec<&[u8]> = bytes.chunks(step).collect();
    assert_eq!(lines(&pieces, max), lines(&[bytes], max));
    assert_eq!(elements(&pieces, max), elements(&[bytes], max));
});
