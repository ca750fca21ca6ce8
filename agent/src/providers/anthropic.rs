//! Anthropic Messages API, complete and streamed.
//!
//! The stream reports usage in `message_start` and running totals in
//! `message_delta`; the latest value of each field wins. Total input is
//! `input_tokens + cache_creation_input_tokens + cache_read_input_tokens`.

use std::borrow::Cow;

use serde::Deserialize;

use super::decode::{set, BadJson, Observed};
use super::json;
use super::status::classify_stream_error;

#[derive(Deserialize)]
struct AnUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

fn apply_usage(obs: &mut Observed, u: AnUsage) {
    let [input, creation, read] = &mut obs.anthropic_input;
    set(input, u.input_tokens);
    set(creation, u.cache_creation_input_tokens);
    set(read, u.cache_read_input_tokens);
    let parts = obs.anthropic_input;
    if parts.iter().any(Option::is_some) {
        obs.usage.input_tokens = Some(parts.iter().flatten().sum());
    }
    set(&mut obs.usage.cache_creation_tokens, parts[1]);
    set(&mut obs.usage.cache_read_tokens, parts[2]);
    set(&mut obs.usage.output_tokens, u.output_tokens);
    obs.usage_reported();
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(borrow, default, deserialize_with = "json::text")]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    partial_json: Option<Cow<'a, str>>,
}

impl Block<'_> {
    fn collect(&self, obs: &mut Observed) -> bool {
        collect_text(obs, [&self.text, &self.thinking, &self.partial_json])
    }
}

/// Feeds the text pieces of a block or delta to `obs`; returns whether
/// there was any content.
fn collect_text(obs: &mut Observed, pieces: [&Option<Cow<'_, str>>; 3]) -> bool {
    let mut any = false;
    for piece in pieces.into_iter().flatten() {
        any |= !piece.is_empty();
        obs.text(piece);
    }
    any
}

/// A complete message, or `message_start`'s `message`.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default, deserialize_with = "json::text")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<Vec<Block<'a>>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    stop_reason: Option<Cow<'a, str>>,
    usage: Option<AnUsage>,
}

fn apply_message(obs: &mut Observed, m: Message<'_>) {
    obs.model(m.model.as_deref());
    obs.id(m.id.as_deref());
    // Usage first: once it is known the text need not be kept.
    if let Some(u) = m.usage {
        apply_usage(obs, u);
    }
    for block in m.content.iter().flatten() {
        block.collect(obs);
    }
    obs.finish(m.stop_reason.as_deref());
}

pub(crate) fn body(obs: &mut Observed, body: &[u8]) -> Result<(), BadJson> {
    let m: Message<'_> = json::from_bytes(body)?;
    apply_message(obs, m);
    obs.terminal = true;
    Ok(())
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default, deserialize_with = "json::text")]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrorObj<'a> {
    #[serde(borrow, rename = "type", default, deserialize_with = "json::text")]
    kind: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow, rename = "type", default, deserialize_with = "json::text")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Message<'a>>,
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    usage: Option<AnUsage>,
    #[serde(borrow)]
    error: Option<ErrorObj<'a>>,
}

/// One SSE event of a streamed message.
pub(crate) fn event(
    obs: &mut Observed,
    name: &str,
    data: &[u8],
    ts_ns: u64,
) -> Result<(), BadJson> {
    match name {
        "ping" | "content_block_start" | "content_block_stop" => return Ok(()),
        "message_stop" => {
            obs.terminal = true;
            return Ok(());
        }
        _ => {}
    }
    let ev: Event<'_> = json::from_bytes(data)?;
    let kind = ev.kind.as_deref().unwrap_or(name);
    match kind {
        "message_start" => {
            if let Some(m) = ev.message {
                apply_message(obs, m);
            }
        }
        "content_block_delta" => {
            if let Some(d) = &ev.delta {
                if collect_text(obs, [&d.text, &d.thinking, &d.partial_json]) {
                    obs.content_event(ts_ns);
                }
            }
        }
        "message_delta" => {
            if let Some(d) = &ev.delta {
                obs.finish(d.stop_reason.as_deref());
            }
            if let Some(u) = ev.usage {
                apply_usage(obs, u);
            }
        }
        "message_stop" => obs.terminal = true,
        "error" => {
            let kind = ev
                .error
                .as_ref()
                .and_then(|e| e.kind.as_deref())
                .unwrap_or("error");
            obs.error_type = Some(classify_stream_error(kind));
            obs.terminal = true;
        }
        _ => {}
    }
    Ok(())
}
