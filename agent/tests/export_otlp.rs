//! OTLP export against a real receiver (tonic gRPC collector services and an
//! HTTP/protobuf endpoint decoding real protobuf), including a collector outage.
//!
//! Needs no root and no network beyond 127.0.0.1.

mod support_export;

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, Metric};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use support_export::{lock, Receiver, Transport};
use tokenscope::export::metrics::TOKEN_BUCKETS;
use tokenscope::export::otlp::{OtlpExporter, OtlpOptions, OtlpProtocol};
use tokenscope::export::Exporter;
use tokenscope::record::{CallRecord, Side};

/// `AGGREGATION_TEMPORALITY_CUMULATIVE` in the OTLP protos.
const CUMULATIVE: i32 = 2;
/// Copies of the fixture records sent while the collector is down.
const OUTAGE_ROUNDS: usize = 5;

fn fixture_records() -> Vec<CallRecord> {
    include_str!("../../tests/fixtures/export/records.jsonl")
        .lines()
        .map(|line| serde_json::from_str(line).expect("fixture line is a CallRecord"))
        .collect()
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn attr_text(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attr(attributes, key) {
        Some(any_value::Value::StringValue(text)) => Some(text.clone()),
        _ => None,
    }
}

fn metric<'a>(request: &'a ExportMetricsServiceRequest, name: &str) -> Option<&'a Metric> {
    request
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .find(|m| m.name == name)
}

/// Sum of a cumulative monotonic counter over all its data points (optionally filtered).
fn counter_total(
    request: &ExportMetricsServiceRequest,
    name: &str,
    filter: &dyn Fn(&[KeyValue]) -> bool,
) -> f64 {
    let Some(found) = metric(request, name) else {
        return 0.0;
    };
    let Some(metric::Data::Sum(sum)) = &found.data else {
        panic!("{name} is not a Sum: {:?}", found.data);
    };
    assert_eq!(
        sum.aggregation_temporality, CUMULATIVE,
        "{name} temporality"
    );
    assert!(sum.is_monotonic, "{name} monotonic");
    sum.data_points
        .iter()
        .filter(|p| filter(&p.attributes))
        .map(|p| match p.value {
            Some(number_data_point::Value::AsInt(v)) => v as f64,
            Some(number_data_point::Value::AsDouble(v)) => v,
            None => 0.0,
        })
        .sum()
}

/// (count, sum) of a cumulative histogram over matching data points, checking its boundaries.
fn histogram_total(
    request: &ExportMetricsServiceRequest,
    name: &str,
    bounds: Option<&[f64]>,
    filter: &dyn Fn(&[KeyValue]) -> bool,
) -> (u64, f64) {
    let Some(found) = metric(request, name) else {
        return (0, 0.0);
    };
    let Some(metric::Data::Histogram(hist)) = &found.data else {
        panic!("{name} is not a Histogram: {:?}", found.data);
    };
    assert_eq!(
        hist.aggregation_temporality, CUMULATIVE,
        "{name} temporality"
    );
    let mut total = (0, 0.0);
    for point in hist.data_points.iter().filter(|p| filter(&p.attributes)) {
        if let Some(bounds) = bounds {
            assert_eq!(point.explicit_bounds, bounds, "{name} bucket boundaries");
        }
        assert_eq!(
            point.bucket_counts.iter().sum::<u64>(),
            point.count,
            "{name} buckets add up"
        );
        total.0 += point.count;
        total.1 += point.sum.unwrap_or(0.0);
    }
    total
}

fn any(_: &[KeyValue]) -> bool {
    true
}

