//! Export: the last stage. Call records in; Prometheus, OTLP and JSON Lines out.
//!
//! The agent calls [`Exporters::record`] once per finished call. It updates the
//! in-process aggregates ([`metrics::Metrics`], which `/metrics` and
//! `/api/v1/usage` read), the ring of recent calls, and then every sink
//! ([`Exporter`]): the JSON Lines writer and the OTLP exporter. Only this
//! module touches OpenTelemetry.

pub mod jsonl;
pub mod metrics;
pub mod otlp;
mod otlp_endpoint;
pub mod prometheus;
pub mod server;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::record::{endpoint::EndpointConnection, CallRecord};
use metrics::{lock, Metrics, DEFAULT_SERIES_LIMIT};

/// Errors of starting, flushing or stopping an exporter.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot open or create {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the exporter thread")]
    Thread(#[source] std::io::Error),
    #[error("the exporter is stopped")]
    Stopped,
    #[error("flush did not finish in time")]
    FlushTimeout,
    #[error("OTLP exporter could not be built")]
    OtlpBuild(#[source] opentelemetry_otlp::ExporterBuildError),
    #[error("OTLP export failed")]
    Otlp(#[source] opentelemetry_sdk::error::OTelSdkError),
    #[error("OTLP export needs a Tokio runtime")]
    NoRuntime,
}

/// One cumulative self-counter of a sink (queue drops, write errors, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelfCounter {
    pub name: &'static str,
    pub labels: Vec<(&'static str, &'static str)>,
    pub value: u64,
}

impl SelfCounter {
    pub fn new(name: &'static str, labels: &[(&'static str, &'static str)], value: u64) -> Self {
        SelfCounter {
            name,
            labels: labels.to_vec(),
            value,
        }
    }
}

/// A destination for call records.
///
/// Contract:
/// - `export` is called on the agent's pipeline thread for every finished call.
///   It must not block on I/O, must not panic, and must bound its memory: a sink
///   that cannot keep up drops the record and counts it in `self_counters`.
/// - `flush` and `shutdown` may block (up to the sink's own timeout); call them
///   from a blocking context (`spawn_blocking`), never on an async worker.
///   `shutdown` writes out what the sink holds, as `flush` would, then stops it.
///   After `shutdown`, `export` is a counted drop and `flush` is `Err(Stopped)`.
/// - `self_counters` values are cumulative and never go down.
pub trait Exporter: Send + Sync {
    fn name(&self) -> &'static str;
    fn export(&self, record: &CallRecord);
    /// An AI endpoint connection whose plaintext was out of reach. Sinks
    /// without a place for it ignore it (its figures are metrics as well).
    fn export_endpoint(&self, _connection: &EndpointConnection) {}
    fn flush(&self) -> Result<(), ExportError>;
    fn shutdown(&self) -> Result<(), ExportError>;
    fn self_counters(&self) -> Vec<SelfCounter> {
        Vec::new()
    }
}

/// Keeps every exported record in memory, up to a bound; for tests.
#[derive(Debug)]
pub struct InMemoryExporter {
    capacity: usize,
    records: Mutex<Vec<CallRecord>>,
    dropped: std::sync::atomic::AtomicU64,
    stopped: AtomicBool,
}

impl InMemoryExporter {
    pub fn new(capacity: usize) -> Self {
        InMemoryExporter {
            capacity,
            records: Mutex::new(Vec::new()),
            dropped: Default::default(),
            stopped: AtomicBool::new(false),
        }
    }

    pub fn records(&self) -> Vec<CallRecord> {
        lock(&self.records).clone()
    }
}

impl Exporter for InMemoryExporter {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn export(&self, record: &CallRecord) {
        let mut records = lock(&self.records);
        if self.stopped.load(Ordering::Relaxed) || records.len() >= self.capacity {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        records.push(redacted(record));
    }

    fn flush(&self) -> Result<(), ExportError> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(ExportError::Stopped);
        }
        Ok(())
    }

    fn shutdown(&self) -> Result<(), ExportError> {
        self.stopped.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn self_counters(&self) -> Vec<SelfCounter> {
        vec![SelfCounter::new(
            "tokenscope_memory_records_dropped_total",
            &[],
            self.dropped.load(Ordering::Relaxed),
        )]
    }
}

/// The record as it may leave the node: the URL query is removed, since
/// Gemini and others accept the API key as `?key=`.
pub fn redacted(record: &CallRecord) -> CallRecord {
    let mut record = record.clone();
    if let Some((path, _query)) = record.call.path.split_once('?') {
        record.call.path = path.to_owned();
    }
    record
}

/// The last N calls, newest last, for `/api/v1/calls`.
#[derive(Debug)]
pub struct RecentCalls {
    capacity: usize,
    calls: Mutex<VecDeque<CallRecord>>,
}

impl RecentCalls {
    pub fn new(capacity: usize) -> Self {
        RecentCalls {
            capacity,
            calls: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
        }
    }

    pub fn push(&self, record: &CallRecord) {
        if self.capacity == 0 {
            return;
        }
        let mut calls = lock(&self.calls);
        while calls.len() >= self.capacity {
            calls.pop_front();
        }
        calls.push_back(redacted(record));
    }

    /// Up to `limit` calls, newest first.
    pub fn latest(&self, limit: usize) -> Vec<CallRecord> {
        lock(&self.calls)
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// What the HTTP server reads; shared between the pipeline and the server.
pub struct ExportState {
    pub metrics: Arc<Metrics>,
    pub recent: RecentCalls,
    ready: AtomicBool,
    sinks: Vec<Arc<dyn Exporter>>,
}

impl ExportState {
    /// `/readyz` answers 200 once the agent sets this (probes attached, config loaded).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The Prometheus exposition, with sink self-counters and process gauges refreshed.
    pub fn render_prometheus(&self) -> String {
        for sink in &self.sinks {
            for counter in sink.self_counters() {
                self.metrics
                    .set_agent_counter(counter.name, &counter.labels, counter.value);
            }
        }
        self.metrics.refresh_process_gauges();
        prometheus::render(&self.metrics.snapshot())
    }
}

/// The single entry point of the export stage.
pub struct Exporters {
    state: Arc<ExportState>,
}

/// Builds [`Exporters`]; sinks are fixed once built.
pub struct ExportersBuilder {
    series_limit: usize,
    recent_capacity: usize,
    sinks: Vec<Arc<dyn Exporter>>,
}

impl ExportersBuilder {
    /// Distinct label sets kept before folding into `__overflow__`.
    pub fn series_limit(mut self, limit: usize) -> Self {
        self.series_limit = limit;
        self
    }

    /// Calls kept for `/api/v1/calls`.
    pub fn recent_capacity(mut self, capacity: usize) -> Self {
        self.recent_capacity = capacity;
        self
    }

    pub fn sink(mut self, sink: Arc<dyn Exporter>) -> Self {
        self.sinks.push(sink);
        self
    }

    pub fn build(self) -> Exporters {
        Exporters {
            state: Arc::new(ExportState {
                metrics: Arc::new(Metrics::new(self.series_limit)),
                recent: RecentCalls::new(self.recent_capacity),
                ready: AtomicBool::new(false),
                sinks: self.sinks,
            }),
        }
    }
}

impl Exporters {
    pub fn builder() -> ExportersBuilder {
        ExportersBuilder {
            series_limit: DEFAULT_SERIES_LIMIT,
            recent_capacity: 1_000,
            sinks: Vec::new(),
        }
    }

    /// Fans one finished call out to the aggregates, the recent ring and every sink. Never blocks on I/O.
    pub fn record(&self, record: &CallRecord) {
        self.state.metrics.record(record);
        self.state.recent.push(record);
        for sink in &self.state.sinks {
            sink.export(record);
        }
    }

    /// Hands an endpoint connection to every sink.
    pub fn record_endpoint(&self, connection: &EndpointConnection) {
        for sink in &self.state.sinks {
            sink.export_endpoint(connection);
        }
    }

    /// For [`server::serve`] and for setting agent self-counters.
    pub fn state(&self) -> Arc<ExportState> {
        Arc::clone(&self.state)
    }

    /// Flushes every sink; blocking (see the [`Exporter`] contract). Returns the first error.
    pub fn flush(&self) -> Result<(), ExportError> {
        let mut first = Ok(());
        for sink in &self.state.sinks {
            if let Err(error) = sink.flush() {
                tracing::warn!(event = "export_flush_failed", sink = sink.name(), %error);
                if first.is_ok() {
                    first = Err(error);
                }
            }
        }
        first
    }

    /// Stops every sink, each writing out what it holds; blocking. Returns the first error.
    pub fn shutdown(&self) -> Result<(), ExportError> {
        let mut first = Ok(());
        for sink in &self.state.sinks {
            if let Err(error) = sink.shutdown() {
                tracing::warn!(event = "export_shutdown_failed", sink = sink.name(), %error);
                if first.is_ok() {
                    first = Err(error);
                }
            }
        }
        first
    }
}

/// Panics if any credential-looking text is present (tests of every output format).
#[cfg(test)]
pub(crate) fn assert_no_secrets(text: &str) {
    let lower = text.to_ascii_lowercase();
    for needle in ["authorization", "x-api-key", "bearer", "key=", "aizasecret"] {
        assert!(!lower.contains(needle), "output contains {needle:?}");
    }
}

/// The shared fixture records (real `CallRecord` JSON).
#[cfg(test)]
pub(crate) fn test_records() -> Vec<CallRecord> {
    include_str!("../../../tests/fixtures/export/records.jsonl")
        .lines()
        .map(|line| serde_json::from_str(line).expect("fixture line is a CallRecord"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_out_reaches_every_sink_and_the_ring_is_bounded() {
        let memory = Arc::new(InMemoryExporter::new(100));
        let exporters = Exporters::builder()
            .recent_capacity(4)
            .sink(memory.clone())
            .build();
        let records = test_records();
        for record in &records {
            exporters.record(record);
        }
        assert_eq!(memory.records().len(), records.len());
        let state = exporters.state();
        let latest = state.recent.latest(100);
        assert_eq!(latest.len(), 4);
        assert_eq!(
            latest.first().map(|r| r.time_unix_nano),
            records.last().map(|r| r.time_unix_nano)
        );
        let text = state.render_prometheus();
        assert!(text.contains("tokenscope_memory_records_dropped_total 0"));
        assert_no_secrets(&text);
        assert_no_secrets(&serde_json::to_string(&memory.records()).expect("json"));
        exporters.shutdown().expect("shutdown");
        exporters.record(&records[0]);
        assert!(state
            .render_prometheus()
            .contains("tokenscope_memory_records_dropped_total 1"));
    }
}
