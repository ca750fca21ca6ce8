//! The records that flow from decoding to export.
//!
//! `LlmCall` is what the pure decoders produce from one HTTP exchange: no
//! process, no clock, no price. `CallRecord` is the same call once the agent
//! has attributed, priced and timed it; it is what every exporter reads.

use serde::{Deserialize, Serialize};

pub mod endpoint;
pub mod wire;

/// Who served the call, as recognised from host, path and body shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Openai,
    AzureOpenai,
    Anthropic,
    Gemini,
    Ollama,
    /// Any server speaking the OpenAI wire format (vLLM, TGI, llama.cpp, LiteLLM, Groq, ...).
    OpenaiCompatible,
}

impl Provider {
    /// The value used for `gen_ai.system` / `gen_ai.provider.name`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::AzureOpenai => "azure.ai.openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gcp.gemini",
            Provider::Ollama => "ollama",
            Provider::OpenaiCompatible => "openai_compatible",
        }
    }
}

/// Which API of the provider was called.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    ChatCompletions,
    Completions,
    Responses,
    Embeddings,
    Messages,
    GenerateContent,
    OllamaChat,
    OllamaGenerate,
    OllamaEmbed,
}

impl Api {
    /// The value used for `gen_ai.operation.name`.
    pub fn operation(self) -> &'static str {
        match self {
            Api::ChatCompletions | Api::Messages | Api::OllamaChat | Api::Responses => "chat",
            Api::Completions | Api::OllamaGenerate | Api::GenerateContent => "text_completion",
            Api::Embeddings | Api::OllamaEmbed => "embeddings",
        }
    }
}

/// Token usage exactly as the provider reported it; `None` where it did not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Total input tokens, cached ones included (Anthropic: input + cache creation + cache read).
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// Input tokens served from the provider's prompt cache.
    pub cache_read_tokens: Option<u64>,
    /// Input tokens written to the provider's prompt cache (Anthropic).
    pub cache_creation_tokens: Option<u64>,
    /// Output tokens spent on reasoning (already part of `output_tokens`).
    pub reasoning_tokens: Option<u64>,
    /// True when the provider reported no usage and the counts were estimated from text.
    pub estimated: bool,
}

/// One LLM call as decoded from the bytes of one HTTP exchange.
///
/// Times are in the capture clock (nanoseconds, monotonic); the agent turns
/// them into wall-clock time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlmCall {
    pub provider: Provider,
    pub api: Api,
    pub host: Option<String>,
    pub path: String,
    pub request_model: Option<String>,
    pub response_model: Option<String>,
    pub streaming: bool,
    /// HTTP status of the response; `None` when no response was seen.
    pub status: Option<u16>,
    /// `rate_limited`, `insufficient_quota`, `invalid_request`, `auth`, `server_error`,
    /// `overloaded`, `timeout`, `incomplete` (stream cut), or the provider's own error type.
    pub error_type: Option<String>,
    pub usage: Usage,
    pub finish_reason: Option<String>,
    /// Seconds from a `retry-after` header on a refused call.
    pub retry_after_s: Option<f64>,
    pub start_ns: u64,
    pub request_end_ns: u64,
    pub response_start_ns: Option<u64>,
    /// Time of the first content-bearing event (streaming) or first body byte.
    pub first_token_ns: Option<u64>,
    pub end_ns: u64,
    /// Content-bearing stream events seen (SSE events or NDJSON lines).
    pub output_chunks: u32,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// The request's HTTP method.
    #[serde(default)]
    pub http_method: Option<String>,
    /// The provider's id for the response (`chatcmpl-…`, `msg_…`, `responseId`).
    #[serde(default)]
    pub response_id: Option<String>,
}

/// Which end of the connection the agent watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The process made the call (an application calling an API).
    Client,
    /// The process served the call (a local inference server).
    Server,
}

