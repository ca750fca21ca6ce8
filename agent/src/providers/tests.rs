//! Replays the exchanges recorded from the real SDKs
//! (`tests/fixtures/providers/record.py`) through `CallAssembler` and checks
//! the decoded calls against the expectations written by the recorder.

use bytes::Bytes;
use serde::Deserialize;

use super::{AssembleStats, CallAssembler, Limits};
use crate::protocols::event::{AbortReason, Headers, HttpEvent, RequestHead, ResponseHead};
use crate::record::{LlmCall, Usage};

macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_str!(concat!("../../../tests/fixtures/providers/exchanges/", $name, ".json")))),*]
    };
}

const FIXTURES: [(&str, &str); 43] = fixtures!(
    "openai_chat",
    "openai_chat_stream_usage",
    "openai_compatible_stream_no_usage",
    "openai_chat_stream_cut",
    "openai_completions_legacy",
    "openai_responses",
    "openai_responses_stream",
    "openai_embeddings",
    "openai_429_rate_limited",
    "openai_429_insufficient_quota",
    "openai_400_invalid",
    "azure_openai_chat",
    "anthropic_messages",
    "anthropic_messages_stream",
    "anthropic_stream_cut",
    "anthropic_stream_overloaded_midway",
    "anthropic_429_retry_date",
    "anthropic_529_overloaded",
    "gemini_generate",
    "gemini_stream_sse",
    "gemini_stream_json_array",
    "gemini_429",
    "ollama_chat",
    "ollama_chat_stream",
    "ollama_generate_stream",
    "ollama_embed",
    "ollama_embeddings_legacy",
    "ollama_404_model",
    "gemini_embed_batch",
    "gemini_embed_single_no_usage",
    "tgi_generate",
    "tgi_generate_stream",
    "tgi_generate_stream_no_details",
    "llamacpp_completion",
    "llamacpp_completion_stream",
    "llamacpp_chat_stream_timings",
    "llamacpp_chat_usage_and_timings",
    "groq_chat_stream",
    "deepseek_chat",
    "deepseek_chat_stream_cache_hit",
    "mistral_chat_stream",
    "together_chat_stream",
    "litellm_chat_anthropic_cache",
);

#[derive(Deserialize)]
struct Fixture {
    scenario: String,
    request: Request,
    response: Response,
    expected: Expected,
    estimate_reference: Option<EstimateReference>,
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
    cut: bool,
}

#[derive(Deserialize)]
struct Expected {
    provider: crate::record::Provider,
    api: crate::record::Api,
    request_model: Option<String>,
    response_model: Option<String>,
    streaming: bool,
    status: Option<u16>,
    error_type: Option<String>,
    usage: Usage,
    finish_reason: Option<String>,
    retry_after_s: Option<f64>,
    output_chunks: u32,
    first_token_chunk: Option<u64>,
    /// The response id, read from the recorded body by the fixture script.
    #[serde(default)]
    response_id: Option<String>,
}

#[derive(Deserialize)]
struct EstimateReference {
    input_o200k: u64,
    output_o200k: Option<u64>,
}

const T_REQUEST: u64 = 1_000;
const T_REQUEST_END: u64 = 1_200;
const T_RESPONSE: u64 = 2_000;
const T_BODY: u64 = 3_000;

fn chunk_ts(i: usize) -> u64 {
    T_BODY + 10 * i as u64
}

fn headers(pairs: &[(String, String)]) -> Headers {
    pairs.iter().filter(|(n, _)| n != "host").cloned().collect()
}

