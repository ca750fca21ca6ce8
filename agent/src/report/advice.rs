//! Right-sizing advice: teams sending small calls to a large model.
//!
//! For each (team, model) whose catalogue entry names a smaller model of the
//! same provider, the calls are checked against fixed limits; the saving shown
//! is the what-if computation over the same calls, to the picodollar.

use std::collections::BTreeMap;

use serde::Serialize;

use super::aggregate::{self, NONE};
use crate::pricing::{picodollars_to_usd, ModelPrice, Pricer, PICODOLLARS_PER_USD};
use crate::record::CallRecord;

/// Fewer calls than this say too little about a team's usage.
pub const MIN_CALLS: usize = 20;
/// Median output above this (tokens) is long-form work a smaller model may do worse.
pub const MAX_MEDIAN_OUTPUT: u64 = 400;
/// 95th-percentile output above this means some calls are long.
pub const MAX_P95_OUTPUT: u64 = 1200;
/// Median input above this (tokens) is a large context.
pub const MAX_MEDIAN_INPUT: u64 = 4000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The calls are small: the smaller model is suggested.
    Switch,
    /// A smaller model exists but the calls do not fit it; `reasons` say why.
    Keep,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdviceEvidence {
    /// All the team's calls on the model, refused ones included (they cost nothing).
    pub calls: u64,
    /// Token medians and p95 are over the answered calls.
    pub median_input_tokens: u64,
    pub median_output_tokens: u64,
    pub p95_output_tokens: u64,
    /// Calls that spent reasoning tokens.
    pub reasoning_calls: u64,
    /// Calls that ended in a tool call (`finish_reason` tool_calls / tool_use / function_call).
    pub tool_calls: u64,
    pub cost_now_usd: f64,
    pub cost_after_usd: f64,
    pub saving_usd: f64,
    pub saving_picodollars: i128,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Advice {
    pub team: String,
    /// The catalogue entry the team's calls matched.
    pub model: String,
    pub suggested: String,
    pub verdict: Verdict,
    pub reasons: Vec<String>,
    pub evidence: AdviceEvidence,
}

/// The smaller model the catalogue names for `entry`, else `<name>-mini` of the same provider.
pub fn smaller_model<'p>(pricer: &'p Pricer, entry: &ModelPrice) -> Option<&'p ModelPrice> {
    let wanted = entry
        .smaller
        .clone()
        .unwrap_or_else(|| format!("{}-mini", entry.name));
    pricer
        .entries()
        .iter()
        .find(|e| e.name == wanted && e.provider == entry.provider && e.name != entry.name)
}

fn is_tool_call(record: &CallRecord) -> bool {
    matches!(
        record.call.finish_reason.as_deref(),
        Some("tool_calls" | "tool_use" | "function_call")
    )
}

pub(crate) fn advise(records: &[&CallRecord], pricer: &Pricer) -> Vec<Advice> {
    let mut groups: BTreeMap<(String, String), Vec<&CallRecord>> = BTreeMap::new();
    for record in records {
        let Some(entry) = aggregate::priced_entry(pricer, record) else {
            continue;
        };
        let team = record
            .attribution
            .team
            .clone()
            .unwrap_or_else(|| NONE.to_owned());
        groups
            .entry((team, entry.name.clone()))
            .or_default()
            .push(record);
    }
    let mut out = Vec::new();
    for ((team, model), calls) in groups {
        let Some(from) = pricer.entries().iter().find(|e| e.name == model) else {
            continue;
        };
        let Some(to) = smaller_model(pricer, from) else {
            continue;
        };
        let sum = aggregate::what_if_sum(calls.iter().copied(), pricer, from, to);
        let evidence = evidence(&calls, &sum);
        let reasons = keep_reasons(&evidence);
        let (verdict, reasons) = if reasons.is_empty() {
            let why = format!(
                "small calls: median input {} and output {} tokens, no reasoning or tool calls",
                evidence.median_input_tokens, evidence.median_output_tokens
            );
            (Verdict::Switch, vec![why])
        } else {
            (Verdict::Keep, reasons)
        };
        out.push(Advice {
            team,
            model,
            suggested: to.name.clone(),
            verdict,
            reasons,
            evidence,
        });
    }
    out.sort_by(|a, b| {
        let rank = |v: Verdict| u8::from(v == Verdict::Keep);
        rank(a.verdict)
            .cmp(&rank(b.verdict))
            .then(
                b.evidence
                    .saving_picodollars
                    .cmp(&a.evidence.saving_picodollars),
            )
            .then_with(|| (&a.team, &a.model).cmp(&(&b.team, &b.model)))
    });
    out
}

fn evidence(calls: &[&CallRecord], sum: &aggregate::WhatIfSum) -> AdviceEvidence {
    // Sizes from the answered calls: a refused call has no tokens and would pull the median down.
    let answered = || calls.iter().filter(|r| !aggregate::is_error(r));
    let mut inputs: Vec<u64> = answered()
        .map(|r| r.call.usage.input_tokens.unwrap_or(0))
        .collect();
    let mut outputs: Vec<u64> = answered()
        .map(|r| r.call.usage.output_tokens.unwrap_or(0))
        .collect();
    inputs.sort_unstable();
    outputs.sort_unstable();
    let saving = sum.saving_pd();
    AdviceEvidence {
        calls: sum.calls,
        median_input_tokens: aggregate::percentile(&inputs, 0.5).unwrap_or(0),
        median_output_tokens: aggregate::percentile(&outputs, 0.5).unwrap_or(0),
        p95_output_tokens: aggregate::percentile(&outputs, 0.95).unwrap_or(0),
        reasoning_calls: calls
            .iter()
            .filter(|r| r.call.usage.reasoning_tokens.unwrap_or(0) > 0)
            .count() as u64,
        tool_calls: calls.iter().filter(|r| is_tool_call(r)).count() as u64,
        cost_now_usd: picodollars_to_usd(sum.now_pd),
        cost_after_usd: picodollars_to_usd(sum.after_pd),
        saving_usd: saving as f64 / PICODOLLARS_PER_USD,
        saving_picodollars: saving,
    }
}

fn keep_reasons(e: &AdviceEvidence) -> Vec<String> {
    let mut reasons = Vec::new();
    if e.calls < MIN_CALLS as u64 {
        reasons.push(format!("too few calls ({} < {MIN_CALLS})", e.calls));
    }
    if e.median_output_tokens > MAX_MEDIAN_OUTPUT {
        reasons.push(format!(
            "long outputs (median {} tokens > {MAX_MEDIAN_OUTPUT})",
            e.median_output_tokens
        ));
    } else if e.p95_output_tokens > MAX_P95_OUTPUT {
        reasons.push(format!(
            "some long outputs (p95 {} tokens > {MAX_P95_OUTPUT})",
            e.p95_output_tokens
        ));
    }
    if e.median_input_tokens > MAX_MEDIAN_INPUT {
        reasons.push(format!(
            "large inputs (median {} tokens > {MAX_MEDIAN_INPUT})",
            e.median_input_tokens
        ));
    }
    if e.reasoning_calls > 0 {
        reasons.push(format!(
            "reasoning tokens used in {} calls",
            e.reasoning_calls
        ));
    }
    if e.tool_calls > 0 {
        reasons.push(format!("tool calls in {} calls", e.tool_calls));
    }
    if e.saving_picodollars <= 0 {
        reasons.push("no saving at catalogue prices".to_owned());
    }
    reasons
}
