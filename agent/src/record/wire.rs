//! The call record as it leaves the agent: JSON Lines, `/api/v1/calls` and
//! what `tokenscope report` reads back.
//!
//! Field names follow the OpenTelemetry GenAI conventions and stay stable:
//! `provider` (a `gen_ai.provider.name` value), `operation`, `server_address`,
//! `server_port`, `http_method`, `url_path`, `http_status`, `request_model`,
//! `response_model`, `response_id`, `stream`, `finish_reasons`, the token
//! counts, `usage_source`, `error_type`, the wall-clock times, `side`, `tls`,
//! `process`, `container_id`, `k8s`, `team`, `cost_usd` and `gpu_seconds`.
//! Capture-clock nanoseconds never leave the agent; reading a record back
//! puts the wall-clock times in their place.

use serde::{Deserialize, Serialize};

use super::{
    Api, Attribution, CallRecord, Caller, GpuShare, GpuShareStatus, LlmCall, Provider, Side, Usage,
};

/// One call, as exported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub provider: String,
    pub operation: String,
    /// The provider API, finer than `operation` (`chat_completions`, `messages`, ...).
    pub api: Api,
    pub server_address: Option<String>,
    pub server_port: Option<u16>,
    pub http_method: Option<String>,
    pub url_path: String,
    pub http_status: Option<u16>,
    pub request_model: Option<String>,
    pub response_model: Option<String>,
    pub response_id: Option<String>,
    pub stream: bool,
    pub finish_reasons: Vec<String>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
    pub cache_creation_input_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
    /// `reported`, `estimated` or `none`: "not reported" is never a 0.
    pub usage_source: UsageSource,
    pub error_type: Option<String>,
    pub retry_after_s: Option<f64>,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub duration_s: f64,
    pub ttft_s: Option<f64>,
    /// Seconds from the request's first byte to its last.
    #[serde(default)]
    pub request_duration_s: Option<f64>,
    /// Seconds from the request's first byte to the response's first byte.
    #[serde(default)]
    pub response_start_s: Option<f64>,
    #[serde(default)]
    pub output_chunks: u32,
    #[serde(default)]
    pub bytes_sent: u64,
    #[serde(default)]
    pub bytes_received: u64,
    pub side: Side,
    /// The TLS library name, or `None` for plain text.
    pub tls: Option<String>,
    pub process: Process,
    #[serde(default)]
    pub cgroup_id: u64,
    #[serde(default)]
    pub systemd_unit: Option<String>,
    pub container_id: Option<String>,
    pub k8s: K8s,
    pub team: Option<String>,
    /// Served calls: the local process that made the call, when seen.
    #[serde(default)]
    pub caller: Option<Caller>,
    /// The peer's address (`ip:port`).
    #[serde(default)]
    pub peer: Option<String>,
    /// The local socket address (`ip:port`).
    #[serde(default)]
    pub local: Option<String>,
    pub cost_usd: Option<f64>,
    pub gpu_seconds: Option<f64>,
    #[serde(default)]
    pub gpu_energy_joules: Option<f64>,
    /// The GPU part of `cost_usd`.
    #[serde(default)]
    pub gpu_cost_usd: Option<f64>,
    /// Where the GPU share stands (`remote`: not knowable on this node).
    #[serde(default)]
    pub gpu_share: Option<GpuShareStatus>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    Reported,
    Estimated,
    None,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub uid: Option<u32>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct K8s {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    pub container: Option<String>,
    pub workload_kind: Option<String>,
    pub workload: Option<String>,
    pub node: Option<String>,
}

/// Whether a usage was reported, estimated or absent.
pub fn usage_source(usage: &Usage) -> UsageSource {
    if usage.estimated {
        UsageSource::Estimated
    } else if usage.input_tokens.is_some() || usage.output_tokens.is_some() {
        UsageSource::Reported
    } else {
        UsageSource::None
    }
}

fn provider_from_name(name: &str) -> Option<Provider> {
    [
        Provider::Openai,
        Provider::AzureOpenai,
        Provider::Anthropic,
        Provider::Gemini,
        Provider::Ollama,
        Provider::OpenaiCompatible,
    ]
    .into_iter()
    .find(|p| p.as_str() == name)
}