/// Asserts the latest cumulative push describes exactly `records`.
fn assert_metric_totals(request: &ExportMetricsServiceRequest, records: &[CallRecord]) {
    let close = |a: f64, b: f64, what: &str| {
        assert!(
            (a - b).abs() < 1e-6 * b.abs().max(1.0),
            "{what}: {a} vs {b}"
        )
    };
    assert_eq!(
        counter_total(request, "tokenscope.llm.calls", &any),
        records.len() as f64
    );

    let is_input = |a: &[KeyValue]| attr_text(a, "gen_ai.token.type").as_deref() == Some("input");
    let is_output = |a: &[KeyValue]| attr_text(a, "gen_ai.token.type").as_deref() == Some("output");
    let input: Vec<u64> = records
        .iter()
        .filter_map(|r| r.call.usage.input_tokens)
        .collect();
    let output: u64 = records
        .iter()
        .filter_map(|r| r.call.usage.output_tokens)
        .sum();
    let (count, sum) = histogram_total(
        request,
        "gen_ai.client.token.usage",
        Some(&TOKEN_BUCKETS),
        &is_input,
    );
    assert_eq!(count, input.len() as u64, "input token observations");
    close(sum, input.iter().sum::<u64>() as f64, "input tokens");
    close(
        histogram_total(request, "gen_ai.client.token.usage", None, &is_output).1,
        output as f64,
        "output tokens",
    );
    let cache_read: u64 = records
        .iter()
        .filter_map(|r| r.call.usage.cache_read_tokens)
        .sum();
    let is_cache_read =
        |a: &[KeyValue]| attr_text(a, "gen_ai.token.type").as_deref() == Some("cache_read");
    close(
        counter_total(request, "tokenscope.llm.tokens", &is_cache_read),
        cache_read as f64,
        "cache read tokens",
    );

    let client = records.iter().filter(|r| r.side == Side::Client).count() as u64;
    let server = records.len() as u64 - client;
    assert_eq!(
        histogram_total(request, "gen_ai.client.operation.duration", None, &any).0,
        client
    );
    assert_eq!(
        histogram_total(request, "gen_ai.server.request.duration", None, &any).0,
        server
    );
    let ttft: Vec<f64> = records.iter().filter_map(|r| r.ttft_s).collect();
    let (count, sum) = histogram_total(request, "gen_ai.server.time_to_first_token", None, &any);
    assert_eq!(count, ttft.len() as u64);
    close(sum, ttft.iter().sum(), "ttft sum");

    close(
        counter_total(request, "tokenscope.llm.cost", &any),
        records.iter().filter_map(|r| r.cost_usd).sum(),
        "cost",
    );
    let unpriced = records.iter().filter(|r| r.cost_usd.is_none()).count();
    assert_eq!(
        counter_total(request, "tokenscope.llm.unpriced_calls", &any),
        unpriced as f64
    );
    let limited = records
        .iter()
        .filter(|r| r.call.status == Some(429))
        .count();
    assert!(limited > 0);
    assert_eq!(
        counter_total(request, "tokenscope.llm.rate_limited_calls", &any),
        limited as f64
    );
    let errors = records
        .iter()
        .filter(|r| r.call.status.is_some_and(|s| s >= 400))
        .count();
    assert_eq!(
        counter_total(request, "tokenscope.llm.errors", &any),
        errors as f64
    );
    let gpu: f64 = records
        .iter()
        .filter_map(|r| r.gpu.as_ref())
        .map(|g| g.gpu_seconds)
        .sum();
    assert!(gpu > 0.0);
    close(
        counter_total(request, "tokenscope.llm.gpu_seconds", &any),
        gpu,
        "gpu seconds",
    );
    let joules: f64 = records
        .iter()
        .filter_map(|r| r.gpu.as_ref())
        .map(|g| g.energy_joules)
        .sum();
    close(
        counter_total(request, "tokenscope.llm.gpu_energy", &any),
        joules,
        "gpu joules",
    );

    // Labels arrive under semantic-convention names, with their exact text.
    let claude = |a: &[KeyValue]| {
        attr_text(a, "gen_ai.request.model").as_deref() == Some("claude-sonnet-4-5")
    };
    let claude_calls = records
        .iter()
        .filter(|r| r.call.request_model.as_deref() == Some("claude-sonnet-4-5"))
        .count();
    assert_eq!(
        counter_total(request, "tokenscope.llm.calls", &claude),
        claude_calls as f64
    );
    let calls = metric(request, "tokenscope.llm.calls").expect("calls metric");
    let Some(metric::Data::Sum(sum)) = &calls.data else {
        panic!("calls is a Sum")
    };
    let point = sum
        .data_points
        .iter()
        .find(|p| claude(&p.attributes))
        .expect("claude point");
    assert_eq!(
        attr_text(&point.attributes, "tokenscope.team").as_deref(),
        Some("data \"science\"\\ml")
    );
    assert_eq!(
        attr_text(&point.attributes, "gen_ai.system").as_deref(),
        Some("anthropic")
    );
    assert_eq!(
        attr_text(&point.attributes, "k8s.namespace.name").as_deref(),
        Some("shop")
    );
    assert_eq!(
        attr_text(&point.attributes, "gen_ai.operation.name").as_deref(),
        Some("chat")
    );

    let resource = request
        .resource_metrics
        .first()
        .and_then(|rm| rm.resource.as_ref())
        .expect("resource");
    assert_eq!(
        attr_text(&resource.attributes, "service.name").as_deref(),
        Some("tokenscope")
    );
    assert_eq!(
        attr_text(&resource.attributes, "k8s.node.name").as_deref(),
        Some("node-a")
    );
    assert_eq!(
        attr_text(&resource.attributes, "host.name").as_deref(),
        Some("test-host")
    );
}

