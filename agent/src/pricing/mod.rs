//! Token prices: a catalogue of models and exact cost arithmetic.
//!
//! Costs are integer picodollars (10^-12 USD): a price of $2.50 per 1M tokens
//! is 2,500,000 pd per token, so every sum is exact and only the final
//! conversion to dollars rounds. An unknown model is unpriced (`None`), never 0.

mod catalogue;
mod matching;
#[cfg(test)]
mod tests;
pub mod tiers;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

pub use catalogue::{
    gpu_key, parse_catalogue, parse_litellm, parse_toml, Catalogue, GpuPrice, LitellmImport,
    ModelPrice, PICODOLLARS_PER_USD,
};

use crate::record::{LlmCall, Provider, Side, Usage};
use matching::KeyKind;

/// The built-in catalogue (USD per 1M tokens; see the file for where the prices come from).
pub const BUILTIN_TOML: &str = include_str!("../../../deploy/prices.toml");
/// The built-in GPU prices (USD per GPU-hour; see the file for where they come from).
pub const BUILTIN_GPU_TOML: &str = include_str!("gpu_prices.toml");

fn builtin_catalogues() -> Result<Vec<Catalogue>, PricingError> {
    Ok(vec![
        parse_catalogue(BUILTIN_TOML, "deploy/prices.toml".as_ref())?,
        parse_catalogue(
            BUILTIN_GPU_TOML,
            "agent/src/pricing/gpu_prices.toml".as_ref(),
        )?,
    ])
}

#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    #[error("cannot read price catalogue {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("price catalogue {} is not valid TOML", path.display())]
    Toml {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("price catalogue {} is not valid JSON", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("model {model}: {field} price {value} is not a finite non-negative number")]
    BadPrice {
        model: String,
        field: &'static str,
        value: f64,
    },
    #[error("price catalogue {}: model {model}: effective date {value:?} is not YYYY-MM-DD", path.display())]
    BadDate {
        path: PathBuf,
        model: String,
        value: String,
    },
}

/// The token cost of one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cost {
    pub picodollars: u128,
    /// The catalogue entry the model name matched.
    pub model_matched: String,
}

impl Cost {
    pub fn usd(&self) -> f64 {
        picodollars_to_usd(self.picodollars)
    }
}

pub fn picodollars_to_usd(picodollars: u128) -> f64 {
    picodollars as f64 / PICODOLLARS_PER_USD
}

/// How a call was priced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallPrice {
    Priced(Cost),
    /// The model is not in the catalogue (or the call named none).
    Unpriced,
    /// Served on this node: its cost is its GPU share, not a token price.
    SelfHosted,
}

impl ModelPrice {
    /// Exact cost of `usage` at this price. Counts the provider did not report are 0;
    /// uncached input is the total input less cache reads and cache writes, and
    /// reasoning tokens (part of the output count) are priced apart from the rest.
    pub fn cost(&self, usage: &Usage) -> u128 {
        let input = usage.input_tokens.unwrap_or(0);
        let cache_read = usage.cache_read_tokens.unwrap_or(0);
        let cache_write = usage.cache_creation_tokens.unwrap_or(0);
        let output = usage.output_tokens.unwrap_or(0);
        let reasoning = usage.reasoning_tokens.unwrap_or(0).min(output);
        let uncached = input.saturating_sub(cache_read.saturating_add(cache_write));
        let term = |tokens: u64, price: u64| u128::from(tokens) * u128::from(price);
        term(uncached, self.input)
            .saturating_add(term(cache_read, self.cache_read))
            .saturating_add(term(cache_write, self.cache_write))
            .saturating_add(term(output - reasoning, self.output))
            .saturating_add(term(reasoning, self.reasoning))
    }
}

