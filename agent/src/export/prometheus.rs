//! Prometheus text exposition format (version 0.0.4) of a `MetricsSnapshot`.
//!
//! Written by hand: the format is small, and the label sets are dynamic,
//! which a typed registry would make awkward. Units are in the names
//! (`_total`, `_seconds`, `_usd`, `_joules`), every family has HELP and TYPE,
//! and label values are escaped (`\`, `"`, newline).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::metrics::{
    prometheus_label, AgentKey, FloatKind, FloatPoint, Histogram, LabelSet, MetricsSnapshot,
    SeriesData, TOKEN_TYPES,
};

/// The content type a scrape response carries.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A counter family over call series: name, help, and the value (None = omit the series).
type CounterFamily = (&'static str, &'static str, fn(&SeriesData) -> Option<f64>);

const CALL_COUNTERS: [CounterFamily; 8] = [
    ("tokenscope_llm_calls_total", "LLM calls observed.", |s| {
        Some(s.calls as f64)
    }),
    (
        "tokenscope_llm_cost_usd_total",
        "Token cost in USD of priced calls.",
        |s| (s.priced_calls > 0).then_some(s.cost_usd),
    ),
    (
        "tokenscope_llm_unpriced_calls_total",
        "Calls whose model has no price.",
        |s| Some(s.unpriced_calls as f64),
    ),
    (
        "tokenscope_llm_rate_limited_calls_total",
        "Calls refused for rate limiting (HTTP 429 or rate_limited error).",
        |s| Some(s.rate_limited as f64),
    ),
    (
        "tokenscope_llm_errors_total",
        "Calls that ended in an error.",
        |s| Some(s.errors as f64),
    ),
    (
        "tokenscope_llm_gpu_seconds_total",
        "GPU-seconds charged to calls served on this node (team: the calling team).",
        |s| (s.gpu_calls > 0).then_some(s.gpu_seconds),
    ),
    (
        "tokenscope_llm_gpu_energy_joules_total",
        "GPU energy in joules charged to calls served on this node.",
        |s| (s.gpu_calls > 0).then_some(s.gpu_energy_joules),
    ),
    (
        "tokenscope_llm_gpu_cost_usd_total",
        "GPU cost in USD charged to calls served on this node.",
        |s| (s.gpu_calls > 0).then_some(s.gpu_cost_usd),
    ),
];

/// Renders every family in the snapshot.
pub fn render(snapshot: &MetricsSnapshot) -> String {
    let mut out = String::with_capacity(256 + snapshot.series.len() * 4096);
    // Each series' labels are escaped once and reused on all of its lines.
    let series: Vec<(String, &SeriesData)> = snapshot
        .series
        .iter()
        .map(|(labels, data)| (label_body(labels), data))
        .collect();

    for (name, help, value) in CALL_COUNTERS {
        header(&mut out, name, help, "counter");
        for (labels, data) in &series {
            if let Some(v) = value(data) {
                sample(&mut out, name, labels, None, v);
            }
        }
    }

    let tokens = "tokenscope_llm_tokens_total";
    header(
        &mut out,
        tokens,
        "Tokens reported by the provider, by type.",
        "counter",
    );
    for (labels, data) in &series {
        for (kind, count) in TOKEN_TYPES.iter().zip(data.tokens) {
            sample(&mut out, tokens, labels, Some(("type", kind)), count as f64);
        }
    }

    let duration = "tokenscope_llm_call_duration_seconds";
    header(
        &mut out,
        duration,
        "Call duration from first request byte to last response byte.",
        "histogram",
    );
    for (labels, data) in &series {
        histogram(&mut out, duration, labels, &data.duration);
    }

    let ttft = "tokenscope_llm_time_to_first_token_seconds";
    header(
        &mut out,
        ttft,
        "Time from request start to the first content-bearing response bytes.",
        "histogram",
    );
    for (labels, data) in &series {
        if data.ttft.count > 0 {
            histogram(&mut out, ttft, labels, &data.ttft);
        }
    }

    let folded = "tokenscope_metric_series_overflow_total";
    header(
        &mut out,
        folded,
        "Calls recorded under __overflow__ labels because the series limit was reached.",
        "counter",
    );
    let _ = writeln!(out, "{folded} {}", number(snapshot.folded as f64));

    let rejected = "tokenscope_agent_metric_rejected_total";
    header(
        &mut out,
        rejected,
        "Agent self-metric updates refused (bad name or series bound).",
        "counter",
    );
    let _ = writeln!(out, "{rejected} {}", number(snapshot.agent_rejected as f64));

    agent_families(&mut out, &snapshot.agent_counters, "counter", |v| *v as f64);
    agent_families(&mut out, &snapshot.agent_gauges, "gauge", |v| *v);
    float_families(&mut out, &snapshot.floats);
    out
}

