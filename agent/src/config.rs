//! Agent configuration. Precedence, in one place: built-in defaults < TOML
//! file (`--config`) < `TOKENSCOPE_*` environment < command-line flags.
//! Clap resolves env vs flag; [`Config::load`] lays both over the file.
//!
//! The built-in defaults depend on where the agent runs: in a container
//! ([`running_in_container`]) it listens on `0.0.0.0:9464` and logs JSON, as
//! the DaemonSet needs; elsewhere it listens on `127.0.0.1:9464` and logs text.
//! A file key, env variable or flag that sets either one still wins.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid setting {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// Whether this process runs in a container: Kubernetes sets
/// `KUBERNETES_SERVICE_HOST` in every pod, Podman, LXC and systemd-nspawn
/// set `container` (Podman's `/run/.containerenv` is missing under
/// `--read-only`), and Docker writes `/.dockerenv`.
pub fn running_in_container() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::env::var_os("container").is_some_and(|v| !v.is_empty())
        || Path::new("/run/.containerenv").exists()
        || Path::new("/.dockerenv").exists()
}

/// Address the agent listens on in a container: every interface, so the
/// kubelet's probes and Prometheus reach it through the pod IP.
pub const CONTAINER_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    9464,
));

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per event, for log collectors.
    Json,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub agent: AgentConfig,
    pub capture: CaptureConfig,
    pub kubernetes: KubernetesConfig,
    pub export: ExportConfig,
    pub gpu: GpuConfig,
    pub pricing: PricingConfig,
    pub teams: TeamsConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Node name attached to every record; defaults to the host name.
    pub node_name: Option<String>,
    pub log_level: String,
    pub log_format: LogFormat,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            node_name: None,
            log_level: "info".to_string(),
            log_format: LogFormat::Text,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// Plain-HTTP socket payloads (local inference servers, proxies).
    pub sockets: bool,
    /// TLS plaintext through OpenSSL-family uprobes.
    pub tls: bool,
    /// Bytes captured per connection before user space has classified it.
    pub first_window_bytes: u64,
    /// Most bytes captured from one socket or SSL call.
    pub call_cap_bytes: u32,
    pub max_connections: usize,
    /// Process names (as in /proc/<pid>/comm) whose traffic is never
    /// captured; filtered in the kernel.
    pub exclude_comms: Vec<String>,
    /// When set, only these process names are captured.
    pub include_comms: Vec<String>,
    /// TCP ports (local or remote) never captured.
    pub exclude_ports: Vec<u16>,
    /// When set, only connections with one of these ports are captured (plain
    /// sockets; TLS plaintext follows the process filters only).
    pub include_ports: Vec<u16>,
    /// cgroup v2 directories (absolute, or relative to the v2 hierarchy)
    /// whose processes, and their descendants', are never captured.
    pub exclude_cgroups: Vec<String>,
    /// When set, only processes in these cgroups (or below) are captured.
    pub include_cgroups: Vec<String>,
    /// AI endpoint hosts (and their subdomains) beyond the shipped list: TLS
    /// connections to them that no probe decrypts become endpoint records.
    pub endpoint_hosts: Vec<String>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            sockets: true,
            tls: true,
            first_window_bytes: 1024,
            call_cap_bytes: 256 * 1024,
            max_connections: 4096,
            exclude_comms: Vec::new(),
            include_comms: Vec::new(),
            exclude_ports: Vec::new(),
            include_ports: Vec::new(),
            exclude_cgroups: Vec::new(),
            include_cgroups: Vec::new(),
            endpoint_hosts: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesConfig {
    pub enabled: bool,
    /// Pod label naming the owning team; the namespace's label of the same name is the fallback.
    pub team_label: String,
    /// Annotation naming the team, looked up after the label of the same
    /// object (pod, then namespace); empty for none. The namespace name is the
    /// last fallback.
    pub team_annotation: String,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            enabled: false,
            team_label: "team".to_string(),
            team_annotation: "team".to_string(),
        }
    }
}

