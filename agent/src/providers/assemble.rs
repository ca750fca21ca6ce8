//! `CallAssembler`: per-connection state that turns `HttpEvent`s into
//! `LlmCall`s, one per recognised exchange.

use std::collections::HashMap;

use bytes::Bytes;

use crate::protocols::event::{HttpEvent, RequestHead, ResponseHead};
use crate::record::{Api, LlmCall, Usage};

use super::decode::{self, Observed};
use super::detect::{self, BodyShape, Target, Wire};
use super::estimate;
use super::json;
use super::ndjson::{JsonArraySplitter, LineSplitter};
use super::sse::SseParser;
use super::status;

/// Bounds on what one connection may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request body bytes kept to read `model` and the stream flags.
    pub max_request_body: usize,
    /// A non-streamed JSON response body (or an error body).
    pub max_json_response: usize,
    /// One SSE event, NDJSON line or streamed JSON array element (the
    /// Responses API's `response.completed` repeats the whole output).
    pub max_stream_item: usize,
    /// Streamed text kept to estimate tokens when no usage is reported.
    pub max_stream_text: usize,
    /// Exchanges open at once on one connection (HTTP/2 streams).
    pub max_open_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_body: 1 << 20,
            max_json_response: 8 << 20,
            max_stream_item: 4 << 20,
            max_stream_text: 256 << 10,
            max_open_streams: 256,
        }
    }
}

/// Counters of what the assembler saw and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssembleStats {
    /// LLM calls emitted.
    pub calls: u64,
    /// HTTP exchanges that matched no provider.
    pub not_llm: u64,
    /// Request or response bodies cut at their bound.
    pub truncated_bodies: u64,
    /// Response JSON (body or stream item) that did not decode.
    pub bad_json: u64,
    /// Calls whose response was cut before its end.
    pub incomplete: u64,
    /// Calls whose usage was estimated.
    pub estimated: u64,
    /// SSE events, NDJSON lines or array elements past their bound.
    pub oversized_items: u64,
    /// Exchanges dropped because too many were open.
    pub too_many_streams: u64,
    /// Events for an exchange the assembler does not know.
    pub orphan_events: u64,
}

/// The open exchanges of a connection: one for HTTP/1.1, a few for HTTP/2,
/// so a vector searched linearly beats hashing.
#[derive(Debug, Default)]
struct OpenExchanges {
    streams: Vec<u64>,
    exchanges: Vec<Exchange>,
}

impl OpenExchanges {
    fn index(&self, stream: u64) -> Option<usize> {
        self.streams.iter().position(|&s| s == stream)
    }

    fn get_mut(&mut self, stream: &u64) -> Option<&mut Exchange> {
        let i = self.index(*stream)?;
        self.exchanges.get_mut(i)
    }

    fn contains_key(&self, stream: &u64) -> bool {
        self.index(*stream).is_some()
    }

    fn insert(&mut self, stream: u64, ex: Exchange) {
        if self.exchanges.capacity() == 0 {
            // HTTP/1.1 has one exchange open at a time; the default first
            // capacity (four) would allocate kilobytes for nothing.
            self.exchanges.reserve_exact(1);
            self.streams.reserve_exact(1);
        }
        self.streams.push(stream);
        self.exchanges.push(ex);
    }

    fn remove(&mut self, stream: &u64) -> Option<Exchange> {
        let i = self.index(*stream)?;
        self.streams.swap_remove(i);
        Some(self.exchanges.swap_remove(i))
    }

    fn len(&self) -> usize {
        self.streams.len()
    }

    fn streams(&self) -> impl Iterator<Item = u64> + '_ {
        self.streams.iter().copied()
    }
}

/// What the request said about itself.
#[derive(Debug, Default)]
struct RequestInfo {
    model: Option<String>,
    stream: Option<bool>,
    include_usage: bool,
    shape: BodyShape,
    /// Estimated input tokens, computed only when the response is unlikely
    /// to report usage (the request body is not kept past the request).
    input_estimate: Option<u64>,
}

#[derive(Debug)]
enum Framing {
    /// Response head not seen yet, or no body byte to sniff yet.
    Undecided,
    Json(JsonBody),
    Sse(SseParser),
    Lines(LineSplitter),
    Array(JsonArraySplitter),
}

#[derive(Debug)]
struct Exchange {
    head: RequestHead,
    target: Option<Target>,
    request_body: HeldBody,
    request_truncated: bool,
    request: Option<RequestInfo>,
    start_ns: u64,
    request_end_ns: Option<u64>,
    bytes_sent: u64,
    response: Option<ResponseHead>,
    response_start_ns: Option<u64>,
    first_body_ns: Option<u64>,
    bytes_received: u64,
    framing: Framing,
    obs: Observed,
}

