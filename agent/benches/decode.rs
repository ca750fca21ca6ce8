//! The pure decode path: the HTTP/1.1 bytes of one LLM exchange, as the
//! probes would hand them over write by write, through `HttpParser` and
//! `CallAssembler` to one `LlmCall`. Reported as calls/s.
//!
//! Baselines in the same run, over the JSON documents of the same response
//! (the body, or every SSE `data:` payload / NDJSON line):
//! `json_value` parses each into a `serde_json::Value`, `json_skim` only
//! validates it (`IgnoredAny`). `decode / json_value` is "decode costs N× a
//! plain JSON parse".
//!
//! The exchanges are the SDK recordings in `tests/fixtures/providers/exchanges/`;
//! the streamed ones have their content events repeated to about 200 events.
//!
//!     cargo bench -p tokenscope --bench decode
//!     python3 tests/benches/ratios.py   # the ratios, from criterion's saved medians

use std::{hint::black_box, ops::Range, time::Duration};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde::Deserialize;
use tokenscope::protocols::{Direction, HttpEvent, HttpParser, Limits as ParseLimits};
use tokenscope::providers::{CallAssembler, Limits as AssembleLimits};
use tokenscope::record::LlmCall;

/// Events in a stretched stream, as a real chat answer of ~200 tokens has.
const STREAM_EVENTS: usize = 200;

#[derive(Deserialize)]
struct Fixture {
    request: Request,
    response: Response,
}

#[derive(Deserialize)]
struct Request {
    method: String,
    path: String,
    authority: String,
    headers: Vec<(String, String)>,
    body: String,
}

#[derive(Deserialize)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    chunks: Vec<String>,
}

/// How the response body is framed into JSON documents.
#[derive(Clone, Copy)]
enum Framing {
    Json,
    Sse,
    Ndjson,
}

/// One exchange ready to replay: the writes each side made, in order, and
/// the JSON documents of the response for the baselines.
struct Exchange {
    name: &'static str,
    writes: Vec<(Direction, Bytes)>,
    json_docs: Vec<Vec<u8>>,
    /// Content-bearing stream events the decoder must count (0 for JSON).
    content_events: u32,
}

impl Exchange {
    fn wire_bytes(&self) -> usize {
        self.writes.iter().map(|(_, b)| b.len()).sum()
    }
}

