//! HTTP/2 edge cases built frame by frame: interleaving, resets, padding,
//! CONTINUATION, table-size settings, mid-connection capture, bad frames.

use std::io::Write as _;

use crate::protocols::detect::PREFACE;
use crate::protocols::{AbortReason, Direction, HttpEvent, HttpParser, Limits, ParseStats};

use super::support::{exchanges, normalize};

const C: Direction = Direction::FromClient;
const S: Direction = Direction::FromServer;
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const PADDED: u8 = 8;
const PRIORITY: u8 = 0x20;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut v = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Literal without indexing, new name (RFC 7541 §6.2.2); short strings only.
fn lit(name: &str, value: &str) -> Vec<u8> {
    let mut v = vec![0x00, name.len() as u8];
    v.extend_from_slice(name.as_bytes());
    v.push(value.len() as u8);
    v.extend_from_slice(value.as_bytes());
    v
}

/// Literal with incremental indexing, new name.
fn lit_indexed(name: &str, value: &str) -> Vec<u8> {
    let mut v = lit(name, value);
    v[0] = 0x40;
    v
}

/// `POST /v1/chat` on `api` (static :method POST, :scheme http).
fn post_block() -> Vec<u8> {
    let mut b = vec![0x83, 0x86];
    b.extend(lit(":path", "/v1/chat?key=1"));
    b.extend(lit(":authority", "api"));
    b.extend(lit("authorization", "Bearer sk"));
    b
}

fn status_block(extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = vec![0x88];
    for (n, v) in extra {
        b.extend(lit(n, v));
    }
    b
}

struct Conn {
    parser: HttpParser,
    out: Vec<HttpEvent>,
    ts: u64,
}

impl Conn {
    fn new(preface: bool) -> Self {
        Conn::with_limits(preface, Limits::default())
    }

    fn with_limits(preface: bool, limits: Limits) -> Self {
        let mut c = Conn {
            parser: HttpParser::new(limits),
            out: Vec::new(),
            ts: 0,
        };
        if preface {
            let mut start = PREFACE.to_vec();
            start.extend(frame(SETTINGS, 0, 0, &[]));
            c.feed(C, &start);
        }
        c
    }

    fn feed(&mut self, dir: Direction, bytes: &[u8]) {
        self.ts += 1;
        self.parser.feed(dir, self.ts, bytes, &mut self.out);
    }

