//! OTLP export (gRPC or HTTP/protobuf) of metrics and one span per call.
//!
//! Metrics go through the OpenTelemetry SDK with cumulative temporality: the
//! SDK keeps the running totals and a periodic reader (a Tokio task) pushes
//! them. A collector outage fails some pushes, but the next successful push
//! carries the complete totals, so nothing is lost and nothing blocks.
//!
//! Spans are built directly from the record (the call already happened, with
//! its own wall-clock start and end). Records wait in a bounded queue
//! (`try_send`; full means a counted drop) for a Tokio task that exports
//! them in batches. Attribute names follow the GenAI semantic conventions.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader;
use opentelemetry_sdk::metrics::{SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::metrics::{
    error_type, is_rate_limited, side_str, token_counts, FloatKind, LabelSet, Metrics, SeriesGate,
    DURATION_BUCKETS, FLOAT_FAMILIES, TOKEN_BUCKETS, TOKEN_TYPES, TTFT_BUCKETS,
};
use super::otlp_endpoint::endpoint_span;
use super::{ExportError, Exporter, SelfCounter};
use crate::record::{endpoint::EndpointConnection, CallRecord, Side};

/// OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// gRPC (`:4317`).
    Grpc,
    /// HTTP with protobuf bodies (`:4318`, `/v1/metrics` and `/v1/traces` appended).
    HttpProtobuf,
}

#[derive(Clone, Debug)]
pub struct OtlpOptions {
    /// Base endpoint, e.g. `http://otel-collector:4317` (gRPC) or `http://otel-collector:4318` (HTTP).
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub metrics_interval: Duration,
    /// Per-export timeout (each try, both signals).
    pub timeout: Duration,
    /// Records waiting to become spans before new ones are dropped.
    pub span_queue: usize,
    pub span_batch: usize,
    /// Label sets kept before folding into `__overflow__` (as in Prometheus).
    pub series_limit: usize,
    /// `k8s.node.name` resource attribute.
    pub node: Option<String>,
    /// `host.name` resource attribute.
    pub host: Option<String>,
}

impl OtlpOptions {
    pub fn new(endpoint: impl Into<String>, protocol: OtlpProtocol) -> Self {
        OtlpOptions {
            endpoint: endpoint.into(),
            protocol,
            metrics_interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
            span_queue: 4_096,
            span_batch: 512,
            series_limit: super::metrics::DEFAULT_SERIES_LIMIT,
            node: None,
            host: None,
        }
    }
}

/// Cumulative counters of the OTLP exporter.
#[derive(Debug, Default)]
pub struct OtlpStats {
    pub spans_exported: AtomicU64,
    /// Dropped because the queue was full (or the exporter stopped).
    pub spans_dropped: AtomicU64,
    /// Lost because the collector refused or could not be reached.
    pub spans_failed: AtomicU64,
    pub metric_exports_ok: AtomicU64,
    pub metric_exports_failed: AtomicU64,
}

enum SpanMessage {
    Call(Box<CallRecord>),
    Endpoint(Box<EndpointConnection>),
    Flush(std_mpsc::SyncSender<()>),
}

struct Instruments {
    token_usage: Histogram<u64>,
    tokens: Counter<u64>,
    client_duration: Histogram<f64>,
    server_duration: Histogram<f64>,
    ttft: Histogram<f64>,
    calls: Counter<u64>,
    cost: Counter<f64>,
    unpriced: Counter<u64>,
    rate_limited: Counter<u64>,
    errors: Counter<u64>,
    gpu_time: Counter<f64>,
    gpu_energy: Counter<f64>,
    gpu_cost: Counter<f64>,
}