/// The events helper A's HTTP parser would emit for the exchange, with the
/// response body delivered as `chunks`.
fn events(f: &Fixture, stream: u64, chunks: &[Vec<u8>]) -> Vec<HttpEvent> {
    let mut evs = vec![
        HttpEvent::Request {
            stream,
            head: RequestHead {
                method: f.request.method.clone(),
                path: f.request.path.clone(),
                authority: Some(f.request.authority.clone()),
                headers: headers(&f.request.headers),
            },
            ts_ns: T_REQUEST,
        },
        HttpEvent::RequestBody {
            stream,
            data: Bytes::from(f.request.body.clone()),
            ts_ns: T_REQUEST + 100,
        },
        HttpEvent::RequestEnd {
            stream,
            ts_ns: T_REQUEST_END,
        },
        HttpEvent::Response {
            stream,
            head: ResponseHead {
                status: f.response.status,
                headers: headers(&f.response.headers),
            },
            ts_ns: T_RESPONSE,
        },
    ];
    for (i, c) in chunks.iter().enumerate() {
        evs.push(HttpEvent::ResponseBody {
            stream,
            data: Bytes::from(c.clone()),
            ts_ns: chunk_ts(i),
        });
    }
    let end = chunk_ts(chunks.len());
    evs.push(if f.response.cut {
        HttpEvent::Abort {
            stream,
            reason: AbortReason::Closed,
            ts_ns: end,
        }
    } else {
        HttpEvent::ResponseEnd { stream, ts_ns: end }
    });
    evs
}

fn run(evs: Vec<HttpEvent>) -> (Vec<LlmCall>, AssembleStats) {
    let mut asm = CallAssembler::new(Limits::default());
    let mut out = Vec::new();
    for ev in evs {
        asm.on_event(ev, &mut out);
    }
    asm.close(u64::MAX, &mut out);
    (out, asm.stats().clone())
}

fn load(name: &str, text: &str) -> Fixture {
    let f: Fixture = serde_json::from_str(text).unwrap_or_else(|e| panic!("fixture {name}: {e}"));
    assert_eq!(f.scenario, name);
    f
}

fn recorded_chunks(f: &Fixture) -> Vec<Vec<u8>> {
    f.response
        .chunks
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect()
}

fn within(estimate: Option<u64>, truth: u64, tolerance: f64) -> bool {
    estimate.is_some_and(|e| (e as f64 - truth as f64).abs() <= tolerance * truth as f64 + 2.0)
}

#[test]
fn recorded_exchanges_decode_to_the_expected_calls() {
    for (name, text) in FIXTURES {
        let f = load(name, text);
        let chunks = recorded_chunks(&f);
        let (calls, stats) = run(events(&f, 0, &chunks));
        assert_eq!(calls.len(), 1, "{name}: {stats:?}");
        let Some(call) = calls.into_iter().next() else {
            continue;
        };
        let e = &f.expected;
        let mut usage = e.usage.clone();
        if usage.estimated {
            let reference = f
                .estimate_reference
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: no o200k reference"));
            assert!(call.usage.estimated, "{name}");
            assert!(
                within(call.usage.input_tokens, reference.input_o200k, 0.3),
                "{name}: input estimate {:?} vs o200k {}",
                call.usage.input_tokens,
                reference.input_o200k
            );
            if let Some(out) = reference.output_o200k {
                assert!(
                    within(call.usage.output_tokens, out, 0.3),
                    "{name}: output estimate {:?} vs o200k {out}",
                    call.usage.output_tokens
                );
            }
            usage = call.usage.clone();
            assert_eq!(stats.estimated, 1, "{name}");
        }
        let expected = LlmCall {
            provider: e.provider,
            api: e.api,
            host: Some(f.request.authority.clone()),
            path: f.request.path.clone(),
            request_model: e.request_model.clone(),
            response_model: e.response_model.clone(),
            streaming: e.streaming,
            status: e.status,
            error_type: e.error_type.clone(),
            usage,
            finish_reason: e.finish_reason.clone(),
            retry_after_s: e.retry_after_s,
            start_ns: T_REQUEST,
            request_end_ns: T_REQUEST_END,
            response_start_ns: Some(T_RESPONSE),
            first_token_ns: e.first_token_chunk.map(|i| chunk_ts(i as usize)),
            end_ns: chunk_ts(chunks.len()),
            output_chunks: e.output_chunks,
            bytes_sent: f.request.body.len() as u64,
            bytes_received: chunks.iter().map(|c| c.len() as u64).sum(),
            http_method: Some(f.request.method.clone()),
            response_id: e.response_id.clone(),
        };
        assert_eq!(call, expected, "{name}");
        assert_eq!(stats.bad_json, 0, "{name}");
        assert_eq!(
            stats.incomplete,
            u64::from(e.error_type.as_deref() == Some("incomplete")),
            "{name}"
        );
    }
}

