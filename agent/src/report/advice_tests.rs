//! Right-sizing on synthetic workloads where the right answer is clear, the
//! SLA file, and reading a live agent over HTTP.

use std::path::Path;

use clap::Parser;

use super::tests::{base, refused, timed, tokens, Who, S, T0_S};
use super::*;
use crate::pricing::tiers::{ModelCatalogue, WorkloadClass};
use crate::record::{Api, Provider};

const TAGGER: Who = Who {
    team: Some("tagger"),
    namespace: "tagger",
    workload: "labeler",
    pod: "labeler-0",
};
const BULK: Who = Who {
    team: Some("bulk"),
    namespace: "bulk",
    workload: "summariser",
    pod: "summariser-0",
};
const DOCS: Who = Who {
    team: Some("docs"),
    namespace: "docs",
    workload: "writer",
    pod: "writer-0",
};

/// `tagger`: 40 gpt-4o calls a minute apart with 1-4 token answers (labels), one 429;
/// `bulk`: 15 gpt-4o-mini calls of 0.30-0.44 s (the candidate's latency evidence);
/// `docs`: 25 claude-sonnet-4-5 calls with short answers, and 12 claude-haiku-4-5 calls.
fn workload() -> Vec<CallRecord> {
    let mut out = Vec::new();
    for i in 0..40u64 {
        let r = base(
            &TAGGER,
            Provider::Openai,
            Api::ChatCompletions,
            "gpt-4o",
            60 * i,
        );
        let r = if i == 9 {
            timed(refused(r, 429, "rate_limited"), 90, None)
        } else {
            timed(tokens(r, 300 + i, 1 + i % 4, 0, 0), 500 + 10 * i, None)
        };
        out.push(r);
    }
    for i in 0..15u64 {
        let r = base(
            &BULK,
            Provider::Openai,
            Api::ChatCompletions,
            "gpt-4o-mini",
            60 * i + 5,
        );
        out.push(timed(tokens(r, 900, 200, 0, 0), 300 + 10 * i, None));
    }
    for i in 0..25u64 {
        let r = base(
            &DOCS,
            Provider::Anthropic,
            Api::Messages,
            "claude-sonnet-4-5",
            90 * i + 3,
        );
        out.push(timed(tokens(r, 1200, 20 + i, 0, 0), 1500 + 20 * i, None));
    }
    for i in 0..12u64 {
        let r = base(
            &BULK,
            Provider::Anthropic,
            Api::Messages,
            "claude-haiku-4-5",
            100 * i + 7,
        );
        out.push(timed(tokens(r, 800, 100, 0, 0), 700 + 10 * i, None));
    }
    out
}