/// A price catalogue with name matching. Shared read-only; the unpriced counter is atomic.
#[derive(Debug)]
pub struct Pricer {
    entries: Vec<ModelPrice>,
    /// Lower-cased key -> (entry, how the key reaches it).
    index: HashMap<String, Vec<(usize, KeyKind)>>,
    unpriced: AtomicU64,
    gpus: Vec<GpuPrice>,
    /// `gpu_key` of a GPU name or alias -> index in `gpus`.
    gpu_index: HashMap<String, usize>,
    gpu_default_usd_per_hour: Option<f64>,
}

impl Pricer {
    /// The built-in catalogue alone.
    pub fn builtin() -> Pricer {
        // The built-in files are checked by a unit test; should one ever fail to
        // parse, pricing is off (everything unpriced) rather than the agent down.
        match builtin_catalogues() {
            Ok(catalogues) => Pricer::from_catalogues(catalogues),
            Err(error) => {
                tracing::error!(%error, "pricing.builtin_invalid");
                Pricer::from_entries([])
            }
        }
    }

    /// The built-in catalogue overridden by each file in turn (TOML, or LiteLLM `.json`).
    pub fn from_files(paths: &[PathBuf]) -> Result<Pricer, PricingError> {
        let mut sources = builtin_catalogues()?;
        for path in paths {
            sources.push(catalogue::read_file(path)?);
        }
        Ok(Pricer::from_catalogues(sources))
    }

    /// Later catalogues replace earlier model and GPU entries of the same name
    /// and an earlier GPU default.
    pub fn from_catalogues(catalogues: impl IntoIterator<Item = Catalogue>) -> Pricer {
        let mut models = Vec::new();
        let mut gpus: Vec<GpuPrice> = Vec::new();
        let mut gpu_default = None;
        for catalogue in catalogues {
            models.push(catalogue.models);
            for gpu in catalogue.gpus {
                let key = gpu_key(&gpu.name);
                gpus.retain(|g| gpu_key(&g.name) != key);
                gpus.push(gpu);
            }
            gpu_default = catalogue.gpu_default_usd_per_hour.or(gpu_default);
        }
        let mut pricer = Pricer::from_entries(models);
        let mut gpu_index = HashMap::new();
        // Names first, then aliases, so that an alias never hides another GPU's name.
        for (i, gpu) in gpus.iter().enumerate() {
            gpu_index.insert(gpu_key(&gpu.name), i);
        }
        for (i, gpu) in gpus.iter().enumerate() {
            for alias in &gpu.aliases {
                gpu_index.entry(gpu_key(alias)).or_insert(i);
            }
        }
        pricer.gpus = gpus;
        pricer.gpu_index = gpu_index;
        pricer.gpu_default_usd_per_hour = gpu_default;
        pricer
    }

