//! Table, JSON and CSV renderings of a [`Report`].

use std::fmt::Write as _;

use super::advice::Verdict;
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
        row.input_tokens.to_string(),
        row.output_tokens.to_string(),
        row.cached_tokens.to_string(),
        row.cost_usd.map_or_else(|| "-".to_owned(), usd),
        row.unpriced_calls.to_string(),
        row.errors.to_string(),
        row.rate_limited.to_string(),
        opt_secs(row.latency_p50_s),
        opt_secs(row.latency_p95_s),
        opt_secs(row.ttft_p50_s),
        opt_secs(row.ttft_p95_s),
    ]);
    cells
}

fn by_names(report: &Report) -> Vec<String> {
    report.by.iter().map(|k| k.as_str().to_owned()).collect()
}

fn table(report: &Report) -> String {
    let mut out = String::new();
    let input = &report.input;
    let _ = write!(
        out,
        "{} calls from {} file(s), {} line(s)",
        report.records, input.files, input.lines
    );
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
            "input",
            "output",
            "cached",
            "cost_usd",
            "unpriced",
            "errors",
            "429",
            "p50_s",
            "p95_s",
            "ttft_p50_s",
            "ttft_p95_s",
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

    if !report.advice.is_empty() {
        out.push_str("\nRight-sizing advice\n");
        for a in &report.advice {
            let verdict = match a.verdict {
                Verdict::Switch => "SWITCH",
                Verdict::Keep => "KEEP",
            };
            let e = &a.evidence;
            let _ = writeln!(
                out,
                "  {verdict:<6}  team {}: {} -> {}: {}",
                a.team,
                a.model,
                a.suggested,
                a.reasons.join("; ")
            );
            let _ = writeln!(
                out,
                "          {} calls, median input {} / output {} tokens (p95 output {}), \
                 cost now ${}, after ${}, saving ${}",
                e.calls,
                e.median_input_tokens,
                e.median_output_tokens,
                e.p95_output_tokens,
                usd(e.cost_now_usd),
                usd(e.cost_after_usd),
                usd(e.saving_usd)
            );
        }
    }
    out
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

    if !report.advice.is_empty() {
        out.push('\n');
        csv_line(
            &mut out,
            [
                "team",
                "model",
                "suggested",
                "verdict",
                "calls",
                "median_input_tokens",
                "median_output_tokens",
                "p95_output_tokens",
                "reasoning_calls",
                "tool_calls",
                "cost_now_usd",
                "cost_after_usd",
                "saving_usd",
                "reasons",
            ]
            .map(str::to_owned),
        );
        for a in &report.advice {
            let e = &a.evidence;
            let verdict = match a.verdict {
                Verdict::Switch => "switch",
                Verdict::Keep => "keep",
            };
            csv_line(
                &mut out,
                [
                    a.team.clone(),
                    a.model.clone(),
                    a.suggested.clone(),
                    verdict.to_owned(),
                    e.calls.to_string(),
                    e.median_input_tokens.to_string(),
                    e.median_output_tokens.to_string(),
                    e.p95_output_tokens.to_string(),
                    e.reasoning_calls.to_string(),
                    e.tool_calls.to_string(),
                    csv_usd(e.cost_now_usd),
                    csv_usd(e.cost_after_usd),
                    csv_usd(e.saving_usd),
                    a.reasons.join("; "),
                ],
            );
        }
    }
    out
}
