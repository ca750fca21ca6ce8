//! The SLA file for right-sizing advice (`report --sla FILE`, TOML):
//!
//! ```toml
//! [default]                    # teams without their own entry
//! p95_latency_s = 2.0
//! class = "chat"
//!
//! [teams.payments]             # the team label, as in the report
//! p95_latency_s = 1.0
//! class = "classification"
//!
//! # Optional: a p95 latency to assume for a model the data has too few calls
//! # of. Advice resting on it says so.
//! [assumed_p95_latency_s]
//! "gpt-4o-mini" = 0.8
//! ```
//!
//! Both fields of an entry are optional; a team's entry takes what it leaves
//! out from `[default]`. Without a latency the candidate must
//! be no slower at p95 than the model the team uses now; without a class the
//! class is inferred from the calls (see `advice`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::pricing::tiers::WorkloadClass;

#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sla {
    /// The team's 95th-percentile call duration limit, seconds.
    pub p95_latency_s: Option<f64>,
    pub class: Option<WorkloadClass>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlaConfig {
    pub default: Option<Sla>,
    pub teams: BTreeMap<String, Sla>,
    /// Model (price-catalogue name) -> assumed p95 latency, seconds.
    pub assumed_p95_latency_s: BTreeMap<String, f64>,
}

/// Where a team's SLA came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlaSource {
    Team,
    Default,
    /// No SLA file, or no entry for the team and no default.
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum SlaError {
    #[error("cannot read SLA file {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("SLA file {} is not valid", path.display())]
    Toml {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("SLA file {}: {what} = {value} is not a positive number of seconds", path.display())]
    BadSeconds {
        path: PathBuf,
        what: String,
        value: f64,
    },
}

impl SlaConfig {
    pub fn from_file(path: &Path) -> Result<SlaConfig, SlaError> {
        let text = std::fs::read_to_string(path).map_err(|source| SlaError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        SlaConfig::parse(&text, path)
    }

    pub fn parse(text: &str, origin: &Path) -> Result<SlaConfig, SlaError> {
        let mut config: SlaConfig = toml::from_str(text).map_err(|source| SlaError::Toml {
            path: origin.to_path_buf(),
            source: Box::new(source),
        })?;
        let check = |what: String, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(SlaError::BadSeconds {
                    path: origin.to_path_buf(),
                    what,
                    value,
                })
            }
        };
        if let Some(seconds) = config.default.and_then(|d| d.p95_latency_s) {
            check("default.p95_latency_s".to_owned(), seconds)?;
        }
        for (team, sla) in &config.teams {
            if let Some(seconds) = sla.p95_latency_s {
                check(format!("teams.{team}.p95_latency_s"), seconds)?;
            }
        }
        for (model, seconds) in &config.assumed_p95_latency_s {
            check(format!("assumed_p95_latency_s.{model}"), *seconds)?;
        }
        config.assumed_p95_latency_s = std::mem::take(&mut config.assumed_p95_latency_s)
            .into_iter()
            .map(|(model, s)| (model.trim().to_ascii_lowercase(), s))
            .collect();
        Ok(config)
    }

    /// The SLA that applies to a team, and where it came from. A field a
    /// team's entry leaves out is taken from the default.
    pub fn for_team(&self, team: &str) -> (Sla, SlaSource) {
        let default = self.default.unwrap_or_default();
        if let Some(sla) = self.teams.get(team) {
            let merged = Sla {
                p95_latency_s: sla.p95_latency_s.or(default.p95_latency_s),
                class: sla.class.or(default.class),
            };
            (merged, SlaSource::Team)
        } else if let Some(sla) = self.default {
            (sla, SlaSource::Default)
        } else {
            (Sla::default(), SlaSource::None)
        }
    }
}
