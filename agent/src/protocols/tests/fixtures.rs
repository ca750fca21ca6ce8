//! Golden fixtures recorded from real clients and servers (see
//! `tests/fixtures/http/record.py`): events compared with what the server
//! handled, and the same events whatever the chunking.

use proptest::prelude::*;

use super::support::{exchanges, fixture, load, normalize, run, split, Exchange};
use crate::protocols::{is_credential_header, ProtocolKind};

const H1_CURL_KEEPALIVE: &str =
    include_str!("../../../../tests/fixtures/http/h1_curl_keepalive.json");
const H1_CURL_CONTINUE: &str =
    include_str!("../../../../tests/fixtures/http/h1_curl_expect_continue_head.json");
const H1_PYTHON_CODINGS: &str =
    include_str!("../../../../tests/fixtures/http/h1_python_codings.json");
const H1_PIPELINED: &str = include_str!("../../../../tests/fixtures/http/h1_pipelined.json");
const H1_NGINX: &str = include_str!("../../../../tests/fixtures/http/h1_nginx_gzip_chunked.json");
const H2_NGHTTPD: &str =
    include_str!("../../../../tests/fixtures/http/h2_nghttp_nghttpd_parallel.json");
const H2_CURL_PY: &str =
    include_str!("../../../../tests/fixtures/http/h2_curl_python_h2_gzip.json");
const H2_NGHTTP_PY: &str =
    include_str!("../../../../tests/fixtures/http/h2_nghttp_python_h2_gzip.json");

const ALL: [(&str, &str); 8] = [
    ("h1_curl_keepalive", H1_CURL_KEEPALIVE),
    ("h1_curl_expect_continue_head", H1_CURL_CONTINUE),
    ("h1_python_codings", H1_PYTHON_CODINGS),
    ("h1_pipelined", H1_PIPELINED),
    ("h1_nginx_gzip_chunked", H1_NGINX),
    ("h2_nghttp_nghttpd_parallel", H2_NGHTTPD),
    ("h2_curl_python_h2_gzip", H2_CURL_PY),
    ("h2_nghttp_python_h2_gzip", H2_NGHTTP_PY),
];

/// Checks the parsed exchanges against what the server handled.
fn check_against_server(name: &str, json: &str) {
    let fx = fixture(json);
    let chunks: Vec<_> = fx
        .chunks
        .into_iter()
        .map(super::support::decode_chunk)
        .collect();
    check_chunks(name, &chunks, json);
}

fn check_chunks(name: &str, chunks: &[(crate::protocols::Direction, Vec<u8>)], json: &str) {
    let fx = fixture(json);
    let (events, stats) = run(chunks);
    let mut got: Vec<Exchange> = exchanges(&events).into_values().collect();
    let mut expect = fx.expect;
    assert_eq!(got.len(), expect.len(), "{name}: exchanges {got:#?}");
    if name.starts_with("h2") {
        // Streams end in any order; paths are unique in these fixtures.
        got.sort_by(|a, b| a.path.cmp(&b.path));
        expect.sort_by(|a, b| a.path.cmp(&b.path));
    }
    for (x, e) in got.iter().zip(&expect) {
        let ctx = format!("{name} {} {}", e.method, e.path);
        assert_eq!(x.method.as_deref(), Some(e.method.as_str()), "{ctx}");
        assert_eq!(x.path.as_deref(), Some(e.path.as_str()), "{ctx}");
        assert_eq!(x.status, Some(e.status), "{ctx}");
        assert_eq!(
            String::from_utf8_lossy(&x.request_body),
            e.request_body,
            "{ctx}"
        );
        if let Some(body) = &e.response_body {
            assert!(
                x.response_body == body.as_bytes(),
                "{ctx}: body {:?}",
                String::from_utf8_lossy(&x.response_body)
            );
        }
        assert!(x.request_end && x.response_end, "{ctx}: ends {x:?}");
        assert!(x.aborts.is_empty(), "{ctx}: {:?}", x.aborts);
        assert!(
            x.authority
                .as_deref()
                .is_some_and(|a| a == "a" || a.starts_with("127.0.0.1:")),
            "{ctx}: {:?}",
            x.authority
        );
        for h in &x.header_names {
            assert!(
                !is_credential_header(h),
                "{ctx}: credential header {h} kept"
            );
        }
    }
    assert_eq!(
        stats.malformed + stats.too_large + stats.hpack_unknown + stats.streams_aborted,
        0,
        "{name}: {stats:?}"
    );
}

#[test]
fn every_fixture_matches_what_the_server_handled() {
    for (name, json) in ALL {
        check_against_server(name, json);
    }
}

#[test]
fn fixtures_are_detected_as_their_protocol() {
    for (name, json) in ALL {
        let mut parser = crate::protocols::HttpParser::new(Default::default());
        let mut out = Vec::new();
        for (dir, bytes) in load(json) {
            parser.feed(dir, 0, &bytes, &mut out);
        }
        let want = if name.starts_with("h2") {
            ProtocolKind::Http2
        } else {
            ProtocolKind::Http1
        };
        assert_eq!(parser.kind(), Some(want), "{name}");
    }
}