/// `host[:port]` without the port, and the port when one was written.
fn split_authority(authority: &str) -> (String, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        if let Some((host, tail)) = rest.split_once(']') {
            let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
            return (host.to_string(), port);
        }
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(port) => (host.to_string(), Some(port)),
            Err(_) => (authority.to_string(), None),
        },
        _ => (authority.to_string(), None),
    }
}

fn addr_port(addr: Option<&str>) -> Option<(String, u16)> {
    let addr: std::net::SocketAddr = addr?.parse().ok()?;
    Some((addr.ip().to_canonical().to_string(), addr.port()))
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl From<CallRecord> for Event {
    fn from(r: CallRecord) -> Event {
        let c = &r.call;
        // The server is the peer for a client-side call and this socket for a served one.
        let server_socket = match r.side {
            Side::Client => addr_port(r.peer.as_deref()),
            Side::Server => addr_port(r.local.as_deref()),
        };
        let (mut server_address, mut server_port) = match c.host.as_deref() {
            Some(host) => {
                let (h, p) = split_authority(host);
                (Some(h), p)
            }
            None => (None, None),
        };
        if let Some((ip, port)) = server_socket {
            server_address.get_or_insert(ip);
            // The socket's port is what was really used, whatever the Host header says.
            server_port = Some(port);
        }
        let start = r.time_unix_nano;
        let duration_ns = c.end_ns.saturating_sub(c.start_ns);
        let since_start = |t: u64| secs(t.saturating_sub(c.start_ns));
        let a = r.attribution;
        Event {
            provider: c.provider.as_str().to_string(),
            operation: c.api.operation().to_string(),
            api: c.api,
            server_address,
            server_port,
            http_method: c.http_method.clone(),
            url_path: c.path.split('?').next().unwrap_or_default().to_string(),
            http_status: c.status,
            request_model: c.request_model.clone(),
            response_model: c.response_model.clone(),
            response_id: c.response_id.clone(),
            stream: c.streaming,
            finish_reasons: c.finish_reason.iter().cloned().collect(),
            input_tokens: c.usage.input_tokens,
            output_tokens: c.usage.output_tokens,
            cache_read_input_tokens: c.usage.cache_read_tokens,
            cache_creation_input_tokens: c.usage.cache_creation_tokens,
            reasoning_tokens: c.usage.reasoning_tokens,
            usage_source: usage_source(&c.usage),
            error_type: c.error_type.clone(),
            retry_after_s: c.retry_after_s,
            start_time_unix_nano: start,
            end_time_unix_nano: start.saturating_add(duration_ns),
            duration_s: r.duration_s,
            ttft_s: r.ttft_s,
            request_duration_s: Some(since_start(c.request_end_ns)),
            response_start_s: c.response_start_ns.map(since_start),
            output_chunks: c.output_chunks,
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
            side: r.side,
            tls: r.tls,
            process: Process {
                pid: a.pid,
                comm: a.comm,
                exe: a.exe,
                uid: a.uid,
                user: a.user,
            },
            cgroup_id: a.cgroup_id,
            systemd_unit: a.systemd_unit,
            container_id: a.container_id,
            k8s: K8s {
                namespace: a.namespace,
                pod: a.pod,
                pod_uid: a.pod_uid,
                container: a.container,
                workload_kind: a.workload_kind,
                workload: a.workload,
                node: a.node,
            },
            team: a.team,
            caller: a.caller,
            peer: r.peer,
            local: r.local,
            cost_usd: r.cost_usd,
            gpu_seconds: r.gpu.as_ref().map(|g| g.gpu_seconds),
            gpu_energy_joules: r.gpu.as_ref().map(|g| g.energy_joules),
            gpu_cost_usd: r.gpu.as_ref().map(|g| g.cost_usd),
            gpu_share: r.gpu_share,
        }
    }
}

/// A record that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("unknown provider {0:?}")]
    Provider(String),
}

impl TryFrom<Event> for CallRecord {
    type Error = WireError;

