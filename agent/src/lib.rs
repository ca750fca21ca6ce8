//! Tokenscope: watches LLM traffic on a node with eBPF and turns it into
//! per-pod, per-team, per-model calls, tokens, latency, cost and GPU use.
//!
//! Data flows one way: probes → events → streams → protocols → providers →
//! attribution / gpu → pricing → export. `daemon` wires the stages.

pub mod attribution;
pub mod capture;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod events;
pub mod export;
#[doc(hidden)]
pub mod fuzzing;
pub mod gpu;
pub mod pipeline;
pub mod pricing;
pub mod probes;
pub mod protocols;
pub mod providers;
pub mod record;
pub mod report;
pub mod streams;
