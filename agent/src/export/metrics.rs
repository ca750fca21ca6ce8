//! Cumulative per-label-set aggregates of calls, tokens, cost, latency and GPU use.
//!
//! `Metrics::record` is on the agent's hot path: one mutex, one hash lookup,
//! a few additions. The label set is bounded: once `series_limit` distinct
//! label sets exist, new ones fold into an overflow set whose high-cardinality
//! labels read `__overflow__`, and every folded call is counted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::Serialize;

use crate::record::{CallRecord, Side};

mod families;
pub use families::*;

#[cfg(test)]
mod tests;

/// Label value used for the high-cardinality labels of a folded series.
pub const OVERFLOW: &str = "__overflow__";
/// Default number of distinct label sets kept before folding.
pub const DEFAULT_SERIES_LIMIT: usize = 10_000;
/// Bound on distinct agent self-metric series (name + labels).
const AGENT_SERIES_LIMIT: usize = 1_024;
/// Bound on distinct float series (family + attributes).
const FLOAT_SERIES_LIMIT: usize = 4_096;

/// `gen_ai.client.operation.duration` bucket boundaries (GenAI semantic conventions), seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// `gen_ai.server.time_to_first_token` bucket boundaries (GenAI semantic conventions), seconds.
pub const TTFT_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// `gen_ai.client.token.usage` bucket boundaries (GenAI semantic conventions), tokens.
pub const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// Token kinds, in the order of `SeriesData::tokens`.
pub const TOKEN_TYPES: [&str; 5] = [
    "input",
    "output",
    "cache_read",
    "cache_creation",
    "reasoning",
];

/// The bounded set of labels every call series is keyed by. Missing values are empty strings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct LabelSet {
    /// `gen_ai.system`.
    pub provider: String,
    pub request_model: String,
    pub response_model: String,
    pub operation: String,
    pub side: String,
    pub error_type: String,
    pub namespace: String,
    pub pod: String,
    pub workload: String,
    /// Deployment, StatefulSet, DaemonSet, CronJob, Job, ReplicaSet or Pod.
    pub workload_kind: String,
    pub team: String,
    pub node: String,
    /// The API host called (`server.address`).
    pub server_address: String,
}

impl LabelSet {
    pub fn from_record(record: &CallRecord) -> Self {
        let call = &record.call;
        let attr = &record.attribution;
        let text = |value: &Option<String>| value.clone().unwrap_or_default();
        LabelSet {
            provider: call.provider.as_str().to_owned(),
            request_model: text(&call.request_model),
            response_model: text(&call.response_model),
            operation: call.api.operation().to_owned(),
            side: side_str(record.side).to_owned(),
            error_type: error_type(record).unwrap_or_default(),
            namespace: text(&attr.namespace),
            pod: text(&attr.pod),
            workload: text(&attr.workload),
            workload_kind: text(&attr.workload_kind),
            team: text(&attr.team),
            node: text(&attr.node),
            server_address: call
                .host
                .as_deref()
                .map(strip_port)
                .unwrap_or_default()
                .to_owned(),
        }
    }

    /// The set a new series folds into once the limit is reached. Provider,
    /// operation and side are small closed sets and are kept.
    pub fn overflow(&self) -> Self {
        let folded = || OVERFLOW.to_owned();
        LabelSet {
            provider: self.provider.clone(),
            request_model: folded(),
            response_model: folded(),
            operation: self.operation.clone(),
            side: self.side.clone(),
            error_type: folded(),
            namespace: folded(),
            pod: folded(),
            workload: folded(),
            workload_kind: folded(),
            team: folded(),
            node: folded(),
            server_address: folded(),
        }
    }

    /// `(name, value)` pairs in a fixed order, for exposition formats.
    pub fn pairs(&self) -> [(&'static str, &str); 13] {
        [
            ("provider", &self.provider),
            ("request_model", &self.request_model),
            ("response_model", &self.response_model),
            ("operation", &self.operation),
            ("side", &self.side),
            ("error_type", &self.error_type),
            ("namespace", &self.namespace),
            ("pod", &self.pod),
            ("workload", &self.workload),
            ("workload_kind", &self.workload_kind),
            ("team", &self.team),
            ("node", &self.node),
            ("server_address", &self.server_address),
        ]
    }
}

/// `host` of `host:port` (and `[v6]` of `[v6]:port`).
fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// The OpenTelemetry `k8s.<kind>.name` attribute for a workload kind.
pub fn workload_attribute(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Deployment" => "k8s.deployment.name",
        "StatefulSet" => "k8s.statefulset.name",
        "DaemonSet" => "k8s.daemonset.name",
        "CronJob" => "k8s.cronjob.name",
        "Job" => "k8s.job.name",
        "ReplicaSet" => "k8s.replicaset.name",
        _ => return None,
    })
}