/// Per-connection assembler of LLM calls.
#[derive(Debug)]
pub struct CallAssembler {
    limits: Limits,
    open: OpenExchanges,
    /// Exchanges known not to be LLM calls; their events are ignored.
    ignored: HashMap<u64, ()>,
    stats: AssembleStats,
}

impl CallAssembler {
    pub fn new(limits: Limits) -> Self {
        CallAssembler {
            limits,
            open: OpenExchanges::default(),
            ignored: HashMap::new(),
            stats: AssembleStats::default(),
        }
    }

    pub fn stats(&self) -> &AssembleStats {
        &self.stats
    }

    pub fn on_event(&mut self, ev: HttpEvent, out: &mut Vec<LlmCall>) {
        match ev {
            HttpEvent::Request {
                stream,
                head,
                ts_ns,
            } => self.on_request(stream, head, ts_ns, out),
            HttpEvent::RequestBody { stream, data, .. } => {
                let max = self.limits.max_request_body;
                if let Some(ex) = self.open.get_mut(&stream) {
                    ex.bytes_sent = ex.bytes_sent.saturating_add(data.len() as u64);
                    if ex.request.is_none() {
                        let room = max.saturating_sub(ex.request_body.len());
                        if data.len() > room && !ex.request_truncated {
                            ex.request_truncated = true;
                            self.stats.truncated_bodies += 1;
                        }
                        ex.request_body.push(data.slice(..room.min(data.len())));
                    }
                } else {
                    self.orphan(stream);
                }
            }
            HttpEvent::RequestEnd { stream, ts_ns } => {
                if let Some(ex) = self.exchange(stream) {
                    ex.request_end_ns = Some(ts_ns);
                }
                self.finish_request(stream);
            }
            HttpEvent::Response {
                stream,
                head,
                ts_ns,
            } => {
                self.finish_request(stream);
                if let Some(ex) = self.exchange(stream) {
                    ex.response_start_ns = Some(ts_ns);
                    ex.response = Some(head);
                    ex.framing = Framing::Undecided;
                }
            }
            HttpEvent::ResponseBody {
                stream,
                data,
                ts_ns,
            } => {
                let limits = self.limits;
                if let Some(ex) = self.open.get_mut(&stream) {
                    let stats = &mut self.stats;
                    ex.on_response_body(data, ts_ns, &limits, stats);
                } else {
                    self.orphan(stream);
                }
            }
            HttpEvent::ResponseEnd { stream, ts_ns } => self.complete(stream, ts_ns, false, out),
            HttpEvent::Abort { stream, ts_ns, .. } => self.complete(stream, ts_ns, true, out),
            // No provider reports usage in trailers; gRPC status is not an LLM outcome here.
            HttpEvent::Trailers { .. } => {}
        }
    }

    /// Flushes every open exchange as incomplete (the connection ended).
    pub fn close(&mut self, ts_ns: u64, out: &mut Vec<LlmCall>) {
        let mut streams: Vec<u64> = self.open.streams().collect();
        streams.sort_unstable();
        for stream in streams {
            self.complete(stream, ts_ns, true, out);
        }
        self.ignored.clear();
    }

    fn exchange(&mut self, stream: u64) -> Option<&mut Exchange> {
        if !self.open.contains_key(&stream) {
            self.orphan(stream);
        }
        self.open.get_mut(&stream)
    }

    fn orphan(&mut self, stream: u64) {
        if !self.ignored.contains_key(&stream) {
            self.stats.orphan_events += 1;
        }
    }

    fn on_request(&mut self, stream: u64, head: RequestHead, ts_ns: u64, out: &mut Vec<LlmCall>) {
        // A new request on a stream id still open: the old one ended unseen.
        if self.open.contains_key(&stream) {
            self.complete(stream, ts_ns, true, out);
        }
        if !self.ignored.is_empty() {
            self.ignored.remove(&stream);
        }
        if self.open.len() >= self.limits.max_open_streams {
            self.stats.too_many_streams += 1;
            self.ignore(stream);
            return;
        }
        // Every inference API is a POST; a GET on the same path lists or
        // fetches stored objects.
        if head.method != "POST" {
            self.stats.not_llm += 1;
            self.ignore(stream);
            return;
        }
        let target = detect::detect_by_path(&head);
        let ex = Exchange {
            head,
            target,
            request_body: HeldBody::default(),
            request_truncated: false,
            request: None,
            start_ns: ts_ns,
            request_end_ns: None,
            bytes_sent: 0,
            response: None,
            response_start_ns: None,
            first_body_ns: None,
            bytes_received: 0,
            framing: Framing::Undecided,
            obs: Observed::new(self.limits.max_stream_text),
        };
        self.open.insert(stream, ex);
    }

