//! Grouping, totals, percentiles and what-if re-pricing (pure).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::advice::{self, AdviceInputs, AdviceReport};
use super::{GroupKey, Options, ReadStats};
use crate::pricing::{picodollars_to_usd, ModelPrice, Pricer};
use crate::record::{CallRecord, Side};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the built-in model catalogue is invalid")]
    BuiltinModels(#[source] crate::pricing::tiers::TierError),
    #[error("--what-if {from}={to}: model {model:?} is not in the price catalogue")]
    UnknownWhatIfModel {
        from: String,
        to: String,
        model: String,
    },
}

/// Shown for a group value the record does not have.
pub const NONE: &str = "(none)";

/// How one record's cost is known.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum CostKind {
    /// From the catalogue and the call's tokens, exact.
    Tokens(u128),
    /// The catalogue has no price; the cost the agent wrote, in picodollars.
    Recorded(u128),
    /// Served on this node: its GPU share in USD.
    SelfHosted(f64),
    Unpriced,
}

/// The catalogue entry that prices a client-side call: the response's model first.
pub(crate) fn priced_entry<'p>(pricer: &'p Pricer, record: &CallRecord) -> Option<&'p ModelPrice> {
    if record.side == Side::Server {
        return None;
    }
    let call = &record.call;
    [
        call.response_model.as_deref(),
        call.request_model.as_deref(),
    ]
    .into_iter()
    .flatten()
    .find_map(|model| pricer.lookup(Some(call.provider), model))
}

pub(crate) fn cost_of(pricer: &Pricer, record: &CallRecord) -> CostKind {
    if record.side == Side::Server {
        return match &record.gpu {
            Some(gpu) if gpu.cost_usd.is_finite() && gpu.cost_usd >= 0.0 => {
                CostKind::SelfHosted(gpu.cost_usd)
            }
            _ => CostKind::Unpriced,
        };
    }
    if let Some(entry) = priced_entry(pricer, record) {
        return CostKind::Tokens(entry.cost(&record.call.usage));
    }
    match record.cost_usd {
        Some(usd) if usd.is_finite() && usd >= 0.0 => {
            // Rounded to the picodollar; the agent computed it exactly from picodollars.
            CostKind::Recorded((usd * crate::pricing::PICODOLLARS_PER_USD).round() as u128)
        }
        _ => CostKind::Unpriced,
    }
}

/// The model a call is shown under: what was asked for, else what answered.
pub(crate) fn model_name(record: &CallRecord) -> &str {
    let call = &record.call;
    call.request_model
        .as_deref()
        .or(call.response_model.as_deref())
        .unwrap_or(NONE)
}

fn key_value(record: &CallRecord, key: GroupKey) -> String {
    let a = &record.attribution;
    let value = match key {
        GroupKey::Team => a.team.as_deref(),
        GroupKey::Namespace => a.namespace.as_deref(),
        GroupKey::Workload => a.workload.as_deref(),
        GroupKey::Pod => a.pod.as_deref(),
        GroupKey::Model => Some(model_name(record)),
        GroupKey::Provider => Some(record.call.provider.as_str()),
        GroupKey::Operation => Some(record.call.api.operation()),
    };
    value.unwrap_or(NONE).to_owned()
}

pub(crate) fn is_error(record: &CallRecord) -> bool {
    record.call.error_type.is_some() || record.call.status.is_some_and(|s| s >= 400)
}

pub(crate) fn is_rate_limited(record: &CallRecord) -> bool {
    record.call.status == Some(429) || record.call.error_type.as_deref() == Some("rate_limited")
}

/// Nearest-rank percentile (`p` in 0..=1) of values sorted ascending.
pub(crate) fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn sorted_f64(mut values: Vec<f64>) -> Vec<f64> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    values
}

#[derive(Default)]
struct GroupAcc {
    calls: u64,
    input_tokens: u64,
    output_tokens: u64,
    cached_tokens: u64,
    reasoning_tokens: u64,
    token_cost_pd: u128,
    gpu_cost_usd: f64,
    gpu_seconds: f64,
    gpu_energy_joules: f64,
    /// Input plus output tokens of the self-hosted calls whose GPU cost is known.
    gpu_costed_tokens: u64,
    priced_calls: u64,
    unpriced_calls: u64,
    self_hosted_calls: u64,
    errors: u64,
    rate_limited: u64,
    durations: Vec<f64>,
    ttfts: Vec<f64>,
}

