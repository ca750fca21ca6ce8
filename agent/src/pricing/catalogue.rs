//! Price catalogue files: Tokenscope's TOML and LiteLLM's JSON.
//!
//! Both are turned into [`ModelPrice`] entries holding integer picodollars per
//! token, so that every later sum is exact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::PricingError;

/// Picodollars in one US dollar.
pub const PICODOLLARS_PER_USD: f64 = 1e12;

/// The price of one model, in picodollars per token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPrice {
    /// The catalogue key, lower-cased.
    pub name: String,
    /// The provider the catalogue names (`openai`, `anthropic`, `gemini`, `groq`, ...).
    pub provider: Option<String>,
    pub aliases: Vec<String>,
    /// `YYYY-MM-DD` from which the price applies, when the catalogue says.
    pub effective: Option<String>,
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    /// Reasoning tokens (part of the output count); the output price unless the catalogue
    /// gives one.
    pub reasoning: u64,
}

/// One model in a Tokenscope TOML catalogue (USD per 1M tokens).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlModel {
    input: f64,
    output: f64,
    cache_read: Option<f64>,
    cache_write: Option<f64>,
    reasoning: Option<f64>,
    provider: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    effective: Option<String>,
    /// Read and ignored: right-sizing takes candidates from the tier catalogue now.
    #[expect(
        dead_code,
        reason = "accepted so that older catalogues still load; tiers replaced it"
    )]
    smaller: Option<String>,
}

/// The price of one GPU model, USD per GPU-hour.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuPrice {
    /// The name as NVML reports it (`NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// Other names of the same GPU, matched like `name`.
    pub aliases: Vec<String>,
    pub usd_per_hour: f64,
    /// Where the price was taken from, as the catalogue says.
    pub source: Option<String>,
    /// `YYYY-MM-DD` the price was taken on.
    pub taken: Option<String>,
}

/// Everything one catalogue file gives.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalogue {
    pub models: Vec<ModelPrice>,
    pub gpus: Vec<GpuPrice>,
    /// USD per GPU-hour for a GPU that no entry names (`[gpu_default]`).
    pub gpu_default_usd_per_hour: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlGpu {
    usd_per_hour: f64,
    #[serde(default)]
    aliases: Vec<String>,
    source: Option<String>,
    taken: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlGpuDefault {
    usd_per_hour: f64,
    #[expect(
        dead_code,
        reason = "read so that deny_unknown_fields accepts it; informational only"
    )]
    source: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlCatalogue {
    /// The date the prices were taken (informational).
    #[expect(
        dead_code,
        reason = "read so that deny_unknown_fields accepts it; informational only"
    )]
    taken: Option<String>,
    #[serde(default)]
    models: BTreeMap<String, TomlModel>,
    #[serde(default)]
    gpu: BTreeMap<String, TomlGpu>,
    gpu_default: Option<TomlGpuDefault>,
}

/// The catalogue key of a GPU name: trimmed, lower-cased, inner whitespace collapsed.
pub fn gpu_key(name: &str) -> String {
    name.split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

fn gpu_usd(name: &str, usd: f64) -> Result<f64, PricingError> {
    if usd.is_finite() && usd >= 0.0 {
        Ok(usd)
    } else {
        Err(PricingError::BadPrice {
            model: name.to_owned(),
            field: "usd_per_hour",
            value: usd,
        })
    }
}

/// Parses the models of a Tokenscope TOML catalogue. `origin` names it in errors.
pub fn parse_toml(text: &str, origin: &Path) -> Result<Vec<ModelPrice>, PricingError> {
    parse_catalogue(text, origin).map(|c| c.models)
}

/// Parses a Tokenscope TOML catalogue: models, GPU prices and the GPU default.
pub fn parse_catalogue(text: &str, origin: &Path) -> Result<Catalogue, PricingError> {
    let catalogue: TomlCatalogue = toml::from_str(text).map_err(|source| PricingError::Toml {
        path: origin.to_path_buf(),
        source: Box::new(source),
    })?;
    let mut gpus = Vec::with_capacity(catalogue.gpu.len());
    for (name, gpu) in catalogue.gpu {
        if let Some(date) = &gpu.taken {
            if !is_iso_date(date) {
                return Err(PricingError::BadDate {
                    path: origin.to_path_buf(),
                    model: name,
                    value: date.clone(),
                });
            }
        }
        gpus.push(GpuPrice {
            usd_per_hour: gpu_usd(&name, gpu.usd_per_hour)?,
            aliases: gpu.aliases,
            source: gpu.source,
            taken: gpu.taken,
            name,
        });
    }
    let gpu_default_usd_per_hour = catalogue
        .gpu_default
        .map(|d| gpu_usd("gpu_default", d.usd_per_hour))
        .transpose()?;
    let mut out = Vec::with_capacity(catalogue.models.len());
    for (name, model) in catalogue.models {
        let name = name.trim().to_ascii_lowercase();
        let per_million = |field: &'static str, usd: f64| per_million_to_pd(&name, field, usd);
        let input = per_million("input", model.input)?;
        let output = per_million("output", model.output)?;
        let cache_read = match model.cache_read {
            Some(usd) => per_million("cache_read", usd)?,
            None => input,
        };
        let cache_write = match model.cache_write {
            Some(usd) => per_million("cache_write", usd)?,
            None => input,
        };
        let reasoning = match model.reasoning {
            Some(usd) => per_million("reasoning", usd)?,
            None => output,
        };
        if let Some(date) = &model.effective {
            if !is_iso_date(date) {
                return Err(PricingError::BadDate {
                    path: origin.to_path_buf(),
                    model: name,
                    value: date.clone(),
                });
            }
        }
        out.push(ModelPrice {
            aliases: model
                .aliases
                .iter()
                .map(|a| a.trim().to_ascii_lowercase())
                .collect(),
            provider: model.provider.map(|p| p.to_ascii_lowercase()),
            effective: model.effective,
            name,
            input,
            output,
            cache_read,
            cache_write,
            reasoning,
        });
    }
    Ok(Catalogue {
        models: out,
        gpus,
        gpu_default_usd_per_hour,
    })
}

/// What importing a LiteLLM file gave.
#[derive(Debug, Default)]
pub struct LitellmImport {
    pub models: Vec<ModelPrice>,
    /// Entries without a per-token input price (images, audio, rerank, the `sample_spec`
    /// placeholder) or with a price that is not a finite non-negative number.
    pub skipped: usize,
}

/// Imports LiteLLM's `model_prices_and_context_window.json` as it is (USD per token).
pub fn parse_litellm(text: &str, origin: &Path) -> Result<LitellmImport, PricingError> {
    let root: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|source| PricingError::Json {
            path: origin.to_path_buf(),
            source,
        })?;
    let mut import = LitellmImport::default();
    for (name, entry) in root {
        match litellm_entry(&name, &entry) {
            Some(price) => import.models.push(price),
            None => import.skipped += 1,
        }
    }
    Ok(import)
}