    fn try_from(e: Event) -> Result<CallRecord, WireError> {
        let provider = provider_from_name(&e.provider).ok_or(WireError::Provider(e.provider))?;
        // Read back, the capture clock is the wall clock.
        let start = e.start_time_unix_nano;
        let at = |s: f64| start.saturating_add((s.max(0.0) * 1e9) as u64);
        let host = match (e.server_address, e.server_port) {
            (Some(h), Some(p)) if h.contains(':') => Some(format!("[{h}]:{p}")),
            (Some(h), Some(p)) => Some(format!("{h}:{p}")),
            (h, _) => h,
        };
        let gpu = e.gpu_seconds.map(|gpu_seconds| GpuShare {
            gpu_seconds,
            energy_joules: e.gpu_energy_joules.unwrap_or(0.0),
            cost_usd: e.gpu_cost_usd.unwrap_or(0.0),
        });
        Ok(CallRecord {
            call: LlmCall {
                provider,
                api: e.api,
                host,
                path: e.url_path,
                request_model: e.request_model,
                response_model: e.response_model,
                streaming: e.stream,
                status: e.http_status,
                error_type: e.error_type,
                usage: Usage {
                    input_tokens: e.input_tokens,
                    output_tokens: e.output_tokens,
                    cache_read_tokens: e.cache_read_input_tokens,
                    cache_creation_tokens: e.cache_creation_input_tokens,
                    reasoning_tokens: e.reasoning_tokens,
                    estimated: e.usage_source == UsageSource::Estimated,
                },
                finish_reason: e.finish_reasons.into_iter().next(),
                retry_after_s: e.retry_after_s,
                start_ns: start,
                request_end_ns: at(e.request_duration_s.unwrap_or(0.0)),
                response_start_ns: e.response_start_s.map(at),
                first_token_ns: e.ttft_s.map(at),
                end_ns: e.end_time_unix_nano,
                output_chunks: e.output_chunks,
                bytes_sent: e.bytes_sent,
                bytes_received: e.bytes_received,
                http_method: e.http_method,
                response_id: e.response_id,
            },
            side: e.side,
            time_unix_nano: start,
            duration_s: e.duration_s,
            ttft_s: e.ttft_s,
            attribution: Attribution {
                pid: e.process.pid,
                comm: e.process.comm,
                exe: e.process.exe,
                cgroup_id: e.cgroup_id,
                container_id: e.container_id,
                namespace: e.k8s.namespace,
                pod: e.k8s.pod,
                pod_uid: e.k8s.pod_uid,
                workload: e.k8s.workload,
                team: e.team,
                node: e.k8s.node,
                uid: e.process.uid,
                user: e.process.user,
                systemd_unit: e.systemd_unit,
                container: e.k8s.container,
                workload_kind: e.k8s.workload_kind,
                caller: e.caller,
            },
            peer: e.peer,
            local: e.local,
            tls: e.tls,
            cost_usd: e.cost_usd,
            gpu,
            gpu_share: e.gpu_share,
        })
    }
}

/// The record layout written before the exported names were fixed; still
/// read so that older event files keep working with `tokenscope report`.
#[derive(Deserialize)]
pub struct Legacy {
    #[serde(flatten)]
    call: LlmCall,
    side: Side,
    time_unix_nano: u64,
    duration_s: f64,
    ttft_s: Option<f64>,
    attribution: Attribution,
    peer: Option<String>,
    cost_usd: Option<f64>,
    gpu: Option<GpuShare>,
}

/// What a line of an events file may hold.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum AnyRecord {
    Current(Box<Event>),
    Legacy(Box<Legacy>),
}

impl TryFrom<AnyRecord> for CallRecord {
    type Error = WireError;