pub fn side_str(side: Side) -> &'static str {
    match side {
        Side::Client => "client",
        Side::Server => "server",
    }
}

/// The error class of a call: the decoder's `error_type`, else derived from an HTTP error status.
pub fn error_type(record: &CallRecord) -> Option<String> {
    if let Some(kind) = &record.call.error_type {
        return Some(kind.clone());
    }
    match record.call.status {
        Some(429) => Some("rate_limited".to_owned()),
        Some(status) if status >= 400 => Some(status.to_string()),
        _ => None,
    }
}

pub fn is_rate_limited(record: &CallRecord) -> bool {
    record.call.status == Some(429) || record.call.error_type.as_deref() == Some("rate_limited")
}

/// Token counts in `TOKEN_TYPES` order; `None` where the provider did not report the kind.
pub fn token_counts(record: &CallRecord) -> [Option<u64>; 5] {
    let usage = &record.call.usage;
    [
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_creation_tokens,
        usage.reasoning_tokens,
    ]
}

/// A fixed-boundary cumulative histogram.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Histogram {
    pub bounds: &'static [f64],
    /// Non-cumulative counts; `counts[i]` is for `value <= bounds[i]`, the last one is `+Inf`.
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Adds one observation; NaN and negative values are ignored (a clock step, not a latency).
    pub fn observe(&mut self, value: f64) {
        if !value.is_finite() || value < 0.0 {
            return;
        }
        let slot = self.bounds.partition_point(|bound| *bound < value);
        if let Some(count) = self.counts.get_mut(slot) {
            *count += 1;
        }
        self.sum += value;
        self.count += 1;
    }
}

/// Cumulative values of one label set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeriesData {
    pub calls: u64,
    pub tokens: [u64; 5],
    pub cost_usd: f64,
    pub priced_calls: u64,
    pub unpriced_calls: u64,
    pub duration: Histogram,
    pub ttft: Histogram,
    pub rate_limited: u64,
    pub errors: u64,
    pub gpu_calls: u64,
    pub gpu_seconds: f64,
    pub gpu_energy_joules: f64,
    pub gpu_cost_usd: f64,
}

impl Default for SeriesData {
    fn default() -> Self {
        SeriesData {
            calls: 0,
            tokens: [0; 5],
            cost_usd: 0.0,
            priced_calls: 0,
            unpriced_calls: 0,
            duration: Histogram::new(&DURATION_BUCKETS),
            ttft: Histogram::new(&TTFT_BUCKETS),
            rate_limited: 0,
            errors: 0,
            gpu_calls: 0,
            gpu_seconds: 0.0,
            gpu_energy_joules: 0.0,
            gpu_cost_usd: 0.0,
        }
    }
}

impl SeriesData {
    fn add(&mut self, record: &CallRecord) {
        self.calls += 1;
        for (total, count) in self.tokens.iter_mut().zip(token_counts(record)) {
            *total = total.saturating_add(count.unwrap_or(0));
        }
        match record.cost_usd {
            Some(cost) if cost.is_finite() && cost >= 0.0 => {
                self.cost_usd += cost;
                self.priced_calls += 1;
            }
            _ => self.unpriced_calls += 1,
        }
        self.duration.observe(record.duration_s);
        if let Some(ttft) = record.ttft_s {
            self.ttft.observe(ttft);
        }
        if is_rate_limited(record) {
            self.rate_limited += 1;
        }
        if error_type(record).is_some() {
            self.errors += 1;
        }
        if let Some(gpu) = &record.gpu {
            self.gpu_calls += 1;
            self.gpu_seconds += finite_or_zero(gpu.gpu_seconds);
            self.gpu_energy_joules += finite_or_zero(gpu.energy_joules);
            self.gpu_cost_usd += finite_or_zero(gpu.cost_usd);
        }
    }
}

fn finite_or_zero(value: f64) -> f64 {
    if value.is_finite() && value >= 0.0 {
        value
    } else {
        0.0
    }
}

/// Admits label sets up to a limit and folds the rest; shared by every exporter
/// that keys series by `LabelSet`, so Prometheus and OTLP fold the same way.
#[derive(Debug)]
pub struct SeriesGate {
    limit: usize,
    seen: Mutex<HashSet<LabelSet>>,
    folded: AtomicU64,
}

impl SeriesGate {
    pub fn new(limit: usize) -> Self {
        SeriesGate {
            limit,
            seen: Mutex::new(HashSet::new()),
            folded: AtomicU64::new(0),
        }
    }

