//! The SSE parser must not panic on any bytes, and must give the same events
//! however the bytes are split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenscope::providers::sse::SseParser;

fn parse(chunks: &[&[u8]], max: usize) -> (Vec<(String, Vec<u8>)>, u64) {
    let mut parser = SseParser::new(max);
    let mut events = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, |e| {
            events.push((e.event.to_string(), e.data.to_vec()))
        });
    }
    (events, parser.oversized_events())
}

fuzz_target!(|input: &[u8]| {
    let Some((&control, bytes)) = input.split_first() else {
        return;
    };
    let max = usize::from(control % 64) + 1;
    let whole = parse(&[bytes], max);
    let step = usize::from(control / 64) + 1;
    let pieces: Vec<&[u8]> = bytes.chunks(step).collect();
    assert_eq!(parse(&pieces, max), whole);
});
