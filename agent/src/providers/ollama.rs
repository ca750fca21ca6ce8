//! Ollama `/api/chat`, `/api/generate`, `/api/embed` and the legacy
//! `/api/embeddings`. Streams are NDJSON; the `done: true` line carries
//! `prompt_eval_count` (input) and `eval_count` (output).

use std::borrow::Cow;

use serde::Deserialize;

use super::decode::{set, BadJson, Observed};
use super::json;
use super::status::classify_stream_error;

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default, deserialize_with = "json::text")]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    thinking: Option<Cow<'a, str>>,
    tool_calls: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow, default, deserialize_with = "json::text")]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Message<'a>>,
    /// `/api/generate`.
    #[serde(borrow, default, deserialize_with = "json::text")]
    response: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    thinking: Option<Cow<'a, str>>,
    done: Option<bool>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    done_reason: Option<Cow<'a, str>>,
    prompt_eval_count: Option<u64>,
    eval_count: Option<u64>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    error: Option<Cow<'a, str>>,
}

/// One NDJSON line (`streaming`) or a complete response.
pub(crate) fn line(
    obs: &mut Observed,
    data: &[u8],
    ts_ns: u64,
    streaming: bool,
) -> Result<(), BadJson> {
    let l: Line<'_> = json::from_bytes(data)?;
    obs.model(l.model.as_deref());
    let mut content = false;
    let message_parts = l
        .message
        .as_ref()
        .map(|m| [&m.content, &m.thinking])
        .unwrap_or([&None, &None]);
    for piece in message_parts
        .into_iter()
        .chain([&l.response, &l.thinking])
        .flatten()
    {
        content |= !piece.is_empty();
        obs.text(piece);
    }
    content |= l.message.as_ref().is_some_and(|m| m.tool_calls.is_some());
    if l.done == Some(true) || !streaming {
        obs.terminal = true;
        obs.finish(l.done_reason.as_deref());
    }
    if l.prompt_eval_count.is_some() || l.eval_count.is_some() {
        set(&mut obs.usage.input_tokens, l.prompt_eval_count);
        set(&mut obs.usage.output_tokens, l.eval_count);
        obs.usage_reported();
    }
    if l.error.is_some() {
        // Ollama reports errors as free text; there is no type to keep.
        obs.error_type = Some(classify_stream_error("server_error"));
        obs.terminal = true;
    }
    if streaming && content {
        obs.content_event(ts_ns);
    }
    Ok(())
}
