use clap::Parser;

use super::aggregate::percentile;
use super::*;
use crate::record::{Api, Attribution, GpuShare, LlmCall, Provider, Side, Usage};

const FIXTURE: &str = include_str!("../../../tests/fixtures/report/calls.jsonl");
const EXPECTED_TABLE: &str = include_str!("../../../tests/fixtures/report/expected.txt");
const EXPECTED_JSON: &str = include_str!("../../../tests/fixtures/report/expected.json");
const EXPECTED_CSV: &str = include_str!("../../../tests/fixtures/report/expected.csv");

/// 2026-11-28T08:00:00Z.
pub(super) const T0_S: u64 = 1_795_852_800;
pub(super) const S: u64 = 1_000_000_000;

pub(super) struct Who {
    pub team: Option<&'static str>,
    pub namespace: &'static str,
    pub workload: &'static str,
    pub pod: &'static str,
}

pub(super) fn base(who: &Who, provider: Provider, api: Api, model: &str, at_s: u64) -> CallRecord {
    let (host, path) = match provider {
        Provider::Openai => ("api.openai.com", "/v1/chat/completions"),
        Provider::Anthropic => ("api.anthropic.com", "/v1/messages"),
        Provider::Gemini => (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-pro:generateContent",
        ),
        _ => ("llm-gateway.internal", "/v1/chat/completions"),
    };
    CallRecord {
        call: LlmCall {
            provider,
            api,
            host: Some(host.into()),
            path: path.into(),
            request_model: Some(model.into()),
            response_model: Some(model.into()),
            streaming: false,
            status: Some(200),
            error_type: None,
            usage: Usage::default(),
            finish_reason: Some("stop".into()),
            retry_after_s: None,
            start_ns: at_s * S,
            request_end_ns: at_s * S + 2_000_000,
            response_start_ns: None,
            first_token_ns: None,
            end_ns: at_s * S,
            output_chunks: 0,
            bytes_sent: 2048,
            bytes_received: 1024,
            http_method: None,
            response_id: None,
        },
        side: Side::Client,
        time_unix_nano: (T0_S + at_s) * S,
        duration_s: 0.0,
        ttft_s: None,
        attribution: Attribution {
            pid: 4242,
            comm: "python3".into(),
            exe: Some("/usr/bin/python3.12".into()),
            cgroup_id: 9001,
            container_id: Some("4f1c2a9e7b3d".into()),
            namespace: Some(who.namespace.into()),
            pod: Some(who.pod.into()),
            pod_uid: Some("0d6c1d52-7a43-4be1-a2f0-3c9a1e0b7d11".into()),
            workload: Some(who.workload.into()),
            team: who.team.map(str::to_owned),
            node: Some("gpu-node-1".into()),
            ..Attribution::default()
        },
        peer: Some("203.0.113.10:443".into()),
        local: None,
        tls: None,
        cost_usd: None,
        gpu: None,
        gpu_share: None,
    }
}

pub(super) fn timed(mut r: CallRecord, duration_ms: u64, ttft_ms: Option<u64>) -> CallRecord {
    r.duration_s = duration_ms as f64 / 1000.0;
    r.ttft_s = ttft_ms.map(|t| t as f64 / 1000.0);
    r.call.end_ns = r.call.start_ns + duration_ms * 1_000_000;
    r.call.response_start_ns = ttft_ms.map(|t| r.call.start_ns + t * 1_000_000);
    r.call.first_token_ns = r.call.response_start_ns;
    r
}

pub(super) fn tokens(
    mut r: CallRecord,
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
) -> CallRecord {
    r.call.usage = Usage {
        input_tokens: Some(input),
        output_tokens: Some(output),
        cache_read_tokens: (cache_read > 0).then_some(cache_read),
        cache_creation_tokens: (cache_write > 0).then_some(cache_write),
        reasoning_tokens: None,
        estimated: false,
    };
    r
}

pub(super) fn refused(mut r: CallRecord, status: u16, error: &str) -> CallRecord {
    r.call.status = Some(status);
    r.call.error_type = Some(error.into());
    r.call.finish_reason = None;
    r.call.usage = Usage::default();
    if status == 429 {
        r.call.retry_after_s = Some(2.0);
    }
    r
}