fn sla(text: &str) -> SlaConfig {
    SlaConfig::parse(text, Path::new("sla.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn report_with(records: &[CallRecord], sla: SlaConfig, what_if: &[&str]) -> Report {
    let options = Options {
        by: vec![GroupKey::Team, GroupKey::Model],
        advice: true,
        sla,
        what_if: what_if
            .iter()
            .map(|w| w.parse().unwrap_or_else(|e| panic!("{e}")))
            .collect(),
        ..Options::default()
    };
    build(
        records,
        ReadStats::default(),
        &options,
        &crate::pricing::Pricer::builtin(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn advice(report: &Report) -> &AdviceReport {
    report
        .advice
        .as_ref()
        .unwrap_or_else(|| panic!("advice asked for"))
}

fn recommendation<'r>(report: &'r Report, team: &str) -> &'r Advice {
    advice(report)
        .recommendations
        .iter()
        .find(|a| a.team == team)
        .unwrap_or_else(|| panic!("{team}: {:#?}", report.advice))
}

fn declined<'r>(report: &'r Report, team: &str, model: &str) -> &'r Declined {
    advice(report)
        .declined
        .iter()
        .find(|d| d.team == team && d.model == model)
        .unwrap_or_else(|| panic!("{team}/{model}: {:#?}", report.advice))
}

const TAGGER_SLA: &str = r#"
[default]
p95_latency_s = 2.0

[teams.tagger]
p95_latency_s = 1.0
class = "classification"
"#;

#[test]
fn classification_on_a_large_model_gets_the_cheaper_model_with_evidence() {
    let records = workload();
    let report = report_with(&records, sla(TAGGER_SLA), &["gpt-4o=gpt-4o-mini"]);
    let a = recommendation(&report, "tagger");
    assert_eq!(a.model, "gpt-4o");
    // Cheaper openai models of a sufficient tier exist (nano, luna), but only
    // gpt-4o-mini has calls to measure its latency by.
    assert_eq!(a.suggested, "gpt-4o-mini");
    assert_eq!((a.tier, a.suggested_tier), (3, 2));
    assert_eq!(a.class, WorkloadClass::Classification);
    assert_eq!(a.class_source, ClassSource::Sla);
    assert_eq!(a.latency.candidate_source, LatencySource::Observed);
    assert_eq!(a.latency.candidate_calls, 15);
    // Nearest-rank p95 of 0.30..0.44 s over 15 calls is the 15th: 0.44 s.
    assert!((a.latency.candidate_p95_s - 0.44).abs() < 1e-9);
    assert_eq!(a.latency.sla_p95_s, 1.0);
    assert_eq!(a.evidence.calls, 40);
    assert_eq!(a.evidence.errors, 1);
    assert_eq!(a.evidence.rate_limited, 1);
    assert!((a.evidence.error_rate - 0.025).abs() < 1e-12);
    assert_eq!(a.evidence.p95_output_tokens, 4);
    assert!(a.reason.contains("classification") && a.reason.contains("gpt-4o-mini"));

    // The saving, computed here from the catalogue prices: $2.50/$10 -> $0.15/$0.60 per 1M.
    let mut now: i128 = 0;
    let mut after: i128 = 0;
    for i in (0..40i128).filter(|i| *i != 9) {
        let (input, output) = (300 + i, 1 + i % 4);
        now += input * 2_500_000 + output * 10_000_000;
        after += input * 150_000 + output * 600_000;
    }
    assert_eq!(a.saving.saving_picodollars, now - after);
    // ... and it is what --what-if gives for the same swap.
    let what_if = report
        .what_if
        .first()
        .and_then(|rule| rule.groups.iter().find(|r| r.key == ["tagger", "gpt-4o"]))
        .unwrap_or_else(|| panic!("what-if row"));
    assert_eq!(a.saving.saving_picodollars, what_if.saving_picodollars);
    assert_eq!(u128::try_from(now).ok(), Some(what_if.cost_now_picodollars));

    // The data covers 39 minutes and a bit: the projection takes an hour.
    let window = advice(&report).observed_window_s;
    assert!(window > 39.0 * 60.0 && window < 3600.0, "{window}");
    assert_eq!(a.saving.projection_window_s, 3600.0);
    assert_eq!(a.saving.monthly_saving_picodollars, (now - after) * 30 * 24);
    assert_eq!(
        monthly_picodollars(a.saving.saving_picodollars, 3600 * S),
        a.saving.monthly_saving_picodollars
    );
    let nano = declined_candidates(&report, "tagger");
    assert!(nano.is_empty(), "a recommendation lists no declined case");
}

fn declined_candidates(report: &Report, team: &str) -> Vec<String> {
    advice(report)
        .declined
        .iter()
        .filter(|d| d.team == team)
        .map(|d| d.reason.clone())
        .collect()
}

#[test]
fn a_latency_sla_the_candidate_misses_gets_no_advice() {
    let records = workload();
    let tight = TAGGER_SLA.replace("p95_latency_s = 1.0", "p95_latency_s = 0.4");
    let report = report_with(&records, sla(&tight), &[]);
    assert!(
        advice(&report)
            .recommendations
            .iter()
            .all(|a| a.team != "tagger"),
        "{:#?}",
        report.advice
    );
    let d = declined(&report, "tagger", "gpt-4o");
    assert!(d.reason.contains("meets the latency SLA"), "{d:#?}");
    let mini = d
        .candidates
        .iter()
        .find(|c| c.model == "gpt-4o-mini")
        .unwrap_or_else(|| panic!("{d:#?}"));
    assert!(
        mini.reason.contains("0.440 s") && mini.reason.contains("exceeds"),
        "{mini:?}"
    );
    // The table stays silent about it.
    let table = render(&report, Format::Table).unwrap_or_else(|e| panic!("{e}"));
    assert!(!table.contains("tagger openai/gpt-4o ->"), "{table}");
}

#[test]
fn a_class_no_cheaper_tier_suffices_for_gets_no_advice() {
    let records = workload();
    // docs reasons: only tier 4 suffices, and every anthropic tier-4 model costs
    // more than sonnet, though haiku has calls and would be fast enough.
    let reasoning = sla("[teams.docs]\np95_latency_s = 5.0\nclass = \"reasoning\"\n");
    let report = report_with(&records, reasoning, &[]);
    let d = declined(&report, "docs", "claude-sonnet-4-5");
    assert!(
        d.reason
            .contains("no cheaper anthropic model of a tier that suffices for reasoning"),
        "{d:#?}"
    );
    assert!(d.candidates.is_empty());
    // The same calls declared extraction do get haiku.
    let extract = sla("[teams.docs]\np95_latency_s = 5.0\nclass = \"extraction\"\n");
    let report = report_with(&records, extract, &[]);
    let a = recommendation(&report, "docs");
    assert_eq!(a.suggested, "claude-haiku-4-5");
    assert_eq!(a.latency.candidate_calls, 12);
    // Extraction with answers too long for it: not extraction-like.
    let mut long = records.clone();
    for r in long
        .iter_mut()
        .filter(|r| r.attribution.team.as_deref() == Some("docs"))
    {
        r.call.usage.output_tokens = Some(600);
    }
    let extract = sla("[teams.docs]\np95_latency_s = 5.0\nclass = \"extraction\"\n");
    let report = report_with(&long, extract, &[]);
    let d = declined(&report, "docs", "claude-sonnet-4-5");
    assert!(
        d.reason
            .contains("not extraction-like: p95 output 600 tokens > 512"),
        "{d:#?}"
    );
}

#[test]
fn without_latency_evidence_advice_needs_a_stated_assumption() {
    // Only the tagger's calls: no cheaper model has any calls to measure.
    let records: Vec<CallRecord> = workload()
        .into_iter()
        .filter(|r| r.attribution.team.as_deref() == Some("tagger"))
        .collect();
    let report = report_with(&records, sla(TAGGER_SLA), &[]);
    assert!(advice(&report).recommendations.is_empty());
    let d = declined(&report, "tagger", "gpt-4o");
    assert!(d
        .candidates
        .iter()
        .all(|c| c.reason.starts_with("no latency evidence")));

    let assumed = format!("{TAGGER_SLA}\n[assumed_p95_latency_s]\n\"gpt-4o-mini\" = 0.8\n");
    let report = report_with(&records, sla(&assumed), &[]);
    let a = recommendation(&report, "tagger");
    assert_eq!(a.suggested, "gpt-4o-mini");
    assert_eq!(a.latency.candidate_source, LatencySource::Assumed);
    assert!(a.reason.contains("assumed"), "{}", a.reason);
    let table = render(&report, Format::Table).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        table.contains("assumption: gpt-4o-mini's p95 latency"),
        "{table}"
    );
}

