//! `tokenscope report`: what each team pays, from the agent's JSON Lines files
//! or from a live agent's `/api/v1/calls`.
//!
//! Reading files and the one HTTP GET are the only I/O here; [`read_records`],
//! [`build`] and the renderers are pure and tested directly.
//!
//! Costs are recomputed from each call's token counts with the catalogue given
//! to the report (so a negotiated price file applies to past data too). A call
//! the catalogue cannot price keeps the cost the agent wrote, if any, and is
//! otherwise counted as unpriced, never as 0. Calls this node served
//! (self-hosted) cost their GPU share.

mod advice;
#[cfg(test)]
mod advice_tests;
mod aggregate;
mod render;
#[cfg(test)]
mod sdk_tests;
pub mod sla;
#[cfg(test)]
mod tests;

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context as _;
use serde::Serialize;

use crate::pricing::Pricer;
use crate::record::CallRecord;

pub use advice::{
    monthly_picodollars, Advice, AdviceEvidence, AdviceInputs, AdviceReport, ClassSource, Declined,
    LatencySource, Rejected, MIN_CALLS, MIN_LATENCY_CALLS, MIN_PROJECTION_WINDOW_S, MONTH_S,
};
pub use aggregate::{build, GroupRow, Report, ReportError, UnpricedModel, WhatIfRow, WhatIfRule};
pub use sla::{Sla, SlaConfig, SlaSource};

/// The longest line read from an event file; longer lines are counted as bad.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// The largest `/api/v1/calls` answer read from a live agent.
pub const MAX_AGENT_RESPONSE_BYTES: u64 = 256 << 20;
/// The `limit` asked of a live agent; it answers at most the calls it keeps.
pub const AGENT_CALLS_LIMIT: usize = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum GroupKey {
    Team,
    Namespace,
    Workload,
    Pod,
    Model,
    Provider,
    Operation,
}

impl GroupKey {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupKey::Team => "team",
            GroupKey::Namespace => "namespace",
            GroupKey::Workload => "workload",
            GroupKey::Pod => "pod",
            GroupKey::Model => "model",
            GroupKey::Provider => "provider",
            GroupKey::Operation => "operation",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// `--what-if FROM=TO`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhatIf {
    pub from: String,
    pub to: String,
}

impl std::str::FromStr for WhatIf {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((from, to)) if !from.trim().is_empty() && !to.trim().is_empty() => Ok(WhatIf {
                from: from.trim().to_owned(),
                to: to.trim().to_owned(),
            }),
            _ => Err(format!(
                "expected FROM=TO (e.g. gpt-4o=gpt-4o-mini), got {s:?}"
            )),
        }
    }
}

#[derive(Clone, Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("input").required(true).multiple(true).args(["files", "events", "agent"])
))]
pub struct ReportArgs {
    /// JSON Lines event files written by the agent (one call record per line).
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The same, as a flag (repeatable).
    #[arg(long = "events", value_name = "PATH")]
    pub events: Vec<PathBuf>,
    /// A live agent (`http://HOST:PORT`): reads its `/api/v1/calls`, which holds only
    /// the newest calls the agent keeps in memory (1000 by default), not its history.
    #[arg(long, value_name = "URL")]
    pub agent: Option<String>,
    /// Group by these, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "team,provider,model")]
    pub by: Vec<GroupKey>,
    /// Only calls that started at or after this: a duration back from now (`24h`, `7d`,
    /// `90m`) or an RFC 3339 time (`2026-11-28T00:00:00Z`).
    #[arg(long, value_name = "DURATION|RFC3339")]
    pub since: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Re-price the calls of model FROM at the catalogue price of model TO (repeatable).
    #[arg(long = "what-if", value_name = "FROM=TO")]
    pub what_if: Vec<WhatIf>,
    /// Right-sizing: the cheapest model of a sufficient tier that meets each team's SLA.
    #[arg(long)]
    pub advice: bool,
    /// Model catalogue (capability tiers) replacing the built-in one.
    #[arg(long, value_name = "FILE", env = "TOKENSCOPE_MODELS")]
    pub models: Option<PathBuf>,
    /// SLA file: p95 latency and workload class, per team and default.
    #[arg(long, value_name = "FILE", env = "TOKENSCOPE_SLA")]
    pub sla: Option<PathBuf>,
    /// Price catalogues over the built-in one (Tokenscope TOML, or LiteLLM's JSON), in order.
    #[arg(
        long = "prices",
        value_name = "FILE",
        env = "TOKENSCOPE_PRICES",
        value_delimiter = ','
    )]
    pub prices: Vec<PathBuf>,
}

