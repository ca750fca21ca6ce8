//! Gemini `generateContent` / `streamGenerateContent` (Google AI and Vertex).
//!
//! A streamed response is a sequence of complete `GenerateContentResponse`
//! objects (SSE with `alt=sse`, otherwise a JSON array); each carries the
//! cumulative `usageMetadata`, so the latest wins. Output tokens are
//! candidates plus thoughts.
//!
//! Embeddings (`embedContent`, `batchEmbedContents`) report
//! `usageMetadata.promptTokenCount` in current API versions; Vertex
//! `predict` reports `predictions[].embeddings.statistics.token_count`,
//! summed here. Older responses carry no count: the input is estimated.

use std::borrow::Cow;

use serde::Deserialize;

use super::decode::{set, BadJson, Observed};
use super::json;
use super::status::classify_stream_error;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: Option<u64>,
    candidates_token_count: Option<u64>,
    cached_content_token_count: Option<u64>,
    thoughts_token_count: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part<'a> {
    #[serde(borrow, default, deserialize_with = "json::text")]
    text: Option<Cow<'a, str>>,
    function_call: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow)]
    parts: Option<Vec<Part<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    #[serde(borrow)]
    content: Option<Content<'a>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrorObj<'a> {
    #[serde(borrow, default, deserialize_with = "json::text")]
    status: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateResponse<'a> {
    #[serde(borrow)]
    candidates: Option<Vec<Candidate<'a>>>,
    usage_metadata: Option<UsageMetadata>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    model_version: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "json::text")]
    response_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    error: Option<ErrorObj<'a>>,
    /// Vertex `predict` (embeddings).
    predictions: Option<Vec<Prediction>>,
}

#[derive(Deserialize)]
struct Statistics {
    #[serde(alias = "tokenCount")]
    token_count: Option<u64>,
}

#[derive(Deserialize)]
struct PredictionEmbeddings {
    statistics: Option<Statistics>,
}

#[derive(Deserialize)]
struct Prediction {
    embeddings: Option<PredictionEmbeddings>,
}

/// One streamed chunk (`streaming`) or a complete response.
pub(crate) fn chunk(
    obs: &mut Observed,
    data: &[u8],
    ts_ns: u64,
    streaming: bool,
) -> Result<(), BadJson> {
    let r: GenerateResponse<'_> = json::from_bytes(data)?;
    obs.model(r.model_version.as_deref());
    obs.id(r.response_id.as_deref());
    let mut content = false;
    for candidate in r.candidates.iter().flatten() {
        let parts = candidate.content.as_ref().and_then(|c| c.parts.as_ref());
        for part in parts.into_iter().flatten() {
            if let Some(t) = &part.text {
                content |= !t.is_empty();
                obs.text(t);
            }
            content |= part.function_call.is_some();
        }
        if let Some(reason) = candidate.finish_reason.as_deref() {
            obs.finish(Some(reason));
            obs.terminal = true;
        }
    }
    if let Some(u) = r.usage_metadata {
        let usage = &mut obs.usage;
        set(&mut usage.input_tokens, u.prompt_token_count);
        let output = match (u.candidates_token_count, u.thoughts_token_count) {
            (None, None) => None,
            (c, t) => Some(c.unwrap_or(0).saturating_add(t.unwrap_or(0))),
        };
        set(&mut usage.output_tokens, output);
        set(&mut usage.cache_read_tokens, u.cached_content_token_count);
        set(&mut usage.reasoning_tokens, u.thoughts_token_count);
        obs.usage_reported();
    }
    let counted = r
        .predictions
        .iter()
        .flatten()
        .filter_map(|p| p.embeddings.as_ref()?.statistics.as_ref()?.token_count);
    let vertex_input = counted.fold(None, |sum: Option<u64>, n| {
        Some(sum.unwrap_or(0).saturating_add(n))
    });
    if vertex_input.is_some() {
        set(&mut obs.usage.input_tokens, vertex_input);
        obs.usage_reported();
    }
    if let Some(e) = r.error {
        obs.error_type = Some(classify_stream_error(
            e.status.as_deref().unwrap_or("error"),
        ));
        obs.terminal = true;
    }
    if streaming && content {
        obs.content_event(ts_ns);
    }
    if !streaming {
        obs.terminal = true;
    }
    Ok(())
}