impl Instruments {
    fn new(meter: &Meter) -> Self {
        Instruments {
            token_usage: meter
                .u64_histogram("gen_ai.client.token.usage")
                .with_unit("{token}")
                .with_description("Number of input and output tokens used.")
                .with_boundaries(TOKEN_BUCKETS.to_vec())
                .build(),
            tokens: meter
                .u64_counter("tokenscope.llm.tokens")
                .with_unit("{token}")
                .with_description("Tokens reported by the provider, by gen_ai.token.type.")
                .build(),
            client_duration: meter
                .f64_histogram("gen_ai.client.operation.duration")
                .with_unit("s")
                .with_description("GenAI operation duration, seen from the calling process.")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            server_duration: meter
                .f64_histogram("gen_ai.server.request.duration")
                .with_unit("s")
                .with_description("GenAI request duration, seen from the serving process.")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            ttft: meter
                .f64_histogram("gen_ai.server.time_to_first_token")
                .with_unit("s")
                .with_description("Time to generate the first token.")
                .with_boundaries(TTFT_BUCKETS.to_vec())
                .build(),
            calls: meter
                .u64_counter("tokenscope.llm.calls")
                .with_unit("{call}")
                .build(),
            cost: meter
                .f64_counter("tokenscope.llm.cost")
                .with_unit("USD")
                .with_description("Token cost of priced calls.")
                .build(),
            unpriced: meter
                .u64_counter("tokenscope.llm.unpriced_calls")
                .with_unit("{call}")
                .build(),
            rate_limited: meter
                .u64_counter("tokenscope.llm.rate_limited_calls")
                .with_unit("{call}")
                .build(),
            errors: meter
                .u64_counter("tokenscope.llm.errors")
                .with_unit("{call}")
                .build(),
            gpu_time: meter
                .f64_counter("tokenscope.llm.gpu_seconds")
                .with_unit("s")
                .with_description(
                    "GPU-seconds charged to calls served on this node, by calling team and model.",
                )
                .build(),
            gpu_energy: meter
                .f64_counter("tokenscope.llm.gpu_energy")
                .with_unit("J")
                .build(),
            gpu_cost: meter
                .f64_counter("tokenscope.llm.gpu_cost")
                .with_unit("USD")
                .build(),
        }
    }

    fn record(&self, record: &CallRecord, attrs: &[KeyValue]) {
        self.calls.add(1, attrs);
        for (kind, count) in TOKEN_TYPES.iter().zip(token_counts(record)) {
            if let Some(count) = count {
                let mut with_type = attrs.to_vec();
                with_type.push(KeyValue::new("gen_ai.token.type", *kind));
                self.token_usage.record(count, &with_type);
                self.tokens.add(count, &with_type);
            }
        }
        let duration = match record.side {
            Side::Client => &self.client_duration,
            Side::Server => &self.server_duration,
        };
        if record.duration_s.is_finite() && record.duration_s >= 0.0 {
            duration.record(record.duration_s, attrs);
        }
        if let Some(ttft) = record.ttft_s.filter(|t| t.is_finite() && *t >= 0.0) {
            self.ttft.record(ttft, attrs);
        }
        match record.cost_usd {
            Some(cost) if cost.is_finite() && cost >= 0.0 => self.cost.add(cost, attrs),
            _ => self.unpriced.add(1, attrs),
        }
        if is_rate_limited(record) {
            self.rate_limited.add(1, attrs);
        }
        if error_type(record).is_some() {
            self.errors.add(1, attrs);
        }
        if let Some(gpu) = &record.gpu {
            let positive = |v: f64| v.is_finite() && v >= 0.0;
            if positive(gpu.gpu_seconds) {
                self.gpu_time.add(gpu.gpu_seconds, attrs);
            }
            if positive(gpu.energy_joules) {
                self.gpu_energy.add(gpu.energy_joules, attrs);
            }
            if positive(gpu.cost_usd) {
                self.gpu_cost.add(gpu.cost_usd, attrs);
            }
        }
    }
}

/// Counts pushes so an outage is visible in the agent's own metrics.
struct CountingMetricExporter {
    inner: opentelemetry_otlp::MetricExporter,
    stats: Arc<OtlpStats>,
}