    /// The label set to record under: `labels` itself, or its overflow set past the limit.
    pub fn admit(&self, labels: LabelSet) -> LabelSet {
        let mut seen = lock(&self.seen);
        if seen.contains(&labels) {
            return labels;
        }
        if seen.len() < self.limit {
            seen.insert(labels.clone());
            return labels;
        }
        self.folded.fetch_add(1, Ordering::Relaxed);
        labels.overflow()
    }

    /// Calls recorded under an overflow set because the limit was reached.
    pub fn folded(&self) -> u64 {
        self.folded.load(Ordering::Relaxed)
    }
}

/// One self-metric of the agent: a name, labels and a value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct AgentKey {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

/// The Prometheus label name of an OpenTelemetry attribute key.
pub fn prometheus_label(key: &str) -> String {
    match key {
        "k8s.namespace.name" => "namespace".to_owned(),
        "k8s.pod.name" => "pod".to_owned(),
        "tokenscope.workload" => "workload".to_owned(),
        "tokenscope.team" => "team".to_owned(),
        other => other.replace(['.', '-'], "_"),
    }
}

/// One float series: its family, attributes (OpenTelemetry keys, sorted) and value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FloatPoint {
    pub family: &'static FloatFamily,
    pub attributes: Vec<(String, String)>,
    pub value: f64,
}

type FloatKey = (&'static str, Vec<(String, String)>);

#[derive(Debug, Default)]
struct Inner {
    series: HashMap<LabelSet, SeriesData>,
    folded: u64,
    agent_counters: BTreeMap<AgentKey, u64>,
    agent_gauges: BTreeMap<AgentKey, f64>,
    agent_rejected: u64,
    floats: BTreeMap<FloatKey, (&'static FloatFamily, f64)>,
}

/// A consistent copy of every aggregate, for rendering.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MetricsSnapshot {
    pub series: Vec<(LabelSet, SeriesData)>,
    /// Calls folded into overflow label sets.
    pub folded: u64,
    pub agent_counters: Vec<(AgentKey, u64)>,
    pub agent_gauges: Vec<(AgentKey, f64)>,
    /// Self-metric updates refused for a bad name or past the series bound.
    pub agent_rejected: u64,
    /// Float families ([`FLOAT_FAMILIES`]), sorted by family and attributes.
    pub floats: Vec<FloatPoint>,
}

/// The thread-safe cumulative aggregator.
#[derive(Debug)]
pub struct Metrics {
    limit: usize,
    inner: Mutex<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(DEFAULT_SERIES_LIMIT)
    }
}

