//! Input framing, bounds and normalisation shared by the HTTP fuzz targets.

use tokenscope::protocols::{AbortReason, Direction, HttpEvent, Limits};

/// Input: records of `[header][len][bytes...]`; header bit 0 is the
/// direction, bit 1 turns the record into a capture gap of `len` bytes.
pub fn records(input: &[u8]) -> Vec<(Direction, bool, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = input;
    while let [header, len, tail @ ..] = rest {
        let dir = if header & 1 == 0 { Direction::FromClient } else { Direction::FromServer };
        let gap = header & 2 != 0;
        let n = if gap { 0 } else { usize::from(*len).min(tail.len()) };
        out.push((dir, gap, tail[..n].to_vec()));
        rest = &tail[n..];
    }
    out
}

pub fn limits() -> Limits {
    Limits { max_header_block: 2048, max_body: 32 * 1024, bomb_floor: 8 * 1024, ..Limits::default() }
}

pub fn bounded(events: &[HttpEvent]) {
    let body: usize = events
        .iter()
        .map(|e| match e {
            HttpEvent::RequestBody { data, .. } | HttpEvent::ResponseBody { data, .. } => data.len(),
            _ => 0,
        })
        .sum();
    // Output never passes the per-message bound times the number of messages.
    let messages = events.iter().filter(|e| matches!(e, HttpEvent::Request { .. } | HttpEvent::Response { .. })).count();
    assert!(body <= (messages + 1) * 32 * 1024);
}

/// Timestamps zeroed, adjacent body pieces merged. Bodies of messages cut
/// for size or bad compression are left out: how much was decoded before
/// the cut depends on how the compressed bytes were split.
pub fn normalize(events: Vec<HttpEvent>) -> Vec<HttpEvent> {
    let cut: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            HttpEvent::Abort { stream, reason: AbortReason::TooLarge | AbortReason::Malformed, .. } => Some(*stream),
            _ => None,
        })
        .collect();
    let mut out: Vec<HttpEvent> = Vec::new();
    for e in events {
        if let HttpEvent::RequestBody { stream, .. } | HttpEvent::ResponseBody { stream, .. } = &e {
            if cut.contains(stream) {
                continue;
            }
        }
        let e = match e {
            HttpEvent::Request { stream, head, .. } => HttpEvent::Request { stream, head, ts_ns: 0 },
            HttpEvent::RequestBody { stream, data, .. } => HttpEvent::RequestBody { stream, data, ts_ns: 0 },
            HttpEvent::RequestEnd { stream, .. } => HttpEvent::RequestEnd { stream, ts_ns: 0 },
            HttpEvent::Response { stream, head, .. } => HttpEvent::Response { stream, head, ts_ns: 0 },
            HttpEvent::ResponseBody { stream, data, .. } => HttpEvent::ResponseBody { stream, data, ts_ns: 0 },
            HttpEvent::ResponseEnd { stream, .. } => HttpEvent::ResponseEnd { stream, ts_ns: 0 },
            HttpEvent::Abort { stream, reason, .. } => HttpEvent::Abort { stream, reason, ts_ns: 0 },
        };
        match (out.last_mut(), &e) {
            (Some(HttpEvent::RequestBody { stream: a, data: prev, .. }), HttpEvent::RequestBody { stream: b, data, .. })
            | (Some(HttpEvent::ResponseBody { stream: a, data: prev, .. }), HttpEvent::ResponseBody { stream: b, data, .. })
                if a == b =>
            {
                let mut joined = prev.to_vec();
                joined.extend_from_slice(data);
                *prev = joined.into();
            }
            _ => out.push(e),
        }
    }
    out
}