impl PushMetricExporter for CountingMetricExporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        let counter = if result.is_ok() {
            &self.stats.metric_exports_ok
        } else {
            &self.stats.metric_exports_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

/// The OTLP sink. Build it inside a Tokio runtime (it spawns its tasks there).
pub struct OtlpExporter {
    meter_provider: SdkMeterProvider,
    instruments: Instruments,
    gate: SeriesGate,
    spans: mpsc::Sender<SpanMessage>,
    stats: Arc<OtlpStats>,
    stopped: AtomicBool,
    /// Ends the span task at shutdown.
    stop_spans: CancellationToken,
    /// Bound on one flush (the span task may be inside a retrying export).
    flush_timeout: Duration,
}

impl std::fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExporter")
            .field("stats", &self.stats)
            .finish()
    }
}

impl OtlpExporter {
    pub fn start(options: &OtlpOptions) -> Result<Self, ExportError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ExportError::NoRuntime)?;
        let resource = resource(options);
        let stats = Arc::new(OtlpStats::default());
        let base = options.endpoint.trim_end_matches('/');

        let metric_exporter = match options.protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(base)
                .with_timeout(options.timeout)
                .with_temporality(Temporality::Cumulative)
                .build(),
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(format!("{base}/v1/metrics"))
                .with_timeout(options.timeout)
                .with_temporality(Temporality::Cumulative)
                .build(),
        }
        .map_err(ExportError::OtlpBuild)?;
        let mut span_exporter = match options.protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(base)
                .with_timeout(options.timeout)
                .build(),
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(format!("{base}/v1/traces"))
                .with_timeout(options.timeout)
                .build(),
        }
        .map_err(ExportError::OtlpBuild)?;
        span_exporter.set_resource(&resource);

        let reader = PeriodicReader::builder(
            CountingMetricExporter {
                inner: metric_exporter,
                stats: Arc::clone(&stats),
            },
            opentelemetry_sdk::runtime::Tokio,
        )
        .with_interval(options.metrics_interval)
        .with_timeout(options.timeout)
        .build();
        let meter_provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader)
            .build();
        let meter = meter_provider.meter_with_scope(scope());

        let (spans, queue) = mpsc::channel(options.span_queue.max(1));
        let stop_spans = CancellationToken::new();
        runtime.spawn(export_spans(
            span_exporter,
            queue,
            options.span_batch.max(1),
            Arc::clone(&stats),
            stop_spans.clone(),
        ));
        Ok(OtlpExporter {
            meter_provider,
            instruments: Instruments::new(&meter),
            gate: SeriesGate::new(options.series_limit),
            spans,
            stats,
            stopped: AtomicBool::new(false),
            stop_spans,
            // The export in flight retries within one timeout; then the flush marker is next.
            flush_timeout: options.timeout.saturating_mul(2),
        })
    }

    pub fn stats(&self) -> &OtlpStats {
        &self.stats
    }

    /// Exports the float families of `metrics` ([`FLOAT_FAMILIES`]: GPU use per
    /// pod and device, `hw.gpu.*`) as observable instruments: counters as
    /// cumulative monotonic Sums, up-down counters as non-monotonic Sums,
    /// gauges as Gauges. Each push reads the registry's current values.
    pub fn observe(&self, metrics: &Arc<Metrics>) {
        let meter = self.meter_provider.meter_with_scope(scope());
        for family in FLOAT_FAMILIES {
            let metrics = Arc::clone(metrics);
            let callback = move |observer: &dyn opentelemetry::metrics::AsyncInstrument<f64>| {
                for (attributes, value) in metrics.float_points(family) {
                    let attributes: Vec<KeyValue> = attributes
                        .into_iter()
                        .map(|(k, v)| KeyValue::new(k, v))
                        .collect();
                    observer.observe(value, &attributes);
                }
            };
            match family.kind {
                FloatKind::Counter => {
                    meter
                        .f64_observable_counter(family.otel_name)
                        .with_unit(family.unit)
                        .with_description(family.help)
                        .with_callback(callback)
                        .build();
                }
                FloatKind::UpDownCounter => {
                    meter
                        .f64_observable_up_down_counter(family.otel_name)
                        .with_unit(family.unit)
                        .with_description(family.help)
                        .with_callback(callback)
                        .build();
                }
                FloatKind::Gauge => {
                    meter
                        .f64_observable_gauge(family.otel_name)
                        .with_unit(family.unit)
                        .with_description(family.help)
                        .with_callback(callback)
                        .build();
                }
            }
        }
    }

    /// Waits until the span task has exported everything queued before the call.
    fn flush_spans(&self) -> Result<(), ExportError> {
        let deadline = Instant::now() + self.flush_timeout;
        let (ack, done) = std_mpsc::sync_channel(1);
        // Polling rather than `blocking_send`, which panics if a caller breaks
        // the contract and flushes from an async worker.
        let mut message = SpanMessage::Flush(ack);
        loop {
            match self.spans.try_send(message) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(ExportError::Stopped),
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return Err(ExportError::FlushTimeout);
                    }
                    message = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        done.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| ExportError::FlushTimeout)
    }
}