impl GroupAcc {
    fn add(&mut self, record: &CallRecord, cost: CostKind) {
        let usage = &record.call.usage;
        self.calls += 1;
        self.input_tokens = self
            .input_tokens
            .saturating_add(usage.input_tokens.unwrap_or(0));
        self.output_tokens = self
            .output_tokens
            .saturating_add(usage.output_tokens.unwrap_or(0));
        self.cached_tokens = self
            .cached_tokens
            .saturating_add(usage.cache_read_tokens.unwrap_or(0));
        self.reasoning_tokens = self
            .reasoning_tokens
            .saturating_add(usage.reasoning_tokens.unwrap_or(0));
        match cost {
            CostKind::Tokens(pd) | CostKind::Recorded(pd) => {
                self.token_cost_pd = self.token_cost_pd.saturating_add(pd);
                self.priced_calls += 1;
            }
            CostKind::SelfHosted(usd) => {
                self.gpu_cost_usd += usd;
                self.self_hosted_calls += 1;
                self.gpu_costed_tokens = self.gpu_costed_tokens.saturating_add(
                    usage
                        .input_tokens
                        .unwrap_or(0)
                        .saturating_add(usage.output_tokens.unwrap_or(0)),
                );
            }
            CostKind::Unpriced => self.unpriced_calls += 1,
        }
        if let Some(gpu) = &record.gpu {
            if gpu.gpu_seconds.is_finite() {
                self.gpu_seconds += gpu.gpu_seconds;
            }
            if gpu.energy_joules.is_finite() {
                self.gpu_energy_joules += gpu.energy_joules;
            }
        }
        self.errors += u64::from(is_error(record));
        self.rate_limited += u64::from(is_rate_limited(record));
        self.durations.push(record.duration_s);
        if let Some(ttft) = record.ttft_s {
            self.ttfts.push(ttft);
        }
    }

