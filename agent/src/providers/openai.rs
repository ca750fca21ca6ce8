//! OpenAI wire format: Chat Completions, legacy Completions, Embeddings and
//! the Responses API. Also spoken by Azure OpenAI and every
//! OpenAI-compatible server. Their own usage fields are read too: Groq's
//! `x_groq.usage`, DeepSeek's `prompt_cache_hit_tokens`, LiteLLM's
//! `cache_read_input_tokens` / `cache_creation_input_tokens`, and llama.cpp
//! server's `timings` (on its OpenAI routes and its native `/completion`,
//! whose `content`, `stop`, `tokens_evaluated` and `tokens_predicted` are
//! read here as well).

use std::borrow::Cow;

use serde::Deserialize;

use super::decode::{set, BadJson, Observed};
use super::json;
use super::status::classify_stream_error;

#[derive(Deserialize, Default)]
struct Details {
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

/// Both spellings: Chat Completions (`prompt_tokens`) and Responses (`input_tokens`).
#[derive(Deserialize)]
struct OaUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    completion_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
    output_tokens_details: Option<Details>,
    /// DeepSeek.
    prompt_cache_hit_tokens: Option<u64>,
    /// LiteLLM passing on an Anthropic-style count.
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

fn apply_usage(obs: &mut Observed, u: OaUsage) {
    let input_details = u.prompt_tokens_details.or(u.input_tokens_details);
    let output_details = u.completion_tokens_details.or(u.output_tokens_details);
    let usage = &mut obs.usage;
    set(&mut usage.input_tokens, u.prompt_tokens.or(u.input_tokens));
    set(
        &mut usage.output_tokens,
        u.completion_tokens.or(u.output_tokens),
    );
    set(
        &mut usage.cache_read_tokens,
        input_details
            .and_then(|d| d.cached_tokens)
            .or(u.prompt_cache_hit_tokens)
            .or(u.cache_read_input_tokens),
    );
    set(
        &mut usage.cache_creation_tokens,
        u.cache_creation_input_tokens,
    );
    set(
        &mut usage.reasoning_tokens,
        output_details.and_then(|d| d.reasoning_tokens),
    );
    obs.usage_reported();
}

#[derive(Deserialize)]
struct ErrorObj<'a> {
    #[serde(borrow, rename = "type", default, deserialize_with = "json::text")]
    kind: Option<Cow<'a, str>>,
    /// A string for OpenAI, a number for some compatible servers.
    code: Option<serde_json::Value>,
}

impl ErrorObj<'_> {
    fn error_type(&self) -> String {
        let code = self.code.as_ref().and_then(|c| c.as_str());
        let kind = match (code, self.kind.as_deref()) {
            (Some("insufficient_quota"), _) => "insufficient_quota",
            (_, Some(kind)) => kind,
            (Some(code), None) => code,
            (None, None) => "error",
        };
        classify_stream_error(kind)
    }
}

#[derive(Deserialize)]
struct Function<'a> {
    #[serde(borrow, default, deserialize_with = "json::text")]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(borrow)]
    function: Option<Function<'a>>,
}

/// `delta` of a chunk or `message` of a complete response.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default, deserialize_with = "json::text")]
    content: Option<Cow<'a, str>>,
    /// DeepSeek, vLLM, OpenRouter and others stream reasoning separately.
    #[serde(borrow, default, deserialize_with = "json::text")]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
}

impl Message<'_> {
    /// Feeds the text pieces to `obs`; returns whether there was any content.
    fn collect(&self, obs: &mut Observed) -> bool {
        let mut any = false;
        for piece in [
            &self.content,
            &self.reasoning_content,
            &self.reasoning,
            &self.refusal,
        ]
        .into_iter()
        .flatten()
        {
            any |= !piece.is_empty();
            obs.text(piece);
        }
        for call in self.tool_calls.iter().flatten() {
            any = true;
            if let Some(args) = call.function.as_ref().and_then(|f| f.arguments.as_ref()) {
                obs.text(args);
            }
        }
        any
    }
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow)]
    delta: Option<Message<'a>>,
    #[serde(borrow)]
    message: Option<Message<'a>>,
    /// Legacy Completions.
    #[serde(borrow, default, deserialize_with = "json::text")]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    finish_reason: Option<Cow<'a, str>>,
}

/// A `choices` array. Stream chunks and most responses carry one choice:
/// it is held inline, so decoding a chunk allocates no vector.
#[derive(Default)]
struct Choices<'a> {
    first: Option<Choice<'a>>,
    rest: Vec<Choice<'a>>,
}