    fn stats(&self) -> ParseStats {
        self.parser.stats().clone()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn interleaved_streams_keep_their_bodies_and_a_reset_touches_one() {
    let mut c = Conn::new(true);
    c.feed(
        C,
        &frame(HEADERS, END_HEADERS | END_STREAM, 1, &post_block()),
    );
    c.feed(
        C,
        &frame(HEADERS, END_HEADERS | END_STREAM, 3, &post_block()),
    );
    c.feed(
        C,
        &frame(HEADERS, END_HEADERS | END_STREAM, 5, &post_block()),
    );
    let gz = gzip(b"data: one\n\ndata: two\n\n");
    c.feed(
        S,
        &frame(
            HEADERS,
            END_HEADERS,
            1,
            &status_block(&[("content-encoding", "gzip")]),
        ),
    );
    c.feed(
        S,
        &frame(
            HEADERS,
            END_HEADERS,
            3,
            &status_block(&[("set-cookie", "s")]),
        ),
    );
    c.feed(S, &frame(HEADERS, END_HEADERS, 5, &status_block(&[])));
    let (a, b) = gz.split_at(gz.len() / 2);
    c.feed(S, &frame(DATA, 0, 1, a));
    c.feed(S, &frame(DATA, 0, 3, b"hello "));
    c.feed(S, &frame(DATA, 0, 5, b"doomed"));
    c.feed(S, &frame(RST, 0, 5, &[0, 0, 0, 8]));
    c.feed(S, &frame(DATA, END_STREAM, 1, b));
    c.feed(S, &frame(DATA, END_STREAM, 3, b"world"));
    let x = exchanges(&c.out);
    assert_eq!(x[&1].response_body, b"data: one\n\ndata: two\n\n");
    assert_eq!(x[&3].response_body, b"hello world");
    assert!(x[&1].response_end && x[&3].response_end);
    assert_eq!(x[&5].aborts, ["Reset"]);
    assert_eq!(x[&1].path.as_deref(), Some("/v1/chat"));
    assert_eq!(x[&1].authority.as_deref(), Some("api"));
    assert!(x[&1]
        .header_names
        .iter()
        .all(|h| h != "authorization" && h != "set-cookie"));
    assert!(x[&3].header_names.is_empty());
}

#[test]
fn padding_priority_continuation_and_interim_responses() {
    let mut c = Conn::new(true);
    let block = post_block();
    let (first, rest) = block.split_at(5);
    let mut headers = vec![3u8]; // pad length
    headers.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
    headers.extend_from_slice(first);
    headers.extend_from_slice(&[0, 0, 0]);
    c.feed(C, &frame(HEADERS, PADDED | PRIORITY, 1, &headers));
    c.feed(C, &frame(CONTINUATION, END_HEADERS, 1, rest));
    let mut body = vec![2u8];
    body.extend_from_slice(b"{}");
    body.extend_from_slice(&[0, 0]);
    c.feed(C, &frame(DATA, PADDED | END_STREAM, 1, &body));
    c.feed(
        S,
        &frame(HEADERS, END_HEADERS, 1, &[0x08, 0x03, b'1', b'0', b'3']),
    );
    c.feed(S, &frame(HEADERS, END_HEADERS, 1, &status_block(&[])));
    c.feed(S, &frame(DATA, 0, 1, b"ok"));
    c.feed(
        S,
        &frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &lit("grpc-status", "0"),
        ),
    );
    let events = normalize(&c.out);
    let statuses: Vec<u16> = events
        .iter()
        .filter_map(|e| match e {
            HttpEvent::Response { head, .. } => Some(head.status),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, [200], "103 is interim");
    let x = exchanges(&events);
    assert_eq!(
        (
            x[&1].request_body.as_slice(),
            x[&1].response_body.as_slice()
        ),
        (&b"{}"[..], &b"ok"[..])
    );
    assert!(x[&1].request_end && x[&1].response_end);
    assert_eq!(c.stats(), ParseStats::default());
}

#[test]
fn goaway_aborts_streams_past_the_last_id() {
    let mut c = Conn::new(true);
    c.feed(
        C,
        &frame(HEADERS, END_HEADERS | END_STREAM, 1, &post_block()),
    );
    c.feed(
        C,
        &frame(HEADERS, END_HEADERS | END_STREAM, 3, &post_block()),
    );
    c.feed(S, &frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]));
    c.feed(
        S,
        &frame(HEADERS, END_HEADERS | END_STREAM, 1, &status_block(&[])),
    );
    let x = exchanges(&c.out);
    assert_eq!(x[&3].aborts, ["Reset"]);
    assert!(x[&1].response_end);
}

#[test]
fn table_size_setting_is_honoured() {
    // 0x3f 0xe1 0x3f: size update to 8192, above the default 4096.
    let update = [0x3f, 0xe1, 0x3f, 0x88];
    let mut c = Conn::new(true);
    c.feed(C, &frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0x20, 0]));
    c.feed(
        C,
        &frame(HEADERS, END_HEADERS | END_STREAM, 1, &post_block()),
    );
    c.feed(S, &frame(SETTINGS, 1, 0, &[]));
    c.feed(S, &frame(HEADERS, END_HEADERS | END_STREAM, 1, &update));
    assert!(exchanges(&c.out)[&1].response_end, "{:?}", c.out);
    let mut c = Conn::new(true);
    c.feed(
        C,
        &frame(HEADERS, END_HEADERS | END_STREAM, 1, &post_block()),
    );
    c.feed(S, &frame(HEADERS, END_HEADERS | END_STREAM, 1, &update));
    assert_eq!(exchanges(&c.out)[&1].aborts, ["Malformed"]);
    assert_eq!(c.stats().malformed, 1);
}