    fn merge(&mut self, other: &GroupAcc) {
        self.calls += other.calls;
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(other.cached_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(other.reasoning_tokens);
        self.token_cost_pd = self.token_cost_pd.saturating_add(other.token_cost_pd);
        self.gpu_cost_usd += other.gpu_cost_usd;
        self.gpu_seconds += other.gpu_seconds;
        self.gpu_energy_joules += other.gpu_energy_joules;
        self.gpu_costed_tokens = self
            .gpu_costed_tokens
            .saturating_add(other.gpu_costed_tokens);
        self.priced_calls += other.priced_calls;
        self.unpriced_calls += other.unpriced_calls;
        self.self_hosted_calls += other.self_hosted_calls;
        self.errors += other.errors;
        self.rate_limited += other.rate_limited;
        self.durations.extend_from_slice(&other.durations);
        self.ttfts.extend_from_slice(&other.ttfts);
    }

    fn finish(self, key: Vec<String>, by: &[GroupKey]) -> GroupRow {
        let durations = sorted_f64(self.durations);
        let ttfts = sorted_f64(self.ttfts);
        let costed = self.priced_calls + self.self_hosted_calls;
        GroupRow {
            group: by
                .iter()
                .map(|k| k.as_str().to_owned())
                .zip(key.iter().cloned())
                .collect(),
            key,
            calls: self.calls,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cached_tokens: self.cached_tokens,
            reasoning_tokens: self.reasoning_tokens,
            cost_usd: (costed > 0)
                .then(|| picodollars_to_usd(self.token_cost_pd) + self.gpu_cost_usd),
            token_cost_picodollars: self.token_cost_pd,
            gpu_cost_usd: self.gpu_cost_usd,
            gpu_seconds: self.gpu_seconds,
            gpu_energy_joules: self.gpu_energy_joules,
            self_hosted_usd_per_million_tokens: (self.gpu_costed_tokens > 0)
                .then(|| self.gpu_cost_usd * 1e6 / self.gpu_costed_tokens as f64),
            priced_calls: self.priced_calls,
            unpriced_calls: self.unpriced_calls,
            self_hosted_calls: self.self_hosted_calls,
            errors: self.errors,
            rate_limited: self.rate_limited,
            latency_p50_s: percentile(&durations, 0.50),
            latency_p95_s: percentile(&durations, 0.95),
            ttft_p50_s: percentile(&ttfts, 0.50),
            ttft_p95_s: percentile(&ttfts, 0.95),
        }
    }
}

/// One group's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupRow {
    /// The group values in `--by` order.
    #[serde(skip)]
    pub key: Vec<String>,
    pub group: BTreeMap<String, String>,
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// Token cost plus GPU cost of the calls whose cost is known; `None` when none is.
    pub cost_usd: Option<f64>,
    pub token_cost_picodollars: u128,
    pub gpu_cost_usd: f64,
    pub gpu_seconds: f64,
    /// GPU energy charged to the group's served calls, joules.
    pub gpu_energy_joules: f64,
    /// Self-hosted calls: GPU cost per 1M tokens (input + output), where the GPU cost is known.
    pub self_hosted_usd_per_million_tokens: Option<f64>,
    pub priced_calls: u64,
    /// Calls with no known cost: not included in `cost_usd`.
    pub unpriced_calls: u64,
    pub self_hosted_calls: u64,
    pub errors: u64,
    pub rate_limited: u64,
    pub latency_p50_s: Option<f64>,
    pub latency_p95_s: Option<f64>,
    pub ttft_p50_s: Option<f64>,
    pub ttft_p95_s: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnpricedModel {
    pub provider: String,
    pub model: String,
    pub calls: u64,
}

/// Re-pricing of one model's calls at another model's price.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WhatIfRow {
    #[serde(skip)]
    pub key: Vec<String>,
    /// Empty for the rule's total.
    pub group: BTreeMap<String, String>,
    pub calls: u64,
    pub cost_now_usd: f64,
    pub cost_after_usd: f64,
    pub saving_usd: f64,
    pub cost_now_picodollars: u128,
    pub cost_after_picodollars: u128,
    pub saving_picodollars: i128,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WhatIfRule {
    pub from: String,
    pub to: String,
    /// The catalogue entries the two names matched.
    pub from_matched: String,
    pub to_matched: String,
    pub groups: Vec<WhatIfRow>,
    pub total: WhatIfRow,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub by: Vec<GroupKey>,
    /// RFC 3339; calls that started earlier are left out.
    pub since: Option<String>,
    pub input: ReadStats,
    pub records: u64,
    pub before_since: u64,
    pub groups: Vec<GroupRow>,
    pub total: GroupRow,
    pub unpriced_models: Vec<UnpricedModel>,
    pub what_if: Vec<WhatIfRule>,
    /// `None` unless advice was asked for.
    pub advice: Option<AdviceReport>,
}

/// The exact sums behind a what-if line and an advice saving.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WhatIfSum {
    pub calls: u64,
    pub now_pd: u128,
    pub after_pd: u128,
}

impl WhatIfSum {
    pub fn saving_pd(&self) -> i128 {
        let now = i128::try_from(self.now_pd).unwrap_or(i128::MAX);
        let after = i128::try_from(self.after_pd).unwrap_or(i128::MAX);
        now.saturating_sub(after)
    }

    fn row(&self, key: Vec<String>, by: &[GroupKey]) -> WhatIfRow {
        let saving = self.saving_pd();
        WhatIfRow {
            group: by
                .iter()
                .map(|k| k.as_str().to_owned())
                .zip(key.iter().cloned())
                .collect(),
            key,
            calls: self.calls,
            cost_now_usd: picodollars_to_usd(self.now_pd),
            cost_after_usd: picodollars_to_usd(self.after_pd),
            saving_usd: saving as f64 / crate::pricing::PICODOLLARS_PER_USD,
            cost_now_picodollars: self.now_pd,
            cost_after_picodollars: self.after_pd,
            saving_picodollars: saving,
        }
    }
}

/// Adds one record to a what-if: client calls the catalogue prices as `from`, re-priced as `to`.
pub(crate) fn what_if_add(
    sum: &mut WhatIfSum,
    pricer: &Pricer,
    record: &CallRecord,
    from: &ModelPrice,
    to: &ModelPrice,
) -> bool {
    match priced_entry(pricer, record) {
        Some(entry) if entry.name == from.name => {
            sum.calls += 1;
            sum.now_pd = sum.now_pd.saturating_add(from.cost(&record.call.usage));
            sum.after_pd = sum.after_pd.saturating_add(to.cost(&record.call.usage));
            true
        }
        _ => false,
    }
}

