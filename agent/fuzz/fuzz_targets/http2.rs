//! HTTP/2 parser (with and without the client preface): no panic and bounded output on any bytes, gaps and
//! closes; without gaps, the same events however the bytes are split.
#![no_main]

#[path = "common/http.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use tokenscope::protocols::http2::Http2Parser;
use tokenscope::protocols::detect::PREFACE;
use common::{bounded, limits, normalize, records};
use tokenscope::protocols::{Direction, HttpEvent, HttpParser, ParseStats};

fn direct(recs: &[(Direction, bool, Vec<u8>)], step: usize, preface: bool) -> Vec<HttpEvent> {
    let mut parser = Http2Parser::new(limits(), preface);
    let mut stats = ParseStats::default();
    let mut out = Vec::new();
    if preface {
        parser.feed(Direction::FromClient, 1, PREFACE, &mut stats, &mut out);
    }
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
    let preface = control & 0x80 != 0;
    let mut parser = HttpParser::new(limits());
    let mut out = Vec::new();
    if preface {
        parser.feed(Direction::FromClient, 1, PREFACE, &mut out);
    }
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
        let whole = direct(&recs, usize::MAX, preface);
        bounded(&whole);
        let step = usize::from(control % 16) + 1;
        assert_eq!(normalize(direct(&recs, step, preface)), normalize(whole));
    }
});
