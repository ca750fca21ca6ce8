//! Arbitrary sequences of HTTP events, with arbitrary bodies, on paths and
//! content types that reach every decoder: the assembler must not panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tokenscope::protocols::event::{AbortReason, Header, HttpEvent, RequestHead, ResponseHead};
use tokenscope::providers::{CallAssembler, Limits};

const PATHS: [&str; 10] = [
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
];
const CONTENT_TYPES: [&str; 4] = [
    "text/event-stream",
    "application/json",
    "application/x-ndjson",
    "",
];
const STATUSES: [u16; 6] = [200, 429, 529, 400, 500, 200];

fuzz_target!(|input: &[u8]| {
    let Some((&mode, mut rest)) = input.split_first() else {
        return;
    };
    // Tiny bounds reach every truncation path; the defaults let whole
    // provider-shaped bodies through to the decoders.
    let limits = if mode % 2 == 0 {
        Limits {
            max_request_body: 256,
            max_json_response: 512,
            max_stream_item: 128,
            max_stream_text: 64,
            max_open_streams: 4,
        }
    } else {
        Limits::default()
    };
    let mut asm = CallAssembler::new(limits);
    let mut out = Vec::new();
    let mut ts = 0u64;
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
                    path: PATHS[pick % PATHS.len()].into(),
                    authority: Some(
                        if pick % 3 == 0 {
                            "api.anthropic.com"
                        } else {
                            "localhost:8000"
                        }
                        .into(),
                    ),
                    headers: Vec::new(),
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
                    status: STATUSES[pick % STATUSES.len()],
                    headers: vec![
                        Header {
                            name: "content-type".into(),
                            value: CONTENT_TYPES[pick % CONTENT_TYPES.len()].into(),
                        },
                        Header {
                            name: "retry-after".into(),
                            value: String::from_utf8_lossy(data).into_owned(),
                        },
                        Header {
                            name: "date".into(),
                            value: "Sun, 06 Nov 1994 08:49:37 GMT".into(),
                        },
                    ],
                },
                ts_ns: ts,
            },
            5 => HttpEvent::ResponseBody {
                stream,
                data: Bytes::copy_from_slice(data),
                ts_ns: ts,
            },
            6 => HttpEvent::ResponseEnd { stream, ts_ns: ts },
            _ => HttpEvent::Abort {
                stream,
                reason: AbortReason::Closed,
                ts_ns: ts,
            },
        };
        asm.on_event(ev, &mut out);
    }
    asm.close(ts, &mut out);
    let stats = asm.stats();
    assert_eq!(stats.calls, out.len() as u64);
});
