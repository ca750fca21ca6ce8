//! Right-sizing advice: use the smallest model that meets the SLA.
//!
//! For each team × model (the price-catalogue entry the calls matched):
//!
//! 1. The workload class is the model's kind for embedding models, else the
//!    team's SLA class, else inferred from the calls (reasoning tokens ->
//!    reasoning; p95 output within the classification limit ->
//!    classification; within the chat limits -> chat; otherwise no advice).
//!    Calls that spent reasoning tokens are always the reasoning class.
//! 2. The calls must fit the class's limits in the model catalogue, be at
//!    least [`MIN_CALLS`], and include no tool calls.
//! 3. Candidates: catalogue models of the same provider and kind whose tier
//!    suffices for the class and that cost less on these very calls.
//! 4. A candidate's p95 latency must fit the team's SLA p95 (without an SLA:
//!    the current model's observed p95). The evidence is the candidate's own
//!    answered calls in the same data (at least [`MIN_LATENCY_CALLS`]), else a
//!    latency the SLA file says to assume; with neither there is no advice.
//! 5. The cheapest candidate that passes is advised. The saving is the what-if
//!    repricing of the same calls, to the picodollar; the monthly figure is
//!    that saving × 30 days / the report's observed window, the window taken
//!    as at least [`MIN_PROJECTION_WINDOW_S`] so that a short sample is never
//!    projected up.
//!
//! Every team × model that gets no advice is listed with the reason.

use std::collections::BTreeMap;

use serde::Serialize;

use super::aggregate::{self, NONE};
use super::sla::{SlaConfig, SlaSource};
use crate::pricing::tiers::{ModelCatalogue, ModelKind, TierModel, WorkloadClass};
use crate::pricing::{picodollars_to_usd, ModelPrice, Pricer, PICODOLLARS_PER_USD};
use crate::record::CallRecord;

/// Fewer calls than this say too little about a team's usage.
pub const MIN_CALLS: u64 = 20;
/// A candidate's observed latency needs at least this many answered calls.
pub const MIN_LATENCY_CALLS: usize = 10;
/// The shortest window a monthly saving is projected from, seconds (1 hour).
pub const MIN_PROJECTION_WINDOW_S: u64 = 3600;
/// 30 days, seconds.
pub const MONTH_S: u64 = 30 * 86_400;
const NS: u64 = 1_000_000_000;

/// What advice needs besides the records.
pub struct AdviceInputs<'a> {
    pub pricer: &'a Pricer,
    pub models: &'a ModelCatalogue,
    pub sla: &'a SlaConfig,
}

/// How the workload class was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassSource {
    /// An embedding model's calls are embeddings.
    ModelKind,
    Sla,
    /// Reasoning tokens were spent, whatever the SLA says.
    ReasoningTokens,
    Inferred,
}

/// What the advice rests on: the team's calls on the model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdviceEvidence {
    /// All the team's calls on the model, refused ones included (they cost nothing).
    pub calls: u64,
    pub errors: u64,
    pub rate_limited: u64,
    /// `errors / calls`.
    pub error_rate: f64,
    /// Token figures are over the answered calls.
    pub median_input_tokens: u64,
    pub p95_output_tokens: u64,
    pub reasoning_calls: u64,
    /// Calls that ended in a tool call (`finish_reason` tool_calls / tool_use / function_call).
    pub tool_calls: u64,
    /// The current model's p95 duration over the answered calls.
    pub p95_latency_s: Option<f64>,
    pub first_call: Option<String>,
    pub last_call: Option<String>,
    /// From the first call's start to the last call's end, seconds.
    pub span_s: f64,
}