#[test]
fn without_an_sla_the_class_is_inferred_and_the_current_p95_is_the_limit() {
    let records = workload();
    let report = report_with(&records, SlaConfig::default(), &[]);
    let a = recommendation(&report, "tagger");
    assert_eq!(a.class, WorkloadClass::Classification);
    assert_eq!(a.class_source, ClassSource::Inferred);
    assert!(a.latency.sla_is_current_p95);
    assert_eq!(a.latency.sla_source, SlaSource::None);
    // Current p95 over the 39 answered calls: 0.89 s.
    assert!(
        (a.latency.sla_p95_s - 0.88).abs() < 0.011,
        "{}",
        a.latency.sla_p95_s
    );
    // Too few calls on haiku for bulk, gpt-4o-mini is already the cheapest measured.
    assert!(declined(&report, "bulk", "claude-haiku-4-5")
        .reason
        .contains("too few calls"));
}

#[test]
fn long_windows_project_by_their_own_length() {
    let mut records = workload();
    // Spread the same calls over two days: the projection divides by that.
    for (i, r) in records.iter_mut().enumerate() {
        r.time_unix_nano = (T0_S + 2 * 86_400 * i as u64 / 91) * S;
    }
    let report = report_with(&records, sla(TAGGER_SLA), &[]);
    let a = recommendation(&report, "tagger");
    let window = advice(&report).observed_window_s;
    assert!(window > 86_400.0, "{window}");
    assert_eq!(a.saving.projection_window_s, window);
    let window_ns = (window * 1e9).round() as u64;
    assert_eq!(
        a.saving.monthly_saving_picodollars,
        monthly_picodollars(a.saving.saving_picodollars, window_ns)
    );
    assert!(a.saving.monthly_saving_usd < a.saving.saving_usd * 16.0);
}