impl<'a> Choices<'a> {
    fn iter(&self) -> impl Iterator<Item = &Choice<'a>> {
        self.first.iter().chain(&self.rest)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Choices<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<Choices<'a>>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Choices<'a>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of choices")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut choices = Choices {
                    first: seq.next_element()?,
                    rest: Vec::new(),
                };
                if choices.first.is_some() {
                    while let Some(choice) = seq.next_element()? {
                        choices.rest.push(choice);
                    }
                }
                Ok(choices)
            }
        }
        deserializer.deserialize_seq(Visit(std::marker::PhantomData))
    }
}

/// Groq's extension object; its `usage` ends a stream.
#[derive(Deserialize)]
struct XGroq {
    usage: Option<OaUsage>,
}

/// llama.cpp server's per-request counters.
#[derive(Deserialize)]
struct Timings {
    /// Prompt tokens processed (not served from the KV cache).
    prompt_n: Option<u64>,
    /// Prompt tokens served from the KV cache.
    cache_n: Option<u64>,
    predicted_n: Option<u64>,
}

/// A Chat Completions / Completions chunk or complete response, or an
/// Embeddings response (whose `data` is skipped).
#[derive(Deserialize)]
struct Completion<'a> {
    #[serde(borrow, default, deserialize_with = "json::text")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    choices: Option<Choices<'a>>,
    usage: Option<OaUsage>,
    #[serde(borrow)]
    error: Option<ErrorObj<'a>>,
    x_groq: Option<XGroq>,
    timings: Option<Timings>,
    /// llama.cpp native `/completion`: the generated text, the end flag and
    /// the token counts.
    #[serde(borrow, default, deserialize_with = "json::text")]
    content: Option<Cow<'a, str>>,
    stop: Option<serde_json::Value>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    stop_type: Option<Cow<'a, str>>,
    tokens_evaluated: Option<u64>,
    tokens_predicted: Option<u64>,
}

/// llama.cpp usage: `tokens_evaluated` / `tokens_predicted` (native), else
/// the `timings` (prompt = processed + cached). Latest values win.
fn apply_llama_cpp(obs: &mut Observed, c: &Completion<'_>) {
    let timings = c.timings.as_ref();
    let cached = timings.and_then(|t| t.cache_n);
    let input = c.tokens_evaluated.or_else(|| {
        let t = timings?;
        Some(t.prompt_n?.saturating_add(t.cache_n.unwrap_or(0)))
    });
    let output = c
        .tokens_predicted
        .or_else(|| timings.and_then(|t| t.predicted_n));
    if input.is_none() && output.is_none() {
        return;
    }
    let usage = &mut obs.usage;
    set(&mut usage.input_tokens, input);
    set(&mut usage.output_tokens, output);
    set(&mut usage.cache_read_tokens, cached);
    obs.usage_reported();
}

fn apply_completion(obs: &mut Observed, mut c: Completion<'_>) -> bool {
    obs.model(c.model.as_deref());
    obs.id(c.id.as_deref());
    // Usage first: once it is known the text need not be kept for an
    // estimate (a complete response carries both).
    let usage = c
        .usage
        .take()
        .or_else(|| c.x_groq.take().and_then(|x| x.usage));
    let reported = usage.is_some();
    if let Some(u) = usage {
        apply_usage(obs, u);
    }
    // llama.cpp sends `usage` and `timings` together on its OpenAI routes:
    // the `usage` wins, the `timings` add the cached prompt tokens.
    if !reported {
        apply_llama_cpp(obs, &c);
    } else if obs.usage.cache_read_tokens.is_none() {
        set(
            &mut obs.usage.cache_read_tokens,
            c.timings.as_ref().and_then(|t| t.cache_n),
        );
    }
    let mut content = false;
    if let Some(text) = &c.content {
        content |= !text.is_empty();
        obs.text(text);
    }
    // llama.cpp `/completion`: `stop: true` on the last event (OpenAI's
    // `stop` is a request field, never in a response).
    if c.stop.as_ref().and_then(|s| s.as_bool()) == Some(true) {
        obs.terminal = true;
        obs.finish(c.stop_type.as_deref());
    }
    for choice in c.choices.iter().flat_map(Choices::iter) {
        for m in [&choice.delta, &choice.message].into_iter().flatten() {
            content |= m.collect(obs);
        }
        if let Some(text) = &choice.text {
            content |= !text.is_empty();
            obs.text(text);
        }
        obs.finish(choice.finish_reason.as_deref());
    }
    if let Some(e) = c.error {
        obs.error_type = Some(e.error_type());
    }
    content
}

/// One SSE event of a streamed Chat Completions / Completions response.
pub(crate) fn chat_chunk(obs: &mut Observed, data: &[u8], ts_ns: u64) -> Result<(), BadJson> {
    if data.trim_ascii() == b"[DONE]" {
        obs.terminal = true;
        return Ok(());
    }
    let chunk: Completion<'_> = json::from_bytes(data)?;
    if apply_completion(obs, chunk) {
        obs.content_event(ts_ns);
    }
    Ok(())
}