/// Where a candidate's latency figure comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencySource {
    /// The candidate's own answered calls in the same data (any team).
    Observed,
    /// `[assumed_p95_latency_s]` in the SLA file: not measured.
    Assumed,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyCheck {
    pub sla_p95_s: f64,
    pub sla_source: SlaSource,
    /// True when there was no SLA latency and the current model's observed p95 was used.
    pub sla_is_current_p95: bool,
    pub candidate_p95_s: f64,
    pub candidate_source: LatencySource,
    /// Answered calls behind `candidate_p95_s` (0 when assumed).
    pub candidate_calls: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Saving {
    /// Over the observed calls: exactly the what-if repricing of the same swap.
    pub cost_now_usd: f64,
    pub cost_after_usd: f64,
    pub saving_usd: f64,
    pub saving_picodollars: i128,
    /// The report's observed window, seconds (first call start to last call end).
    pub observed_window_s: f64,
    /// The window the projection divides by: the observed one, at least 1 hour.
    pub projection_window_s: f64,
    /// `saving × 30 days / projection window`.
    pub monthly_saving_usd: f64,
    pub monthly_saving_picodollars: i128,
}

/// A recommendation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Advice {
    pub team: String,
    pub provider: String,
    /// The price-catalogue entry the team's calls matched.
    pub model: String,
    pub tier: u8,
    pub class: WorkloadClass,
    pub class_source: ClassSource,
    pub suggested: String,
    pub suggested_tier: u8,
    /// One line: why this model will do.
    pub reason: String,
    pub evidence: AdviceEvidence,
    pub latency: LatencyCheck,
    pub saving: Saving,
}

/// A candidate that was considered and turned down.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rejected {
    pub model: String,
    pub reason: String,
}

/// A team × model that gets no advice, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Declined {
    pub team: String,
    pub provider: Option<String>,
    pub model: String,
    pub class: Option<WorkloadClass>,
    pub reason: String,
    /// Cheaper models of a sufficient tier that failed the latency check.
    pub candidates: Vec<Rejected>,
    pub evidence: AdviceEvidence,
}

/// Recommendations and declined cases.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AdviceReport {
    pub recommendations: Vec<Advice>,
    pub declined: Vec<Declined>,
    /// The report's observed window, seconds, and the window projections use.
    pub observed_window_s: f64,
    pub projection_window_s: f64,
}

fn is_tool_call(record: &CallRecord) -> bool {
    matches!(
        record.call.finish_reason.as_deref(),
        Some("tool_calls" | "tool_use" | "function_call")
    )
}

fn end_ns(record: &CallRecord) -> u64 {
    let duration = if record.duration_s.is_finite() && record.duration_s > 0.0 {
        (record.duration_s * 1e9) as u64
    } else {
        0
    };
    record.time_unix_nano.saturating_add(duration)
}

/// First start to last end, nanoseconds.
fn window_ns<'r>(records: impl IntoIterator<Item = &'r CallRecord>) -> u64 {
    let mut first = u64::MAX;
    let mut last = 0u64;
    for r in records {
        first = first.min(r.time_unix_nano);
        last = last.max(end_ns(r));
    }
    last.saturating_sub(first)
}

fn answered_durations<'r>(records: impl IntoIterator<Item = &'r CallRecord>) -> Vec<f64> {
    let mut d: Vec<f64> = records
        .into_iter()
        .filter(|r| !aggregate::is_error(r))
        .map(|r| r.duration_s)
        .filter(|d| d.is_finite())
        .collect();
    d.sort_by(f64::total_cmp);
    d
}

