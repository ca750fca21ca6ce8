//! The report over events a real agent wrote for real SDK clients (the
//! `report_sdk` end-to-end run saved them): fixed input, fixed outputs.

use super::*;

const EVENTS: &str = include_str!("../../../tests/fixtures/report/sdk_events.jsonl");
const TABLE: &str = include_str!("../../../tests/fixtures/report/sdk_expected.txt");
const JSON: &str = include_str!("../../../tests/fixtures/report/sdk_expected.json");
const CSV: &str = include_str!("../../../tests/fixtures/report/sdk_expected.csv");

fn sdk_report() -> Report {
    let mut stats = ReadStats::default();
    let mut records = Vec::new();
    read_records(&mut EVENTS.as_bytes(), &mut stats, &mut records)
        .unwrap_or_else(|e| panic!("{e}"));
    stats.files = 1;
    let options = Options {
        by: vec![GroupKey::Team, GroupKey::Provider, GroupKey::Model],
        ..Options::default()
    };
    build(
        &records,
        stats,
        &options,
        &crate::pricing::Pricer::builtin(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn sdk_events_hold_no_secrets() {
    for secret in [
        "SECRET",
        "sk-test",
        "sk-ant",
        "uthorization",
        "x-api-key",
        "cookie",
    ] {
        assert!(!EVENTS.contains(secret), "{secret}");
    }
}

#[test]
fn sdk_events_render_as_the_golden_outputs() {
    let report = sdk_report();
    assert_eq!(report.input.bad_lines, 0);
    let render = |f| super::render(&report, f).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(render(Format::Table), TABLE);
    assert_eq!(render(Format::Csv), CSV);
    let got: serde_json::Value =
        serde_json::from_str(&render(Format::Json)).unwrap_or_else(|e| panic!("{e}"));
    let want: serde_json::Value = serde_json::from_str(JSON).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, want);
}

#[test]
fn sdk_events_cost_what_the_catalogue_says() {
    let report = sdk_report();
    let group = |model: &str| {
        report
            .groups
            .iter()
            .find(|g| g.key.get(2).map(String::as_str) == Some(model))
            .unwrap_or_else(|| panic!("{model}"))
    };
    // The fake server's usage: OpenAI 21 in (4 cached) / 7 out; Anthropic 21 in
    // + 10 cache read / 7 out. Picodollars per token: gpt-4o 2.5M/1.25M/10M,
    // gpt-4o-mini 0.15M/0.075M/0.6M, claude-sonnet-4-5 3M/0.3M/15M, haiku 1M/0.1M/5M.
    assert_eq!(
        group("gpt-4o").token_cost_picodollars,
        17 * 2_500_000 + 4 * 1_250_000 + 7 * 10_000_000
    );
    assert_eq!(
        group("gpt-4o-mini").token_cost_picodollars,
        3 * (17 * 150_000 + 4 * 75_000 + 7 * 600_000)
    );
    assert_eq!(
        group("claude-sonnet-4-5").token_cost_picodollars,
        2 * (21 * 3_000_000 + 10 * 300_000 + 7 * 15_000_000)
    );
    assert_eq!(
        group("claude-haiku-4-5").token_cost_picodollars,
        21 * 1_000_000 + 10 * 100_000 + 7 * 5_000_000
    );
    let limited = group("rate-limited");
    assert_eq!(
        (limited.calls, limited.errors, limited.rate_limited),
        (1, 1, 1)
    );
    assert_eq!((limited.cost_usd, limited.unpriced_calls), (None, 1));
    assert_eq!(report.total.calls, 8);
    assert_eq!(report.total.rate_limited, 1);
}