/// Float families; the snapshot holds them sorted by family, so each family's lines are together.
fn float_families(out: &mut String, points: &[FloatPoint]) {
    let mut current: Option<&str> = None;
    for point in points {
        let family = point.family;
        if current != Some(family.prometheus_name) {
            let kind = match family.kind {
                FloatKind::Counter => "counter",
                FloatKind::Gauge | FloatKind::UpDownCounter => "gauge",
            };
            header(out, family.prometheus_name, family.help, kind);
            current = Some(family.prometheus_name);
        }
        out.push_str(family.prometheus_name);
        if !point.attributes.is_empty() {
            out.push('{');
            for (i, (k, v)) in point.attributes.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                label(out, &prometheus_label(k), v);
            }
            out.push('}');
        }
        out.push(' ');
        push_number(out, point.value);
        out.push('\n');
    }
}

fn agent_families<T>(
    out: &mut String,
    values: &[(AgentKey, T)],
    kind: &str,
    as_f64: fn(&T) -> f64,
) {
    let mut by_name: BTreeMap<&str, Vec<(&AgentKey, f64)>> = BTreeMap::new();
    for (key, value) in values {
        by_name
            .entry(&key.name)
            .or_default()
            .push((key, as_f64(value)));
    }
    for (name, samples) in by_name {
        header(out, name, "Tokenscope agent self-metric.", kind);
        for (key, value) in samples {
            out.push_str(name);
            if !key.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in key.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    label(out, k, v);
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", number(value));
        }
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, labels: &str, hist: &Histogram) {
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0u64;
    for (i, count) in hist.counts.iter().enumerate() {
        cumulative += count;
        let le = hist
            .bounds
            .get(i)
            .map_or_else(|| "+Inf".to_owned(), |b| number(*b));
        sample(out, &bucket, labels, Some(("le", &le)), cumulative as f64);
    }
    sample(out, &format!("{name}_sum"), labels, None, hist.sum);
    sample(
        out,
        &format!("{name}_count"),
        labels,
        None,
        hist.count as f64,
    );
}

/// `k="v",...` for the non-empty labels of a series (an empty value is the same as no label).
fn label_body(labels: &LabelSet) -> String {
    let mut body = String::with_capacity(256);
    for (key, value) in labels.pairs() {
        if value.is_empty() {
            continue;
        }
        if !body.is_empty() {
            body.push(',');
        }
        label(&mut body, key, value);
    }
    body
}

fn sample(out: &mut String, name: &str, labels: &str, extra: Option<(&str, &str)>, value: f64) {
    out.push_str(name);
    out.push('{');
    out.push_str(labels);
    if let Some((key, extra_value)) = extra {
        if !labels.is_empty() {
            out.push(',');
        }
        label(out, key, extra_value);
    }
    out.push_str("} ");
    push_number(out, value);
    out.push('\n');
}

fn label(out: &mut String, key: &str, value: &str) {
    out.push_str(key);
    out.push_str("=\"");
    push_escaped(out, value);
    out.push('"');
}

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    push_escaped(&mut escaped, value);
    escaped
}