    fn ignore(&mut self, stream: u64) {
        // Bounded like `open`: ids of ignored exchanges are only remembered
        // to tell their later events from orphans.
        if self.ignored.len() >= self.limits.max_open_streams.saturating_mul(4) {
            self.ignored.clear();
        }
        self.ignored.insert(stream, ());
    }

    /// Reads what is needed from the request body, then drops it.
    fn finish_request(&mut self, stream: u64) {
        let Some(ex) = self.open.get_mut(&stream) else {
            return;
        };
        if ex.request.is_some() {
            return;
        }
        let mut info = read_request(ex.request_body.bytes());
        if ex.target.is_none() {
            ex.target = detect::detect_by_body(&ex.head, &info.shape);
        }
        if ex
            .target
            .as_ref()
            .is_some_and(|t| usage_may_be_missing(t, &ex.head, &info))
        {
            info.input_estimate = estimate::estimate_request_input(ex.request_body.bytes());
        }
        ex.request_body = HeldBody::default();
        ex.request = Some(info);
        if ex.target.is_none() {
            self.open.remove(&stream);
            self.stats.not_llm += 1;
            self.ignore(stream);
        }
    }

    fn complete(&mut self, stream: u64, ts_ns: u64, aborted: bool, out: &mut Vec<LlmCall>) {
        self.finish_request(stream);
        let Some(ex) = self.open.remove(&stream) else {
            if self.ignored.is_empty() || self.ignored.remove(&stream).is_none() {
                self.stats.orphan_events += 1;
            }
            return;
        };
        if let Some(call) = ex.into_call(ts_ns, aborted, &mut self.stats) {
            self.stats.calls += 1;
            out.push(call);
        }
    }
}

/// Whether the response may end without usage, so that the input must be
/// estimated from the request now (its body is not kept): OpenAI-format
/// streams (no `include_usage`, or cut before the final chunk), Ollama
/// streams (usage only on the last line) and Ollama's legacy embeddings.
fn usage_may_be_missing(target: &Target, head: &RequestHead, info: &RequestInfo) -> bool {
    // TGI reports usage only when asked for `details`; Gemini embeddings
    // only in newer API versions.
    if matches!(target.wire, Wire::Tgi | Wire::Gemini) && target.api != Api::GenerateContent {
        return true;
    }
    match target.api {
        Api::ChatCompletions | Api::Completions | Api::Responses => info.stream == Some(true),
        Api::OllamaChat | Api::OllamaGenerate => info.stream != Some(false),
        Api::OllamaEmbed => head.path.trim_end_matches('/').ends_with("/embeddings"),
        _ => false,
    }
}

fn read_request(body: &[u8]) -> RequestInfo {
    let mut info = RequestInfo::default();
    json::for_each_member(body, |key, value| match key {
        b"model" => {
            info.shape.model = true;
            info.model = json::as_string(value);
        }
        b"stream" => info.stream = json::as_bool(value),
        b"stream_options" => json::for_each_member(value, |k, v| {
            if k == b"include_usage" {
                info.include_usage = json::as_bool(v) == Some(true);
            }
        }),
        b"messages" => info.shape.messages = true,
        b"prompt" => info.shape.prompt = true,
        b"input" => info.shape.input = true,
        b"contents" => info.shape.contents = true,
        b"instructions" => info.shape.instructions = true,
        b"tools" => info.shape.tools = true,
        b"inputs" => info.shape.inputs = true,
        _ => {}
    });
    info
}

