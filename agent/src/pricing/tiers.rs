//! The model catalogue for right-sizing: capability tiers, which workload
//! classes each tier is enough for, and which tier each model is in.
//!
//! Prices stay in the price catalogue; this file only says what a model can
//! be trusted with. The built-in file is Tokenscope's judgement, not a
//! benchmark: override it with `report --models FILE`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The built-in model catalogue.
pub const BUILTIN_MODELS_TOML: &str = include_str!("models.toml");

/// What a team uses a model for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadClass {
    Classification,
    Extraction,
    Chat,
    Code,
    Reasoning,
    Embeddings,
}

impl std::str::FromStr for WorkloadClass {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkloadClass::ALL
            .into_iter()
            .find(|c| c.as_str() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = WorkloadClass::ALL.iter().map(|c| c.as_str()).collect();
                format!("unknown workload class {s:?} (one of {})", names.join(", "))
            })
    }
}

impl WorkloadClass {
    pub const ALL: [WorkloadClass; 6] = [
        WorkloadClass::Classification,
        WorkloadClass::Extraction,
        WorkloadClass::Chat,
        WorkloadClass::Code,
        WorkloadClass::Reasoning,
        WorkloadClass::Embeddings,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadClass::Classification => "classification",
            WorkloadClass::Extraction => "extraction",
            WorkloadClass::Chat => "chat",
            WorkloadClass::Code => "code",
            WorkloadClass::Reasoning => "reasoning",
            WorkloadClass::Embeddings => "embeddings",
        }
    }
}

/// Whether a model generates text or returns embeddings; candidates keep the kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    #[default]
    Chat,
    Embedding,
}

/// The observed profile a class allows: calls beyond these limits are not that class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassLimits {
    /// The team's 95th-percentile output tokens must not exceed this.
    pub max_p95_output_tokens: Option<u64>,
    /// The team's median input tokens must not exceed this.
    pub max_median_input_tokens: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tier {
    pub level: u8,
    pub name: String,
    /// The workload classes a model of this tier is enough for.
    pub suffices: Vec<WorkloadClass>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TierModel {
    /// As in the price catalogue (lower-case).
    pub name: String,
    pub provider: String,
    pub tier: u8,
    pub kind: ModelKind,
}

/// Tiers, class limits and models.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelCatalogue {
    pub taken: Option<String>,
    pub tiers: Vec<Tier>,
    pub classes: BTreeMap<WorkloadClass, ClassLimits>,
    pub models: Vec<TierModel>,
}

#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("cannot read model catalogue {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model catalogue {} is not valid", path.display())]
    Toml {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("model catalogue {}: tier key {key:?} is not a number from 1 to 9", path.display())]
    BadTier { path: PathBuf, key: String },
    #[error("model catalogue {}: {reason}", path.display())]
    BadClass { path: PathBuf, reason: String },
    #[error("model catalogue {}: model {model} names tier {tier}, which is not defined", path.display())]
    UnknownTier {
        path: PathBuf,
        model: String,
        tier: u8,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlTier {
    name: String,
    suffices: Vec<WorkloadClass>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlModel {
    provider: String,
    tier: u8,
    #[serde(default)]
    kind: ModelKind,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlModels {
    taken: Option<String>,
    #[serde(default)]
    tiers: BTreeMap<String, TomlTier>,
    #[serde(default)]
    classes: BTreeMap<String, ClassLimits>,
    #[serde(default)]
    models: BTreeMap<String, TomlModel>,
}

impl ModelCatalogue {
    /// The built-in catalogue. Checked by a unit test.
    pub fn builtin() -> Result<ModelCatalogue, TierError> {
        ModelCatalogue::parse(
            BUILTIN_MODELS_TOML,
            Path::new("agent/src/pricing/models.toml"),
        )
    }

    /// Reads a catalogue file; it replaces the built-in one as a whole.
    pub fn from_file(path: &Path) -> Result<ModelCatalogue, TierError> {
        let text = std::fs::read_to_string(path).map_err(|source| TierError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        ModelCatalogue::parse(&text, path)
    }

    pub fn parse(text: &str, origin: &Path) -> Result<ModelCatalogue, TierError> {
        let file: TomlModels = toml::from_str(text).map_err(|source| TierError::Toml {
            path: origin.to_path_buf(),
            source: Box::new(source),
        })?;
        let mut tiers = Vec::with_capacity(file.tiers.len());
        for (key, tier) in file.tiers {
            let level = key
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| (1..=9).contains(l))
                .ok_or_else(|| TierError::BadTier {
                    path: origin.to_path_buf(),
                    key: key.clone(),
                })?;
            tiers.push(Tier {
                level,
                name: tier.name,
                suffices: tier.suffices,
            });
        }
        tiers.sort_by_key(|t| t.level);
        let mut classes = BTreeMap::new();
        for (key, limits) in file.classes {
            let class = key
                .parse::<WorkloadClass>()
                .map_err(|reason| TierError::BadClass {
                    path: origin.to_path_buf(),
                    reason,
                })?;
            classes.insert(class, limits);
        }
        let mut models = Vec::with_capacity(file.models.len());
        for (name, model) in file.models {
            let name = name.trim().to_ascii_lowercase();
            if !tiers.iter().any(|t| t.level == model.tier) {
                return Err(TierError::UnknownTier {
                    path: origin.to_path_buf(),
                    model: name,
                    tier: model.tier,
                });
            }
            models.push(TierModel {
                name,
                provider: model.provider.trim().to_ascii_lowercase(),
                tier: model.tier,
                kind: model.kind,
            });
        }
        Ok(ModelCatalogue {
            taken: file.taken,
            tiers,
            classes,
            models,
        })
    }

    /// The entry of a price-catalogue model name.
    pub fn model(&self, name: &str) -> Option<&TierModel> {
        self.models.iter().find(|m| m.name == name)
    }

    pub fn tier(&self, level: u8) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.level == level)
    }

    /// Whether a model of tier `level` is enough for `class`.
    pub fn suffices(&self, level: u8, class: WorkloadClass) -> bool {
        self.tier(level)
            .is_some_and(|t| t.suffices.contains(&class))
    }

    /// The limits of a class (none when the catalogue sets none).
    pub fn limits(&self, class: WorkloadClass) -> ClassLimits {
        self.classes.get(&class).copied().unwrap_or_default()
    }
}