/// Where a call was attributed to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribution {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cgroup_id: u64,
    pub container_id: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    pub workload: Option<String>,
    pub team: Option<String>,
    pub node: Option<String>,
    /// The process's real user id.
    #[serde(default)]
    pub uid: Option<u32>,
    /// The user name of `uid`, off Kubernetes as well.
    #[serde(default)]
    pub user: Option<String>,
    /// The systemd unit the process runs in (off Kubernetes: the workload).
    #[serde(default)]
    pub systemd_unit: Option<String>,
    /// The container's name in its pod.
    #[serde(default)]
    pub container: Option<String>,
    /// Deployment, StatefulSet, DaemonSet, CronJob, Job, ReplicaSet or Pod.
    #[serde(default)]
    pub workload_kind: Option<String>,
    /// Served calls: the local process that made the call, when the agent
    /// saw its socket (same node); its team is the one charged.
    #[serde(default)]
    pub caller: Option<Caller>,
}

/// The process on this node that made a served call.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub pid: u32,
    pub comm: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub team: Option<String>,
}

/// The GPU share charged to a call served on this node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuShare {
    pub gpu_seconds: f64,
    pub energy_joules: f64,
    pub cost_usd: f64,
}

/// Where a call's GPU share stands; `gpu_share` in the exported record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuShareStatus {
    /// Served on this node: its server process's GPU time in the window, split by tokens.
    Apportioned,
    /// As `apportioned`, from a server on a MIG instance whose time was split
    /// by memory held (no per-process utilisation there).
    ApportionedByMemory,
    /// Served on this node by a process that used no GPU in the window.
    NoGpuUse,
    /// Served on this node but released without a share (too many calls held).
    NotApportioned,
    /// Made to a server on this node: the GPU share is on the server's own record.
    OnServerRecord,
    /// Made to a self-hosted server on another node: its GPU share cannot be
    /// known on this node.
    Remote,
}

/// A call as the exporters see it. It is written and read in the exported
/// layout of [`wire::Event`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "wire::Event", try_from = "wire::AnyRecord")]
pub struct CallRecord {
    pub call: LlmCall,
    pub side: Side,
    /// Wall-clock start, nanoseconds since the Unix epoch.
    pub time_unix_nano: u64,
    pub duration_s: f64,
    pub ttft_s: Option<f64>,
    pub attribution: Attribution,
    pub peer: Option<String>,
    /// The local socket address (`ip:port`), when the socket was seen.
    #[serde(default)]
    pub local: Option<String>,
    /// The TLS library the plaintext came from (`openssl`, `openssl-static`,
    /// `go`); `None` for plain text.
    #[serde(default)]
    pub tls: Option<String>,
    /// Token cost in USD; `None` when the model has no price (never 0 for unknown).
    pub cost_usd: Option<f64>,
    pub gpu: Option<GpuShare>,
    /// Where the GPU share stands; `None` when GPU accounting is off or the
    /// call went to a hosted API priced by token.
    #[serde(default)]
    pub gpu_share: Option<GpuShareStatus>,
}

#[cfg(test)]
impl LlmCall {
    /// A plain served chat call with the given usage, for tests.
    pub(crate) fn served_chat(input: u64, output: u64, start_ns: u64, end_ns: u64) -> LlmCall {
        LlmCall {
            provider: Provider::OpenaiCompatible,
            api: Api::ChatCompletions,
            host: None,
            path: "/v1/chat/completions".into(),
            request_model: Some("llama".into()),
            response_model: None,
            streaming: false,
            status: Some(200),
            error_type: None,
            usage: Usage {
                input_tokens: Some(input),
                output_tokens: Some(output),
                ..Usage::default()
            },
            finish_reason: None,
            retry_after_s: None,
            start_ns,
            request_end_ns: start_ns,
            response_start_ns: None,
            first_token_ns: None,
            end_ns,
            output_chunks: 0,
            bytes_sent: 0,
            bytes_received: 0,
            http_method: Some("POST".into()),
            response_id: None,
        }
    }
}