/// The calls in `tests/fixtures/report/calls.jsonl`, in order.
fn fixture_records() -> Vec<CallRecord> {
    let payments = Who {
        team: Some("payments"),
        namespace: "payments",
        workload: "checkout-api",
        pod: "checkout-api-7d9f8-x2k4p",
    };
    let search = Who {
        team: Some("search"),
        namespace: "search",
        workload: "ranker",
        pod: "ranker-5c6b7-qq9lm",
    };
    let research = Who {
        team: Some("research"),
        namespace: "research",
        workload: "agent",
        pod: "agent-0",
    };
    let support = Who {
        team: Some("support"),
        namespace: "support",
        workload: "helpdesk",
        pod: "helpdesk-66f9c-zt2rd",
    };
    let platform = Who {
        team: Some("ml-platform"),
        namespace: "inference",
        workload: "vllm-llama",
        pod: "vllm-llama-0",
    };
    let data = Who {
        team: Some("data"),
        namespace: "data",
        workload: "etl",
        pod: "etl-28591-8kq2x",
    };
    let unowned = Who {
        team: None,
        namespace: "default",
        workload: "batch-job",
        pod: "batch-job-9xk2d",
    };
    let mut out = Vec::new();

    // Two days earlier: left out by --since.
    let old = base(
        &payments,
        Provider::Openai,
        Api::ChatCompletions,
        "gpt-4o",
        0,
    );
    let mut old = timed(tokens(old, 700, 60, 0, 0), 900, None);
    old.time_unix_nano -= 2 * 86_400 * S;
    out.push(old);

    // payments: many short gpt-4o classifications; two refused with 429.
    for i in 0..24u64 {
        let r = base(
            &payments,
            Provider::Openai,
            Api::ChatCompletions,
            "gpt-4o",
            60 * i,
        );
        let mut r = if i == 7 || i == 15 {
            timed(refused(r, 429, "rate_limited"), 120, None)
        } else {
            let cached = if i % 4 == 0 { 256 } else { 0 };
            timed(
                tokens(r, 480 + 20 * i, 30 + 3 * i, cached, 0),
                700 + 40 * i,
                Some(250 + 10 * i),
            )
        };
        r.call.response_model = Some("gpt-4o-2024-08-06".into());
        r.call.streaming = r.ttft_s.is_some();
        out.push(r);
    }

    // search: long answers on claude-sonnet-4-5 with a cached system prompt.
    for i in 0..22u64 {
        let r = base(
            &search,
            Provider::Anthropic,
            Api::Messages,
            "claude-sonnet-4-5",
            90 * i + 7,
        );
        let (read, write) = if i == 0 { (0, 6000) } else { (6000, 0) };
        let input = 6000 + 150 * i + 40;
        let mut r = timed(
            tokens(r, input, 700 + 25 * i, read, write),
            9000 + 300 * i,
            Some(600 + 20 * i),
        );
        r.call.response_model = Some("claude-sonnet-4-5-20250929".into());
        r.call.streaming = true;
        r.call.finish_reason = Some("end_turn".into());
        out.push(r);
    }

    // research: o3 with reasoning and tools.
    for i in 0..6u64 {
        let r = base(
            &research,
            Provider::Openai,
            Api::Responses,
            "o3",
            300 * i + 11,
        );
        let mut r = timed(
            tokens(r, 2200 + 100 * i, 1800 + 50 * i, 0, 0),
            30_000 + 1000 * i,
            None,
        );
        r.call.usage.reasoning_tokens = Some(1200 + 40 * i);
        r.call.response_model = Some("o3-2025-04-16".into());
        if i % 3 == 0 {
            r.call.finish_reason = Some("tool_calls".into());
        }
        out.push(r);
    }

    // support: a few gemini-2.5-pro calls, one server error; mistral for triage.
    for i in 0..5u64 {
        let r = base(
            &support,
            Provider::Gemini,
            Api::GenerateContent,
            "gemini-2.5-pro",
            400 * i + 13,
        );
        let r = if i == 2 {
            timed(refused(r, 500, "server_error"), 2000, None)
        } else {
            let mut r = tokens(r, 1500 + 10 * i, 200 + 5 * i, 0, 0);
            r.call.usage.reasoning_tokens = Some(90);
            timed(r, 4000 + 100 * i, None)
        };
        out.push(r);
    }
    for i in 0..3u64 {
        let r = base(
            &support,
            Provider::OpenaiCompatible,
            Api::ChatCompletions,
            "mistral-small-latest",
            500 * i + 17,
        );
        let mut r = timed(tokens(r, 900, 120 + i, 0, 0), 1100 + 50 * i, Some(300));
        r.call.host = Some("api.mistral.ai".into());
        out.push(r);
    }

    // ml-platform: calls its vLLM server served; their cost is the GPU share.
    for i in 0..4u64 {
        let mut r = base(
            &platform,
            Provider::OpenaiCompatible,
            Api::ChatCompletions,
            "meta-llama/Llama-3.1-8B-Instruct",
            200 * i + 19,
        );
        r.side = Side::Server;
        r.peer = Some("10.42.3.17:51234".into());
        r.attribution.comm = "vllm".into();
        let mut r = timed(
            tokens(r, 800 + 100 * i, 300 + 20 * i, 0, 0),
            2500 + 100 * i,
            Some(80 + i),
        );
        if i != 3 {
            let gpu_seconds = 0.5 + 0.25 * i as f64;
            r.gpu = Some(GpuShare {
                gpu_seconds,
                energy_joules: 350.0 * gpu_seconds,
                // $2.50 per GPU-hour.
                cost_usd: gpu_seconds * 2.5 / 3600.0,
            });
        }
        out.push(r);
    }

    // data: a fine-tuned model on an internal gateway: no price anywhere.
    for i in 0..2u64 {
        let r = base(
            &data,
            Provider::OpenaiCompatible,
            Api::ChatCompletions,
            "acme-finetune-v3",
            700 * i + 23,
        );
        out.push(timed(tokens(r, 1200, 400, 0, 0), 3000, None));
    }

    // No team label; DeepSeek with a cache hit.
    for i in 0..2u64 {
        let r = base(
            &unowned,
            Provider::OpenaiCompatible,
            Api::ChatCompletions,
            "deepseek-chat",
            800 * i + 29,
        );
        let mut r = timed(tokens(r, 3000, 500, 2048, 0), 5000, Some(700));
        r.call.host = Some("api.deepseek.com".into());
        out.push(r);
    }
    out
}