/// Teams of processes in no pod (off Kubernetes, or host services on a node).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeamsConfig {
    /// systemd unit (`inference.service`) → team; looked up first.
    pub units: std::collections::BTreeMap<String, String>,
    /// User name → team.
    pub users: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    Grpc,
    Http,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// Address of the HTTP server (/metrics, /healthz, /readyz, /api/v1/*).
    pub listen: SocketAddr,
    /// OTLP collector endpoint; none disables OTLP.
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: OtlpProtocol,
    pub otlp_interval_s: u64,
    /// JSON Lines file of every call; none disables it.
    pub events_path: Option<PathBuf>,
    pub events_max_bytes: u64,
    pub events_keep: usize,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::Grpc,
            otlp_interval_s: 10,
            events_path: None,
            events_max_bytes: 100 * 1024 * 1024,
            events_keep: 5,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GpuSourceKind {
    #[serde(alias = "off")]
    #[value(alias = "off")]
    None,
    Nvml,
    Replay,
}

/// `--gpu`: `nvml`, `off` (or `none`), `replay` (with `--gpu-replay FILE`) or `replay:FILE`.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuFlag {
    pub source: GpuSourceKind,
    pub replay_path: Option<PathBuf>,
}

fn parse_gpu_flag(text: &str) -> Result<GpuFlag, String> {
    if let Some(path) = text.strip_prefix("replay:") {
        if path.is_empty() {
            return Err("replay: needs a file, as in replay:/var/lib/gpu.jsonl".to_owned());
        }
        return Ok(GpuFlag {
            source: GpuSourceKind::Replay,
            replay_path: Some(PathBuf::from(path)),
        });
    }
    let source = <GpuSourceKind as clap::ValueEnum>::from_str(text, true).map_err(|_| {
        format!("`{text}` is not a GPU source: use nvml, replay:FILE, replay or off")
    })?;
    Ok(GpuFlag {
        source,
        replay_path: None,
    })
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuConfig {
    pub source: GpuSourceKind,
    pub replay_path: Option<PathBuf>,
    pub usd_per_gpu_hour: f64,
    pub interval_ms: u64,
    /// Self-hosted calls are held this long, then get their share of the window's GPU time.
    pub window_s: u64,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            source: GpuSourceKind::None,
            replay_path: None,
            usd_per_gpu_hour: 0.0,
            interval_ms: 1000,
            window_s: 10,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PricingConfig {
    /// Extra price catalogues (TOML, or LiteLLM JSON), later ones win.
    pub catalogues: Vec<PathBuf>,
}

/// Settings that env and flags may override (clap fills env and flags).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// TOML config file.
    #[arg(long, env = "TOKENSCOPE_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "TOKENSCOPE_NODE_NAME")]
    pub node_name: Option<String>,
    /// error, warn, info, debug or trace.
    #[arg(long, env = "TOKENSCOPE_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// text or json; json by default in a container.
    #[arg(long, env = "TOKENSCOPE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    #[arg(long, env = "TOKENSCOPE_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[arg(long, env = "TOKENSCOPE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    #[arg(long, env = "TOKENSCOPE_OTLP_PROTOCOL")]
    pub otlp_protocol: Option<OtlpProtocol>,
    #[arg(long, env = "TOKENSCOPE_OTLP_INTERVAL_S")]
    pub otlp_interval_s: Option<u64>,
    /// Write every call as a JSON line to this file.
    #[arg(long, env = "TOKENSCOPE_EVENTS")]
    pub events: Option<PathBuf>,
    #[arg(long, env = "TOKENSCOPE_KUBERNETES")]
    pub kubernetes: Option<bool>,
    /// GPU source: nvml, replay:FILE (JSON Lines samples), or off.
    #[arg(long, env = "TOKENSCOPE_GPU", value_parser = parse_gpu_flag)]
    pub gpu: Option<GpuFlag>,
    /// GPU samples to replay (JSON Lines), with `--gpu replay`.
    #[arg(long, env = "TOKENSCOPE_GPU_REPLAY")]
    pub gpu_replay: Option<PathBuf>,
    #[arg(long, env = "TOKENSCOPE_USD_PER_GPU_HOUR")]
    pub usd_per_gpu_hour: Option<f64>,
    /// Seconds self-hosted calls wait for their GPU share.
    #[arg(long, env = "TOKENSCOPE_GPU_WINDOW_S")]
    pub gpu_window_s: Option<u64>,
    #[arg(long, env = "TOKENSCOPE_GPU_INTERVAL_MS")]
    pub gpu_interval_ms: Option<u64>,
    /// Extra price catalogue; repeat for more.
    #[arg(long = "prices", env = "TOKENSCOPE_PRICES", value_delimiter = ',')]
    pub prices: Vec<PathBuf>,
    #[arg(long, env = "TOKENSCOPE_CAPTURE_SOCKETS")]
    pub capture_sockets: Option<bool>,
    #[arg(long, env = "TOKENSCOPE_CAPTURE_TLS")]
    pub capture_tls: Option<bool>,
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Defaults (for a container where [`running_in_container`]), then the
    /// file, then env and flags; validated.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let container = running_in_container();
        let mut config = match &overrides.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Config::layered(&text, container).map_err(|source| ConfigError::Parse {
                    path: path.to_path_buf(),
                    source,
                })?
            }
            None => Config::defaults(container),
        };
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    /// The built-in defaults, in a container or not.
    pub fn defaults(container: bool) -> Config {
        let mut config = Config::default();
        if container {
            config.export.listen = CONTAINER_LISTEN;
            config.agent.log_format = LogFormat::Json;
        }
        config
    }

    /// A TOML file laid over [`Config::defaults`]: only the keys the file
    /// sets replace a default.
    pub fn layered(text: &str, container: bool) -> Result<Config, toml::de::Error> {
        let mut config = Config::from_toml(text)?;
        let table: toml::Table = text.parse()?;
        let set = |section: &str, key: &str| {
            table
                .get(section)
                .and_then(toml::Value::as_table)
                .is_some_and(|t| t.contains_key(key))
        };
        let defaults = Config::defaults(container);
        if !set("export", "listen") {
            config.export.listen = defaults.export.listen;
        }
        if !set("agent", "log_format") {
            config.agent.log_format = defaults.agent.log_format;
        }
        Ok(config)
    }

    pub fn apply(&mut self, o: &Overrides) {
        fn set<T: Clone>(slot: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *slot = v.clone();
            }
        }
        if o.node_name.is_some() {
            self.agent.node_name = o.node_name.clone();
        }
        set(&mut self.agent.log_level, &o.log_level);
        set(&mut self.agent.log_format, &o.log_format);
        set(&mut self.export.listen, &o.listen);
        if o.otlp_endpoint.is_some() {
            self.export.otlp_endpoint = o.otlp_endpoint.clone();
        }
        set(&mut self.export.otlp_protocol, &o.otlp_protocol);
        set(&mut self.export.otlp_interval_s, &o.otlp_interval_s);
        if o.events.is_some() {
            self.export.events_path = o.events.clone();
        }
        set(&mut self.kubernetes.enabled, &o.kubernetes);
        if let Some(flag) = &o.gpu {
            self.gpu.source = flag.source;
            if flag.replay_path.is_some() {
                self.gpu.replay_path = flag.replay_path.clone();
            }
        }
        if o.gpu_replay.is_some() {
            self.gpu.replay_path = o.gpu_replay.clone();
        }
        set(&mut self.gpu.usd_per_gpu_hour, &o.usd_per_gpu_hour);
        set(&mut self.gpu.window_s, &o.gpu_window_s);
        set(&mut self.gpu.interval_ms, &o.gpu_interval_ms);
        self.pricing.catalogues.extend(o.prices.iter().cloned());
        set(&mut self.capture.sockets, &o.capture_sockets);
        set(&mut self.capture.tls, &o.capture_tls);
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| ConfigError::Invalid {
            key,
            reason: reason.to_string(),
        };
        if self.kubernetes.team_label.trim().is_empty() {
            return Err(invalid("kubernetes.team_label", "must not be empty"));
        }
        let c = &self.capture;
        for (key, names) in [
            ("capture.include_comms", &c.include_comms),
            ("capture.exclude_comms", &c.exclude_comms),
        ] {
            if names.iter().any(|n| n.is_empty() || n.len() > 15) {
                return Err(invalid(
                    key,
                    "process names are 1 to 15 bytes (the kernel's comm)",
                ));
            }
        }
        if c.include_comms.iter().any(|n| c.exclude_comms.contains(n))
            || c.include_ports.iter().any(|p| c.exclude_ports.contains(p))
            || c.include_cgroups
                .iter()
                .any(|g| c.exclude_cgroups.contains(g))
        {
            return Err(invalid(
                "capture.include_*",
                "an entry is both included and excluded",
            ));
        }
        if c.include_ports.contains(&0) || c.exclude_ports.contains(&0) {
            return Err(invalid("capture.*_ports", "port 0 is not a port"));
        }
        let blank = |m: &std::collections::BTreeMap<String, String>| {
            m.iter()
                .any(|(k, v)| k.trim().is_empty() || v.trim().is_empty())
        };
        if blank(&self.teams.units) || blank(&self.teams.users) {
            return Err(invalid(
                "teams",
                "unit, user and team names must not be empty",
            ));
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&self.agent.log_level.as_str()) {
            return Err(invalid(
                "agent.log_level",
                "must be error, warn, info, debug or trace",
            ));
        }
        if self.capture.first_window_bytes == 0 || self.capture.first_window_bytes > 1 << 24 {
            return Err(invalid(
                "capture.first_window_bytes",
                "must be between 1 and 16777216",
            ));
        }
        if self.capture.call_cap_bytes == 0
            || self.capture.call_cap_bytes as usize
                > tokenscope_common::CHUNK * tokenscope_common::MAX_CHUNKS as usize
        {
            return Err(invalid(
                "capture.call_cap_bytes",
                "must be between 1 and 262144 (16 chunks of 16 KiB)",
            ));
        }
        if self.capture.max_connections == 0 {
            return Err(invalid("capture.max_connections", "must be at least 1"));
        }
        if self.export.otlp_interval_s == 0 {
            return Err(invalid("export.otlp_interval_s", "must be at least 1"));
        }
        if let Some(endpoint) = &self.export.otlp_endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(invalid(
                    "export.otlp_endpoint",
                    "must start with http:// or https://",
                ));
            }
        }
        if self.gpu.source == GpuSourceKind::Replay && self.gpu.replay_path.is_none() {
            return Err(invalid(
                "gpu.replay_path",
                "is required with gpu.source = replay",
            ));
        }
        if !(self.gpu.usd_per_gpu_hour.is_finite() && self.gpu.usd_per_gpu_hour >= 0.0) {
            return Err(invalid(
                "gpu.usd_per_gpu_hour",
                "must be a non-negative number",
            ));
        }
        if self.gpu.window_s == 0 || self.gpu.window_s * 1000 < self.gpu.interval_ms {
            return Err(invalid(
                "gpu.window_s",
                "must be at least 1 and cover one sampling interval",
            ));
        }
        if self.gpu.interval_ms < 100 {
            return Err(invalid("gpu.interval_ms", "must be at least 100"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        o: Overrides,
    }

    #[test]
    fn capture_filters_are_checked() {
        let ok = Config::from_toml(
            "[capture]\ninclude_comms = [\"python3\"]\nexclude_ports = [22, 5432]\nexclude_cgroups = [\"system.slice/sshd.service\"]\n",
        )
        .unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.capture.exclude_ports, vec![22, 5432]);
        for bad in [
            "[capture]\ninclude_comms = [\"a-name-longer-than-15\"]\n",
            "[capture]\ninclude_ports = [443]\nexclude_ports = [443]\n",
            "[capture]\nexclude_ports = [0]\n",
        ] {
            let config = Config::from_toml(bad).unwrap();
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains("capture."), "{bad}: {error}");
        }
        assert!(Config::from_toml("[capture]\nexclude_ports = [70000]\n").is_err());
    }

    #[test]
    fn file_then_flags_override_defaults() {
        let mut config = Config::from_toml(
            "[export]\nlisten = \"0.0.0.0:9000\"\notlp_endpoint = \"http://c:4317\"\n[gpu]\nusd_per_gpu_hour = 2.5\n",
        )
        .unwrap();
        assert_eq!(config.export.listen.port(), 9000);
        assert_eq!(config.capture, CaptureConfig::default());
        let cli = Cli::parse_from(["t", "--listen", "127.0.0.1:9999", "--usd-per-gpu-hour", "4"]);
        config.apply(&cli.o);
        assert_eq!(config.export.listen.port(), 9999);
        assert_eq!(config.gpu.usd_per_gpu_hour, 4.0);
        assert_eq!(
            config.export.otlp_endpoint.as_deref(),
            Some("http://c:4317")
        );
        config.validate().unwrap();
    }

    #[test]
    fn teams_off_kubernetes_and_the_team_annotation() {
        let config = Config::from_toml(
            "[kubernetes]\nteam_annotation = \"example.com/team\"\n[teams]\nunits = { \"demo.service\" = \"research\" }\nusers = { alice = \"nlp\" }\n",
        )
        .unwrap();
        assert_eq!(config.kubernetes.team_label, "team");
        assert_eq!(config.kubernetes.team_annotation, "example.com/team");
        assert_eq!(config.teams.units["demo.service"], "research");
        assert_eq!(config.teams.users["alice"], "nlp");
        config.validate().unwrap();
        let bad = Config::from_toml("[teams]\nusers = { alice = \"\" }\n").unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("teams"));
        assert!(Config::from_toml("[teams]\ngroups = {}\n").is_err());
    }

    #[test]
    fn gpu_flag_takes_a_replay_path_or_off() {
        let parse = |flag: &str| {
            let mut config = Config::default();
            config.apply(
                &Cli::try_parse_from(["t", "--gpu", flag])
                    .map_err(|e| e.to_string())?
                    .o,
            );
            Ok::<_, String>((config.gpu.source, config.gpu.replay_path))
        };
        assert_eq!(
            parse("replay:/tmp/g.jsonl"),
            Ok((GpuSourceKind::Replay, Some(PathBuf::from("/tmp/g.jsonl"))))
        );
        assert_eq!(parse("nvml"), Ok((GpuSourceKind::Nvml, None)));
        assert_eq!(parse("off"), Ok((GpuSourceKind::None, None)));
        assert_eq!(parse("none"), Ok((GpuSourceKind::None, None)));
        assert!(parse("replay:").is_err());
        assert!(parse("cuda").is_err());
        let file = Config::from_toml("[gpu]\nsource = \"off\"\n").unwrap();
        assert_eq!(file.gpu.source, GpuSourceKind::None);
    }

    #[test]
    fn a_container_listens_on_every_interface_and_logs_json_unless_told_otherwise() {
        let host = Config::defaults(false);
        assert_eq!(host, Config::default());
        assert_eq!(host.export.listen, "127.0.0.1:9464".parse().unwrap());
        assert_eq!(host.agent.log_format, LogFormat::Text);

        let container = Config::defaults(true);
        assert_eq!(container.export.listen, "0.0.0.0:9464".parse().unwrap());
        assert_eq!(container.agent.log_format, LogFormat::Json);
        assert_eq!(container.capture, CaptureConfig::default());

        // A file that sets them wins over the container defaults; one that
        // does not leaves them; other keys still apply.
        let file = "[agent]\nlog_format = \"text\"\n[export]\nlisten = \"127.0.0.1:7000\"\n";
        let config = Config::layered(file, true).unwrap();
        assert_eq!(config.export.listen.port(), 7000);
        assert_eq!(config.agent.log_format, LogFormat::Text);
        let config = Config::layered("[gpu]\nusd_per_gpu_hour = 1.5\n", true).unwrap();
        assert_eq!(config.export.listen, CONTAINER_LISTEN);
        assert_eq!(config.agent.log_format, LogFormat::Json);
        assert_eq!(config.gpu.usd_per_gpu_hour, 1.5);

        // Env and flags win over both.
        let mut config = Config::defaults(true);
        let cli = Cli::parse_from(["t", "--listen", "127.0.0.1:9999", "--log-format", "text"]);
        config.apply(&cli.o);
        assert_eq!(config.export.listen.port(), 9999);
        assert_eq!(config.agent.log_format, LogFormat::Text);

        // A bad file is still an error naming the key, in a container too.
        let err = Config::layered("[agent]\nlog_format = \"xml\"\n", true).unwrap_err();
        assert!(err.to_string().contains("log_format"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_naming_the_key() {
        let err = Config::from_toml("[export]\nlisen = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        let mut config = Config::default();
        config.export.otlp_endpoint = Some("collector:4317".into());
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("export.otlp_endpoint"), "{err}");
        let config = Config {
            gpu: GpuConfig {
                source: GpuSourceKind::Replay,
                ..GpuConfig::default()
            },
            ..Config::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("gpu.replay_path"));
    }
}