fn evidence(calls: &[&CallRecord]) -> AdviceEvidence {
    // Sizes from the answered calls: a refused call has no tokens and would pull the figures down.
    let answered = || calls.iter().filter(|r| !aggregate::is_error(r));
    let mut inputs: Vec<u64> = answered()
        .map(|r| r.call.usage.input_tokens.unwrap_or(0))
        .collect();
    let mut outputs: Vec<u64> = answered()
        .map(|r| r.call.usage.output_tokens.unwrap_or(0))
        .collect();
    inputs.sort_unstable();
    outputs.sort_unstable();
    let errors = calls.iter().filter(|r| aggregate::is_error(r)).count() as u64;
    let total = calls.len() as u64;
    let durations = answered_durations(calls.iter().copied());
    let first = calls.iter().map(|r| r.time_unix_nano).min();
    let last = calls.iter().map(|r| r.time_unix_nano).max();
    AdviceEvidence {
        calls: total,
        errors,
        rate_limited: calls
            .iter()
            .filter(|r| aggregate::is_rate_limited(r))
            .count() as u64,
        error_rate: if total == 0 {
            0.0
        } else {
            errors as f64 / total as f64
        },
        median_input_tokens: aggregate::percentile(&inputs, 0.5).unwrap_or(0),
        p95_output_tokens: aggregate::percentile(&outputs, 0.95).unwrap_or(0),
        reasoning_calls: calls
            .iter()
            .filter(|r| r.call.usage.reasoning_tokens.unwrap_or(0) > 0)
            .count() as u64,
        tool_calls: calls.iter().filter(|r| is_tool_call(r)).count() as u64,
        p95_latency_s: aggregate::percentile(&durations, 0.95),
        first_call: first.and_then(aggregate::format_rfc3339),
        last_call: last.and_then(aggregate::format_rfc3339),
        span_s: window_ns(calls.iter().copied()) as f64 / NS as f64,
    }
}

/// Monthly projection of a saving over a window, exact in picodollars.
pub fn monthly_picodollars(saving_pd: i128, projection_window_ns: u64) -> i128 {
    let month_ns = i128::from(MONTH_S) * i128::from(NS);
    let window = i128::from(projection_window_ns.max(1));
    saving_pd.saturating_mul(month_ns) / window
}

struct Group<'r> {
    team: String,
    entry: &'r ModelPrice,
    calls: Vec<&'r CallRecord>,
}

pub(crate) fn advise(records: &[&CallRecord], inputs: &AdviceInputs<'_>) -> AdviceReport {
    let pricer = inputs.pricer;
    let mut groups: BTreeMap<(String, String), Group<'_>> = BTreeMap::new();
    // Answered calls per catalogue entry, any team: the latency evidence for candidates.
    let mut by_model: BTreeMap<String, Vec<&CallRecord>> = BTreeMap::new();
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
            .entry((team.clone(), entry.name.clone()))
            .or_insert_with(|| Group {
                team,
                entry,
                calls: Vec::new(),
            })
            .calls
            .push(record);
        by_model.entry(entry.name.clone()).or_default().push(record);
    }
    let observed_ns = window_ns(records.iter().copied());
    let projection_ns = observed_ns.max(MIN_PROJECTION_WINDOW_S * NS);
    let mut out = AdviceReport {
        observed_window_s: observed_ns as f64 / NS as f64,
        projection_window_s: projection_ns as f64 / NS as f64,
        ..AdviceReport::default()
    };
    for group in groups.values() {
        match advise_group(group, inputs, &by_model, observed_ns, projection_ns) {
            Ok(advice) => out.recommendations.push(advice),
            Err(declined) => out.declined.push(*declined),
        }
    }
    out.recommendations.sort_by(|a, b| {
        b.saving
            .saving_picodollars
            .cmp(&a.saving.saving_picodollars)
            .then_with(|| (&a.team, &a.model).cmp(&(&b.team, &b.model)))
    });
    out
}

fn decide_class(
    tier_model: &TierModel,
    sla_class: Option<WorkloadClass>,
    e: &AdviceEvidence,
    models: &ModelCatalogue,
) -> Result<(WorkloadClass, ClassSource), String> {
    if tier_model.kind == ModelKind::Embedding {
        return Ok((WorkloadClass::Embeddings, ClassSource::ModelKind));
    }
    if e.reasoning_calls > 0 {
        return Ok((WorkloadClass::Reasoning, ClassSource::ReasoningTokens));
    }
    if let Some(class) = sla_class {
        return Ok((class, ClassSource::Sla));
    }
    for class in [WorkloadClass::Classification, WorkloadClass::Chat] {
        let limits = models.limits(class);
        if limits.max_p95_output_tokens.is_some() && fits(e, class, models).is_ok() {
            return Ok((class, ClassSource::Inferred));
        }
    }
    Err(format!(
        "no workload class: p95 output {} tokens is beyond the chat limits and the SLA names none",
        e.p95_output_tokens
    ))
}