#[test]
fn credentials_never_leave_the_parser() {
    for (name, json) in ALL {
        let (events, _) = run(&load(json));
        let text = format!("{events:?}");
        for secret in [
            "sk-test-secret",
            "sk-ant-secret",
            "sk-h2-secret",
            "sk-secret",
            "session=secret",
            "key=secret",
        ] {
            assert!(!text.contains(secret), "{name}: {secret} leaked");
        }
    }
}

#[test]
fn splitting_at_every_byte_gives_the_same_events() {
    for (name, json) in [
        ("h1_curl_keepalive", H1_CURL_KEEPALIVE),
        ("h1_pipelined", H1_PIPELINED),
        ("h2_curl_python_h2_gzip", H2_CURL_PY),
    ] {
        let chunks = load(json);
        let want = normalize(&run(&chunks).0);
        let total: usize = chunks.iter().map(|(_, b)| b.len()).sum();
        // Every boundary for small fixtures; about 300 spread-out ones for the rest.
        let stride = if total < 3000 { 1 } else { total / 300 };
        for at in (1..total).step_by(stride) {
            let mut seen = 0usize;
            let pieces = split(&chunks, &mut |len| {
                let cut = at
                    .checked_sub(seen)
                    .filter(|c| *c < len)
                    .map(|c| vec![c])
                    .unwrap_or_default();
                seen += len;
                cut
            });
            assert_eq!(
                normalize(&run(&pieces).0),
                want,
                "{name}: split at byte {at}"
            );
        }
    }
}

#[test]
fn one_byte_at_a_time_gives_the_same_events() {
    for (name, json) in ALL {
        let chunks = load(json);
        let want = normalize(&run(&chunks).0);
        let bytes = split(&chunks, &mut |len| (1..len).collect());
        assert_eq!(normalize(&run(&bytes).0), want, "{name}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_chunkings_give_the_same_events(which in 0usize..ALL.len(), seed in any::<u64>(), max_piece in 1usize..3000) {
        let (name, json) = ALL[which];
        let chunks = load(json);
        let want = normalize(&run(&chunks).0);
        let mut state = seed | 1;
        let pieces = split(&chunks, &mut |len| {
            let mut cuts = Vec::new();
            let mut at = 0usize;
            loop {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                at += 1 + (state as usize) % max_piece;
                if at >= len {
                    break;
                }
                cuts.push(at);
            }
            cuts
        });
        prop_assert_eq!(normalize(&run(&pieces).0), want, "{}", name);
    }
}

/// Capture that starts after the preface and SETTINGS (at the first HEADERS
/// frame) sees the HPACK tables as unknown; every entry the real peers use
/// was still inserted in view, so everything decodes and nothing is guessed.
#[test]
fn capture_starting_after_the_preface_decodes_real_h2() {
    for (name, json) in [
        ("h2_nghttp_nghttpd_parallel", H2_NGHTTPD),
        ("h2_nghttp_python_h2_gzip", H2_NGHTTP_PY),
        ("h2_curl_python_h2_gzip", H2_CURL_PY),
    ] {
        let mut chunks = load(json);
        let first = chunks[0].1.clone();
        assert!(first.starts_with(crate::protocols::detect::PREFACE));
        let mut at = crate::protocols::detect::PREFACE.len();
        while first[at + 3] != 0x1 {
            at += 9 + u32::from_be_bytes([0, first[at], first[at + 1], first[at + 2]]) as usize;
        }
        chunks[0].1 = first[at..].to_vec();
        check_chunks(name, &chunks, json);
    }
}

/// Capture that starts at the second request: its header block refers to
/// table entries the first request added out of view. What is known is
/// reported, the rest is counted, and the streams still complete.
#[test]
fn capture_starting_at_the_second_request_reports_what_is_known() {
    let mut chunks = load(H2_NGHTTPD);
    let first = chunks[0].1.clone();
    let mut at = crate::protocols::detect::PREFACE.len();
    let mut headers_seen = 0;
    loop {
        if first[at + 3] == 0x1 {
            headers_seen += 1;
            if headers_seen == 2 {
                break;
            }
        }
        at += 9 + u32::from_be_bytes([0, first[at], first[at + 1], first[at + 2]]) as usize;
    }
    chunks[0].1 = first[at..].to_vec();
    let (events, stats) = run(&chunks);
    let got: Vec<Exchange> = exchanges(&events).into_values().collect();
    let paths: Vec<_> = got
        .iter()
        .map(|x| x.path.clone().unwrap_or_default())
        .collect();
    assert_eq!(paths, ["/f1.txt", "/f2.txt"], "{got:#?}");
    let expect = fixture(H2_NGHTTPD).expect;
    for (x, e) in got.iter().zip(&expect[1..]) {
        assert_eq!(x.method.as_deref(), Some("GET"));
        assert_eq!(x.status, Some(200));
        assert!(x.response_end && x.aborts.is_empty());
        assert!(Some(x.response_body.as_slice()) == e.response_body.as_deref().map(str::as_bytes));
    }
    assert!(stats.hpack_unknown >= 1, "{stats:?}");
    assert_eq!(stats.malformed, 0);
}