fn load(name: &str) -> Fixture {
    let path = format!(
        "{}/../tests/fixtures/providers/exchanges/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The response chunks with `content` (the content-bearing events) repeated
/// in turn until the stream holds `total` events.
fn stretch(chunks: &[String], content: Range<usize>, total: usize) -> (Vec<String>, u32) {
    let fixed = chunks.len() - content.len();
    let repeated = total.saturating_sub(fixed).max(content.len());
    let mut out: Vec<String> = chunks[..content.start].to_vec();
    out.extend(
        chunks[content.clone()]
            .iter()
            .cycle()
            .take(repeated)
            .cloned(),
    );
    out.extend_from_slice(&chunks[content.end..]);
    (out, repeated as u32)
}

fn head_lines(out: &mut Vec<u8>, headers: &[(String, String)]) {
    for (name, value) in headers {
        if name != "host" {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// HTTP/1.1 writes for the exchange: the request in one write, the response
/// head in one, then one write per body chunk (chunked transfer for streams),
/// as the fake servers and SDKs write them.
fn exchange(name: &'static str, f: &Fixture, chunks: Vec<String>, framing: Framing) -> Exchange {
    let mut request = format!(
        "{} {} HTTP/1.1\r\nhost: {}\r\n",
        f.request.method, f.request.path, f.request.authority
    )
    .into_bytes();
    head_lines(&mut request, &f.request.headers);
    request.extend_from_slice(f.request.body.as_bytes());

    let streamed = !matches!(framing, Framing::Json);
    let mut headers: Vec<(String, String)> = f
        .response
        .headers
        .iter()
        .filter(|(n, _)| n != "content-length" && n != "transfer-encoding")
        .cloned()
        .collect();
    if streamed {
        headers.push(("transfer-encoding".into(), "chunked".into()));
    } else {
        let len: usize = chunks.iter().map(String::len).sum();
        headers.push(("content-length".into(), len.to_string()));
    }
    let mut response_head = format!("HTTP/1.1 {} OK\r\n", f.response.status).into_bytes();
    head_lines(&mut response_head, &headers);

    let mut writes = vec![
        (Direction::FromClient, Bytes::from(request)),
        (Direction::FromServer, Bytes::from(response_head)),
    ];
    for chunk in &chunks {
        let data = if streamed {
            format!("{:x}\r\n{chunk}\r\n", chunk.len()).into_bytes()
        } else {
            chunk.clone().into_bytes()
        };
        writes.push((Direction::FromServer, Bytes::from(data)));
    }
    if streamed {
        writes.push((Direction::FromServer, Bytes::from_static(b"0\r\n\r\n")));
    }

    let body: String = chunks.concat();
    let json_docs = match framing {
        Framing::Json => vec![body.into_bytes()],
        Framing::Sse => body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim_start)
            .filter(|d| *d != "[DONE]")
            .map(|d| d.as_bytes().to_vec())
            .collect(),
        Framing::Ndjson => body
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.as_bytes().to_vec())
            .collect(),
    };
    Exchange {
        name,
        writes,
        json_docs,
        content_events: 0,
    }
}

fn exchanges() -> Vec<Exchange> {
    let chat = load("openai_chat");
    let chat_stream = load("openai_chat_stream_usage");
    let anthropic = load("anthropic_messages_stream");
    let ollama = load("ollama_chat_stream");

    let mut out = vec![exchange(
        "openai_chat_json",
        &chat,
        chat.response.chunks.clone(),
        Framing::Json,
    )];
    // OpenAI: role event, content deltas 1..4, finish, usage, [DONE].
    let (chunks, n) = stretch(&chat_stream.response.chunks, 1..4, STREAM_EVENTS);
    let mut x = exchange("openai_chat_sse", &chat_stream, chunks, Framing::Sse);
    x.content_events = n;
    out.push(x);
    // Anthropic: message_start, block_start, ping, text deltas 3..6, stop events.
    let (chunks, n) = stretch(&anthropic.response.chunks, 3..6, STREAM_EVENTS);
    let mut x = exchange("anthropic_messages_sse", &anthropic, chunks, Framing::Sse);
    x.content_events = n;
    out.push(x);
    // Ollama: content lines 0..3, then the `done` line with the counts.
    let (chunks, n) = stretch(&ollama.response.chunks, 0..3, STREAM_EVENTS);
    let mut x = exchange("ollama_chat_ndjson", &ollama, chunks, Framing::Ndjson);
    x.content_events = n;
    out.push(x);
    out
}

/// One connection from first byte to close: what the agent does per call.
fn decode(writes: &[(Direction, Bytes)]) -> Vec<LlmCall> {
    let mut parser = HttpParser::new(ParseLimits::default());
    let mut assembler = CallAssembler::new(AssembleLimits::default());
    let mut events: Vec<HttpEvent> = Vec::new();
    let mut calls = Vec::new();
    let mut ts_ns = 1_000_000;
    for (dir, data) in writes {
        ts_ns += 10_000;
        parser.feed(*dir, ts_ns, data, &mut events);
        for ev in events.drain(..) {
            assembler.on_event(ev, &mut calls);
        }
    }
    parser.close(ts_ns, &mut events);
    for ev in events.drain(..) {
        assembler.on_event(ev, &mut calls);
    }
    assembler.close(ts_ns, &mut calls);
    calls
}

/// Checks once, outside the timing, that the bytes decode to the call the
/// recording expects; a bench of a decoder that drops the call measures nothing.
fn check(x: &Exchange) {
    let calls = decode(&x.writes);
    assert_eq!(calls.len(), 1, "{}: {calls:#?}", x.name);
    let call = &calls[0];
    assert!(
        !call.usage.estimated,
        "{}: usage estimated: {call:#?}",
        x.name
    );
    assert_eq!(call.status, Some(200), "{}", x.name);
    if x.content_events > 0 {
        assert!(call.streaming, "{}", x.name);
        assert_eq!(call.output_chunks, x.content_events, "{}", x.name);
    }
    for doc in &x.json_docs {
        serde_json::from_slice::<serde_json::Value>(doc)
            .unwrap_or_else(|e| panic!("{}: baseline doc is not JSON: {e}", x.name));
    }
}

fn bench(c: &mut Criterion) {
    for x in exchanges() {
        check(&x);
        let json_bytes: usize = x.json_docs.iter().map(Vec::len).sum();
        eprintln!(
            "{}: {} writes, {} wire bytes, {} JSON documents ({} bytes)",
            x.name,
            x.writes.len(),
            x.wire_bytes(),
            x.json_docs.len(),
            json_bytes
        );
        let mut group = c.benchmark_group(x.name);
        group
            .throughput(Throughput::Elements(1))
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        group.bench_function("decode", |b| b.iter(|| black_box(decode(&x.writes))));
        group.bench_function("json_value", |b| {
            b.iter(|| {
                for doc in &x.json_docs {
                    black_box(serde_json::from_slice::<serde_json::Value>(black_box(doc)).ok());
                }
            })
        });
        group.bench_function("json_skim", |b| {
            b.iter(|| {
                for doc in &x.json_docs {
                    black_box(serde_json::from_slice::<serde::de::IgnoredAny>(black_box(doc)).ok());
                }
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