#[test]
fn mid_connection_capture_decodes_what_it_can() {
    let mut c = Conn::new(false);
    // :method POST (static), :path as dynamic index 62 we never saw, a literal.
    let mut block = vec![0x83, 0xbe];
    block.extend(lit_indexed("x-request-id", "r1"));
    c.feed(C, &frame(HEADERS, END_HEADERS | END_STREAM, 7, &block));
    // Response: :status unknown (index 70) -> stream dropped as a gap.
    c.feed(S, &frame(HEADERS, END_HEADERS, 7, &[0xc6]));
    // Next stream: index 62 is now the x-request-id entry we saw.
    c.feed(
        C,
        &frame(HEADERS, END_HEADERS | END_STREAM, 9, &[0x83, 0x84, 0xbe]),
    );
    c.feed(S, &frame(HEADERS, END_HEADERS | END_STREAM, 9, &[0x88]));
    // A stream opened before the capture: its frames are ignored.
    c.feed(S, &frame(DATA, END_STREAM, 5, b"orphan"));
    let x = exchanges(&c.out);
    assert_eq!(x[&7].path.as_deref(), Some(""), "unknown :path is empty");
    assert_eq!(x[&7].aborts, ["Gap"]);
    assert_eq!(x[&9].path.as_deref(), Some("/"));
    assert!(x[&9].header_names.contains(&"x-request-id".to_string()));
    assert!(x[&9].response_end);
    assert!(!x.contains_key(&5));
    assert_eq!(c.stats().hpack_unknown, 2);
    assert_eq!(c.parser.kind(), Some(crate::protocols::ProtocolKind::Http2));
}

#[test]
fn oversized_header_block_drops_one_stream_and_others_go_on() {
    let limits = Limits {
        max_header_block: 1024,
        ..Limits::default()
    };
    let mut c = Conn::with_limits(true, limits);
    let mut big = post_block();
    big.extend(lit_indexed("x", "y"));
    for _ in 0..20 {
        big.extend(lit("x-pad", &"p".repeat(100)));
    }
    c.feed(C, &frame(HEADERS, 0, 1, &big[..600]));
    c.feed(C, &frame(CONTINUATION, END_HEADERS, 1, &big[600..]));
    c.feed(
        C,
        &frame(HEADERS, END_HEADERS | END_STREAM, 3, &post_block()),
    );
    c.feed(
        S,
        &frame(HEADERS, END_HEADERS | END_STREAM, 3, &status_block(&[])),
    );
    let x = exchanges(&c.out);
    assert!(!x.contains_key(&1), "{x:?}");
    assert!(x[&3].response_end);
    assert_eq!(c.stats().too_large, 1);
}

#[test]
fn invalid_frames_stop_the_connection() {
    for bad in [
        frame(DATA, 0, 0, b"x"),
        frame(CONTINUATION, END_HEADERS, 1, &[0x88]),
        frame(SETTINGS, 0, 0, &[0, 1, 0]),
        frame(HEADERS, END_HEADERS | PADDED, 3, &[9, 0x88]),
    ] {
        let mut c = Conn::new(true);
        c.feed(
            C,
            &frame(HEADERS, END_HEADERS | END_STREAM, 1, &post_block()),
        );
        c.feed(C, &bad);
        c.feed(
            S,
            &frame(HEADERS, END_HEADERS | END_STREAM, 1, &status_block(&[])),
        );
        let x = exchanges(&c.out);
        assert_eq!(x[&1].aborts, ["Malformed"], "{bad:?}");
        assert!(!x[&1].response_end);
        assert_eq!(c.stats().malformed, 1);
    }
}

#[test]
fn gap_aborts_open_streams_and_resyncs_on_a_frame() {
    let mut c = Conn::new(true);
    c.feed(
        C,
        &frame(HEADERS, END_HEADERS | END_STREAM, 1, &post_block()),
    );
    c.feed(S, &frame(HEADERS, END_HEADERS, 1, &status_block(&[])));
    let mut out = Vec::new();
    c.parser.gap(S, 5, 1000, &mut out);
    assert_eq!(
        out,
        [HttpEvent::Abort {
            stream: 1,
            reason: AbortReason::Gap,
            ts_ns: 5
        }]
    );
    c.feed(S, b"\x00\x00\x05tail of an old frame");
    c.feed(
        C,
        &frame(HEADERS, END_HEADERS | END_STREAM, 3, &post_block()),
    );
    c.feed(
        S,
        &frame(HEADERS, END_HEADERS | END_STREAM, 3, &status_block(&[])),
    );
    let x = exchanges(&c.out);
    assert!(x[&3].response_end, "{x:?}");
}