    /// Later sources replace earlier entries of the same name.
    pub fn from_entries(sources: impl IntoIterator<Item = Vec<ModelPrice>>) -> Pricer {
        let mut entries: Vec<ModelPrice> = Vec::new();
        let mut position: HashMap<String, usize> = HashMap::new();
        for source in sources {
            for entry in source {
                match position.get(&entry.name) {
                    Some(&i) => {
                        if let Some(slot) = entries.get_mut(i) {
                            *slot = entry;
                        }
                    }
                    None => {
                        position.insert(entry.name.clone(), entries.len());
                        entries.push(entry);
                    }
                }
            }
        }
        let mut index: HashMap<String, Vec<(usize, KeyKind)>> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let mut add =
                |key: &str, kind| index.entry(key.to_owned()).or_default().push((i, kind));
            add(&entry.name, KeyKind::Name);
            for alias in &entry.aliases {
                add(alias, KeyKind::Alias);
            }
            for suffix in matching::slash_forms(&entry.name).skip(1) {
                add(suffix, KeyKind::Suffix);
            }
        }
        Pricer {
            entries,
            index,
            unpriced: AtomicU64::new(0),
            gpus: Vec::new(),
            gpu_index: HashMap::new(),
            gpu_default_usd_per_hour: None,
        }
    }

    /// The GPU prices of the catalogue.
    pub fn gpus(&self) -> &[GpuPrice] {
        &self.gpus
    }

    /// The catalogue entry for a GPU, by the name NVML reports (case and spacing
    /// ignored) or an alias; `None` when no entry names it (the default is not applied).
    pub fn gpu_price(&self, gpu_model: &str) -> Option<&GpuPrice> {
        let key = gpu_key(gpu_model);
        if key.is_empty() || key.len() > matching::MAX_MODEL_NAME {
            return None;
        }
        self.gpu_index.get(&key).and_then(|&i| self.gpus.get(i))
    }

    /// USD per GPU-hour for a GPU model: its catalogue entry, else the catalogue's
    /// `[gpu_default]`, else `None` (unpriced; the built-in catalogue has no default).
    pub fn usd_per_gpu_hour(&self, gpu_model: &str) -> Option<f64> {
        self.gpu_price(gpu_model)
            .map(|g| g.usd_per_hour)
            .or(self.gpu_default_usd_per_hour)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[ModelPrice] {
        &self.entries
    }

    /// The catalogue entry for a model name as seen on the wire.
    pub fn lookup(&self, provider: Option<Provider>, model: &str) -> Option<&ModelPrice> {
        let name = model.trim().to_ascii_lowercase();
        if name.is_empty() || name.len() > matching::MAX_MODEL_NAME {
            return None;
        }
        for form in matching::slash_forms(&name) {
            if let Some(entry) = self.best(provider, form) {
                return Some(entry);
            }
            if let Some(entry) =
                matching::strip_snapshot(form).and_then(|base| self.best(provider, base))
            {
                return Some(entry);
            }
        }
        None
    }

    fn best(&self, provider: Option<Provider>, key: &str) -> Option<&ModelPrice> {
        let candidates = self.index.get(key)?;
        let (index, _) = candidates
            .iter()
            .filter_map(|&(i, kind)| Some((i, kind, self.entries.get(i)?)))
            .map(|(i, kind, entry)| {
                let rank = matching::provider_rank(provider, entry.provider.as_deref());
                // Then the shortest name (`azure/gpt-4o` over `azure/us/gpt-4o`), then the
                // entry loaded last (user catalogues).
                let segments = entry.name.matches('/').count();
                (i, (rank, kind, segments, std::cmp::Reverse(i)))
            })
            .min_by_key(|(_, order)| *order)?;
        self.entries.get(index)
    }

    /// Prices `usage` for `model` as served by `provider`; `None` (and counted) when unknown.
    pub fn price(&self, provider: Provider, model: &str, usage: &Usage) -> Option<Cost> {
        let cost = self.price_as(Some(provider), model, usage);
        if cost.is_none() {
            self.unpriced.fetch_add(1, Ordering::Relaxed);
        }
        cost
    }

    /// Like [`Pricer::price`] without counting, for re-pricing (what-if) and advice.
    pub fn price_as(&self, provider: Option<Provider>, model: &str, usage: &Usage) -> Option<Cost> {
        let entry = self.lookup(provider, model)?;
        Some(Cost {
            picodollars: entry.cost(usage),
            model_matched: entry.name.clone(),
        })
    }

    /// Prices a decoded call: the response's model (a dated snapshot, usually) first, else
    /// the requested one. Calls this node served are self-hosted and not token-priced.
    pub fn price_call(&self, side: Side, call: &LlmCall) -> CallPrice {
        if side == Side::Server {
            return CallPrice::SelfHosted;
        }
        let names = [
            call.response_model.as_deref(),
            call.request_model.as_deref(),
        ];
        let found = names
            .into_iter()
            .flatten()
            .find_map(|model| self.price_as(Some(call.provider), model, &call.usage));
        match found {
            Some(cost) => CallPrice::Priced(cost),
            None => {
                self.unpriced.fetch_add(1, Ordering::Relaxed);
                CallPrice::Unpriced
            }
        }
    }

    /// Calls and `price` requests that found no price since start.
    pub fn unpriced_count(&self) -> u64 {
        self.unpriced.load(Ordering::Relaxed)
    }
}
