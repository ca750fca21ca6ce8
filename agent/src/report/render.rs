//! Table, JSON and CSV renderings of a [`Report`].

use std::fmt::Write as _;

use super::advice::{AdviceReport, LatencySource};
use super::aggregate::{GroupRow, Report, WhatIfRow};
use super::Format;

pub fn render(report: &Report, format: Format) -> Result<String, serde_json::Error> {
    Ok(match format {
        Format::Table => table(report),
        Format::Csv => csv(report),
        Format::Json => {
            let mut json = serde_json::to_string_pretty(report)?;
            json.push('\n');
            json
        }
    })
}

fn opt_secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |s| format!("{s:.3}"))
}

fn usd(v: f64) -> String {
    format!("{v:.6}")
}

/// Left-aligned text columns, right-aligned numbers, two spaces apart.
fn aligned(header: &[String], rows: &[Vec<String>], text_columns: usize) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            if i < text_columns {
                let _ = write!(line, "{cell:<w$}");
            } else {
                let _ = write!(line, "{cell:>w$}");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn group_cells(row: &GroupRow) -> Vec<String> {
    let mut cells = row.key.clone();
    cells.extend([
        row.calls.to_string(),
        row.errors.to_string(),
        row.rate_limited.to_string(),
        row.input_tokens.to_string(),
        row.output_tokens.to_string(),
        row.cached_tokens.to_string(),
        row.cost_usd.map_or_else(|| "-".to_owned(), usd),
        row.unpriced_calls.to_string(),
        opt_secs(row.latency_p50_s),
        opt_secs(row.latency_p95_s),
        opt_secs(row.ttft_p95_s),
        format!("{:.3}", row.gpu_seconds),
        format!("{:.1}", row.gpu_energy_joules),
        row.self_hosted_usd_per_million_tokens
            .map_or_else(|| "-".to_owned(), |v| format!("{v:.4}")),
    ]);
    cells
}

fn by_names(report: &Report) -> Vec<String> {
    report.by.iter().map(|k| k.as_str().to_owned()).collect()
}

fn table(report: &Report) -> String {
    let mut out = String::new();
    let input = &report.input;
    let _ = write!(out, "{} calls", report.records);
    if let Some(agent) = &input.agent {
        let _ = write!(
            out,
            " from agent {agent} ({} recent calls: the agent keeps only its newest calls \
             in memory, 1000 by default; older calls are not included)",
            input.agent_calls
        );
        if input.files > 0 {
            out.push_str(" and");
        }
    }
    if input.files > 0 || input.agent.is_none() {
        let _ = write!(
            out,
            " from {} file(s), {} line(s)",
            input.files, input.lines
        );
    }
    if input.bad_lines > 0 {
        let _ = write!(
            out,
            ", {} bad line(s) skipped (first at line {})",
            input.bad_lines,
            input.first_bad_lines.first().map_or(0, |n| *n)
        );
    }
    if let Some(since) = &report.since {
        let _ = write!(
            out,
            "; since {since} ({} earlier left out)",
            report.before_since
        );
    }
    out.push_str("\n\n");

    let mut header = by_names(report);
    let text_columns = header.len();
    header.extend(
        [
            "calls",
            "errors",
            "429",
            "input",
            "output",
            "cached",
            "cost_usd",
            "unpriced",
            "p50_s",
            "p95_s",
            "ttft_p95_s",
            "gpu_s",
            "gpu_J",
            "gpu_usd/1M",
        ]
        .map(str::to_owned),
    );
    let mut rows: Vec<Vec<String>> = report.groups.iter().map(group_cells).collect();
    rows.push(group_cells(&report.total));
    out.push_str(&aligned(&header, &rows, text_columns));

    if report.total.unpriced_calls > 0 {
        let _ = writeln!(
            out,
            "\nUnpriced calls: {} (no catalogue price; not in cost_usd)",
            report.total.unpriced_calls
        );
        for m in &report.unpriced_models {
            let _ = writeln!(out, "  {:<18}  {:<32}  {}", m.provider, m.model, m.calls);
        }
    }

    for rule in &report.what_if {
        let _ = writeln!(
            out,
            "\nWhat-if {} -> {} (catalogue {} -> {})",
            rule.from, rule.to, rule.from_matched, rule.to_matched
        );
        let mut header = by_names(report);
        header.extend(["calls", "cost_now_usd", "cost_after_usd", "saving_usd"].map(str::to_owned));
        let mut rows: Vec<Vec<String>> = rule
            .groups
            .iter()
            .map(|r| what_if_cells(r, &r.key))
            .collect();
        rows.push(what_if_cells(&rule.total, &report.total.key));
        out.push_str(&aligned(&header, &rows, text_columns));
    }

    if let Some(advice) = &report.advice {
        advice_table(&mut out, advice);
    }
    out
}

fn advice_table(out: &mut String, advice: &AdviceReport) {
    let _ = writeln!(
        out,
        "\nRight-sizing advice (monthly = saving over the observed calls × 30 d / {}; \
         observed window {})",
        duration(advice.projection_window_s),
        duration(advice.observed_window_s)
    );
    if advice.recommendations.is_empty() {
        out.push_str("  no change advised\n");
    }
    for a in &advice.recommendations {
        let e = &a.evidence;
        let s = &a.saving;
        let _ = writeln!(
            out,
            "  {} {}/{} -> {}: save ${}/month (${} over the observed calls: ${} -> ${})",
            a.team,
            a.provider,
            a.model,
            a.suggested,
            usd(s.monthly_saving_usd),
            usd(s.saving_usd),
            usd(s.cost_now_usd),
            usd(s.cost_after_usd)
        );
        let _ = writeln!(out, "    why: {}", a.reason);
        let _ = writeln!(
            out,
            "    evidence: {} calls, p95 output {} tokens, median input {} tokens, \
             error rate {:.1}% ({} errors, {} 429), span {}, current p95 {}",
            e.calls,
            e.p95_output_tokens,
            e.median_input_tokens,
            e.error_rate * 100.0,
            e.errors,
            e.rate_limited,
            duration(e.span_s),
            e.p95_latency_s
                .map_or_else(|| "n/a".to_owned(), |s| format!("{s:.3} s"))
        );
        if a.latency.candidate_source == LatencySource::Assumed {
            let _ = writeln!(
                out,
                "    assumption: {}'s p95 latency {:.3} s is taken from the SLA file, not measured",
                a.suggested, a.latency.candidate_p95_s
            );
        }
    }
    if !advice.declined.is_empty() {
        let _ = writeln!(
            out,
            "  {} team × model pair(s) without advice (reasons: --format json, \"declined\")",
            advice.declined.len()
        );
    }
}

/// Seconds as `0.4 s`, `420 s`, `1.50 h`, `3.0 d`.
fn duration(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else if seconds < 3600.0 {
        format!("{seconds:.0} s")
    } else if seconds < 86_400.0 {
        format!("{:.2} h", seconds / 3600.0)
    } else {
        format!("{:.1} d", seconds / 86_400.0)
    }
}

fn what_if_cells(row: &WhatIfRow, key: &[String]) -> Vec<String> {
    let mut cells = key.to_vec();
    cells.extend([
        row.calls.to_string(),
        usd(row.cost_now_usd),
        usd(row.cost_after_usd),
        usd(row.saving_usd),
    ]);
    cells
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn csv_line(out: &mut String, cells: impl IntoIterator<Item = String>) {
    let line: Vec<String> = cells.into_iter().map(|c| csv_field(&c)).collect();
    out.push_str(&line.join(","));
    out.push('\n');
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

/// Dollars to the picodollar, without float noise or trailing zeros.
fn csv_usd(v: f64) -> String {
    let s = format!("{v:.12}");
    let s = s.trim_end_matches('0');
    s.strip_suffix('.').unwrap_or(s).to_owned()
}

/// CSV: the groups and a total line; then, each after a blank line, a what-if
/// block and an advice block when asked for.
fn csv(report: &Report) -> String {
    let mut out = String::new();
    let by = by_names(report);
    let mut header = by.clone();
    header.extend(
        [
            "calls",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "reasoning_tokens",
            "cost_usd",
            "priced_calls",
            "unpriced_calls",
            "self_hosted_calls",
            "gpu_seconds",
            "gpu_energy_joules",
            "self_hosted_usd_per_million_tokens",
            "errors",
            "rate_limited",
            "latency_p50_s",
            "latency_p95_s",
            "ttft_p50_s",
            "ttft_p95_s",
        ]
        .map(str::to_owned),
    );
    csv_line(&mut out, header);
    let total_key = report.total.key.clone();
    let rows = report
        .groups
        .iter()
        .map(|r| (r.key.clone(), r))
        .chain(std::iter::once((total_key.clone(), &report.total)));
    for (key, r) in rows {
        let mut cells = key;
        cells.extend([
            r.calls.to_string(),
            r.input_tokens.to_string(),
            r.output_tokens.to_string(),
            r.cached_tokens.to_string(),
            r.reasoning_tokens.to_string(),
            r.cost_usd.map_or_else(String::new, csv_usd),
            r.priced_calls.to_string(),
            r.unpriced_calls.to_string(),
            r.self_hosted_calls.to_string(),
            r.gpu_seconds.to_string(),
            r.gpu_energy_joules.to_string(),
            opt(r.self_hosted_usd_per_million_tokens),
            r.errors.to_string(),
            r.rate_limited.to_string(),
            opt(r.latency_p50_s),
            opt(r.latency_p95_s),
            opt(r.ttft_p50_s),
            opt(r.ttft_p95_s),
        ]);
        csv_line(&mut out, cells);
    }

    if !report.what_if.is_empty() {
        out.push('\n');
        let mut header = vec!["what_if_from".to_owned(), "what_if_to".to_owned()];
        header.extend(by.iter().cloned());
        header.extend(["calls", "cost_now_usd", "cost_after_usd", "saving_usd"].map(str::to_owned));
        csv_line(&mut out, header);
        for rule in &report.what_if {
            let rows = rule
                .groups
                .iter()
                .map(|r| (r.key.clone(), r))
                .chain(std::iter::once((total_key.clone(), &rule.total)));
            for (key, r) in rows {
                let mut cells = vec![rule.from_matched.clone(), rule.to_matched.clone()];
                cells.extend(key);
                cells.extend([
                    r.calls.to_string(),
                    csv_usd(r.cost_now_usd),
                    csv_usd(r.cost_after_usd),
                    csv_usd(r.saving_usd),
                ]);
                csv_line(&mut out, cells);
            }
        }
    }

    if let Some(advice) = &report.advice {
        if !advice.recommendations.is_empty() {
            out.push('\n');
            csv_line(
                &mut out,
                [
                    "team",
                    "provider",
                    "model",
                    "tier",
                    "class",
                    "suggested",
                    "suggested_tier",
                    "calls",
                    "errors",
                    "error_rate",
                    "p95_output_tokens",
                    "span_s",
                    "sla_p95_s",
                    "candidate_p95_s",
                    "candidate_latency",
                    "cost_now_usd",
                    "cost_after_usd",
                    "saving_usd",
                    "projection_window_s",
                    "monthly_saving_usd",
                    "reason",
                ]
                .map(str::to_owned),
            );
        }
        for a in &advice.recommendations {
            let e = &a.evidence;
            let s = &a.saving;
            let source = match a.latency.candidate_source {
                LatencySource::Observed => "observed",
                LatencySource::Assumed => "assumed",
            };
            csv_line(
                &mut out,
                [
                    a.team.clone(),
                    a.provider.clone(),
                    a.model.clone(),
                    a.tier.to_string(),
                    a.class.as_str().to_owned(),
                    a.suggested.clone(),
                    a.suggested_tier.to_string(),
                    e.calls.to_string(),
                    e.errors.to_string(),
                    e.error_rate.to_string(),
                    e.p95_output_tokens.to_string(),
                    e.span_s.to_string(),
                    a.latency.sla_p95_s.to_string(),
                    a.latency.candidate_p95_s.to_string(),
                    source.to_owned(),
                    csv_usd(s.cost_now_usd),
                    csv_usd(s.cost_after_usd),
                    csv_usd(s.saving_usd),
                    s.projection_window_s.to_string(),
                    csv_usd(s.monthly_saving_usd),
                    a.reason.clone(),
                ],
            );
        }
    }
    out
}
