//! The pure decode path: the HTTP/1.1 bytes of one LLM exchange, as the
//! probes would hand them over write by write, through `HttpParser` and
//! `CallAssembler` to one `LlmCall`. Criterion reports time per iteration
//! and MB/s of wire bytes (one core); after each case a summary line gives
//! calls/s, MB/s and heap allocations per call, counted by the
//! `stats_alloc` global allocator of this bench binary.
//!
//! Cases: OpenAI and Anthropic chat streams (HTTP/1.1 + SSE), Ollama NDJSON,
//! non-streaming chat JSON, the same JSON and SSE gzip-encoded, HTTP/2 with
//! 100 interleaved chat streams on one connection, and the SSE framing
//! alone (`sse_framing`: the parser over a 1 MiB body, 16 KiB writes).
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
//!     cargo xtask bench    # or: cargo bench -p tokenscope --bench decode
//!     python3 tests/benches/ratios.py   # the ratios, from criterion's saved medians

use std::alloc::System;
use std::io::Write as _;
use std::time::Instant;
use std::{hint::black_box, ops::Range, time::Duration};

use bytes::Bytes;
use criterion::{criterion_group, Criterion, Throughput};
use serde::Deserialize;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tokenscope::protocols::{Direction, HttpEvent, HttpParser, Limits as ParseLimits};
use tokenscope::providers::sse::SseParser;
use tokenscope::providers::{CallAssembler, Limits as AssembleLimits};
use tokenscope::record::LlmCall;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

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
    /// Calls the writes hold (one, or one per HTTP/2 stream).
    calls: usize,
}

impl Exchange {
    fn wire_bytes(&self) -> usize {
        self.writes.iter().map(|(_, b)| b.len()).sum()
    }
}

macro_rules! fixture {
    ($name:literal) => {
        load(
            $name,
            include_str!(concat!(
                "../../tests/fixtures/providers/exchanges/",
                $name,
                ".json"
            )),
        )
    };
}

fn load(name: &str, text: &str) -> Fixture {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"))
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
        calls: 1,
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip in memory");
    e.finish().expect("gzip in memory")
}

/// The same exchange with its response body gzip-encoded (`content-encoding:
/// gzip`), in writes of the sizes the plain body had.
fn gzipped(name: &'static str, plain: &Exchange) -> Exchange {
    let [request, head, body @ ..] = plain.writes.as_slice() else {
        panic!("{}: no response", plain.name);
    };
    let head_text = String::from_utf8_lossy(&head.1).into_owned();
    let chunked = head_text.contains("transfer-encoding: chunked");
    let decoded: Vec<u8> = if chunked {
        plain.json_docs_body()
    } else {
        body.iter().flat_map(|(_, b)| b.to_vec()).collect()
    };
    let compressed = gzip(&decoded);
    let mut head_lines: Vec<&str> = head_text
        .trim_end()
        .lines()
        .filter(|l| !l.starts_with("content-length"))
        .collect();
    head_lines.push("content-encoding: gzip");
    let length = format!("content-length: {}", compressed.len());
    if !chunked {
        head_lines.push(&length);
    }
    let new_head = format!("{}\r\n\r\n", head_lines.join("\r\n"));
    let mut writes = vec![
        request.clone(),
        (Direction::FromServer, Bytes::from(new_head)),
    ];
    let pieces = body.len().max(1);
    let step = compressed.len().div_ceil(pieces).max(1);
    for piece in compressed.chunks(step) {
        let data = if chunked {
            let mut d = format!("{:x}\r\n", piece.len()).into_bytes();
            d.extend_from_slice(piece);
            d.extend_from_slice(b"\r\n");
            d
        } else {
            piece.to_vec()
        };
        writes.push((Direction::FromServer, Bytes::from(data)));
    }
    if chunked {
        writes.push((Direction::FromServer, Bytes::from_static(b"0\r\n\r\n")));
    }
    Exchange {
        name,
        writes,
        json_docs: plain.json_docs.clone(),
        content_events: plain.content_events,
        calls: 1,
    }
}