impl Metrics {
    pub fn new(series_limit: usize) -> Self {
        Metrics {
            limit: series_limit,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn record(&self, record: &CallRecord) {
        let labels = LabelSet::from_record(record);
        let mut inner = lock(&self.inner);
        let at_limit = inner.series.len() >= self.limit;
        let key = if at_limit && !inner.series.contains_key(&labels) {
            inner.folded += 1;
            labels.overflow()
        } else {
            labels
        };
        inner.series.entry(key).or_default().add(record);
    }

    /// Sets a cumulative agent counter such as `tokenscope_capture_dropped_total{reason="ringbuf_full"}`.
    /// Returns false (and counts it) when the name is not a valid metric name or the bound is hit.
    pub fn set_agent_counter(&self, name: &str, labels: &[(&str, &str)], value: u64) -> bool {
        let Some(key) = agent_key(name, labels) else {
            lock(&self.inner).agent_rejected += 1;
            return false;
        };
        let mut inner = lock(&self.inner);
        let room = inner.agent_counters.len() + inner.agent_gauges.len() < AGENT_SERIES_LIMIT;
        if let Some(slot) = inner.agent_counters.get_mut(&key) {
            *slot = value;
        } else if room {
            inner.agent_counters.insert(key, value);
        } else {
            inner.agent_rejected += 1;
            return false;
        }
        true
    }

    /// Sets an agent gauge such as `tokenscope_process_resident_memory_bytes`.
    pub fn set_agent_gauge(&self, name: &str, labels: &[(&str, &str)], value: f64) -> bool {
        let Some(key) = agent_key(name, labels) else {
            lock(&self.inner).agent_rejected += 1;
            return false;
        };
        let mut inner = lock(&self.inner);
        let room = inner.agent_counters.len() + inner.agent_gauges.len() < AGENT_SERIES_LIMIT;
        if let Some(slot) = inner.agent_gauges.get_mut(&key) {
            *slot = value;
        } else if room {
            inner.agent_gauges.insert(key, value);
        } else {
            inner.agent_rejected += 1;
            return false;
        }
        true
    }

    /// Adds `delta` to a float counter; refused (and counted) when it is negative
    /// or not finite, so the series never goes down. `family` must be a counter.
    pub fn add_float(
        &self,
        family: &'static FloatFamily,
        attributes: &[(&str, &str)],
        delta: f64,
    ) -> bool {
        if family.kind != FloatKind::Counter || !delta.is_finite() || delta < 0.0 {
            lock(&self.inner).agent_rejected += 1;
            return false;
        }
        self.update_float(family, attributes, |slot| *slot += delta)
    }

    /// Sets a float gauge or up-down counter to its current value.
    pub fn set_float(
        &self,
        family: &'static FloatFamily,
        attributes: &[(&str, &str)],
        value: f64,
    ) -> bool {
        if family.kind == FloatKind::Counter || !value.is_finite() {
            lock(&self.inner).agent_rejected += 1;
            return false;
        }
        self.update_float(family, attributes, |slot| *slot = value)
    }

    fn update_float(
        &self,
        family: &'static FloatFamily,
        attributes: &[(&str, &str)],
        update: impl FnOnce(&mut f64),
    ) -> bool {
        let mut attributes: Vec<(String, String)> = attributes
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        attributes.sort();
        let mut inner = lock(&self.inner);
        let room = inner.floats.len() < FLOAT_SERIES_LIMIT;
        let key = (family.otel_name, attributes);
        if let Some((_, slot)) = inner.floats.get_mut(&key) {
            update(slot);
        } else if room {
            let mut value = 0.0;
            update(&mut value);
            inner.floats.insert(key, (family, value));
        } else {
            inner.agent_rejected += 1;
            return false;
        }
        true
    }

    /// The current series of one float family (for OTLP observable instruments).
    pub fn float_points(&self, family: &FloatFamily) -> Vec<(Vec<(String, String)>, f64)> {
        lock(&self.inner)
            .floats
            .iter()
            .filter(|((name, _), _)| *name == family.otel_name)
            .map(|((_, attributes), (_, value))| (attributes.clone(), *value))
            .collect()
    }

    /// Samples this process's resident memory, CPU time and open descriptors from `/proc/self`.
    /// Missing files (not Linux) leave the gauges unset.
    pub fn refresh_process_gauges(&self) {
        if let Some(process) = ProcessSample::read() {
            self.set_agent_gauge(
                "tokenscope_process_resident_memory_bytes",
                &[],
                process.resident_bytes as f64,
            );
            self.set_agent_gauge("tokenscope_process_cpu_seconds", &[], process.cpu_seconds);
            self.set_agent_gauge("tokenscope_process_open_fds", &[], process.open_fds as f64);
        }
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let inner = lock(&self.inner);
        let mut series: Vec<(LabelSet, SeriesData)> = inner
            .series
            .iter()
            .map(|(labels, data)| (labels.clone(), data.clone()))
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        MetricsSnapshot {
            series,
            folded: inner.folded,
            agent_counters: inner
                .agent_counters
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            agent_gauges: inner
                .agent_gauges
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            agent_rejected: inner.agent_rejected,
            floats: inner
                .floats
                .iter()
                .map(|((_, attributes), (family, value))| FloatPoint {
                    family,
                    attributes: attributes.clone(),
                    value: *value,
                })
                .collect(),
        }
    }
}

/// A lock that survives a panicked holder: the aggregates stay usable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Prometheus metric and label name grammar: `[a-zA-Z_:][a-zA-Z0-9_:]*` (labels without `:`).
pub fn valid_name(name: &str, allow_colon: bool) -> bool {
    let mut chars = name.chars();
    let head_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (allow_colon && c == ':'));
    head_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (allow_colon && c == ':'))
}

fn agent_key(name: &str, labels: &[(&str, &str)]) -> Option<AgentKey> {
    if !valid_name(name, true) || labels.iter().any(|(k, _)| !valid_name(k, false)) {
        return None;
    }
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    Some(AgentKey {
        name: name.to_owned(),
        labels,
    })
}

struct ProcessSample {
    resident_bytes: u64,
    cpu_seconds: f64,
    open_fds: u64,
}

impl ProcessSample {
    fn read() -> Option<Self> {
        // Linux fixes the page size at 4 KiB on the platforms the agent supports,
        // and USER_HZ at 100 for every architecture's ABI.
        const PAGE: u64 = 4096;
        const USER_HZ: f64 = 100.0;
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the parenthesised comm, which may itself contain spaces.
        let after_comm = stat.rsplit_once(')')?.1;
        let mut fields = after_comm.split_whitespace();
        let utime: f64 = fields.nth(11)?.parse().ok()?;
        let stime: f64 = fields.next()?.parse().ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|dir| dir.count() as u64)
            .unwrap_or(0);
        Some(ProcessSample {
            resident_bytes: resident_pages.saturating_mul(PAGE),
            cpu_seconds: (utime + stime) / USER_HZ,
            open_fds,
        })
    }
}
