//! The fuzz targets' bodies, shared by `agent/fuzz` (cargo-fuzz, nightly)
//! and the corpus replay test (`agent/tests/fuzz_corpus.rs`, stable), so
//! that CI replays every committed input through exactly the code the
//! fuzzer ran.
//!
//! Each target takes one input and checks its properties with assertions:
//! a panic here is a finding. Beyond "never panics", the parsers must give
//! the same result however the bytes are split, and their output stays
//! within its bounds.

use bytes::Bytes;

use crate::protocols::detect::PREFACE;
use crate::protocols::event::{
    AbortReason, Direction, Headers, HttpEvent, RequestHead, ResponseHead,
};
use crate::protocols::http1::Http1Parser;
use crate::protocols::http2::Http2Parser;
use crate::protocols::{HttpParser, Limits as ParseLimits, ParseStats};
use crate::providers::ndjson::{JsonArraySplitter, LineSplitter};
use crate::providers::sse::SseParser;
use crate::providers::{CallAssembler, Limits as AssembleLimits};

/// A fuzz target: one input in, assertions inside.
pub type Target = fn(&[u8]);

/// Every target by name, as `agent/fuzz/Cargo.toml` names its binaries and
/// `agent/fuzz/corpus/<name>/` holds its corpus.
pub const TARGETS: [(&str, Target); 7] = [
    ("http1", http1),
    ("http2", http2),
    ("sse", sse),
    ("ndjson", ndjson),
    ("providers", providers),
    ("calls", calls),
    ("placement", placement),
];

/// Probe placement reads any executable or library a node runs: it never
/// panics (OpenSSL's placement nor Go's), and a read site names only
/// callee-saved registers.
pub fn placement(input: &[u8]) {
    use crate::probes::placement::{plan, Probe};
    use tokenscope_common::ssl_cookie::{decode_site, NO_REGISTER, SITE_REGISTERS};
    let _ = crate::probes::gosym::plan(input);
    let Ok(plan) = plan(input, tokenscope_common::SOURCE_TLS_OPENSSL) else {
        return;
    };
    let registers = SITE_REGISTERS.len() as u8;
    for a in plan
        .attachments
        .iter()
        .filter(|a| a.probe == Probe::ReadDone)
    {
        let site = decode_site(a.cookie);
        assert!(
            [site.ssl, site.buf, site.done]
                .iter()
                .all(|r| *r < registers),
            "{site:?}"
        );
        assert!(
            site.peek < registers || site.peek == NO_REGISTER,
            "{site:?}"
        );
    }
}

/// One capture record: direction, whether it is a gap, and its bytes.
pub type Record = (Direction, bool, Vec<u8>);

/// Input: records of `[header][len][bytes...]`; header bit 0 is the
/// direction, bit 1 turns the record into a capture gap of `len` bytes.
pub fn records(input: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut rest = input;
    while let [header, len, tail @ ..] = rest {
        let dir = if header & 1 == 0 {
            Direction::FromClient
        } else {
            Direction::FromServer
        };
        let gap = header & 2 != 0;
        let n = if gap {
            0
        } else {
            usize::from(*len).min(tail.len())
        };
        out.push((dir, gap, tail.get(..n).unwrap_or_default().to_vec()));
        rest = tail.get(n..).unwrap_or_default();
    }
    out
}

const FUZZ_MAX_BODY: usize = 32 * 1024;

/// Small bounds, so that inputs of a few KiB reach every bound.
pub fn parse_limits() -> ParseLimits {
    ParseLimits {
        max_header_block: 2048,
        max_body: FUZZ_MAX_BODY,
        bomb_floor: 8 * 1024,
        ..ParseLimits::default()
    }
}

/// Output never passes the per-message bound times the number of messages.
pub fn assert_bounded(events: &[HttpEvent]) {
    let body: usize = events
        .iter()
        .map(|e| match e {
            HttpEvent::RequestBody { data, .. } | HttpEvent::ResponseBody { data, .. } => {
                data.len()
            }
            _ => 0,
        })
        .sum();
    let messages = events
        .iter()
        .filter(|e| matches!(e, HttpEvent::Request { .. } | HttpEvent::Response { .. }))
        .count();
    assert!(body <= (messages + 1) * FUZZ_MAX_BODY);
}

/// Timestamps zeroed, adjacent body pieces merged. Bodies of messages cut
/// for size or bad compression are left out: how much was decoded before
/// the cut depends on how the compressed bytes were split.
pub fn normalize(events: Vec<HttpEvent>) -> Vec<HttpEvent> {
    let cut: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            HttpEvent::Abort {
                stream,
                reason: AbortReason::TooLarge | AbortReason::Malformed,
                ..
            } => Some(*stream),
            _ => None,
        })
        .collect();
    zero_times_and_join_bodies(events, &cut)
}