impl Exchange {
    fn on_response_body(
        &mut self,
        data: Bytes,
        ts_ns: u64,
        limits: &Limits,
        stats: &mut AssembleStats,
    ) {
        self.bytes_received = self.bytes_received.saturating_add(data.len() as u64);
        if !data.is_empty() {
            self.first_body_ns.get_or_insert(ts_ns);
        }
        let Some(target) = &self.target else {
            return;
        };
        let (api, wire) = (target.api, target.wire);
        let mut bytes: &[u8] = &data;
        if matches!(self.framing, Framing::Undecided) {
            let Some(first) = bytes.iter().position(|b| !b.is_ascii_whitespace()) else {
                return;
            };
            bytes = bytes.get(first..).unwrap_or_default();
            self.framing =
                choose_framing(api, self.response.as_ref(), bytes.first().copied(), limits);
        }
        let obs = &mut self.obs;
        let mut on_item = |event: &str, item: &[u8]| {
            if decode::stream_item(wire, obs, event, item, ts_ns).is_err() {
                stats.bad_json += 1;
            }
        };
        match &mut self.framing {
            Framing::Undecided => {}
            Framing::Json(body) => {
                let start = data.len() - bytes.len();
                body.push(data.slice(start..), limits.max_json_response, stats);
            }
            Framing::Sse(p) => p.feed(bytes, |e| on_item(e.event, e.data)),
            Framing::Lines(l) => l.feed(bytes, |line| on_item("", line)),
            Framing::Array(a) => a.feed(bytes, |el| on_item("", el)),
        }
    }

    fn into_call(
        mut self,
        end_ns: u64,
        aborted: bool,
        stats: &mut AssembleStats,
    ) -> Option<LlmCall> {
        let target = self.target.take()?;
        let request = self.request.take().unwrap_or_default();
        let status = self.response.as_ref().map(|r| r.status);
        let success = status.is_some_and(|s| (200..300).contains(&s));
        let (api, wire) = (target.api, target.wire);
        // What the request asked for, until the response framing says otherwise.
        let mut streaming = match api {
            Api::OllamaChat | Api::OllamaGenerate => request.stream != Some(false),
            _ => {
                request.stream == Some(true)
                    || (wire == Wire::Tgi && self.head.path.ends_with("generate_stream"))
            }
        };
        let mut error_type = None;
        let mut end_seen = !aborted;

        match std::mem::replace(&mut self.framing, Framing::Undecided) {
            Framing::Undecided => {}
            Framing::Json(json_body) => {
                let truncated = json_body.truncated;
                let body = json_body.bytes();
                if success {
                    streaming = false;
                    let ts = self.first_body_ns.unwrap_or(end_ns);
                    if decode::body(wire, &mut self.obs, body, ts).is_err()
                        && !truncated
                        && !aborted
                    {
                        stats.bad_json += 1;
                    }
                    if truncated {
                        decode::body_tail(wire, &mut self.obs, json_body.tail());
                    }
                    self.obs.first_token_ns = self.first_body_ns;
                } else if let Some(code) = status {
                    let (kind, err_code) = decode::error_kind(body);
                    error_type = Some(status::classify(code, kind.as_deref(), err_code.as_deref()));
                }
            }
            Framing::Sse(mut p) => {
                streaming = true;
                p.finish();
                stats.oversized_items += p.oversized_events();
                // The stream's own end marker is what completes it: a client
                // that closes right after `[DONE]`, before the transport's
                // last chunk, still got the whole answer.
                end_seen = self.obs.terminal;
            }
            Framing::Lines(mut l) => {
                streaming = true;
                let obs = &mut self.obs;
                let ts = self.first_body_ns.unwrap_or(end_ns).max(end_ns);
                l.finish(|line| {
                    if decode::stream_item(wire, obs, "", line, ts).is_err() {
                        stats.bad_json += 1;
                    }
                });
                stats.oversized_items += l.oversized();
                end_seen = self.obs.terminal;
            }
            Framing::Array(a) => {
                streaming = true;
                stats.oversized_items += a.oversized();
                end_seen = a.closed() || self.obs.terminal;
            }
        }
        if !success && status.is_some() && error_type.is_none() {
            error_type = Some(status::classify(status.unwrap_or(0), None, None));
        }
        if error_type.is_none() {
            error_type = self.obs.error_type.take();
        }
        if error_type.is_none() && (!end_seen || status.is_none()) {
            error_type = Some("incomplete".to_string());
            stats.incomplete += 1;
        }

        if wire == Wire::Tgi && success {
            if let Some(head) = &self.response {
                super::tgi::usage_from_headers(&mut self.obs, &head.headers);
            }
        }
        let mut usage = std::mem::take(&mut self.obs.usage);
        if success && !self.obs.usage_seen {
            usage = self.estimate(&target, &request);
            stats.estimated += 1;
        }
        let retry_after_s = self
            .response
            .as_ref()
            .filter(|_| !success)
            .and_then(|r| status::retry_after_s(&r.headers));
        // Gemini names the model in the path; a body `model` there is the
        // resource name (`models/...`) of the same model.
        let request_model = if wire == Wire::Gemini {
            target.path_model.or(request.model)
        } else {
            request.model.or(target.path_model)
        };
        let first_token_ns = self.obs.first_token_ns;
        let request_end_ns = self
            .request_end_ns
            .or(self.response_start_ns)
            .unwrap_or(end_ns);
        Some(LlmCall {
            provider: target.provider,
            api,
            host: self.head.authority.take(),
            path: std::mem::take(&mut self.head.path),
            request_model,
            response_model: self.obs.response_model.take(),
            streaming,
            status,
            error_type,
            usage,
            finish_reason: self.obs.finish_reason.take(),
            retry_after_s,
            start_ns: self.start_ns,
            request_end_ns,
            response_start_ns: self.response_start_ns,
            first_token_ns,
            end_ns,
            output_chunks: self.obs.output_chunks,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            http_method: Some(std::mem::take(&mut self.head.method)),
            response_id: self.obs.response_id.take(),
        })
    }