fn litellm_entry(name: &str, entry: &serde_json::Value) -> Option<ModelPrice> {
    if name == "sample_spec" {
        return None;
    }
    let object = entry.as_object()?;
    let usd_per_token = |key: &str| -> Option<Option<u64>> {
        match object.get(key) {
            None | Some(serde_json::Value::Null) => Some(None),
            Some(value) => per_token_to_pd(value.as_f64()?).map(Some),
        }
    };
    let input = usd_per_token("input_cost_per_token")??;
    let output = usd_per_token("output_cost_per_token")?.unwrap_or(0);
    let cache_read = usd_per_token("cache_read_input_token_cost")?.unwrap_or(input);
    // LiteLLM writes 0 where a provider does not bill cache writes apart (DeepSeek);
    // those providers never report cache-creation tokens, so 0 is never applied.
    let cache_write = usd_per_token("cache_creation_input_token_cost")?.unwrap_or(input);
    let reasoning = usd_per_token("output_cost_per_reasoning_token")?.unwrap_or(output);
    let provider = object
        .get("litellm_provider")
        .and_then(|p| p.as_str())
        .map(|p| p.to_ascii_lowercase());
    Some(ModelPrice {
        name: name.trim().to_ascii_lowercase(),
        provider,
        aliases: Vec::new(),
        effective: None,
        input,
        output,
        cache_read,
        cache_write,
        reasoning,
    })
}

fn per_million_to_pd(model: &str, field: &'static str, usd: f64) -> Result<u64, PricingError> {
    // USD per 1M tokens -> picodollars per token: x * 1e12 / 1e6.
    to_pd(usd * 1e6).ok_or_else(|| PricingError::BadPrice {
        model: model.to_owned(),
        field,
        value: usd,
    })
}

fn per_token_to_pd(usd: f64) -> Option<u64> {
    to_pd(usd * PICODOLLARS_PER_USD)
}

fn to_pd(pd: f64) -> Option<u64> {
    // Catalogue prices have at most a few decimals; rounding removes the binary
    // representation error (2.5e-6 * 1e12 = 2500000.0000000005).
    let rounded = pd.round();
    if rounded.is_finite() && (0.0..=u64::MAX as f64).contains(&rounded) && pd >= 0.0 {
        // In range (checked above), so the cast neither saturates nor truncates.
        Some(rounded as u64)
    } else {
        None
    }
}

fn is_iso_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
}

/// Reads one catalogue file: `.json` is LiteLLM's format, anything else Tokenscope TOML.
pub fn read_file(path: &PathBuf) -> Result<Catalogue, PricingError> {
    let text = std::fs::read_to_string(path).map_err(|source| PricingError::Io {
        path: path.clone(),
        source,
    })?;
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if is_json {
        let import = parse_litellm(&text, path)?;
        tracing::info!(
            path = %path.display(),
            models = import.models.len(),
            skipped = import.skipped,
            "pricing.litellm_imported"
        );
        Ok(Catalogue {
            models: import.models,
            ..Catalogue::default()
        })
    } else {
        parse_catalogue(&text, path)
    }
}