/// Timestamps depend on where the bytes were split; nothing else may.
fn without_times(mut call: LlmCall) -> LlmCall {
    call.first_token_ns = call.first_token_ns.map(|_| 0);
    call.end_ns = 0;
    call
}

fn split_runs(f: &Fixture, body: &[u8], cuts: &[usize]) -> LlmCall {
    let mut chunks = Vec::new();
    let mut from = 0;
    for &cut in cuts {
        chunks.push(body.get(from..cut).unwrap_or_default().to_vec());
        from = cut;
    }
    chunks.push(body.get(from..).unwrap_or_default().to_vec());
    let (calls, _) = run(events(f, 0, &chunks));
    let call = calls
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{}: no call", f.scenario));
    without_times(call)
}

#[test]
fn any_chunking_of_the_response_gives_the_same_call() {
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |bound: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % bound.max(1) as u64) as usize
    };
    for (name, text) in FIXTURES {
        let f = load(name, text);
        let body: Vec<u8> = f.response.chunks.concat().into_bytes();
        let reference = split_runs(&f, &body, &[]);
        for cut in 0..=body.len() {
            assert_eq!(
                split_runs(&f, &body, &[cut]),
                reference,
                "{name}: split at {cut}"
            );
        }
        let bytes: Vec<usize> = (1..body.len()).collect();
        assert_eq!(
            split_runs(&f, &body, &bytes),
            reference,
            "{name}: byte by byte"
        );
        for _ in 0..20 {
            let mut cuts: Vec<usize> = (0..next(12)).map(|_| next(body.len() + 1)).collect();
            cuts.sort_unstable();
            assert_eq!(
                split_runs(&f, &body, &cuts),
                reference,
                "{name}: cuts {cuts:?}"
            );
        }
    }
}

fn fixture(name: &str) -> Fixture {
    let text = FIXTURES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .unwrap_or_else(|| panic!("no fixture {name}"));
    load(name, text)
}

#[test]
fn interleaved_http2_streams_are_kept_apart() {
    let a = fixture("anthropic_messages_stream");
    let b = fixture("openai_chat_stream_usage");
    let ea = events(&a, 1, &recorded_chunks(&a));
    let eb = events(&b, 3, &recorded_chunks(&b));
    let mut merged = Vec::new();
    let (mut ia, mut ib) = (ea.into_iter(), eb.into_iter());
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => break,
            (x, y) => merged.extend(x.into_iter().chain(y)),
        }
    }
    let (mut calls, _) = run(merged);
    calls.sort_by(|x, y| x.response_model.cmp(&y.response_model));
    let seen: Vec<_> = calls
        .iter()
        .map(|c| {
            (
                c.response_model.as_deref(),
                c.usage.output_tokens,
                c.output_chunks,
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (Some("claude-haiku-4-5-20251001"), Some(15), 3),
            (Some("gpt-4o-mini-2024-07-18"), Some(4), 3)
        ]
    );
}

fn request(path: &str, method: &str, authority: &str, body: &str) -> Vec<HttpEvent> {
    vec![
        HttpEvent::Request {
            stream: 0,
            head: RequestHead {
                method: method.into(),
                path: path.into(),
                authority: Some(authority.into()),
                headers: Headers::new(),
            },
            ts_ns: 1,
        },
        HttpEvent::RequestBody {
            stream: 0,
            data: Bytes::from(body.to_string()),
            ts_ns: 2,
        },
        HttpEvent::RequestEnd {
            stream: 0,
            ts_ns: 3,
        },
    ]
}