    /// Usage estimated from the text, when the provider reported none.
    fn estimate(&self, target: &Target, request: &RequestInfo) -> Usage {
        let embeddings = matches!(target.api, Api::Embeddings | Api::OllamaEmbed);
        Usage {
            input_tokens: request.input_estimate,
            output_tokens: (!embeddings).then(|| self.obs.estimated_output()),
            estimated: true,
            ..Usage::default()
        }
    }
}

/// Body bytes kept whole; a body that came in one piece (the usual
/// request) is held as it came, not copied.
#[derive(Debug, Default)]
struct HeldBody {
    first: Bytes,
    rest: Vec<u8>,
}

impl HeldBody {
    fn len(&self) -> usize {
        self.first.len() + self.rest.len()
    }

    fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        if self.len() == 0 {
            self.first = data;
            return;
        }
        if self.rest.is_empty() {
            self.rest.extend_from_slice(&self.first);
            self.first = Bytes::new();
        }
        self.rest.extend_from_slice(&data);
    }

    fn bytes(&self) -> &[u8] {
        if self.rest.is_empty() {
            &self.first
        } else {
            &self.rest
        }
    }
}

/// Bytes kept from the end of a JSON body cut at its bound, where OpenAI
/// puts `usage` and `model`.
const JSON_TAIL: usize = 64 << 10;

/// A JSON body kept whole; the common single-chunk body is not copied.
#[derive(Debug, Default)]
struct JsonBody {
    kept: HeldBody,
    truncated: bool,
    /// The body's last bytes past the bound (at least `JSON_TAIL` of them).
    tail: Vec<u8>,
}

impl JsonBody {
    fn push(&mut self, data: Bytes, max: usize, stats: &mut AssembleStats) {
        let room = max.saturating_sub(self.kept.len());
        if data.len() > room {
            if !self.truncated {
                self.truncated = true;
                stats.truncated_bodies += 1;
            }
            self.tail
                .extend_from_slice(data.get(room..).unwrap_or_default());
            if self.tail.len() > 2 * JSON_TAIL {
                self.tail.drain(..self.tail.len() - JSON_TAIL);
            }
        }
        self.kept.push(data.slice(..room.min(data.len())));
    }

    /// The last `JSON_TAIL` bytes past the bound.
    fn tail(&self) -> &[u8] {
        let skip = self.tail.len().saturating_sub(JSON_TAIL);
        self.tail.get(skip..).unwrap_or_default()
    }

    fn bytes(&self) -> &[u8] {
        self.kept.bytes()
    }
}

fn choose_framing(
    api: Api,
    head: Option<&ResponseHead>,
    first: Option<u8>,
    limits: &Limits,
) -> Framing {
    let json = || Framing::Json(JsonBody::default());
    let Some(head) = head else {
        return json();
    };
    if !(200..300).contains(&head.status) {
        return json();
    }
    let content_type = head.headers.get("content-type").unwrap_or("");
    let has = |needle: &str| {
        content_type
            .as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
    };
    let sse = has("text/event-stream")
        || (content_type.is_empty() && matches!(first, Some(b'd' | b'e' | b':' | b'i')));
    if sse {
        return Framing::Sse(SseParser::new(limits.max_stream_item));
    }
    let ollama = matches!(
        api,
        Api::OllamaChat | Api::OllamaGenerate | Api::OllamaEmbed
    );
    if has("ndjson") || (ollama && !has("application/json")) {
        return Framing::Lines(LineSplitter::new(limits.max_stream_item));
    }
    if api == Api::GenerateContent && first == Some(b'[') {
        return Framing::Array(JsonArraySplitter::new(limits.max_stream_item));
    }
    json()
}