fn fixture_options() -> Options {
    Options {
        by: vec![GroupKey::Team, GroupKey::Provider, GroupKey::Model],
        since_unix_nano: Some((T0_S - 86_400) * S),
        what_if: vec!["gpt-4o=gpt-4o-mini"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"))],
        advice: true,
        models: None,
        sla: SlaConfig::default(),
    }
}

fn read_fixture() -> (Vec<CallRecord>, ReadStats) {
    let mut stats = ReadStats::default();
    let mut records = Vec::new();
    read_records(&mut FIXTURE.as_bytes(), &mut stats, &mut records)
        .unwrap_or_else(|e| panic!("{e}"));
    stats.files = 1;
    (records, stats)
}

fn fixture_report() -> Report {
    let (records, stats) = read_fixture();
    build(
        &records,
        stats,
        &fixture_options(),
        &crate::pricing::Pricer::builtin(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Regenerates the fixture and expected outputs: `cargo test -- --ignored --nocapture print_fixtures`.
#[test]
#[ignore = "prints the fixtures for review; not a check"]
fn print_fixtures() {
    for record in fixture_records() {
        println!(
            "{}",
            serde_json::to_string(&record).unwrap_or_else(|e| panic!("{e}"))
        );
    }
    let report = fixture_report();
    for format in [Format::Table, Format::Json, Format::Csv] {
        println!(
            "=== {format:?}\n{}",
            render(&report, format).unwrap_or_else(|e| panic!("{e}"))
        );
    }
}

#[test]
fn fixture_holds_the_constructed_records_and_two_bad_lines() {
    let (records, stats) = read_fixture();
    // Compared as exported: the file holds wall-clock times only, as the agent writes it.
    let exported = |r: &[CallRecord]| serde_json::to_value(r).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exported(&records), exported(&fixture_records()));
    assert_eq!(stats.bad_lines, 2);
    assert_eq!(stats.lines, records.len() as u64 + 2);
    assert_eq!(stats.first_bad_lines, vec![14, 40]);
}

#[test]
fn table_matches_expected() {
    let out = render(&fixture_report(), Format::Table).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out, EXPECTED_TABLE, "\n{out}");
}

#[test]
fn json_matches_expected() {
    let out = render(&fixture_report(), Format::Json).unwrap_or_else(|e| panic!("{e}"));
    let got: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}"));
    let want: serde_json::Value =
        serde_json::from_str(EXPECTED_JSON).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, want, "\n{out}");
}

#[test]
fn csv_matches_expected() {
    let out = render(&fixture_report(), Format::Csv).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out, EXPECTED_CSV, "\n{out}");
}