#[test]
fn streams_past_the_bound_are_dropped() {
    let limits = Limits {
        max_concurrent_streams: 2,
        ..Limits::default()
    };
    let mut c = Conn::with_limits(true, limits);
    for id in [1, 3, 5] {
        c.feed(C, &frame(HEADERS, END_HEADERS, id, &post_block()));
    }
    assert_eq!(exchanges(&c.out).len(), 2);
    assert_eq!(c.stats().streams_dropped, 1);
}

#[test]
fn bad_body_coding_aborts_one_stream() {
    let mut c = Conn::new(true);
    c.feed(
        C,
        &frame(HEADERS, END_HEADERS | END_STREAM, 1, &post_block()),
    );
    c.feed(
        C,
        &frame(HEADERS, END_HEADERS | END_STREAM, 3, &post_block()),
    );
    c.feed(
        S,
        &frame(
            HEADERS,
            END_HEADERS,
            1,
            &status_block(&[("content-encoding", "br")]),
        ),
    );
    c.feed(S, &frame(HEADERS, END_HEADERS, 3, &status_block(&[])));
    c.feed(S, &frame(DATA, END_STREAM, 1, &[0xff; 20]));
    c.feed(S, &frame(DATA, END_STREAM, 3, b"fine"));
    let x = exchanges(&c.out);
    assert_eq!(x[&1].aborts, ["Malformed"]);
    assert_eq!(x[&3].response_body, b"fine");
}

#[test]
fn close_aborts_unfinished_streams() {
    let mut c = Conn::new(true);
    c.feed(
        C,
        &frame(HEADERS, END_HEADERS | END_STREAM, 1, &post_block()),
    );
    let mut out = Vec::new();
    c.parser.close(9, &mut out);
    assert_eq!(
        out,
        [HttpEvent::Abort {
            stream: 1,
            reason: AbortReason::Closed,
            ts_ns: 9
        }]
    );
}

#[test]
fn hidden_content_encoding_is_told_by_magic_bytes_however_split() {
    let gz = gzip(b"{\"usage\":{}}");
    for first in [1, 3, gz.len()] {
        let mut c = Conn::new(false);
        c.feed(
            C,
            &frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x83, 0x84]),
        );
        // Index 62 is unknown: it may be `content-encoding: gzip`.
        c.feed(S, &frame(HEADERS, END_HEADERS, 1, &[0x88, 0xbe]));
        c.feed(S, &frame(DATA, 0, 1, &gz[..first]));
        c.feed(S, &frame(DATA, END_STREAM, 1, &gz[first..]));
        let x = exchanges(&c.out);
        assert_eq!(
            x[&1].response_body, b"{\"usage\":{}}",
            "first piece {first}"
        );
        assert!(x[&1].response_end);
    }
}