fn json_response(body: &str) -> Vec<HttpEvent> {
    vec![
        HttpEvent::Response {
            stream: 0,
            head: ResponseHead {
                status: 200,
                headers: Headers::from_iter([("content-type", "application/json")]),
            },
            ts_ns: 4,
        },
        HttpEvent::ResponseBody {
            stream: 0,
            data: Bytes::from(body.to_string()),
            ts_ns: 5,
        },
        HttpEvent::ResponseEnd {
            stream: 0,
            ts_ns: 6,
        },
    ]
}

#[test]
fn non_llm_http_produces_nothing_and_is_counted() {
    let mut evs = request("/v1/chat/completions", "GET", "api.openai.com", "");
    evs.extend(json_response("{\"ok\":true}"));
    let mut post = request("/api/orders", "POST", "shop:80", "{\"id\":7,\"items\":[]}");
    for e in &mut post {
        if let HttpEvent::Request { stream, .. }
        | HttpEvent::RequestBody { stream, .. }
        | HttpEvent::RequestEnd { stream, .. } = e
        {
            *stream = 1;
        }
    }
    evs.extend(post);
    let (calls, stats) = run(evs);
    assert!(calls.is_empty());
    assert_eq!((stats.not_llm, stats.orphan_events), (2, 0));
}

#[test]
fn unknown_path_is_recognised_by_body_shape_and_model_after_large_messages() {
    let big = "x".repeat(300_000);
    let body = format!(
        "{{\"messages\":[{{\"role\":\"user\",\"content\":\"{big}\"}}],\"temperature\":0.2,\"model\":\"llama-3.1-8b\"}}"
    );
    let mut evs = request("/proxy/llm", "POST", "10.0.0.7:4000", &body);
    evs.extend(json_response(
        r#"{"object":"chat.completion","model":"llama-3.1-8b","choices":[{"message":{"content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":75001,"completion_tokens":1}}"#,
    ));
    let (calls, _) = run(evs);
    let call = calls.first().unwrap_or_else(|| panic!("no call"));
    assert_eq!(call.provider, crate::record::Provider::OpenaiCompatible);
    assert_eq!(call.request_model.as_deref(), Some("llama-3.1-8b"));
    assert_eq!(call.usage.input_tokens, Some(75_001));
}

#[test]
fn request_cut_at_its_bound_keeps_fields_seen_before_the_cut() {
    let big = "y".repeat(2 << 20);
    let body = format!(
        "{{\"model\":\"gpt-4o\",\"stream\":true,\"messages\":[{{\"content\":\"{big}\"}}]}}"
    );
    let mut evs = request("/v1/chat/completions", "POST", "api.openai.com", &body);
    evs.push(HttpEvent::Abort {
        stream: 0,
        reason: AbortReason::Reset,
        ts_ns: 9,
    });
    let (calls, stats) = run(evs);
    let call = calls.first().unwrap_or_else(|| panic!("no call"));
    assert_eq!(call.request_model.as_deref(), Some("gpt-4o"));
    assert_eq!(
        (call.status, call.error_type.as_deref()),
        (None, Some("incomplete"))
    );
    assert_eq!(call.bytes_sent, body.len() as u64);
    assert_eq!((stats.truncated_bodies, stats.incomplete), (1, 1));
}

#[test]
fn close_flushes_open_exchanges_and_stream_limit_is_enforced() {
    let f = fixture("openai_chat_stream_usage");
    let chunks = recorded_chunks(&f);
    let mut asm = CallAssembler::new(Limits {
        max_open_streams: 2,
        ..Limits::default()
    });
    let mut out = Vec::new();
    for stream in [1u64, 3, 5] {
        // Everything but the end: request, head and the first two chunks.
        for ev in events(&f, stream, &chunks).into_iter().take(6) {
            asm.on_event(ev, &mut out);
        }
    }
    assert!(out.is_empty());
    asm.close(99_999, &mut out);
    assert_eq!(out.len(), 2);
    assert!(out
        .iter()
        .all(|c| c.error_type.as_deref() == Some("incomplete") && c.end_ns == 99_999));
    assert_eq!(asm.stats().too_many_streams, 1);
}