impl ReportArgs {
    /// The catalogue for this report: built-in, overridden by `--prices` files.
    pub fn pricer(&self) -> Result<Pricer, crate::pricing::PricingError> {
        if self.prices.is_empty() {
            Ok(Pricer::builtin())
        } else {
            Pricer::from_files(&self.prices)
        }
    }
}

/// What reading the files gave besides the records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReadStats {
    /// The live agent read (`--agent`), if any.
    pub agent: Option<String>,
    /// Calls the agent returned.
    pub agent_calls: u64,
    pub files: u64,
    pub lines: u64,
    /// Lines that were not a call record (bad JSON, wrong shape, too long); skipped.
    pub bad_lines: u64,
    /// Line numbers (1-based, per file) of the first few bad lines.
    pub first_bad_lines: Vec<u64>,
    /// Endpoint connections (not decrypted) in the files; not calls.
    pub endpoint_lines: u64,
}

const FIRST_BAD_LINES_KEPT: usize = 10;

/// Reads call records, one JSON object per line; blank lines are ignored.
pub fn read_records(
    reader: &mut impl BufRead,
    stats: &mut ReadStats,
    out: &mut Vec<CallRecord>,
) -> std::io::Result<()> {
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let read = std::io::Read::take(&mut *reader, MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if read == 0 {
            return Ok(());
        }
        number += 1;
        let complete = line.last() == Some(&b'\n');
        if !complete && line.len() > MAX_LINE_BYTES {
            // Too long: skip to the end of this line without keeping it.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                let n =
                    std::io::Read::take(&mut *reader, 64 * 1024).read_until(b'\n', &mut rest)?;
                if n == 0 || rest.last() == Some(&b'\n') {
                    break;
                }
            }
            stats.lines += 1;
            note_bad(stats, number);
            continue;
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        if crate::record::endpoint::is_endpoint_line(text) {
            // Endpoint connections that were not decrypted: no call to report.
            stats.endpoint_lines += 1;
            continue;
        }
        stats.lines += 1;
        match serde_json::from_slice::<CallRecord>(text) {
            Ok(record) => out.push(record),
            Err(error) => {
                tracing::debug!(line = number, %error, "report.bad_line");
                note_bad(stats, number);
            }
        }
    }
}

fn note_bad(stats: &mut ReadStats, number: u64) {
    stats.bad_lines += 1;
    if stats.first_bad_lines.len() < FIRST_BAD_LINES_KEPT {
        stats.first_bad_lines.push(number);
    }
}

/// Turns `--since` into nanoseconds since the Unix epoch.
pub fn parse_since(since: &str, now_unix_nano: u64) -> anyhow::Result<u64> {
    let since = since.trim();
    if let Ok(time) =
        time::OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339)
    {
        let nanos = time.unix_timestamp_nanos();
        return u64::try_from(nanos).with_context(|| format!("--since {since} is before 1970"));
    }
    let back = humantime::parse_duration(since).with_context(|| {
        format!("--since {since:?} is neither a duration (24h) nor an RFC 3339 time")
    })?;
    let back = u64::try_from(back.as_nanos()).unwrap_or(u64::MAX);
    Ok(now_unix_nano.saturating_sub(back))
}

