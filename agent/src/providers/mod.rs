//! Turns the HTTP events of one connection into LLM calls.
//!
//! Pure code: no I/O, no clock. `CallAssembler` keeps one state per open
//! exchange, recognises the provider from host, path and body shape, frames
//! the response body (JSON, SSE, NDJSON or a streamed JSON array) and hands
//! each decoded item to the provider's decoder. Adding a provider means one
//! decoder module and one arm in `decode.rs` and `detect.rs`.

mod anthropic;
mod assemble;
mod decode;
mod detect;
pub mod estimate;
mod gemini;
mod json;
pub mod ndjson;
mod ollama;
mod openai;
pub mod sse;
mod status;
mod tgi;

pub use assemble::{AssembleStats, CallAssembler, Limits};
pub use detect::provider_for_host;

#[cfg(test)]
mod tests;