fn streamed_response(content_type: &str, chunks: &[&str], end: HttpEvent) -> Vec<HttpEvent> {
    let mut evs = vec![HttpEvent::Response {
        stream: 0,
        head: ResponseHead {
            status: 200,
            headers: Headers::from_iter([("content-type", content_type)]),
        },
        ts_ns: 4,
    }];
    for (i, c) in chunks.iter().enumerate() {
        evs.push(HttpEvent::ResponseBody {
            stream: 0,
            data: Bytes::from(c.to_string()),
            ts_ns: 10 + i as u64,
        });
    }
    evs.push(end);
    evs
}

fn single_call(evs: Vec<HttpEvent>) -> LlmCall {
    let (calls, _) = run(evs);
    assert_eq!(calls.len(), 1);
    calls
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no call"))
}

#[test]
fn azure_deployment_names_the_model_when_the_body_does_not() {
    let mut evs = request(
        "/openai/deployments/gpt4o-prod/chat/completions",
        "POST",
        "myres.openai.azure.com",
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
    );
    evs.extend(json_response(
        r#"{"model":"gpt-4o-2024-11-20","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":0}}"#,
    ));
    let call = single_call(evs);
    assert_eq!(call.provider, crate::record::Provider::AzureOpenai);
    assert_eq!(call.request_model.as_deref(), Some("gpt4o-prod"));
}

#[test]
fn streams_without_their_end_marker_are_incomplete() {
    let end = || HttpEvent::ResponseEnd {
        stream: 0,
        ts_ns: 99,
    };
    // Ollama: no `done: true` line.
    let mut evs = request(
        "/api/chat",
        "POST",
        "localhost:11434",
        r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi there"}]}"#,
    );
    evs.extend(streamed_response(
        "application/x-ndjson",
        &["{\"model\":\"llama3.2\",\"message\":{\"content\":\"Hel\"},\"done\":false}\n{\"model\":\"llama3.2\",\"mess", "age\":{\"content\":\"lo\"},\"done\":false}"],
        end(),
    ));
    let call = single_call(evs);
    assert_eq!(
        (
            call.error_type.as_deref(),
            call.output_chunks,
            call.streaming
        ),
        (Some("incomplete"), 2, true)
    );
    assert!(call.usage.estimated && call.usage.input_tokens.is_some());
    // Gemini over SSE: no finishReason.
    let mut evs = request(
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        "POST",
        "generativelanguage.googleapis.com",
        r#"{"contents":[]}"#,
    );
    evs.extend(streamed_response(
        "text/event-stream",
        &["data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]}}],\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":1}}\n\n"],
        end(),
    ));
    let call = single_call(evs);
    assert_eq!(call.error_type.as_deref(), Some("incomplete"));
    assert_eq!(
        (call.usage.input_tokens, call.usage.output_tokens),
        (Some(4), Some(1))
    );
    // OpenAI-compatible: finish_reason but no [DONE].
    let mut evs = request(
        "/v1/chat/completions",
        "POST",
        "localhost:8000",
        r#"{"model":"m","stream":true}"#,
    );
    evs.extend(streamed_response(
        "text/event-stream",
        &["data: {\"choices\":[{\"delta\":{\"content\":\"x\"},\"finish_reason\":\"stop\"}]}\n\n"],
        end(),
    ));
    assert_eq!(single_call(evs).error_type.as_deref(), Some("incomplete"));
}

#[test]
fn retry_after_ms_and_status_only_errors() {
    let mut evs = request(
        "/v1/chat/completions",
        "POST",
        "api.openai.com",
        r#"{"model":"gpt-4o"}"#,
    );
    evs.push(HttpEvent::Response {
        stream: 0,
        head: ResponseHead {
            status: 503,
            headers: Headers::from_iter([("retry-after-ms", "1500")]),
        },
        ts_ns: 4,
    });
    evs.push(HttpEvent::ResponseEnd {
        stream: 0,
        ts_ns: 5,
    });
    let call = single_call(evs);
    assert_eq!(
        (call.status, call.error_type.as_deref(), call.retry_after_s),
        (Some(503), Some("server_error"), Some(1.5))
    );
    assert_eq!(call.first_token_ns, None);
}