pub(crate) fn format_rfc3339(unix_nano: u64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_nano))
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Builds the report from records already read.
pub fn build(
    records: &[CallRecord],
    input: ReadStats,
    options: &Options,
    pricer: &Pricer,
) -> Result<Report, ReportError> {
    let by = &options.by;
    let selected: Vec<&CallRecord> = records
        .iter()
        .filter(|r| {
            options
                .since_unix_nano
                .is_none_or(|since| r.time_unix_nano >= since)
        })
        .collect();

    let mut groups: BTreeMap<Vec<String>, GroupAcc> = BTreeMap::new();
    let mut unpriced: HashMap<(String, String), u64> = HashMap::new();
    for record in &selected {
        let key: Vec<String> = by.iter().map(|k| key_value(record, *k)).collect();
        let cost = cost_of(pricer, record);
        if cost == CostKind::Unpriced {
            let model = model_name(record).to_owned();
            *unpriced
                .entry((record.call.provider.as_str().to_owned(), model))
                .or_default() += 1;
        }
        groups.entry(key).or_default().add(record, cost);
    }

    let mut total = GroupAcc::default();
    for acc in groups.values() {
        total.merge(acc);
    }
    let mut rows: Vec<GroupRow> = groups
        .into_iter()
        .map(|(key, acc)| acc.finish(key, by))
        .collect();
    // Most expensive first; groups with no known cost last; then by name.
    rows.sort_by(|a, b| {
        let cost = |r: &GroupRow| r.cost_usd.unwrap_or(-1.0);
        cost(b).total_cmp(&cost(a)).then_with(|| a.key.cmp(&b.key))
    });
    // The total's key fills the group columns: "total" in the first, blanks after.
    let total_key: Vec<String> = (0..by.len())
        .map(|i| {
            if i == 0 {
                "total".to_owned()
            } else {
                String::new()
            }
        })
        .collect();
    let total = total.finish(total_key, &[]);

    let mut unpriced_models: Vec<UnpricedModel> = unpriced
        .into_iter()
        .map(|((provider, model), calls)| UnpricedModel {
            provider,
            model,
            calls,
        })
        .collect();
    unpriced_models.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.model.cmp(&b.model)));

    let mut what_if = Vec::new();
    for rule in &options.what_if {
        let find = |model: &str| {
            pricer
                .lookup(None, model)
                .ok_or_else(|| ReportError::UnknownWhatIfModel {
                    from: rule.from.clone(),
                    to: rule.to.clone(),
                    model: model.to_owned(),
                })
        };
        let (from, to) = (find(&rule.from)?, find(&rule.to)?);
        let mut per_group: BTreeMap<Vec<String>, WhatIfSum> = BTreeMap::new();
        let mut total = WhatIfSum::default();
        for record in &selected {
            let key: Vec<String> = by.iter().map(|k| key_value(record, *k)).collect();
            if what_if_add(per_group.entry(key).or_default(), pricer, record, from, to) {
                what_if_add(&mut total, pricer, record, from, to);
            }
        }
        what_if.push(WhatIfRule {
            from: rule.from.clone(),
            to: rule.to.clone(),
            from_matched: from.name.clone(),
            to_matched: to.name.clone(),
            groups: per_group
                .into_iter()
                .filter(|(_, sum)| sum.calls > 0)
                .map(|(key, sum)| sum.row(key, by))
                .collect(),
            total: total.row(Vec::new(), &[]),
        });
    }

    let advice = if options.advice {
        let builtin;
        let models = match &options.models {
            Some(models) => models,
            None => {
                builtin = crate::pricing::tiers::ModelCatalogue::builtin()
                    .map_err(ReportError::BuiltinModels)?;
                &builtin
            }
        };
        let inputs = AdviceInputs {
            pricer,
            models,
            sla: &options.sla,
        };
        Some(advice::advise(&selected, &inputs))
    } else {
        None
    };

    Ok(Report {
        by: by.clone(),
        since: options.since_unix_nano.and_then(format_rfc3339),
        input,
        records: selected.len() as u64,
        before_since: (records.len() - selected.len()) as u64,
        groups: rows,
        total,
        unpriced_models,
        what_if,
        advice,
    })
}

/// The exact what-if sum over some records, shared with the advice.
pub(crate) fn what_if_sum<'r>(
    records: impl IntoIterator<Item = &'r CallRecord>,
    pricer: &Pricer,
    from: &ModelPrice,
    to: &ModelPrice,
) -> WhatIfSum {
    let mut sum = WhatIfSum::default();
    for record in records {
        what_if_add(&mut sum, pricer, record, from, to);
    }
    sum
}
