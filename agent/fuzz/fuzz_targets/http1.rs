//! HTTP/1.1 parser: no panic and bounded output on any bytes, gaps and
//! closes; without gaps, the same events however the bytes are split.
#![no_main]

#[path = "common/http.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use tokenscope::protocols::http1::Http1Parser;
use common::{bounded, limits, normalize, records};
use tokenscope::protocols::{Direction, HttpEvent, HttpParser, ParseStats};

fn direct(recs: &[(Direction, bool, Vec<u8>)], step: usize) -> Vec<HttpEvent> {
    let mut parser = Http1Parser::new(limits());
    let mut stats = ParseStats::default();
    let mut out = Vec::new();
    for (dir, _, bytes) in recs {
        for piece in bytes.chunks(step) {
            parser.feed(*dir, 1, piece, &mut stats, &mut out);
        }
    }
    parser.close(2, &mut stats, &mut out);
    out
}

fuzz_target!(|input: &[u8]| {
    let Some((&control, rest)) = input.split_first() else {
        return;
    };
    let recs = records(rest);
    let mut parser = HttpParser::new(limits());
    let mut out = Vec::new();
    for (dir, gap, bytes) in &recs {
        if *gap {
            parser.gap(*dir, 1, bytes.len() as u64 + 1, &mut out);
        } else {
            parser.feed(*dir, 1, bytes, &mut out);
        }
    }
    parser.close(2, &mut out);
    bounded(&out);
    if recs.iter().all(|(_, gap, _)| !gap) {
        let whole = direct(&recs, usize::MAX);
        bounded(&whole);
        let step = usize::from(control % 16) + 1;
        assert_eq!(normalize(direct(&recs, step)), normalize(whole));
    }
});