fn push_escaped(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn push_number(out: &mut String, value: f64) {
    if value.is_finite() {
        let _ = write!(out, "{value}");
    } else {
        out.push_str(&number(value));
    }
}

/// A sample value in the exposition grammar (Go `ParseFloat` compatible).
pub fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value == f64::INFINITY {
        "+Inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::metrics::Metrics;
    use crate::export::test_records;

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }

    #[test]
    fn renders_counts_matching_the_records() {
        let records = test_records();
        let metrics = Metrics::default();
        for record in &records {
            metrics.record(record);
        }
        let text = render(&metrics.snapshot());

        let calls: f64 = sum_family(&text, "tokenscope_llm_calls_total{");
        assert_eq!(calls, records.len() as f64);
        let input: u64 = records
            .iter()
            .filter_map(|r| r.call.usage.input_tokens)
            .sum();
        let input_rendered: f64 = text
            .lines()
            .filter(|l| {
                l.starts_with("tokenscope_llm_tokens_total{") && l.contains("type=\"input\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(input_rendered, input as f64);
        let priced: f64 = records.iter().filter_map(|r| r.cost_usd).sum();
        let cost = sum_family(&text, "tokenscope_llm_cost_usd_total{");
        assert!((cost - priced).abs() < 1e-9, "{cost} vs {priced}");
        let unpriced = records.iter().filter(|r| r.cost_usd.is_none()).count();
        assert_eq!(
            sum_family(&text, "tokenscope_llm_unpriced_calls_total{"),
            unpriced as f64
        );
        let limited = records
            .iter()
            .filter(|r| r.call.status == Some(429))
            .count();
        assert!(limited > 0, "fixture needs a 429");
        assert_eq!(
            sum_family(&text, "tokenscope_llm_rate_limited_calls_total{"),
            limited as f64
        );
        let count = sum_family(&text, "tokenscope_llm_call_duration_seconds_count{");
        let inf = text
            .lines()
            .filter(|l| {
                l.starts_with("tokenscope_llm_call_duration_seconds_bucket{")
                    && l.contains("le=\"+Inf\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        assert_eq!(count, records.len() as f64);
        assert_eq!(inf, count);
        for line in text
            .lines()
            .filter(|l| l.starts_with("tokenscope_") && l.contains('{'))
        {
            let family = line.split('{').next().unwrap_or_default();
            let base = family
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {base} ")),
                "no TYPE for {family}"
            );
        }
    }

    #[test]
    fn overflow_folds_and_counts() {
        let records = test_records();
        let metrics = Metrics::new(1);
        for record in &records {
            metrics.record(record);
        }
        let snapshot = metrics.snapshot();
        assert!(snapshot.folded > 0);
        let text = render(&snapshot);
        assert!(text.contains("request_model=\"__overflow__\""));
        assert!(text.contains(&format!(
            "tokenscope_metric_series_overflow_total {}",
            snapshot.folded
        )));
        assert_eq!(
            sum_family(&text, "tokenscope_llm_calls_total{"),
            records.len() as f64
        );
    }

    #[test]
    fn agent_counters_render_and_bad_names_are_refused() {
        let metrics = Metrics::default();
        assert!(metrics.set_agent_counter(
            "tokenscope_capture_dropped_total",
            &[("reason", "ringbuf_full")],
            7
        ));
        assert!(metrics.set_agent_counter(
            "tokenscope_capture_dropped_total",
            &[("reason", "ringbuf_full")],
            9
        ));
        assert!(!metrics.set_agent_counter("bad name", &[], 1));
        metrics.refresh_process_gauges();
        let text = render(&metrics.snapshot());
        assert!(text.contains("# TYPE tokenscope_capture_dropped_total counter"));
        assert!(text.contains("tokenscope_capture_dropped_total{reason=\"ringbuf_full\"} 9\n"));
        assert!(text.contains("tokenscope_agent_metric_rejected_total 1\n"));
        assert!(text.contains("tokenscope_process_resident_memory_bytes "));
    }

    #[test]
    fn float_families_render_as_counters_and_gauges() {
        use crate::export::metrics::{GPU_BUSY_SECONDS, GPU_ENERGY, HW_GPU_MEMORY_USAGE};
        let metrics = Metrics::default();
        let a = [("k8s.pod.name", "a"), ("tokenscope.team", "nlp")];
        metrics.add_float(&GPU_BUSY_SECONDS, &a, 0.5);
        metrics.add_float(&GPU_BUSY_SECONDS, &a, 0.25);
        metrics.add_float(&GPU_BUSY_SECONDS, &[("k8s.pod.name", "b")], 2.0);
        metrics.add_float(&GPU_ENERGY, &a, 10.0);
        metrics.set_float(&HW_GPU_MEMORY_USAGE, &[("hw.id", "GPU-1")], 1024.0);
        let text = render(&metrics.snapshot());
        assert!(text.contains("# TYPE tokenscope_gpu_busy_seconds_total counter\n"));
        assert!(text.contains("tokenscope_gpu_busy_seconds_total{pod=\"a\",team=\"nlp\"} 0.75\n"));
        assert!(text.contains("tokenscope_gpu_busy_seconds_total{pod=\"b\"} 2\n"));
        assert!(text.contains("tokenscope_gpu_energy_joules_total{pod=\"a\",team=\"nlp\"} 10\n"));
        assert!(text.contains("# TYPE hw_gpu_memory_usage_bytes gauge\n"));
        assert!(text.contains("hw_gpu_memory_usage_bytes{hw_id=\"GPU-1\"} 1024\n"));
        assert_eq!(
            text.matches("# TYPE tokenscope_gpu_busy_seconds_total")
                .count(),
            1,
            "one header per family"
        );
    }

    fn sum_family(text: &str, prefix: &str) -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}