fn assert_span_matches(span: &Span, record: &CallRecord) {
    let model = record.call.request_model.as_deref().unwrap_or_default();
    assert_eq!(
        span.name,
        format!("{} {model}", record.call.api.operation())
    );
    let kind = match record.side {
        Side::Client => SpanKind::Client,
        Side::Server => SpanKind::Server,
    };
    assert_eq!(span.kind, kind as i32);
    assert_eq!(span.start_time_unix_nano, record.time_unix_nano);
    let length = span.end_time_unix_nano - span.start_time_unix_nano;
    assert!(
        (length as f64 / 1e9 - record.duration_s).abs() < 1e-6,
        "span length"
    );
    assert_eq!(span.trace_id.len(), 16);
    assert_eq!(span.span_id.len(), 8);
    let a = &span.attributes;
    assert_eq!(
        attr_text(a, "gen_ai.system").as_deref(),
        Some(record.call.provider.as_str())
    );
    assert_eq!(
        attr_text(a, "gen_ai.request.model"),
        record.call.request_model
    );
    assert_eq!(
        attr_text(a, "gen_ai.response.model"),
        record.call.response_model
    );
    assert_eq!(attr_text(a, "k8s.pod.name"), record.attribution.pod);
    assert_eq!(attr_text(a, "tokenscope.team"), record.attribution.team);
    let input = match attr(a, "gen_ai.usage.input_tokens") {
        Some(any_value::Value::IntValue(v)) => Some(*v as u64),
        _ => None,
    };
    assert_eq!(input, record.call.usage.input_tokens);
    let status = match attr(a, "http.response.status_code") {
        Some(any_value::Value::IntValue(v)) => Some(*v as u16),
        _ => None,
    };
    assert_eq!(status, record.call.status);
    let errored = span.status.as_ref().is_some_and(|s| s.code == 2);
    assert_eq!(
        errored,
        record.call.status.is_some_and(|s| s >= 400),
        "span status of {}",
        span.name
    );
    let path = attr_text(a, "url.path").expect("url.path");
    assert!(!path.contains('?'), "query leaked: {path}");
}

fn assert_no_secrets(receiver: &Receiver) {
    let received = lock(&receiver.received);
    assert!(!received.raw.is_empty());
    for body in &received.raw {
        let text = String::from_utf8_lossy(body).to_ascii_lowercase();
        for needle in ["authorization", "x-api-key", "bearer", "key=", "aizasecret"] {
            assert!(!text.contains(needle), "OTLP payload contains {needle:?}");
        }
    }
    for header in &received.headers {
        let lower = header.to_ascii_lowercase();
        assert!(
            !lower.starts_with("authorization")
                && !lower.starts_with("x-api-key")
                && !lower.contains("bearer"),
            "exporter sent credential header {header}"
        );
    }
}