/// Events with timestamps zeroed, body pieces of the `cut` streams left out
/// and adjacent body pieces of one stream joined, so that different
/// chunkings of the same bytes compare equal.
pub fn zero_times_and_join_bodies(events: Vec<HttpEvent>, cut: &[u64]) -> Vec<HttpEvent> {
    let mut out: Vec<HttpEvent> = Vec::new();
    for mut e in events {
        match &mut e {
            HttpEvent::RequestBody { stream, .. } | HttpEvent::ResponseBody { stream, .. }
                if cut.contains(stream) =>
            {
                continue;
            }
            HttpEvent::Request { ts_ns, .. }
            | HttpEvent::RequestBody { ts_ns, .. }
            | HttpEvent::RequestEnd { ts_ns, .. }
            | HttpEvent::Response { ts_ns, .. }
            | HttpEvent::ResponseBody { ts_ns, .. }
            | HttpEvent::ResponseEnd { ts_ns, .. }
            | HttpEvent::Trailers { ts_ns, .. }
            | HttpEvent::Abort { ts_ns, .. } => *ts_ns = 0,
        }
        match (out.last_mut(), &e) {
            (
                Some(HttpEvent::RequestBody {
                    stream: a,
                    data: prev,
                    ..
                }),
                HttpEvent::RequestBody {
                    stream: b, data, ..
                },
            )
            | (
                Some(HttpEvent::ResponseBody {
                    stream: a,
                    data: prev,
                    ..
                }),
                HttpEvent::ResponseBody {
                    stream: b, data, ..
                },
            ) if a == b => {
                let mut joined = prev.to_vec();
                joined.extend_from_slice(data);
                *prev = joined.into();
            }
            _ => out.push(e),
        }
    }
    out
}

/// Feeds the records through the connection-level parser (protocol
/// detection included), gaps and all, then closes.
fn through_http_parser(recs: &[Record], preface: bool) -> Vec<HttpEvent> {
    let mut parser = HttpParser::new(parse_limits());
    let mut out = Vec::new();
    if preface {
        parser.feed(Direction::FromClient, 1, PREFACE, &mut out);
    }
    for (i, (dir, gap, bytes)) in recs.iter().enumerate() {
        let ts = i as u64;
        if *gap {
            parser.gap(*dir, ts, bytes.len() as u64 + 1, &mut out);
        } else {
            parser.feed(*dir, ts, bytes, &mut out);
        }
    }
    parser.close(u64::MAX, &mut out);
    out
}

fn http1_direct(recs: &[Record], step: usize) -> Vec<HttpEvent> {
    let mut parser = Http1Parser::new(parse_limits());
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

/// HTTP/1.1 parser: no panic and bounded output on any bytes, gaps and
/// closes; without gaps, the same events however the bytes are split.
pub fn http1(input: &[u8]) {
    let Some((&control, rest)) = input.split_first() else {
        return;
    };
    let recs = records(rest);
    assert_bounded(&through_http_parser(&recs, false));
    if recs.iter().all(|(_, gap, _)| !gap) {
        let whole = http1_direct(&recs, usize::MAX);
        assert_bounded(&whole);
        let step = usize::from(control % 16) + 1;
        assert_eq!(normalize(http1_direct(&recs, step)), normalize(whole));
    }
}

fn http2_direct(recs: &[Record], step: usize, preface: bool) -> Vec<HttpEvent> {
    let mut parser = Http2Parser::new(parse_limits(), preface);
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

/// HTTP/2 parser (with and without the client preface): no panic and
/// bounded output on any bytes, gaps and closes; without gaps, the same
/// events however the bytes are split.
pub fn http2(input: &[u8]) {
    let Some((&control, rest)) = input.split_first() else {
        return;
    };
    let recs = records(rest);
    let preface = control & 0x80 != 0;
    assert_bounded(&through_http_parser(&recs, preface));
    if recs.iter().all(|(_, gap, _)| !gap) {
        let whole = http2_direct(&recs, usize::MAX, preface);
        assert_bounded(&whole);
        let step = usize::from(control % 16) + 1;
        assert_eq!(
            normalize(http2_direct(&recs, step, preface)),
            normalize(whole)
        );
    }
}

type SseOutcome = (Vec<(String, Vec<u8>)>, u64);

fn sse_events(chunks: &[&[u8]], max: usize) -> SseOutcome {
    let mut parser = SseParser::new(max);
    let mut events = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, |e| {
            events.push((e.event.to_string(), e.data.to_vec()))
        });
    }
    (events, parser.oversized_events())
}

/// The SSE parser never panics and gives the same events however the bytes
/// are split.
pub fn sse(input: &[u8]) {
    let Some((&control, bytes)) = input.split_first() else {
        return;
    };
    let max = usize::from(control % 64) + 1;
    let whole = sse_events(&[bytes], max);
    let step = usize::from(control / 64) + 1;
    let pieces: Vec<&[u8]> = bytes.chunks(step).collect();
    assert_eq!(sse_events(&pieces, max), whole);
}

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

/// The NDJSON line splitter and the streamed JSON array splitter never
/// panic and give the same items however the bytes are split.
pub fn ndjson(input: &[u8]) {
    let Some((&control, bytes)) = input.split_first() else {
        return;
    };
    let max = usize::from(control % 64) + 1;
    let step = usize::from(control / 64) + 1;
    let pieces: Vec<&[u8]> = bytes.chunks(step).collect();
    assert_eq!(lines(&pieces, max), lines(&[bytes], max));
    assert_eq!(elements(&pieces, max), elements(&[bytes], max));
}