#[test]
fn sla_files_are_checked() {
    let config = sla(TAGGER_SLA);
    assert_eq!(
        config.for_team("tagger").0.class,
        Some(WorkloadClass::Classification)
    );
    let (other, source) = config.for_team("someone");
    assert_eq!(
        (other.p95_latency_s, source),
        (Some(2.0), SlaSource::Default)
    );
    // A team entry takes what it leaves out from the default.
    let partial = sla("[default]\np95_latency_s = 3.0\n[teams.a]\nclass = \"chat\"\n");
    assert_eq!(partial.for_team("a").0.p95_latency_s, Some(3.0));
    let bad = |text: &str| SlaConfig::parse(text, Path::new("sla.toml")).is_err();
    assert!(bad("[default]\np95_latency_s = 0\n"));
    assert!(bad("[teams.a]\np95_latency_s = -1\n"));
    assert!(bad("[teams.a]\nclass = \"poetry\"\n"));
    assert!(bad("[teams.a]\nlatency = 1\n"));
    assert!(bad("[assumed_p95_latency_s]\nx = 0.0\n"));
}

#[test]
fn the_builtin_model_catalogue_parses() {
    let models = ModelCatalogue::builtin().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        models
            .limits(WorkloadClass::Classification)
            .max_p95_output_tokens,
        Some(32)
    );
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    report: ReportArgs,
}

/// Serves one canned `/api/v1/calls` answer over real HTTP on loopback.
fn serve_once(body: String) -> (u16, std::thread::JoinHandle<String>) {
    use std::io::{BufRead as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
        let mut reader = std::io::BufReader::new(stream);
        let mut request_line = String::new();
        reader
            .read_line(&mut request_line)
            .unwrap_or_else(|e| panic!("{e}"));
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
        }
        let mut stream = reader.into_inner();
        write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap_or_else(|e| panic!("{e}"));
        request_line
    });
    (port, handle)
}

#[test]
fn a_live_agent_is_read_over_http() {
    let records = workload();
    let body = serde_json::json!({ "calls": records }).to_string();
    let (port, server) = serve_once(body);
    let agent = format!("http://127.0.0.1:{port}");
    let cli = Cli::try_parse_from(["report", "--agent", agent.as_str(), "--format", "json"])
        .unwrap_or_else(|e| panic!("{e}"));
    let out =
        run(&cli.report, &crate::pricing::Pricer::builtin()).unwrap_or_else(|e| panic!("{e:#}"));
    let request = server.join().unwrap_or_else(|_| panic!("server thread"));
    assert!(
        request.starts_with(&format!("GET /api/v1/calls?limit={AGENT_CALLS_LIMIT} ")),
        "{request}"
    );
    let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json["records"], records.len());
    assert_eq!(json["input"]["agent"], agent.as_str());
    assert_eq!(json["input"]["agent_calls"], records.len());
    assert_eq!(json["input"]["files"], 0);

    // The table says the agent answers a bounded recent window.
    let (port, server) = serve_once(serde_json::json!({ "calls": [] }).to_string());
    let agent = format!("http://127.0.0.1:{port}/");
    let cli = Cli::try_parse_from(["report", "--agent", agent.as_str()])
        .unwrap_or_else(|e| panic!("{e}"));
    let out =
        run(&cli.report, &crate::pricing::Pricer::builtin()).unwrap_or_else(|e| panic!("{e:#}"));
    server.join().unwrap_or_else(|_| panic!("server thread"));
    assert!(
        out.starts_with(&format!("0 calls from agent {agent} (0 recent calls")),
        "{out}"
    );
    assert!(out.contains("older calls are not included"), "{out}");

    assert!(agent_calls_url("https://x:1").is_err());
    assert!(agent_calls_url("http://").is_err());
    assert_eq!(
        agent_calls_url("http://10.0.0.1:9464/metrics").ok(),
        Some(format!(
            "http://10.0.0.1:9464/api/v1/calls?limit={AGENT_CALLS_LIMIT}"
        ))
    );
    // Nothing listens on port 1.
    assert!(fetch_agent_calls("http://127.0.0.1:1").is_err());
}