/// A complete Chat Completions / Completions / Embeddings response.
pub(crate) fn body(obs: &mut Observed, body: &[u8]) -> Result<(), BadJson> {
    let c: Completion<'_> = json::from_bytes(body)?;
    apply_completion(obs, c);
    obs.terminal = true;
    Ok(())
}

/// Usage and model from the end of a body cut at its bound (a large
/// embeddings response): OpenAI puts both after the `data` array.
pub(crate) fn body_tail(obs: &mut Observed, tail: &[u8]) {
    if let Some(u) = json::last_member_value::<OaUsage>(tail, b"usage") {
        apply_usage(obs, u);
    }
    if let Some(model) = json::last_member_value::<String>(tail, b"model") {
        obs.model(Some(&model));
    }
}

#[derive(Deserialize)]
struct IncompleteDetails<'a> {
    #[serde(borrow, default, deserialize_with = "json::text")]
    reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct OutputContent<'a> {
    #[serde(borrow, default, deserialize_with = "json::text")]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct OutputItem<'a> {
    #[serde(borrow)]
    content: Option<Vec<OutputContent<'a>>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    arguments: Option<Cow<'a, str>>,
}

/// A Responses API `response` object.
#[derive(Deserialize)]
struct Response<'a> {
    #[serde(borrow, default, deserialize_with = "json::text")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    status: Option<Cow<'a, str>>,
    #[serde(borrow)]
    incomplete_details: Option<IncompleteDetails<'a>>,
    #[serde(borrow)]
    output: Option<Vec<OutputItem<'a>>>,
    usage: Option<OaUsage>,
    #[serde(borrow)]
    error: Option<ErrorObj<'a>>,
}

fn apply_response(obs: &mut Observed, r: Response<'_>, with_text: bool) {
    obs.model(r.model.as_deref());
    obs.id(r.id.as_deref());
    let reason = r
        .incomplete_details
        .as_ref()
        .and_then(|d| d.reason.as_deref())
        .or(r.status.as_deref())
        .filter(|s| *s != "in_progress" && *s != "queued");
    obs.finish(reason);
    if with_text {
        for item in r.output.iter().flatten() {
            for part in item.content.iter().flatten() {
                if let Some(t) = &part.text {
                    obs.text(t);
                }
            }
            if let Some(args) = &item.arguments {
                obs.text(args);
            }
        }
    }
    if let Some(u) = r.usage {
        apply_usage(obs, u);
    }
    if let Some(e) = r.error {
        obs.error_type = Some(e.error_type());
    }
}

/// A complete Responses API response.
pub(crate) fn responses_body(obs: &mut Observed, body: &[u8]) -> Result<(), BadJson> {
    let r: Response<'_> = json::from_bytes(body)?;
    apply_response(obs, r, true);
    obs.terminal = true;
    Ok(())
}

#[derive(Deserialize)]
struct ResponsesEvent<'a> {
    #[serde(borrow, rename = "type", default, deserialize_with = "json::text")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    delta: Option<Cow<'a, str>>,
    #[serde(borrow)]
    response: Option<Response<'a>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    code: Option<Cow<'a, str>>,
}

/// One SSE event of a streamed Responses API response.
pub(crate) fn responses_event(
    obs: &mut Observed,
    event: &str,
    data: &[u8],
    ts_ns: u64,
) -> Result<(), BadJson> {
    // Most events are bookkeeping (`...added`, `...done`); skip them unparsed
    // when the `event:` field already names them.
    if !event.is_empty() && !is_interesting(event) {
        return Ok(());
    }
    let ev: ResponsesEvent<'_> = json::from_bytes(data)?;
    let kind = ev.kind.as_deref().unwrap_or(event);
    if kind.ends_with(".delta") {
        if let Some(d) = ev.delta.as_deref() {
            obs.content_event(ts_ns);
            obs.text(d);
        }
        return Ok(());
    }
    match kind {
        "response.completed" | "response.incomplete" | "response.failed" => {
            obs.terminal = true;
        }
        "error" => {
            obs.terminal = true;
            obs.error_type = Some(classify_stream_error(ev.code.as_deref().unwrap_or("error")));
        }
        _ => {}
    }
    if let Some(r) = ev.response {
        apply_response(obs, r, false);
    }
    Ok(())
}

fn is_interesting(event: &str) -> bool {
    (event.ends_with(".delta") && !event.contains("audio"))
        || matches!(
            event,
            "response.created"
                | "response.completed"
                | "response.incomplete"
                | "response.failed"
                | "error"
        )
}