/// Options for [`build`], from [`ReportArgs`] with `--since` resolved.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub by: Vec<GroupKey>,
    pub since_unix_nano: Option<u64>,
    pub what_if: Vec<WhatIf>,
    pub advice: bool,
    /// The model catalogue for advice; `None` is the built-in one.
    pub models: Option<crate::pricing::tiers::ModelCatalogue>,
    pub sla: SlaConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("--agent {url}: expected http://HOST:PORT")]
    BadUrl { url: String },
    #[error("--agent {url}: request failed")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("--agent {url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("--agent {url}: reading the answer failed")]
    Read {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--agent {url}: the answer is larger than {MAX_AGENT_RESPONSE_BYTES} bytes")]
    TooLarge { url: String },
    #[error("--agent {url}: the answer is not a calls list")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// `/api/v1/calls` as the agent answers it (newest first).
#[derive(serde::Deserialize)]
struct CallsAnswer {
    calls: Vec<CallRecord>,
}

/// The `/api/v1/calls` URL for an agent address (`http://HOST:PORT`, a trailing path ignored).
pub fn agent_calls_url(agent: &str) -> Result<String, AgentError> {
    let bad = || AgentError::BadUrl {
        url: agent.to_owned(),
    };
    let rest = agent.trim().strip_prefix("http://").ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains(['?', '#', '@']) {
        return Err(bad());
    }
    Ok(format!(
        "http://{authority}/api/v1/calls?limit={AGENT_CALLS_LIMIT}"
    ))
}

/// Reads the recent calls a live agent keeps. Blocking; the answer is bounded.
pub fn fetch_agent_calls(agent: &str) -> Result<Vec<CallRecord>, AgentError> {
    use std::io::Read as _;
    let url = agent_calls_url(agent)?;
    let err_url = || agent.to_owned();
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|source| AgentError::Request {
            url: err_url(),
            source,
        })?;
    let response = client
        .get(&url)
        .send()
        .map_err(|source| AgentError::Request {
            url: err_url(),
            source,
        })?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(AgentError::Status {
            url: err_url(),
            status,
        });
    }
    let mut body = Vec::new();
    response
        .take(MAX_AGENT_RESPONSE_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|source| AgentError::Read {
            url: err_url(),
            source,
        })?;
    if body.len() as u64 > MAX_AGENT_RESPONSE_BYTES {
        return Err(AgentError::TooLarge { url: err_url() });
    }
    let answer: CallsAnswer = serde_json::from_slice(&body).map_err(|source| AgentError::Json {
        url: err_url(),
        source,
    })?;
    Ok(answer.calls)
}

/// Runs the report: reads the files, aggregates and renders in the chosen format.
pub fn run(args: &ReportArgs, pricer: &Pricer) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("system clock is before 1970")?;
    let now_unix_nano = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
    let since_unix_nano = args
        .since
        .as_deref()
        .map(|s| parse_since(s, now_unix_nano))
        .transpose()?;
    let mut stats = ReadStats::default();
    let mut records = Vec::new();
    if let Some(agent) = &args.agent {
        let calls = fetch_agent_calls(agent)?;
        stats.agent = Some(agent.clone());
        stats.agent_calls = calls.len() as u64;
        records.extend(calls);
    }
    for path in args.files.iter().chain(&args.events) {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut reader = std::io::BufReader::new(file);
        let before = stats.bad_lines;
        read_records(&mut reader, &mut stats, &mut records)
            .with_context(|| format!("cannot read {}", path.display()))?;
        stats.files += 1;
        if stats.bad_lines > before {
            tracing::warn!(path = %path.display(), bad_lines = stats.bad_lines - before, "report.bad_lines");
        }
    }
    let options = Options {
        by: args.by.clone(),
        since_unix_nano,
        what_if: args.what_if.clone(),
        advice: args.advice,
        models: args
            .models
            .as_deref()
            .map(crate::pricing::tiers::ModelCatalogue::from_file)
            .transpose()?,
        sla: args
            .sla
            .as_deref()
            .map(SlaConfig::from_file)
            .transpose()?
            .unwrap_or_default(),
    };
    let report = build(&records, stats, &options, pricer)?;
    Ok(render::render(&report, args.format)?)
}

pub use render::render;