/// Paths that reach every decoder (and one that reaches none).
const PATHS: [&str; 15] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/messages",
    "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
    "/api/chat",
    "/api/generate",
    "/api/embeddings",
    "/somewhere/else",
    "/generate_stream",
    "/completion",
    "/v1beta/models/gemini-embedding-001:batchEmbedContents",
    "/",
    "/openai/deployments/gpt4o/chat/completions",
];
const CONTENT_TYPES: [&str; 4] = [
    "text/event-stream",
    "application/json",
    "application/x-ndjson",
    "",
];
const STATUSES: [u16; 6] = [200, 429, 529, 400, 500, 200];

/// Arbitrary sequences of HTTP events, with arbitrary bodies, on paths and
/// content types that reach every decoder: the assembler never panics and
/// counts every call it emits.
pub fn providers(input: &[u8]) {
    let Some((&mode, mut rest)) = input.split_first() else {
        return;
    };
    // Tiny bounds reach every truncation path; the defaults let whole
    // provider-shaped bodies through to the decoders.
    let limits = if mode % 2 == 0 {
        AssembleLimits {
            max_request_body: 256,
            max_json_response: 512,
            max_stream_item: 128,
            max_stream_text: 64,
            max_open_streams: 4,
        }
    } else {
        AssembleLimits::default()
    };
    let mut asm = CallAssembler::new(limits);
    let mut out = Vec::new();
    let mut ts = 0u64;
    let pick_from = |list: &[&'static str], pick: usize| list.get(pick % list.len()).copied();
    while let Some((&op, tail)) = rest.split_first() {
        let len = usize::from(tail.first().copied().unwrap_or(0));
        let data = tail
            .get(1..1 + len)
            .unwrap_or(tail.get(1..).unwrap_or_default());
        rest = tail.get(1 + data.len()..).unwrap_or_default();
        let stream = u64::from(op >> 5);
        ts += u64::from(op);
        let pick = usize::from(data.first().copied().unwrap_or(0));
        let ev = match op % 8 {
            0 => HttpEvent::Request {
                stream,
                head: RequestHead {
                    method: if pick % 7 == 0 { "GET" } else { "POST" }.into(),
                    path: pick_from(&PATHS, pick).unwrap_or("/").into(),
                    authority: Some(
                        if pick % 3 == 0 {
                            "api.anthropic.com"
                        } else {
                            "localhost:8000"
                        }
                        .into(),
                    ),
                    headers: Headers::new(),
                },
                ts_ns: ts,
            },
            1 | 2 => HttpEvent::RequestBody {
                stream,
                data: Bytes::copy_from_slice(data),
                ts_ns: ts,
            },
            3 => HttpEvent::RequestEnd { stream, ts_ns: ts },
            4 => HttpEvent::Response {
                stream,
                head: ResponseHead {
                    status: STATUSES.get(pick % STATUSES.len()).copied().unwrap_or(200),
                    headers: {
                        let text = String::from_utf8_lossy(data);
                        Headers::from_iter([
                            (
                                "content-type",
                                pick_from(&CONTENT_TYPES, pick).unwrap_or(""),
                            ),
                            ("retry-after", &text),
                            ("x-prompt-tokens", &text),
                            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                        ])
                    },
                },
                ts_ns: ts,
            },
            5 => HttpEvent::ResponseBody {
                stream,
                data: Bytes::copy_from_slice(data),
                ts_ns: ts,
            },
            6 => HttpEvent::ResponseEnd { stream, ts_ns: ts },
            _ if pick % 2 == 0 => HttpEvent::Trailers {
                stream,
                from: Direction::FromServer,
                headers: Headers::new(),
                ts_ns: ts,
            },
            _ => HttpEvent::Abort {
                stream,
                reason: AbortReason::Closed,
                ts_ns: ts,
            },
        };
        asm.on_event(ev, &mut out);
    }
    asm.close(ts, &mut out);
    assert_eq!(asm.stats().calls, out.len() as u64);
}

/// Raw bytes of both directions through the whole decoding path: the
/// connection parser (HTTP/1.1 or HTTP/2, detected) and the call assembler.
/// Never panics; every call is counted, its path stays within the head
/// bound, and usage is estimated only for successful responses.
pub fn calls(input: &[u8]) {
    let Some((&control, rest)) = input.split_first() else {
        return;
    };
    let recs = records(rest);
    let events = through_http_parser(&recs, control & 0x80 != 0);
    assert_bounded(&events);
    let mut asm = CallAssembler::new(AssembleLimits::default());
    let mut out = Vec::new();
    for ev in events {
        asm.on_event(ev, &mut out);
    }
    asm.close(u64::MAX, &mut out);
    assert_eq!(asm.stats().calls, out.len() as u64);
    for call in &out {
        assert!(call.path.len() <= parse_limits().max_header_block);
        // Usage is estimated only for a successful response.
        assert!(
            !call.usage.estimated || call.status.is_some_and(|s| (200..300).contains(&s)),
            "{call:?}"
        );
    }
}
