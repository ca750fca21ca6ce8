use super::*;
use crate::export::test_records;

#[test]
fn histogram_buckets_are_upper_inclusive_and_ignore_bad_values() {
    let mut hist = Histogram::new(&DURATION_BUCKETS);
    hist.observe(0.01);
    hist.observe(0.010001);
    hist.observe(1000.0);
    hist.observe(f64::NAN);
    hist.observe(-1.0);
    assert_eq!(hist.count, 3);
    assert_eq!(hist.counts.first(), Some(&1), "0.01 is in le=0.01");
    assert_eq!(hist.counts.get(1), Some(&1));
    assert_eq!(hist.counts.last(), Some(&1), "past the last bound is +Inf");
    assert_eq!(hist.counts.len(), DURATION_BUCKETS.len() + 1);
}

#[test]
fn gate_admits_up_to_the_limit_then_folds() {
    let gate = SeriesGate::new(2);
    let records = test_records();
    let labels: Vec<LabelSet> = records.iter().map(LabelSet::from_record).collect();
    assert!(labels.len() > 2);
    for (i, set) in labels.iter().enumerate() {
        let admitted = gate.admit(set.clone());
        if i < 2 {
            assert_eq!(&admitted, set);
        } else {
            assert_eq!(admitted.pod, OVERFLOW);
            assert_eq!(admitted.provider, set.provider);
        }
    }
    // Known sets keep their labels after the limit.
    assert_eq!(
        labels.first().map(|l| gate.admit(l.clone())),
        labels.first().cloned()
    );
    assert_eq!(gate.folded(), labels.len() as u64 - 2);
}

#[test]
fn float_counters_only_go_up_and_gauges_are_set() {
    let metrics = Metrics::default();
    let pod = [("k8s.pod.name", "vllm-0"), ("tokenscope.team", "nlp")];
    assert!(metrics.add_float(&GPU_BUSY_SECONDS, &pod, 1.25));
    assert!(metrics.add_float(&GPU_BUSY_SECONDS, &[pod[1], pod[0]], 0.5));
    assert!(!metrics.add_float(&GPU_BUSY_SECONDS, &pod, -1.0));
    assert!(!metrics.add_float(&GPU_BUSY_SECONDS, &pod, f64::NAN));
    assert!(
        !metrics.add_float(&HW_GPU_UTILIZATION, &pod, 1.0),
        "a gauge"
    );
    assert!(
        !metrics.set_float(&GPU_BUSY_SECONDS, &pod, 1.0),
        "a counter"
    );
    assert!(metrics.set_float(&HW_GPU_UTILIZATION, &[("hw.id", "GPU-1")], 0.5));
    assert!(metrics.set_float(&HW_GPU_UTILIZATION, &[("hw.id", "GPU-1")], 0.25));
    let points = metrics.float_points(&GPU_BUSY_SECONDS);
    assert_eq!(points.len(), 1, "attribute order does not matter");
    assert_eq!(points.first().map(|p| p.1), Some(1.75));
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.agent_rejected, 4);
    let util: Vec<f64> = snapshot
        .floats
        .iter()
        .filter(|p| p.family == &HW_GPU_UTILIZATION)
        .map(|p| p.value)
        .collect();
    assert_eq!(util, vec![0.25]);
    assert_eq!(prometheus_label("k8s.pod.name"), "pod");
    assert_eq!(prometheus_label("hw.id"), "hw_id");
}

#[test]
fn error_class_comes_from_the_decoder_or_the_status() {
    let mut record = test_records().remove(0);
    assert_eq!(error_type(&record), None);
    record.call.status = Some(429);
    assert_eq!(error_type(&record).as_deref(), Some("rate_limited"));
    assert!(is_rate_limited(&record));
    record.call.status = Some(503);
    assert_eq!(error_type(&record).as_deref(), Some("503"));
    record.call.error_type = Some("overloaded".into());
    assert_eq!(error_type(&record).as_deref(), Some("overloaded"));
    assert!(!is_rate_limited(&record));
}