#[test]
fn groups_add_up_to_the_total() {
    let report = fixture_report();
    let sum = |f: fn(&GroupRow) -> u64| report.groups.iter().map(f).sum::<u64>();
    assert_eq!(sum(|g| g.calls), report.total.calls);
    assert_eq!(sum(|g| g.unpriced_calls), report.total.unpriced_calls);
    assert_eq!(sum(|g| g.errors), report.total.errors);
    let pd: u128 = report.groups.iter().map(|g| g.token_cost_picodollars).sum();
    assert_eq!(pd, report.total.token_cost_picodollars);
    // 69 records less the one before --since.
    assert_eq!(report.records, 68);
    assert_eq!(report.before_since, 1);
    // Unpriced: 2 unknown-model calls and 1 self-hosted call without a GPU share.
    assert_eq!(report.total.unpriced_calls, 3);
    assert_eq!(report.total.self_hosted_calls, 3);
    assert_eq!(report.total.rate_limited, 2);
    assert_eq!(report.total.errors, 3);
    let data = report
        .groups
        .iter()
        .find(|g| g.key == ["data", "openai_compatible", "acme-finetune-v3"])
        .unwrap_or_else(|| panic!("data group"));
    assert_eq!(data.cost_usd, None, "unknown model must not cost 0");
}

#[test]
fn payments_gpt4o_cost_is_exact() {
    let report = fixture_report();
    let g = report
        .groups
        .iter()
        .find(|g| g.key == ["payments", "openai", "gpt-4o"])
        .unwrap_or_else(|| panic!("payments group"));
    // Independent sum over the 22 answered calls at $2.50 / $1.25 (cached) / $10 per 1M.
    let mut pd: u128 = 0;
    for i in (0..24u128).filter(|i| *i != 7 && *i != 15) {
        let input = 480 + 20 * i;
        let cached = if i % 4 == 0 { 256 } else { 0 };
        pd += (input - cached) * 2_500_000 + cached * 1_250_000 + (30 + 3 * i) * 10_000_000;
    }
    assert_eq!(g.token_cost_picodollars, pd);
    assert_eq!(g.calls, 24);
    assert_eq!(g.rate_limited, 2);
}

#[test]
fn fixture_advice_is_declined_with_reasons() {
    let report = fixture_report();
    let advice = report.advice.unwrap_or_else(|| panic!("advice asked for"));
    // Nothing in the fixture calls a cheaper model, so no candidate has latency
    // evidence and no SLA file says what to assume: no recommendation.
    assert!(advice.recommendations.is_empty(), "{advice:#?}");
    let reason = |team: &str, model: &str| {
        advice
            .declined
            .iter()
            .find(|d| d.team == team && d.model == model)
            .unwrap_or_else(|| panic!("{team}/{model}: {:#?}", advice.declined))
    };
    let payments = reason("payments", "gpt-4o");
    assert!(
        payments.reason.contains("meets the latency SLA"),
        "{payments:#?}"
    );
    assert!(!payments.candidates.is_empty());
    assert!(payments
        .candidates
        .iter()
        .all(|c| c.reason.starts_with("no latency evidence")));
    assert_eq!(payments.evidence.calls, 24);
    assert_eq!(payments.evidence.rate_limited, 2);
    let search = reason("search", "claude-sonnet-4-5");
    assert!(search.reason.contains("no workload class"), "{search:#?}");
    let research = reason("research", "o3");
    assert_eq!(
        research.class,
        Some(crate::pricing::tiers::WorkloadClass::Reasoning)
    );
    assert!(
        research.reason.contains("too few calls (6 < 20)"),
        "{research:#?}"
    );
    assert!(reason("support", "gemini-2.5-pro")
        .reason
        .contains("too few calls"));
}

