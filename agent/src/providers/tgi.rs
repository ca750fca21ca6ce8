//! Hugging Face text-generation-inference (TGI) native API: `/generate`,
//! `/generate_stream` and the compat route `/`.
//!
//! A stream is SSE with one event per generated token; the last one carries
//! `generated_text` and, when the request asked for `details`, the
//! `details` with `generated_tokens` and `input_length`. A complete response
//! is one object (or a one-element array from the compat route) whose
//! `details` has `generated_tokens` and, with `decoder_input_details`, one
//! `prefill` entry per input token. `/generate` also reports both counts in
//! the `x-prompt-tokens` and `x-generated-tokens` response headers.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::decode::{set, BadJson, Observed};
use super::json;
use super::status::classify_stream_error;
use crate::protocols::event::Headers;

#[derive(Deserialize)]
struct Token<'a> {
    #[serde(borrow, default, deserialize_with = "json::text")]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    special: bool,
}

#[derive(Deserialize)]
struct Details<'a> {
    #[serde(borrow, default, deserialize_with = "json::text")]
    finish_reason: Option<Cow<'a, str>>,
    generated_tokens: Option<u64>,
    /// Stream details only.
    input_length: Option<u64>,
    /// Complete responses with `decoder_input_details`: one per input token.
    prefill: Option<Vec<IgnoredAny>>,
}

#[derive(Deserialize)]
struct Output<'a> {
    #[serde(borrow)]
    token: Option<Token<'a>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    generated_text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    details: Option<Details<'a>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    error: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    error_type: Option<Cow<'a, str>>,
}

fn apply_details(obs: &mut Observed, d: Details<'_>) {
    obs.finish(d.finish_reason.as_deref());
    let input = d.input_length.or_else(|| {
        d.prefill
            .as_ref()
            .filter(|p| !p.is_empty())
            .map(|p| p.len() as u64)
    });
    set(&mut obs.usage.input_tokens, input);
    set(&mut obs.usage.output_tokens, d.generated_tokens);
    if d.generated_tokens.is_some() {
        obs.usage_reported();
    }
}

fn apply_error(obs: &mut Observed, o: &Output<'_>) {
    if o.error.is_some() {
        obs.error_type = Some(classify_stream_error(
            o.error_type.as_deref().unwrap_or("server_error"),
        ));
        obs.terminal = true;
    }
}

/// One SSE event of `/generate_stream`.
pub(crate) fn event(obs: &mut Observed, data: &[u8], ts_ns: u64) -> Result<(), BadJson> {
    let o: Output<'_> = json::from_bytes(data)?;
    if let Some(t) = &o.token {
        if !t.special {
            if let Some(text) = &t.text {
                obs.text(text);
            }
            obs.content_event(ts_ns);
        }
    }
    if o.generated_text.is_some() {
        obs.terminal = true;
    }
    apply_error(obs, &o);
    if let Some(d) = o.details {
        apply_details(obs, d);
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Body<'a> {
    #[serde(borrow)]
    One(Output<'a>),
    #[serde(borrow)]
    Many(Vec<Output<'a>>),
}

/// A complete `/generate` response.
pub(crate) fn body(obs: &mut Observed, body: &[u8]) -> Result<(), BadJson> {
    let outputs = match json::from_bytes::<Body<'_>>(body)? {
        Body::One(o) => vec![o],
        Body::Many(v) => v,
    };
    for o in outputs {
        if let Some(text) = &o.generated_text {
            obs.text(text);
        }
        apply_error(obs, &o);
        if let Some(d) = o.details {
            apply_details(obs, d);
        }
    }
    obs.terminal = true;
    Ok(())
}

/// `x-prompt-tokens` / `x-generated-tokens`, for what the body did not say.
pub(crate) fn usage_from_headers(obs: &mut Observed, headers: &Headers) {
    let count = |name| headers.get(name).and_then(|v| v.trim().parse::<u64>().ok());
    let (input, output) = (count("x-prompt-tokens"), count("x-generated-tokens"));
    if obs.usage.input_tokens.is_none() {
        set(&mut obs.usage.input_tokens, input);
    }
    if obs.usage.output_tokens.is_none() {
        set(&mut obs.usage.output_tokens, output);
    }
    if input.is_some() || output.is_some() {
        obs.usage_reported();
    }
}