impl Exchange {
    /// The decoded body of a chunked response.
    fn json_docs_body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (_, w) in self.writes.iter().skip(2) {
            let text = String::from_utf8_lossy(w);
            if let Some((_, rest)) = text.split_once("\r\n") {
                out.extend_from_slice(rest.strip_suffix("\r\n").unwrap_or(rest).as_bytes());
            }
        }
        out
    }
}

/// An HPACK literal without indexing, new name (RFC 7541 §6.2.2), no Huffman.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    for s in [name, value] {
        hpack_int(out, 7, s.len());
        out.extend_from_slice(s.as_bytes());
    }
}

fn hpack_int(out: &mut Vec<u8>, prefix_bits: u32, mut n: usize) {
    let max = (1usize << prefix_bits) - 1;
    if n < max {
        out.push(n as u8);
        return;
    }
    out.push(max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut v = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// `streams` OpenAI chat streams on one HTTP/2 connection: all requests
/// first, then the responses' SSE events interleaved round-robin, one DATA
/// frame per event, as a busy gateway's connection carries them.
fn http2_interleaved(f: &Fixture, streams: u32) -> Exchange {
    const HEADERS: u8 = 1;
    const DATA: u8 = 0;
    const SETTINGS: u8 = 4;
    const END_STREAM: u8 = 1;
    const END_HEADERS: u8 = 4;
    let (events, content) = stretch(&f.response.chunks, 1..4, 20);
    let mut client = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    client.extend(h2_frame(SETTINGS, 0, 0, &[]));
    let ids: Vec<u32> = (0..streams).map(|i| 2 * i + 1).collect();
    for &id in &ids {
        let mut block = Vec::new();
        for (n, v) in [
            (":method", f.request.method.as_str()),
            (":scheme", "https"),
            (":path", f.request.path.as_str()),
            (":authority", f.request.authority.as_str()),
        ] {
            hpack_literal(&mut block, n, v);
        }
        for (n, v) in &f.request.headers {
            if n != "host" && n != "connection" {
                hpack_literal(&mut block, n, v);
            }
        }
        client.extend(h2_frame(HEADERS, END_HEADERS, id, &block));
        client.extend(h2_frame(DATA, END_STREAM, id, f.request.body.as_bytes()));
    }
    let mut writes = vec![(Direction::FromClient, Bytes::from(client))];
    let mut server = h2_frame(SETTINGS, 0, 0, &[]);
    for &id in &ids {
        let mut block = Vec::new();
        hpack_literal(&mut block, ":status", "200");
        hpack_literal(
            &mut block,
            "content-type",
            "text/event-stream; charset=utf-8",
        );
        server.extend(h2_frame(HEADERS, END_HEADERS, id, &block));
    }
    writes.push((Direction::FromServer, Bytes::from(server)));
    for (i, event) in events.iter().enumerate() {
        let last = i + 1 == events.len();
        let mut round = Vec::new();
        for &id in &ids {
            let flags = if last { END_STREAM } else { 0 };
            round.extend(h2_frame(DATA, flags, id, event.as_bytes()));
        }
        writes.push((Direction::FromServer, Bytes::from(round)));
    }
    Exchange {
        name: "http2_100_streams",
        writes,
        json_docs: Vec::new(),
        content_events: content,
        calls: streams as usize,
    }
}

fn exchanges() -> Vec<Exchange> {
    let chat = fixture!("openai_chat");
    let chat_stream = fixture!("openai_chat_stream_usage");
    let anthropic = fixture!("anthropic_messages_stream");
    let ollama = fixture!("ollama_chat_stream");

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
    let json_gzip = gzipped("openai_chat_json_gzip", &out[0]);
    let sse_gzip = gzipped("openai_chat_sse_gzip", &out[1]);
    out.push(json_gzip);
    out.push(sse_gzip);
    out.push(http2_interleaved(&chat_stream, 100));
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
    assert_eq!(calls.len(), x.calls, "{}: {calls:#?}", x.name);
    for call in &calls {
        assert!(
            !call.usage.estimated && call.error_type.is_none(),
            "{}: {call:#?}",
            x.name
        );
        assert_eq!(call.status, Some(200), "{}", x.name);
        if x.content_events > 0 {
            assert!(call.streaming, "{}", x.name);
            assert_eq!(call.output_chunks, x.content_events, "{}", x.name);
        }
    }
    for doc in &x.json_docs {
        serde_json::from_slice::<serde_json::Value>(doc)
            .unwrap_or_else(|e| panic!("{}: baseline doc is not JSON: {e}", x.name));
    }
}

/// CPU time this thread has used: on a shared machine, time spent waiting
/// for a core is not decode time.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// Calls/s and MB/s per CPU-second of one core (and per wall-clock second)
/// from a plain loop of about `budget`, and heap allocations per call from
/// the counting allocator, printed per case.
fn summary(name: &str, bytes: usize, calls: usize, budget: Duration, mut run: impl FnMut()) {
    let region = Region::new(GLOBAL);
    run();
    let allocs = region.change();
    let start = Instant::now();
    let cpu_start = thread_cpu();
    let mut iterations = 0u64;
    while start.elapsed() < budget {
        run();
        iterations += 1;
    }
    let wall = start.elapsed().as_secs_f64() / iterations as f64;
    let cpu = (thread_cpu() - cpu_start).as_secs_f64() / iterations as f64;
    let per_call = |n: usize| n as f64 / calls.max(1) as f64;
    eprintln!(
        "summary {name}: {:.0} calls/s and {:.0} MB/s per core-second of CPU \
         ({:.0} calls/s wall clock), {:.1} allocations and {:.0} bytes allocated per call",
        calls as f64 / cpu,
        bytes as f64 / cpu / 1e6,
        calls as f64 / wall,
        per_call(allocs.allocations + allocs.reallocations),
        per_call(allocs.bytes_allocated),
    );
}

/// OpenAI-shaped SSE events, about `total` bytes of them, as one body.
fn sse_body(f: &Fixture, total: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(total + 1024);
    let chunks = &f.response.chunks;
    while body.len() < total {
        for c in chunks.get(1..4).unwrap_or(chunks) {
            body.extend_from_slice(c.as_bytes());
        }
    }
    body
}

fn sse_events(body: &[u8], write: usize) -> usize {
    let mut parser = SseParser::new(4 << 20);
    let mut events = 0usize;
    for piece in body.chunks(write) {
        parser.feed(piece, |e| {
            black_box(e.data);
            events += 1;
        });
    }
    events
}

fn bench(c: &mut Criterion) {
    let chat_stream = fixture!("openai_chat_stream_usage");
    let body = sse_body(&chat_stream, 1 << 20);
    let events = sse_events(&body, 16 << 10);
    assert!(events > 1000, "{events} events");
    let mut group = c.benchmark_group("sse_framing");
    group
        .throughput(Throughput::Bytes(body.len() as u64))
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("parse", |b| {
        b.iter(|| black_box(sse_events(&body, 16 << 10)))
    });
    group.finish();
    summary(
        "sse_framing",
        body.len(),
        1,
        Duration::from_millis(500),
        || {
            black_box(sse_events(&body, 16 << 10));
        },
    );

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
            .throughput(Throughput::Bytes(x.wire_bytes() as u64))
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        group.bench_function("decode", |b| b.iter(|| black_box(decode(&x.writes))));
        summary(
            x.name,
            x.wire_bytes(),
            x.calls,
            Duration::from_millis(500),
            || {
                black_box(decode(&x.writes));
            },
        );
        if x.json_docs.is_empty() {
            group.finish();
            continue;
        }
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

/// `TOKENSCOPE_BENCH_LOOP=<case>:<n>` decodes that case `n` times and
/// exits, for `valgrind --tool=callgrind` (instructions per call are the
/// difference of two runs with different `n`, divided by the calls).
fn main() {
    if let Some(spec) = std::env::var_os("TOKENSCOPE_BENCH_LOOP") {
        let spec = spec.to_string_lossy();
        let (name, n) = spec.split_once(':').expect("<case>:<n>");
        let n: usize = n.parse().expect("a number of iterations");
        let x = exchanges()
            .into_iter()
            .find(|x| x.name == name)
            .unwrap_or_else(|| panic!("no case {name}"));
        for _ in 0..n {
            black_box(decode(black_box(&x.writes)));
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
