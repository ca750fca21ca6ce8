//! What the decoders learn from a response, and the dispatch from API to
//! decoder (static: one arm per wire format).

use crate::record::Usage;

use super::detect::Wire;
use super::{anthropic, gemini, ollama, openai, tgi};

/// A JSON item that did not decode.
#[derive(Debug, thiserror::Error)]
#[error("response JSON did not decode")]
pub(crate) struct BadJson(#[from] serde_json::Error);

/// Facts gathered from one response, whatever its framing.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    pub response_model: Option<String>,
    /// The provider's id for this response (`id`, `message.id`, `responseId`).
    pub response_id: Option<String>,
    pub usage: Usage,
    /// The provider reported usage (possibly partial, for a cut stream).
    pub usage_seen: bool,
    /// Anthropic reports input in three parts whose latest values add up.
    pub anthropic_input: [Option<u64>; 3],
    pub finish_reason: Option<String>,
    /// An error reported inside a successful (200) response stream.
    pub error_type: Option<String>,
    pub first_token_ns: Option<u64>,
    pub output_chunks: u32,
    /// The stream's end marker was seen (`[DONE]`, `message_stop`, `done`, ...).
    pub terminal: bool,
    /// Generated text kept for estimation while no usage has been seen.
    text: String,
    text_bytes: u64,
    text_limit: usize,
}

impl Observed {
    pub fn new(text_limit: usize) -> Self {
        Observed {
            text_limit,
            ..Observed::default()
        }
    }

    /// A content-bearing stream event arrived at `ts_ns`.
    pub fn content_event(&mut self, ts_ns: u64) {
        self.first_token_ns.get_or_insert(ts_ns);
        self.output_chunks = self.output_chunks.saturating_add(1);
    }

    /// Generated text, kept (bounded) only while it may be needed for an estimate.
    pub fn text(&mut self, piece: &str) {
        if self.usage_seen || piece.is_empty() {
            return;
        }
        self.text_bytes = self.text_bytes.saturating_add(piece.len() as u64);
        let room = self.text_limit.saturating_sub(self.text.len());
        if piece.len() <= room {
            self.text.push_str(piece);
        } else {
            let mut cut = room;
            while !piece.is_char_boundary(cut) {
                cut -= 1;
            }
            self.text.push_str(piece.get(..cut).unwrap_or_default());
        }
    }

    /// Marks usage as reported; the kept text is no longer needed.
    pub fn usage_reported(&mut self) {
        self.usage_seen = true;
        self.text = String::new();
    }

    pub fn model(&mut self, model: Option<&str>) {
        if let Some(m) = model.filter(|m| !m.is_empty()) {
            if self.response_model.as_deref() != Some(m) {
                self.response_model = Some(m.to_string());
            }
        }
    }

    /// The first response id seen wins (stream chunks repeat it).
    pub fn id(&mut self, id: Option<&str>) {
        if self.response_id.is_none() {
            if let Some(id) = id.filter(|i| !i.is_empty() && i.len() <= 256) {
                self.response_id = Some(id.to_string());
            }
        }
    }

    pub fn finish(&mut self, reason: Option<&str>) {
        if let Some(r) = reason.filter(|r| !r.is_empty()) {
            self.finish_reason = Some(r.to_string());
        }
    }

    /// Estimated output tokens from the kept text, scaled up when the text
    /// went past its bound.
    pub fn estimated_output(&self) -> u64 {
        let kept = self.text.len() as u64;
        let tokens = super::estimate::estimate_tokens(&self.text);
        if kept == 0 || self.text_bytes <= kept {
            return tokens;
        }
        (tokens as f64 * self.text_bytes as f64 / kept as f64).round() as u64
    }
}

/// Sets a usage field when the provider reported it (latest value wins).
pub(crate) fn set(field: &mut Option<u64>, value: Option<u64>) {
    if value.is_some() {
        *field = value;
    }
}

/// One item of a streamed response: an SSE event, an NDJSON line or an
/// element of a streamed JSON array.
pub(crate) fn stream_item(
    wire: Wire,
    obs: &mut Observed,
    event: &str,
    data: &[u8],
    ts_ns: u64,
) -> Result<(), BadJson> {
    match wire {
        Wire::OpenAi => openai::chat_chunk(obs, data, ts_ns),
        Wire::Responses => openai::responses_event(obs, event, data, ts_ns),
        Wire::Anthropic => anthropic::event(obs, event, data, ts_ns),
        Wire::Gemini => gemini::chunk(obs, data, ts_ns, true),
        Wire::Ollama => ollama::line(obs, data, ts_ns, true),
        Wire::Tgi => tgi::event(obs, data, ts_ns),
    }
}

/// A complete (non-streamed) successful response body.
pub(crate) fn body(wire: Wire, obs: &mut Observed, body: &[u8], ts_ns: u64) -> Result<(), BadJson> {
    match wire {
        Wire::OpenAi => openai::body(obs, body),
        Wire::Responses => openai::responses_body(obs, body),
        Wire::Anthropic => anthropic::body(obs, body),
        Wire::Gemini => gemini::chunk(obs, body, ts_ns, false),
        Wire::Ollama => ollama::line(obs, body, ts_ns, false),
        Wire::Tgi => tgi::body(obs, body),
    }
}

/// What can still be read from the end of a successful body cut at its bound.
pub(crate) fn body_tail(wire: Wire, obs: &mut Observed, tail: &[u8]) {
    if wire == Wire::OpenAi {
        openai::body_tail(obs, tail);
    }
}

/// The error `type` and `code` of an error body in any provider's shape:
/// `{"error":{"type","code","status"}}`, `{"type":"error","error":{...}}`,
/// `{"error":"text"}` or a JSON array of those (Gemini streams).
pub(crate) fn error_kind(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (None, None);
    };
    let value = match &value {
        serde_json::Value::Array(items) => items.first().unwrap_or(&value),
        _ => &value,
    };
    let Some(error) = value.get("error").filter(|e| e.is_object()) else {
        return (None, None);
    };
    let text = |v: Option<&serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) => Some(s.chars().take(64).collect::<String>()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let kind = text(error.get("type")).or_else(|| text(error.get("status")));
    (kind, text(error.get("code")))
}