#[test]
fn inputs_come_from_files_the_events_flag_or_an_agent() {
    assert!(Cli::try_parse_from(["report"]).is_err());
    let cli = Cli::try_parse_from(["report", "--events", "a.jsonl", "--events", "b.jsonl"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cli.report.events.len(), 2);
    assert_eq!(
        cli.report.by,
        [GroupKey::Team, GroupKey::Provider, GroupKey::Model]
    );
    let cli = Cli::try_parse_from(["report", "x.jsonl", "--sla", "s.toml", "--models", "m.toml"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cli.report.sla.as_deref(), Some(Path::new("s.toml")));
    // A missing SLA or model file is an error, not silently no SLA.
    let dir = std::env::temp_dir().join(format!("tokenscope-advice-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let events = dir.join("calls.jsonl");
    let lines: Vec<String> = workload()
        .iter()
        .map(|r| serde_json::to_string(r).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    std::fs::write(&events, lines.join("\n")).unwrap_or_else(|e| panic!("{e}"));
    let events = events.to_string_lossy().into_owned();
    let pricer = crate::pricing::Pricer::builtin();
    for flag in ["--sla", "--models"] {
        let cli = Cli::try_parse_from([
            "report",
            "--events",
            &events,
            "--advice",
            flag,
            "/nonexistent",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(run(&cli.report, &pricer).is_err(), "{flag}");
    }
    let sla_file = dir.join("sla.toml");
    std::fs::write(&sla_file, TAGGER_SLA).unwrap_or_else(|e| panic!("{e}"));
    let sla_path = sla_file.to_string_lossy().into_owned();
    let cli = Cli::try_parse_from([
        "report", "--events", &events, "--advice", "--sla", &sla_path, "--format", "csv",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let csv = run(&cli.report, &pricer).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        csv.lines()
            .any(|l| l.starts_with("tagger,openai,gpt-4o,3,classification,gpt-4o-mini,2,40,1,")),
        "{csv}"
    );
    std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn embeddings_move_to_a_cheaper_embedding_model_only() {
    let search = Who {
        team: Some("search"),
        namespace: "search",
        workload: "indexer",
        pod: "indexer-0",
    };
    let mut records = Vec::new();
    for i in 0..25u64 {
        let mut r = base(
            &search,
            Provider::Openai,
            Api::Embeddings,
            "text-embedding-3-large",
            30 * i,
        );
        r.call.path = "/v1/embeddings".into();
        r.call.finish_reason = None;
        records.push(timed(tokens(r, 400 + i, 0, 0, 0), 120 + i, None));
    }
    for i in 0..12u64 {
        let mut r = base(
            &BULK,
            Provider::Openai,
            Api::Embeddings,
            "text-embedding-3-small",
            30 * i + 1,
        );
        r.call.path = "/v1/embeddings".into();
        r.call.finish_reason = None;
        records.push(timed(tokens(r, 800, 0, 0, 0), 90 + i, None));
    }
    let report = report_with(
        &records,
        sla("[default]\np95_latency_s = 0.5\nclass = \"chat\"\n"),
        &["text-embedding-3-large=text-embedding-3-small"],
    );
    let a = recommendation(&report, "search");
    // The SLA's class is for its chat calls; an embedding model's calls are embeddings.
    assert_eq!(a.class, WorkloadClass::Embeddings);
    assert_eq!(a.class_source, ClassSource::ModelKind);
    assert_eq!(a.suggested, "text-embedding-3-small");
    assert!(a.reason.contains("re-embed"), "{}", a.reason);
    // $0.13 -> $0.02 per 1M input tokens, computed here.
    let tokens: i128 = (0..25).map(|i| 400 + i).sum();
    assert_eq!(a.saving.saving_picodollars, tokens * (130_000 - 20_000));
    let what_if = report
        .what_if
        .first()
        .map(|rule| rule.total.saving_picodollars);
    assert_eq!(Some(a.saving.saving_picodollars), what_if);
}