impl Exporter for OtlpExporter {
    fn name(&self) -> &'static str {
        "otlp"
    }

    fn export(&self, record: &CallRecord) {
        if self.stopped.load(Ordering::Relaxed) {
            self.stats.spans_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let labels = self.gate.admit(LabelSet::from_record(record));
        self.instruments.record(record, &metric_attributes(&labels));
        let message = SpanMessage::Call(Box::new(record.clone()));
        if self.spans.try_send(message).is_err() {
            self.stats.spans_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn export_endpoint(&self, connection: &EndpointConnection) {
        let message = SpanMessage::Endpoint(Box::new(connection.clone()));
        if self.stopped.load(Ordering::Relaxed) || self.spans.try_send(message).is_err() {
            self.stats.spans_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Exports queued spans and pushes the metric totals now. Blocking.
    fn flush(&self) -> Result<(), ExportError> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(ExportError::Stopped);
        }
        self.flush_spans()?;
        self.meter_provider.force_flush().map_err(ExportError::Otlp)
    }

    /// Exports the queued spans, pushes the final metric totals once, and
    /// stops both signals; later records are counted drops. Bounded by about
    /// two export timeouts.
    fn shutdown(&self) -> Result<(), ExportError> {
        if self.stopped.swap(true, Ordering::Relaxed) {
            return Err(ExportError::Stopped);
        }
        let spans = self.flush_spans();
        self.stop_spans.cancel();
        let metrics = self.meter_provider.shutdown().map_err(ExportError::Otlp);
        spans.and(metrics)
    }

    fn self_counters(&self) -> Vec<SelfCounter> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let s = &self.stats;
        vec![
            SelfCounter::new(
                "tokenscope_otlp_spans_exported_total",
                &[],
                get(&s.spans_exported),
            ),
            SelfCounter::new(
                "tokenscope_otlp_spans_dropped_total",
                &[("reason", "queue_full")],
                get(&s.spans_dropped),
            ),
            SelfCounter::new(
                "tokenscope_otlp_spans_dropped_total",
                &[("reason", "export_failed")],
                get(&s.spans_failed),
            ),
            SelfCounter::new(
                "tokenscope_otlp_metric_exports_total",
                &[("result", "ok")],
                get(&s.metric_exports_ok),
            ),
            SelfCounter::new(
                "tokenscope_otlp_metric_exports_total",
                &[("result", "failed")],
                get(&s.metric_exports_failed),
            ),
            SelfCounter::new(
                "tokenscope_otlp_series_overflow_total",
                &[],
                self.gate.folded(),
            ),
        ]
    }
}

async fn export_spans(
    exporter: opentelemetry_otlp::SpanExporter,
    mut queue: mpsc::Receiver<SpanMessage>,
    batch_size: usize,
    stats: Arc<OtlpStats>,
    stop: CancellationToken,
) {
    let ids = RandomIdGenerator::default();
    let mut batch = Vec::with_capacity(batch_size);
    loop {
        // Ends at shutdown, or when the exporter (the only sender) is dropped.
        let first = tokio::select! {
            message = queue.recv() => message,
            () = stop.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut acks = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                SpanMessage::Call(record) => batch.push(span(&record, &ids)),
                SpanMessage::Endpoint(c) => batch.push(endpoint_span(&c, &ids)),
                SpanMessage::Flush(ack) => acks.push(ack),
            }
            if batch.len() < batch_size {
                next = queue.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let count = batch.len() as u64;
            match exporter.export(std::mem::take(&mut batch)).await {
                Ok(()) => stats.spans_exported.fetch_add(count, Ordering::Relaxed),
                Err(error) => {
                    tracing::debug!(event = "otlp_span_export_failed", %error, spans = count);
                    stats.spans_failed.fetch_add(count, Ordering::Relaxed)
                }
            };
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

fn resource(options: &OtlpOptions) -> Resource {
    let mut attributes = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
    if let Some(host) = &options.host {
        attributes.push(KeyValue::new("host.name", host.clone()));
    }
    if let Some(node) = &options.node {
        attributes.push(KeyValue::new("k8s.node.name", node.clone()));
    }
    Resource::builder_empty()
        .with_service_name("tokenscope")
        .with_attributes(attributes)
        .build()
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("tokenscope")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// Metric attributes: the bounded label set under semantic-convention names; empty values omitted.
pub fn metric_attributes(labels: &LabelSet) -> Vec<KeyValue> {
    let pairs = [
        ("gen_ai.system", &labels.provider),
        ("gen_ai.provider.name", &labels.provider),
        ("gen_ai.request.model", &labels.request_model),
        ("gen_ai.response.model", &labels.response_model),
        ("gen_ai.operation.name", &labels.operation),
        ("tokenscope.side", &labels.side),
        ("error.type", &labels.error_type),
        ("k8s.namespace.name", &labels.namespace),
        ("k8s.pod.name", &labels.pod),
        ("tokenscope.workload", &labels.workload),
        ("tokenscope.team", &labels.team),
        ("k8s.node.name", &labels.node),
        ("server.address", &labels.server_address),
        ("tokenscope.workload.kind", &labels.workload_kind),
    ];
    let mut out: Vec<KeyValue> = pairs
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(key, value)| KeyValue::new(key, value.clone()))
        .collect();
    // `k8s.deployment.name` (or the kind that applies) for the workload.
    if let Some(key) = crate::export::metrics::workload_attribute(&labels.workload_kind) {
        if !labels.workload.is_empty() {
            out.push(KeyValue::new(key, labels.workload.clone()));
        }
    }
    out
}

/// The span of one call: `{operation} {model}`, client or server kind, the record's own times.
pub fn span(record: &CallRecord, ids: &RandomIdGenerator) -> SpanData {
    let call = &record.call;
    let operation = call.api.operation();
    let model = call
        .request_model
        .as_deref()
        .or(call.response_model.as_deref());
    let name = match model {
        Some(model) => format!("{operation} {model}"),
        None => operation.to_owned(),
    };
    let start = UNIX_EPOCH + Duration::from_nanos(record.time_unix_nano);
    let length = Duration::try_from_secs_f64(record.duration_s).unwrap_or_default();
    let end = start.checked_add(length).unwrap_or(start);
    let status = match error_type(record) {
        Some(kind) => Status::error(kind),
        None => Status::Unset,
    };
    let kind = match record.side {
        Side::Client => SpanKind::Client,
        Side::Server => SpanKind::Server,
    };
    root_span(
        ids,
        kind,
        name,
        (start, end),
        span_attributes(record),
        status,
    )
}

/// A sampled root span of this agent's scope, with fresh ids.
pub(super) fn root_span(
    ids: &RandomIdGenerator,
    kind: SpanKind,
    name: String,
    (start, end): (std::time::SystemTime, std::time::SystemTime),
    attributes: Vec<KeyValue>,
    status: Status,
) -> SpanData {
    SpanData {
        span_context: SpanContext::new(
            ids.new_trace_id(),
            ids.new_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: kind,
        name: Cow::Owned(name),
        start_time: start,
        end_time: end.max(start),
        attributes,
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status,
        instrumentation_scope: scope(),
    }
}

fn span_attributes(record: &CallRecord) -> Vec<KeyValue> {
    let call = &record.call;
    let attr = &record.attribution;
    let mut out = vec![
        KeyValue::new("gen_ai.operation.name", call.api.operation()),
        KeyValue::new("gen_ai.system", call.provider.as_str()),
        KeyValue::new("gen_ai.provider.name", call.provider.as_str()),
        KeyValue::new("tokenscope.side", side_str(record.side)),
        KeyValue::new("tokenscope.streaming", call.streaming),
        // Never the query: it can hold an API key (`?key=`).
        KeyValue::new(
            "url.path",
            call.path.split('?').next().unwrap_or_default().to_owned(),
        ),
        KeyValue::new("process.pid", i64::from(attr.pid)),
        KeyValue::new("process.executable.name", attr.comm.clone()),
    ];
    let mut text = |key: &'static str, value: &Option<String>| {
        if let Some(value) = value {
            out.push(KeyValue::new(key, value.clone()));
        }
    };
    text("gen_ai.request.model", &call.request_model);
    text("gen_ai.response.model", &call.response_model);
    text("server.address", &call.host);
    text("error.type", &error_type(record));
    text("container.id", &attr.container_id);
    text("k8s.namespace.name", &attr.namespace);
    text("k8s.pod.name", &attr.pod);
    text("k8s.pod.uid", &attr.pod_uid);
    text("k8s.node.name", &attr.node);
    text("tokenscope.workload", &attr.workload);
    text("tokenscope.team", &attr.team);
    if let Some(key) = attr
        .workload_kind
        .as_deref()
        .and_then(crate::export::metrics::workload_attribute)
    {
        text(key, &attr.workload);
    }
    text("network.peer.address", &record.peer);
    if let Some(reason) = &call.finish_reason {
        out.push(KeyValue::new(
            "gen_ai.response.finish_reasons",
            opentelemetry::Value::Array(
                vec![opentelemetry::StringValue::from(reason.clone())].into(),
            ),
        ));
    }
    let usage = &call.usage;
    let mut tokens = |key: &'static str, value: Option<u64>| {
        if let Some(value) = value {
            out.push(KeyValue::new(key, i64::try_from(value).unwrap_or(i64::MAX)));
        }
    };
    tokens("gen_ai.usage.input_tokens", usage.input_tokens);
    tokens("gen_ai.usage.output_tokens", usage.output_tokens);
    tokens(
        "gen_ai.usage.cache_read.input_tokens",
        usage.cache_read_tokens,
    );
    tokens(
        "gen_ai.usage.cache_creation.input_tokens",
        usage.cache_creation_tokens,
    );
    tokens(
        "gen_ai.usage.reasoning.output_tokens",
        usage.reasoning_tokens,
    );
    if usage.estimated {
        out.push(KeyValue::new("tokenscope.usage.estimated", true));
    }
    if let Some(status) = call.status {
        out.push(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
    }
    if let Some(ttft) = record.ttft_s {
        out.push(KeyValue::new("gen_ai.server.time_to_first_token", ttft));
    }
    if let Some(cost) = record.cost_usd {
        out.push(KeyValue::new("tokenscope.cost_usd", cost));
    }
    if let Some(gpu) = &record.gpu {
        out.push(KeyValue::new("tokenscope.gpu.seconds", gpu.gpu_seconds));
        out.push(KeyValue::new(
            "tokenscope.gpu.energy_joules",
            gpu.energy_joules,
        ));
        out.push(KeyValue::new("tokenscope.gpu.cost_usd", gpu.cost_usd));
    }
    out
}

#[cfg(test)]
mod tests;