    fn try_from(any: AnyRecord) -> Result<CallRecord, WireError> {
        match any {
            AnyRecord::Current(e) => CallRecord::try_from(*e),
            AnyRecord::Legacy(l) => Ok(CallRecord {
                call: l.call,
                side: l.side,
                time_unix_nano: l.time_unix_nano,
                duration_s: l.duration_s,
                ttft_s: l.ttft_s,
                attribution: l.attribution,
                peer: l.peer,
                local: None,
                tls: None,
                cost_usd: l.cost_usd,
                gpu: l.gpu,
                gpu_share: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> CallRecord {
        let mut call = LlmCall::served_chat(120, 30, 1_000, 2_501_000_000);
        call.host = Some("api.example.com:8443".into());
        call.path = "/v1/chat/completions?key=secret".into();
        call.response_id = Some("chatcmpl-1".into());
        call.first_token_ns = Some(501_000_000);
        call.response_start_ns = Some(401_000_000);
        call.finish_reason = Some("stop".into());
        CallRecord {
            call,
            side: Side::Client,
            time_unix_nano: 1_800_000_000_000_000_000,
            duration_s: 2.5,
            ttft_s: Some(0.5),
            attribution: Attribution {
                pid: 7,
                comm: "python3".into(),
                uid: Some(1000),
                user: Some("alice".into()),
                namespace: Some("ml".into()),
                pod: Some("bot-1".into()),
                workload_kind: Some("Deployment".into()),
                workload: Some("bot".into()),
                team: Some("search".into()),
                ..Attribution::default()
            },
            peer: Some("10.0.0.9:443".into()),
            local: Some("10.0.0.2:51000".into()),
            tls: Some("openssl".into()),
            cost_usd: Some(0.25),
            gpu: None,
            gpu_share: None,
        }
    }

    #[test]
    fn the_exported_names_are_the_documented_ones() {
        let json = serde_json::to_value(record()).unwrap();
        for key in [
            "provider",
            "operation",
            "server_address",
            "server_port",
            "http_method",
            "url_path",
            "http_status",
            "request_model",
            "response_model",
            "response_id",
            "stream",
            "finish_reasons",
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "reasoning_tokens",
            "usage_source",
            "error_type",
            "start_time_unix_nano",
            "end_time_unix_nano",
            "duration_s",
            "ttft_s",
            "side",
            "tls",
            "process",
            "container_id",
            "k8s",
            "team",
            "cost_usd",
            "gpu_seconds",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
        assert_eq!(json["provider"], "openai_compatible");
        assert_eq!(json["operation"], "chat");
        // The socket's port wins over the Host header's.
        assert_eq!(json["server_address"], "api.example.com");
        assert_eq!(json["server_port"], 443);
        assert_eq!(json["url_path"], "/v1/chat/completions");
        assert_eq!(json["usage_source"], "reported");
        assert_eq!(json["finish_reasons"], serde_json::json!(["stop"]));
        assert_eq!(json["process"]["user"], "alice");
        assert_eq!(json["k8s"]["workload_kind"], "Deployment");
        assert_eq!(
            json["end_time_unix_nano"],
            1_800_000_000_000_000_000u64 + 2_501_000_000 - 1_000
        );
        assert!(json.get("start_ns").is_none(), "capture clock stays inside");
    }

    #[test]
    fn a_record_reads_back_with_the_same_figures() {
        let original = record();
        let line = serde_json::to_string(&original).unwrap();
        let back: CallRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back.call.usage, original.call.usage);
        assert_eq!(back.call.provider, original.call.provider);
        assert_eq!(back.call.api, original.call.api);
        assert_eq!(back.attribution.team, original.attribution.team);
        assert_eq!(back.duration_s, original.duration_s);
        assert_eq!(back.ttft_s, original.ttft_s);
        assert_eq!(back.cost_usd, original.cost_usd);
        assert_eq!(back.time_unix_nano, original.time_unix_nano);
        // Exported twice, a record is the same line.
        assert_eq!(serde_json::to_string(&back).unwrap(), line);
    }

    #[test]
    fn estimated_and_missing_usage_are_told_apart() {
        let mut r = record();
        r.call.usage.estimated = true;
        assert_eq!(
            serde_json::to_value(&r).unwrap()["usage_source"],
            "estimated"
        );
        r.call.usage = Usage::default();
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["usage_source"], "none");
        assert!(json["input_tokens"].is_null(), "never a 0 for unknown");
    }

    #[test]
    fn older_event_files_still_read() {
        let line = include_str!("../../../tests/fixtures/report/calls.jsonl")
            .lines()
            .next()
            .unwrap();
        let r: CallRecord = serde_json::from_str(line).unwrap();
        assert!(r.call.usage.input_tokens.is_some() || r.call.status.is_some());
    }

    #[test]
    fn an_unknown_provider_is_an_error() {
        let mut json = serde_json::to_value(record()).unwrap();
        json["provider"] = "nobody".into();
        assert!(serde_json::from_value::<CallRecord>(json).is_err());
    }
}