/// Whether the calls fit a class's limits.
fn fits(e: &AdviceEvidence, class: WorkloadClass, models: &ModelCatalogue) -> Result<(), String> {
    let limits = models.limits(class);
    if let Some(max) = limits.max_p95_output_tokens {
        if e.p95_output_tokens > max {
            return Err(format!(
                "p95 output {} tokens > {max}, the {} limit",
                e.p95_output_tokens,
                class.as_str()
            ));
        }
    }
    if let Some(max) = limits.max_median_input_tokens {
        if e.median_input_tokens > max {
            return Err(format!(
                "median input {} tokens > {max}, the {} limit",
                e.median_input_tokens,
                class.as_str()
            ));
        }
    }
    Ok(())
}

fn advise_group(
    group: &Group<'_>,
    inputs: &AdviceInputs<'_>,
    by_model: &BTreeMap<String, Vec<&CallRecord>>,
    observed_ns: u64,
    projection_ns: u64,
) -> Result<Advice, Box<Declined>> {
    let (pricer, models) = (inputs.pricer, inputs.models);
    let e = evidence(&group.calls);
    let mut declined = Declined {
        team: group.team.clone(),
        provider: group.entry.provider.clone(),
        model: group.entry.name.clone(),
        class: None,
        reason: String::new(),
        candidates: Vec::new(),
        evidence: e.clone(),
    };
    let decline = |mut d: Declined, reason: String| {
        d.reason = reason;
        Box::new(d)
    };
    let Some(current) = models.model(&group.entry.name) else {
        return Err(decline(
            declined,
            "not in the model catalogue: no tier".to_owned(),
        ));
    };
    let (sla, sla_source) = inputs.sla.for_team(&group.team);
    let (class, class_source) = match decide_class(current, sla.class, &e, models) {
        Ok(decided) => decided,
        Err(reason) => return Err(decline(declined, reason)),
    };
    declined.class = Some(class);
    if e.calls < MIN_CALLS {
        let reason = format!("too few calls ({} < {MIN_CALLS})", e.calls);
        return Err(decline(declined, reason));
    }
    if e.tool_calls > 0 {
        let reason = format!(
            "tool calls in {} calls: smaller tiers are not judged for tool use",
            e.tool_calls
        );
        return Err(decline(declined, reason));
    }
    if let Err(reason) = fits(&e, class, models) {
        let reason = format!("calls are not {}-like: {reason}", class.as_str());
        return Err(decline(declined, reason));
    }

    // Candidates: same provider and kind, a tier enough for the class, cheaper on these calls.
    let mut candidates: Vec<(&TierModel, &ModelPrice, aggregate::WhatIfSum)> = models
        .models
        .iter()
        .filter(|m| {
            m.name != current.name
                && m.provider == current.provider
                && m.kind == current.kind
                && models.suffices(m.tier, class)
        })
        .filter_map(|m| {
            let price = pricer.entries().iter().find(|p| p.name == m.name)?;
            let sum =
                aggregate::what_if_sum(group.calls.iter().copied(), pricer, group.entry, price);
            (sum.saving_pd() > 0).then_some((m, price, sum))
        })
        .collect();
    if candidates.is_empty() {
        let reason = format!(
            "no cheaper {} model of a tier that suffices for {}",
            current.provider,
            class.as_str()
        );
        return Err(decline(declined, reason));
    }
    // Cheapest first; then the smaller tier; then by name.
    candidates.sort_by(|a, b| {
        b.2.saving_pd()
            .cmp(&a.2.saving_pd())
            .then(a.0.tier.cmp(&b.0.tier))
            .then_with(|| a.0.name.cmp(&b.0.name))
    });

    let (sla_p95_s, sla_is_current_p95) = match (sla.p95_latency_s, e.p95_latency_s) {
        (Some(limit), _) => (limit, false),
        (None, Some(current_p95)) => (current_p95, true),
        (None, None) => {
            return Err(decline(
                declined,
                "no latency SLA and no answered calls to measure the current model by".to_owned(),
            ))
        }
    };
    let sla_text = if sla_is_current_p95 {
        format!("the current p95 {sla_p95_s:.3} s (no SLA latency)")
    } else {
        format!("the {sla_p95_s:.3} s p95 SLA")
    };
    for (candidate, price, sum) in candidates {
        let observed = by_model
            .get(&candidate.name)
            .map(|calls| answered_durations(calls.iter().copied()))
            .unwrap_or_default();
        let (candidate_p95_s, source, n) = if observed.len() >= MIN_LATENCY_CALLS {
            let p95 = aggregate::percentile(&observed, 0.95).unwrap_or(f64::INFINITY);
            (p95, LatencySource::Observed, observed.len() as u64)
        } else if let Some(&assumed) = inputs.sla.assumed_p95_latency_s.get(&candidate.name) {
            (assumed, LatencySource::Assumed, 0)
        } else {
            declined.candidates.push(Rejected {
                model: candidate.name.clone(),
                reason: format!(
                    "no latency evidence: {} answered calls in the data (need {MIN_LATENCY_CALLS}) \
                     and no assumed_p95_latency_s in the SLA file",
                    observed.len()
                ),
            });
            continue;
        };
        if candidate_p95_s > sla_p95_s {
            declined.candidates.push(Rejected {
                model: candidate.name.clone(),
                reason: format!(
                    "p95 latency {candidate_p95_s:.3} s ({}) exceeds {sla_text}",
                    latency_words(source, n)
                ),
            });
            continue;
        }
        let saving_pd = sum.saving_pd();
        let monthly_pd = monthly_picodollars(saving_pd, projection_ns);
        let tier_name = models
            .tier(candidate.tier)
            .map_or_else(String::new, |t| format!(" {}", t.name));
        let profile = match class_source {
            ClassSource::ModelKind => {
                "embedding calls (vectors change: re-embed the corpus)".to_owned()
            }
            _ => format!(
                "{}{} calls, p95 output {} tokens",
                class.as_str(),
                if class_source == ClassSource::Inferred {
                    "-like"
                } else {
                    ""
                },
                e.p95_output_tokens
            ),
        };
        let reason = format!(
            "{profile}; {} (tier {}{tier_name}) suffices for {}; its p95 {candidate_p95_s:.3} s \
             ({}) fits {sla_text}",
            candidate.name,
            candidate.tier,
            class.as_str(),
            latency_words(source, n),
        );
        return Ok(Advice {
            team: group.team.clone(),
            provider: current.provider.clone(),
            model: group.entry.name.clone(),
            tier: current.tier,
            class,
            class_source,
            suggested: price.name.clone(),
            suggested_tier: candidate.tier,
            reason,
            evidence: e,
            latency: LatencyCheck {
                sla_p95_s,
                sla_source,
                sla_is_current_p95,
                candidate_p95_s,
                candidate_source: source,
                candidate_calls: n,
            },
            saving: Saving {
                cost_now_usd: picodollars_to_usd(sum.now_pd),
                cost_after_usd: picodollars_to_usd(sum.after_pd),
                saving_usd: saving_pd as f64 / PICODOLLARS_PER_USD,
                saving_picodollars: saving_pd,
                observed_window_s: observed_ns as f64 / NS as f64,
                projection_window_s: projection_ns as f64 / NS as f64,
                monthly_saving_usd: monthly_pd as f64 / PICODOLLARS_PER_USD,
                monthly_saving_picodollars: monthly_pd,
            },
        });
    }
    let reason = format!(
        "no cheaper model of a sufficient tier meets the latency SLA ({} considered)",
        declined.candidates.len()
    );
    Err(decline(declined, reason))
}

fn latency_words(source: LatencySource, calls: u64) -> String {
    match source {
        LatencySource::Observed => format!("observed over {calls} calls"),
        LatencySource::Assumed => "assumed in the SLA file, not measured".to_owned(),
    }
}