#[test]
fn trailing_headers_are_reported_after_the_body_and_end_the_stream() {
    let mut c = Conn::new(true);
    c.feed(C, &frame(HEADERS, END_HEADERS, 1, &post_block()));
    c.feed(C, &frame(DATA, 0, 1, b"{}"));
    // Request trailers end the request.
    c.feed(
        C,
        &frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &lit("x-req-trailer", "1"),
        ),
    );
    let gz = gzip(b"hello");
    c.feed(
        S,
        &frame(
            HEADERS,
            END_HEADERS,
            1,
            &status_block(&[("content-encoding", "gzip")]),
        ),
    );
    c.feed(S, &frame(DATA, 0, 1, &gz));
    let mut trailer_block = lit("grpc-status", "8");
    trailer_block.extend(lit("grpc-message", "quota"));
    trailer_block.extend(lit("authorization", "Bearer sk-secret"));
    // The trailer block is split across HEADERS and CONTINUATION.
    let (a, b) = trailer_block.split_at(5);
    c.feed(S, &frame(HEADERS, END_STREAM, 1, a));
    c.feed(S, &frame(CONTINUATION, END_HEADERS, 1, b));
    let x = exchanges(&c.out);
    assert_eq!(x[&1].response_body, b"hello");
    assert!(x[&1].request_end && x[&1].response_end);
    assert_eq!(
        x[&1].trailer_names,
        ["x-req-trailer", "grpc-status", "grpc-message"]
    );
    assert!(!format!("{:?}", c.out).contains("sk-secret"));
    let kinds: Vec<&str> = c
        .out
        .iter()
        .map(|e| match e {
            HttpEvent::Request { .. } => "req",
            HttpEvent::RequestBody { .. } => "req-body",
            HttpEvent::RequestEnd { .. } => "req-end",
            HttpEvent::Response { .. } => "resp",
            HttpEvent::ResponseBody { .. } => "resp-body",
            HttpEvent::ResponseEnd { .. } => "resp-end",
            HttpEvent::Trailers { from: C, .. } => "req-trailers",
            HttpEvent::Trailers { from: S, .. } => "resp-trailers",
            HttpEvent::Abort { .. } => "abort",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "req",
            "req-body",
            "req-trailers",
            "req-end",
            "resp",
            "resp-body",
            "resp-trailers",
            "resp-end"
        ]
    );
    assert_eq!(c.stats(), ParseStats::default());
}

#[test]
fn streams_idle_past_the_bound_are_closed_and_counted() {
    const SECOND: u64 = 1_000_000_000;
    let limits = Limits {
        stream_idle_ns: 60 * SECOND,
        max_concurrent_streams: 4096,
        ..Limits::default()
    };
    let mut p = HttpParser::new(limits);
    let mut out = Vec::new();
    let mut start = PREFACE.to_vec();
    start.extend(frame(SETTINGS, 0, 0, &[]));
    p.feed(C, 0, &start, &mut out);
    // A thousand streams whose responses never end, opened over 10 s.
    for i in 0..1000u32 {
        let id = 2 * i + 1;
        let ts = u64::from(i) * SECOND / 100;
        p.feed(
            C,
            ts,
            &frame(HEADERS, END_HEADERS | END_STREAM, id, &post_block()),
            &mut out,
        );
        p.feed(
            S,
            ts,
            &frame(HEADERS, END_HEADERS, id, &status_block(&[])),
            &mut out,
        );
    }
    // Stream 2001 stays busy: a DATA frame every 20 s.
    p.feed(
        C,
        10 * SECOND,
        &frame(HEADERS, END_HEADERS | END_STREAM, 2001, &post_block()),
        &mut out,
    );
    p.feed(
        S,
        10 * SECOND,
        &frame(HEADERS, END_HEADERS, 2001, &status_block(&[])),
        &mut out,
    );
    let mut t = 10 * SECOND;
    while t < 200 * SECOND {
        t += 20 * SECOND;
        p.feed(S, t, &frame(DATA, 0, 2001, b"data: x\n\n"), &mut out);
    }
    let idle: Vec<u64> = out
        .iter()
        .filter_map(|e| match e {
            HttpEvent::Abort {
                stream,
                reason: AbortReason::Idle,
                ts_ns,
            } => {
                assert!(*ts_ns >= 60 * SECOND, "aborted at {ts_ns}");
                Some(*stream)
            }
            _ => None,
        })
        .collect();
    assert_eq!(idle.len(), 1000);
    assert!(!idle.contains(&2001));
    assert_eq!(p.stats().streams_idle, 1000);
    // The busy stream still ends normally.
    p.feed(S, t + 1, &frame(DATA, END_STREAM, 2001, b""), &mut out);
    assert!(exchanges(&out)[&2001].response_end);
    // Timestamps that go backwards (two capture queues) close nothing.
    p.feed(
        C,
        0,
        &frame(HEADERS, END_HEADERS | END_STREAM, 2003, &post_block()),
        &mut out,
    );
    p.feed(
        S,
        5,
        &frame(HEADERS, END_HEADERS, 2003, &status_block(&[])),
        &mut out,
    );
    assert_eq!(p.stats().streams_idle, 1000);
}