#[test]
fn bad_and_oversized_lines_are_counted_not_fatal() {
    let good = serde_json::to_string(
        fixture_records()
            .first()
            .unwrap_or_else(|| panic!("records")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let long = "x".repeat(MAX_LINE_BYTES + 10);
    let text = format!("{good}\n\n{{\"not\": \"a record\"}}\n{long}\n{good}\n{{truncated");
    let mut stats = ReadStats::default();
    let mut records = Vec::new();
    read_records(&mut text.as_bytes(), &mut stats, &mut records).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(records.len(), 2);
    assert_eq!(stats.lines, 5);
    assert_eq!(stats.bad_lines, 3);
    assert_eq!(stats.first_bad_lines, vec![3, 4, 6]);
}

#[test]
fn endpoint_lines_in_the_same_file_are_counted_apart_from_calls() {
    use crate::record::endpoint::{EndpointConnection, Observed};
    let good = serde_json::to_string(
        fixture_records()
            .first()
            .unwrap_or_else(|| panic!("records")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let endpoint = EndpointConnection::new(
        Observed {
            server_address: "api.anthropic.com".into(),
            start_time_unix_nano: T0_S * S,
            end_time_unix_nano: T0_S * S + S,
            bytes_sent: 800,
            bytes_received: 2400,
            local: None,
            peer: None,
        },
        crate::record::Attribution::default(),
    );
    let endpoint = serde_json::to_string(&endpoint).unwrap_or_else(|e| panic!("{e}"));
    let text = format!("{endpoint}\n{good}\n{endpoint}\n");
    let mut stats = ReadStats::default();
    let mut records = Vec::new();
    read_records(&mut text.as_bytes(), &mut stats, &mut records).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(records.len(), 1);
    assert_eq!(
        (stats.lines, stats.bad_lines, stats.endpoint_lines),
        (1, 0, 2)
    );
}

#[test]
fn since_accepts_durations_and_rfc3339() {
    let now = (T0_S + 3600) * S;
    let ok = |s: &str| parse_since(s, now).unwrap_or_else(|e| panic!("{s}: {e}"));
    assert_eq!(ok("1h"), T0_S * S);
    assert_eq!(ok("2026-11-28T08:00:00Z"), T0_S * S);
    assert_eq!(ok("2026-11-28T09:00:00+01:00"), T0_S * S);
    assert_eq!(ok("7d"), (T0_S + 3600 - 7 * 86_400) * S);
    assert_eq!(ok("100000d"), 0);
    assert!(parse_since("yesterday", now).is_err());
    assert!(parse_since("1969-12-31T00:00:00Z", now).is_err());
}

#[test]
fn percentiles_are_nearest_rank() {
    let v: Vec<u64> = (1..=20).collect();
    assert_eq!(percentile(&v, 0.5), Some(10));
    assert_eq!(percentile(&v, 0.95), Some(19));
    assert_eq!(percentile(&[7u64], 0.95), Some(7));
    assert_eq!(percentile::<u64>(&[], 0.5), None);
}

#[test]
fn unknown_what_if_model_is_an_error() {
    let (records, stats) = read_fixture();
    let options = Options {
        what_if: vec!["gpt-4o=gpt-nonexistent"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"))],
        ..fixture_options()
    };
    let err = build(
        &records,
        stats,
        &options,
        &crate::pricing::Pricer::builtin(),
    );
    assert!(
        matches!(err, Err(ReportError::UnknownWhatIfModel { ref model, .. }) if model == "gpt-nonexistent")
    );
    assert!("gpt-4o".parse::<WhatIf>().is_err());
    assert!("=gpt-4o".parse::<WhatIf>().is_err());
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    report: ReportArgs,
}

#[test]
fn run_reads_files_from_the_command_line() {
    let dir = std::env::temp_dir().join(format!("tokenscope-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let file = dir.join("calls.jsonl");
    std::fs::write(&file, FIXTURE).unwrap_or_else(|e| panic!("{e}"));
    let path = file.to_string_lossy().into_owned();
    let cli = Cli::try_parse_from([
        "report",
        path.as_str(),
        path.as_str(),
        "--by",
        "provider,operation",
        "--format",
        "json",
        "--what-if",
        "gpt-4o=gpt-4o-mini",
        "--what-if",
        "claude-sonnet-4-5=claude-haiku-4-5",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let out =
        run(&cli.report, &crate::pricing::Pricer::builtin()).unwrap_or_else(|e| panic!("{e:#}"));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}"));
    // Both files read, no --since: every record twice.
    assert_eq!(json["records"], 138);
    assert_eq!(json["input"]["bad_lines"], 4);
    assert_eq!(json["input"]["files"], 2);
    assert_eq!(json["what_if"].as_array().map(Vec::len), Some(2));
    assert_eq!(json["what_if"][0]["total"]["calls"], 50);
    let groups = json["groups"]
        .as_array()
        .unwrap_or_else(|| panic!("groups"));
    assert!(groups
        .iter()
        .any(|g| g["group"]["provider"] == "anthropic" && g["group"]["operation"] == "chat"));
    assert_eq!(
        cli.report.pricer().map(|p| p.len()).ok(),
        Some(crate::pricing::Pricer::builtin().len())
    );
    let priced = Cli::try_parse_from([
        "report",
        path.as_str(),
        "--prices",
        "/nonexistent/prices.toml",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(priced.report.pricer().is_err());
    let missing = Cli::try_parse_from(["report", "/nonexistent/tokenscope.jsonl"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(run(&missing.report, &crate::pricing::Pricer::builtin()).is_err());
    assert!(Cli::try_parse_from(["report", "x", "--by", "colour"]).is_err());
    std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
}