/// Every span the receiver decoded, in arrival order.
fn spans_in(received: &support_export::Received) -> Vec<&Span> {
    received
        .traces
        .iter()
        .flat_map(|t| &t.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .collect()
}

async fn flush(exporter: &Arc<OtlpExporter>) {
    let exporter = Arc::clone(exporter);
    tokio::task::spawn_blocking(move || exporter.flush())
        .await
        .expect("join flush")
        .expect("flush with the receiver up");
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn latest_calls_total(receiver: &Receiver) -> f64 {
    lock(&receiver.received)
        .metrics
        .last()
        .map(|m| counter_total(m, "tokenscope.llm.calls", &any))
        .unwrap_or(0.0)
}

async fn scenario(transport: Transport) {
    let mut receiver = Receiver::start(transport).await;
    let protocol = match transport {
        Transport::Grpc => OtlpProtocol::Grpc,
        Transport::Http => OtlpProtocol::HttpProtobuf,
    };
    let mut options = OtlpOptions::new(format!("http://{}", receiver.address), protocol);
    options.metrics_interval = Duration::from_millis(200);
    options.timeout = Duration::from_secs(1);
    options.span_queue = 8;
    options.span_batch = 2;
    options.node = Some("node-a".into());
    options.host = Some("test-host".into());
    let exporter = Arc::new(OtlpExporter::start(&options).expect("start exporter"));
    let stats = |e: &OtlpExporter, name: &str, reason: &str| -> u64 {
        e.self_counters()
            .into_iter()
            .filter(|c| {
                c.name == name
                    && c.labels
                        .iter()
                        .all(|(_, v)| *v == reason || reason.is_empty())
            })
            .map(|c| c.value)
            .sum()
    };

    // Healthy collector: every span and the exact totals arrive.
    let healthy = fixture_records();
    for record in &healthy {
        exporter.export(record);
    }
    flush(&exporter).await;
    {
        let received = lock(&receiver.received);
        let spans = spans_in(&received);
        assert_eq!(spans.len(), healthy.len());
        for record in &healthy {
            let span = spans
                .iter()
                .find(|s| s.start_time_unix_nano == record.time_unix_nano)
                .expect("a span per record");
            assert_span_matches(span, record);
        }
        let resource = received
            .traces
            .first()
            .and_then(|t| t.resource_spans.first())
            .and_then(|rs| rs.resource.as_ref());
        assert_eq!(
            attr_text(&resource.expect("span resource").attributes, "service.name").as_deref(),
            Some("tokenscope")
        );
        assert_metric_totals(received.metrics.last().expect("a metrics push"), &healthy);
    }

    // Outage: pushes fail, the agent keeps recording without blocking, the span queue overflows.
    receiver.stop().await;
    let failed_before = stats(&exporter, "tokenscope_otlp_metric_exports_total", "failed");
    let mut all = healthy.clone();
    let started = Instant::now();
    for round in 1..=OUTAGE_ROUNDS {
        for record in &healthy {
            let mut record = record.clone();
            record.time_unix_nano += round as u64 * 1_000_000_000_000;
            exporter.export(&record);
            all.push(record);
        }
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "export blocked during the outage"
    );
    wait_until("a failed metrics push", Duration::from_secs(20), || {
        stats(&exporter, "tokenscope_otlp_metric_exports_total", "failed") > failed_before
    })
    .await;
    let dropped = stats(
        &exporter,
        "tokenscope_otlp_spans_dropped_total",
        "queue_full",
    );
    assert!(
        dropped > 0,
        "a full span queue during the outage must count drops"
    );

    // Recovery: the next cumulative push carries the complete totals.
    receiver.restart().await;
    let total = all.len() as f64;
    wait_until(
        "complete totals after the outage",
        Duration::from_secs(30),
        || latest_calls_total(&receiver) == total,
    )
    .await;
    flush(&exporter).await;
    assert_metric_totals(lock(&receiver.received).metrics.last().expect("push"), &all);

    let exported = stats(&exporter, "tokenscope_otlp_spans_exported_total", "");
    let lost = stats(
        &exporter,
        "tokenscope_otlp_spans_dropped_total",
        "export_failed",
    );
    let dropped = stats(
        &exporter,
        "tokenscope_otlp_spans_dropped_total",
        "queue_full",
    );
    assert_eq!(
        exported + lost + dropped,
        all.len() as u64,
        "every span is exported or counted"
    );
    let received_spans: usize = lock(&receiver.received)
        .traces
        .iter()
        .flat_map(|t| &t.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum();
    assert_eq!(received_spans as u64, exported);
    assert_no_secrets(&receiver);

    let closing = Arc::clone(&exporter);
    tokio::task::spawn_blocking(move || closing.shutdown())
        .await
        .expect("join")
        .expect("shutdown");
    let dropped = stats(
        &exporter,
        "tokenscope_otlp_spans_dropped_total",
        "queue_full",
    );
    exporter.export(&healthy[0]);
    assert_eq!(
        stats(
            &exporter,
            "tokenscope_otlp_spans_dropped_total",
            "queue_full"
        ),
        dropped + 1,
        "after shutdown a record is a counted drop"
    );
    assert!(matches!(
        exporter.flush(),
        Err(tokenscope::export::ExportError::Stopped)
    ));
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_survives_a_collector_outage() {
    scenario(Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_survives_a_collector_outage() {
    scenario(Transport::Http).await;
}

/// The first data point of a metric matching `filter`, with its kind.
fn float_point(
    request: &ExportMetricsServiceRequest,
    name: &str,
    filter: &dyn Fn(&[KeyValue]) -> bool,
) -> Option<(&'static str, bool, f64)> {
    let found = metric(request, name)?;
    let (kind, monotonic, points) = match &found.data {
        Some(metric::Data::Sum(sum)) => {
            assert_eq!(
                sum.aggregation_temporality, CUMULATIVE,
                "{name} temporality"
            );
            ("sum", sum.is_monotonic, &sum.data_points)
        }
        Some(metric::Data::Gauge(gauge)) => ("gauge", false, &gauge.data_points),
        other => panic!("{name} is neither Sum nor Gauge: {other:?}"),
    };
    points
        .iter()
        .find(|p| filter(&p.attributes))
        .map(|p| match p.value {
            Some(number_data_point::Value::AsDouble(v)) => (kind, monotonic, v),
            Some(number_data_point::Value::AsInt(v)) => (kind, monotonic, v as f64),
            None => (kind, monotonic, f64::NAN),
        })
}

/// GPU use per pod (float counters of the shared registry) arrives as cumulative
/// monotonic Sums under pod and team attributes, `hw.gpu.*` as a Gauge and a
/// non-monotonic Sum per device, and each push carries the registry's current totals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_float_counters_arrive_as_monotonic_sums() {
    use tokenscope::export::metrics::{
        Metrics, GPU_BUSY_SECONDS, GPU_ENERGY, HW_GPU_MEMORY_USAGE, HW_GPU_UTILIZATION,
    };
    let receiver = Receiver::start(Transport::Grpc).await;
    let mut options = OtlpOptions::new(format!("http://{}", receiver.address), OtlpProtocol::Grpc);
    options.metrics_interval = Duration::from_millis(200);
    options.timeout = Duration::from_secs(1);
    let exporter = Arc::new(OtlpExporter::start(&options).expect("start exporter"));
    let metrics = Arc::new(Metrics::default());
    exporter.observe(&metrics);
    let pod = [("k8s.pod.name", "vllm-0"), ("tokenscope.team", "serving")];
    let device = [("hw.id", "GPU-1"), ("hw.name", "NVIDIA L4")];
    metrics.add_float(&GPU_BUSY_SECONDS, &pod, 1.5);
    metrics.add_float(&GPU_BUSY_SECONDS, &pod, 0.25);
    metrics.add_float(&GPU_ENERGY, &pod, 300.0);
    metrics.set_float(&HW_GPU_UTILIZATION, &device, 0.4);
    metrics.set_float(&HW_GPU_MEMORY_USAGE, &device, 1024.0);
    flush(&exporter).await;
    let vllm = |a: &[KeyValue]| {
        attr_text(a, "k8s.pod.name").as_deref() == Some("vllm-0")
            && attr_text(a, "tokenscope.team").as_deref() == Some("serving")
    };
    let gpu1 = |a: &[KeyValue]| attr_text(a, "hw.id").as_deref() == Some("GPU-1");
    let latest = || {
        lock(&receiver.received)
            .metrics
            .last()
            .cloned()
            .expect("a metrics push")
    };
    let request = latest();
    assert_eq!(
        float_point(&request, "tokenscope.gpu.busy_seconds", &vllm),
        Some(("sum", true, 1.75))
    );
    assert_eq!(
        float_point(&request, "tokenscope.gpu.energy", &vllm),
        Some(("sum", true, 300.0))
    );
    assert_eq!(
        float_point(&request, "hw.gpu.utilization", &gpu1),
        Some(("gauge", false, 0.4))
    );
    assert_eq!(
        float_point(&request, "hw.gpu.memory.usage", &gpu1),
        Some(("sum", false, 1024.0))
    );
    let unit = metric(&request, "tokenscope.gpu.energy").map(|m| m.unit.clone());
    assert_eq!(unit.as_deref(), Some("J"));
    // Later pushes carry the new cumulative total.
    metrics.add_float(&GPU_BUSY_SECONDS, &pod, 1.0);
    flush(&exporter).await;
    assert_eq!(
        float_point(&latest(), "tokenscope.gpu.busy_seconds", &vllm),
        Some(("sum", true, 2.75))
    );
    let stop = Arc::clone(&exporter);
    let _ = tokio::task::spawn_blocking(move || stop.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecrypted_endpoint_connection_arrives_as_a_client_span() {
    use tokenscope::record::endpoint::{EndpointConnection, Observed};
    use tokenscope::record::Attribution;
    let receiver = Receiver::start(Transport::Http).await;
    let mut options = OtlpOptions::new(
        format!("http://{}", receiver.address),
        OtlpProtocol::HttpProtobuf,
    );
    options.timeout = Duration::from_secs(1);
    let exporter = Arc::new(OtlpExporter::start(&options).expect("start exporter"));
    let connection = EndpointConnection::new(
        Observed {
            server_address: "api.anthropic.com".into(),
            start_time_unix_nano: 1_800_000_000_000_000_000,
            end_time_unix_nano: 1_800_000_000_750_000_000,
            bytes_sent: 796,
            bytes_received: 2416,
            local: Some("10.1.2.3:40000".into()),
            peer: Some("160.79.104.10:443".into()),
        },
        Attribution {
            pid: 4242,
            comm: "java".into(),
            namespace: Some("shop".into()),
            pod: Some("checkout-7d9".into()),
            team: Some("payments".into()),
            ..Attribution::default()
        },
    );
    exporter.export_endpoint(&connection);
    flush(&exporter).await;
    {
        let received = lock(&receiver.received);
        let spans = spans_in(&received);
        assert_eq!(spans.len(), 1, "{spans:#?}");
        let span = spans[0];
        assert_eq!(span.name, "tls api.anthropic.com");
        assert_eq!(span.kind, SpanKind::Client as i32);
        assert_eq!(span.start_time_unix_nano, 1_800_000_000_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_800_000_000_750_000_000);
        assert_eq!(
            attr_text(&span.attributes, "server.address").as_deref(),
            Some("api.anthropic.com")
        );
        assert_eq!(
            attr_text(&span.attributes, "tokenscope.team").as_deref(),
            Some("payments")
        );
        assert_eq!(
            attr(&span.attributes, "tokenscope.bytes_received"),
            Some(&any_value::Value::IntValue(2416))
        );
    }
    let stop = Arc::clone(&exporter);
    let _ = tokio::task::spawn_blocking(move || stop.shutdown()).await;
}