#[test]
fn an_oversized_stream_event_is_counted_and_skipped() {
    let f = fixture("anthropic_messages_stream");
    let mut chunks = recorded_chunks(&f);
    let huge = format!(
        "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{}\"}}}}\n\n",
        "z".repeat(5_000)
    );
    chunks.insert(4, huge.into_bytes());
    let mut asm = CallAssembler::new(Limits {
        max_stream_item: 4_096,
        ..Limits::default()
    });
    let mut out = Vec::new();
    for ev in events(&f, 0, &chunks) {
        asm.on_event(ev, &mut out);
    }
    let call = out.first().unwrap_or_else(|| panic!("no call"));
    assert_eq!(asm.stats().oversized_items, 1);
    assert_eq!(
        (
            call.output_chunks,
            call.usage.output_tokens,
            call.error_type.as_deref()
        ),
        (3, Some(15), None)
    );
}

#[test]
fn usage_is_read_from_the_end_of_a_body_cut_at_its_bound() {
    let vector = vec!["0.0123456"; 2_000].join(",");
    let body = format!(
        r#"{{"object":"list","data":[{{"object":"embedding","index":0,"embedding":[{vector}]}}],"model":"text-embedding-3-large","usage":{{"prompt_tokens":42,"total_tokens":42}}}}"#
    );
    let limits = Limits {
        max_json_response: 1_000,
        ..Limits::default()
    };
    for step in [7usize, 999, 1_000, 1_001, body.len()] {
        let mut evs = request(
            "/v1/embeddings",
            "POST",
            "api.openai.com",
            r#"{"model":"text-embedding-3-large","input":"x"}"#,
        );
        let mut response = json_response("");
        let end = response.pop();
        response.pop();
        evs.extend(response);
        for piece in body.as_bytes().chunks(step) {
            evs.push(HttpEvent::ResponseBody {
                stream: 0,
                data: Bytes::copy_from_slice(piece),
                ts_ns: 5,
            });
        }
        evs.extend(end);
        let mut asm = CallAssembler::new(limits);
        let mut out = Vec::new();
        for ev in evs {
            asm.on_event(ev, &mut out);
        }
        let call = out.first().unwrap_or_else(|| panic!("no call"));
        assert_eq!(call.usage.input_tokens, Some(42), "step {step}");
        assert!(!call.usage.estimated);
        assert_eq!(
            call.response_model.as_deref(),
            Some("text-embedding-3-large")
        );
        assert_eq!((asm.stats().truncated_bodies, asm.stats().bad_json), (1, 0));
    }
}

#[test]
fn a_stream_closed_after_its_end_marker_is_complete() {
    // The openai SDK closes the connection right after `[DONE]`, before the
    // chunked body's last chunk: the answer was whole all the same.
    let mut evs = request(
        "/v1/chat/completions",
        "POST",
        "api.openai.com",
        r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
    );
    evs.extend(streamed_response(
        "text/event-stream",
        &[
            "data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n",
        ],
        HttpEvent::Abort {
            stream: 0,
            reason: AbortReason::Closed,
            ts_ns: 99,
        },
    ));
    let call = single_call(evs);
    assert_eq!(call.error_type, None);
    assert_eq!(
        (call.usage.input_tokens, call.usage.output_tokens),
        (Some(5), Some(1))
    );
    // Cut before `[DONE]`, the same stream is incomplete.
    let mut evs = request(
        "/v1/chat/completions",
        "POST",
        "api.openai.com",
        r#"{"model":"gpt-4o","stream":true,"messages":[]}"#,
    );
    evs.extend(streamed_response(
        "text/event-stream",
        &["data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n"],
        HttpEvent::Abort {
            stream: 0,
            reason: AbortReason::Closed,
            ts_ns: 99,
        },
    ));
    assert_eq!(single_call(evs).error_type.as_deref(), Some("incomplete"));
}
