use std::path::{Path, PathBuf};

use super::*;

const USER_TOML: &str = include_str!("../../../tests/fixtures/pricing/user.toml");
const LITELLM_JSON: &str = include_str!("../../../tests/fixtures/pricing/litellm_excerpt.json");

fn usage(input: u64, output: u64) -> Usage {
    Usage {
        input_tokens: Some(input),
        output_tokens: Some(output),
        ..Usage::default()
    }
}

/// Writes the fixtures to a fresh directory so that `from_files` reads real files.
fn fixture_files() -> (PathBuf, Vec<PathBuf>) {
    let dir = std::env::temp_dir().join(format!(
        "tokenscope-pricing-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let toml = dir.join("user.toml");
    let json = dir.join("litellm.json");
    std::fs::write(&toml, USER_TOML).unwrap_or_else(|e| panic!("write: {e}"));
    std::fs::write(&json, LITELLM_JSON).unwrap_or_else(|e| panic!("write: {e}"));
    (dir, vec![json, toml])
}

fn pd(pricer: &Pricer, provider: Provider, model: &str, usage: &Usage) -> (u128, String) {
    let cost = pricer
        .price(provider, model, usage)
        .unwrap_or_else(|| panic!("{model} should be priced"));
    (cost.picodollars, cost.model_matched)
}

#[test]
fn builtin_catalogue_covers_every_provider() {
    let entries = parse_toml(BUILTIN_TOML, Path::new("prices.toml"))
        .unwrap_or_else(|e| panic!("built-in catalogue: {e}"));
    for provider in [
        "openai",
        "anthropic",
        "gemini",
        "mistral",
        "deepseek",
        "groq",
    ] {
        let n = entries
            .iter()
            .filter(|e| e.provider.as_deref() == Some(provider))
            .count();
        assert!(n >= 2, "{provider}: {n} models");
    }
    let pricer = Pricer::builtin();
    assert_eq!(pricer.len(), entries.len());
    assert!(pricer.len() > 60);
}

#[test]
fn openai_cached_tokens_are_part_of_prompt_tokens() {
    let pricer = Pricer::builtin();
    // usage: prompt_tokens 1200 (prompt_tokens_details.cached_tokens 1024), completion 300.
    let u = Usage {
        cache_read_tokens: Some(1024),
        ..usage(1200, 300)
    };
    // 176 x $2.50 + 1024 x $1.25 + 300 x $10.00, per 1M tokens.
    let (cost, matched) = pd(&pricer, Provider::Openai, "gpt-4o-2024-08-06", &u);
    assert_eq!(cost, 440_000_000 + 1_280_000_000 + 3_000_000_000);
    assert_eq!(matched, "gpt-4o");
    let c = pricer.price(Provider::Openai, "gpt-4o-2024-08-06", &u);
    assert_eq!(c.map(|c| c.usd()), Some(0.00472));
}

#[test]
fn anthropic_cache_creation_and_read() {
    let pricer = Pricer::builtin();
    // Anthropic reports input_tokens 50, cache_creation_input_tokens 2000,
    // cache_read_input_tokens 10000; the decoder's total input is their sum.
    let u = Usage {
        input_tokens: Some(12_050),
        output_tokens: Some(400),
        cache_read_tokens: Some(10_000),
        cache_creation_tokens: Some(2_000),
        ..Usage::default()
    };
    // 50 x $3 + 10000 x $0.30 + 2000 x $3.75 + 400 x $15.
    let (cost, matched) = pd(
        &pricer,
        Provider::Anthropic,
        "claude-sonnet-4-5-20250929",
        &u,
    );
    assert_eq!(
        cost,
        150_000_000 + 3_000_000_000 + 7_500_000_000 + 6_000_000_000
    );
    assert_eq!(matched, "claude-sonnet-4-5");
}

#[test]
fn gemini_models_prefix_and_reasoning_in_output() {
    let pricer = Pricer::builtin();
    // promptTokenCount 3000 incl. cachedContentTokenCount 1000; output 500 incl. 300 thoughts.
    let u = Usage {
        cache_read_tokens: Some(1000),
        reasoning_tokens: Some(300),
        ..usage(3000, 500)
    };
    let (cost, matched) = pd(&pricer, Provider::Gemini, "models/gemini-2.5-pro", &u);
    // 2000 x $1.25 + 1000 x $0.125 + 500 x $10.
    assert_eq!(cost, 2_500_000_000 + 125_000_000 + 5_000_000_000);
    assert_eq!(matched, "gemini-2.5-pro");
}

#[test]
fn reasoning_tokens_take_their_own_price_when_the_catalogue_gives_one() {
    let toml =
        "[models.thinker]\nprovider = \"openai\"\ninput = 1.0\noutput = 4.0\nreasoning = 2.0\n";
    let entries = parse_toml(toml, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    let json = r#"{"thinker-lite": {"litellm_provider": "openai", "input_cost_per_token": 1e-6,
        "output_cost_per_token": 4e-6, "output_cost_per_reasoning_token": 3e-6}}"#;
    let lite = parse_litellm(json, Path::new("l.json")).unwrap_or_else(|e| panic!("{e}"));
    let pricer = Pricer::from_entries([entries, lite.models]);
    // 1000 in; 500 out of which 300 reasoning.
    let u = Usage {
        reasoning_tokens: Some(300),
        ..usage(1000, 500)
    };
    let (cost, _) = pd(&pricer, Provider::Openai, "thinker", &u);
    assert_eq!(cost, 1000 * 1_000_000 + 200 * 4_000_000 + 300 * 2_000_000);
    let (cost, _) = pd(&pricer, Provider::Openai, "thinker-lite", &u);
    assert_eq!(cost, 1000 * 1_000_000 + 200 * 4_000_000 + 300 * 3_000_000);
    // A reasoning count above the output count (a bad report) is capped at it.
    let odd = Usage {
        reasoning_tokens: Some(900),
        ..usage(0, 500)
    };
    let (cost, _) = pd(&pricer, Provider::Openai, "thinker", &odd);
    assert_eq!(cost, 500 * 2_000_000);
}

#[test]
fn openai_compatible_providers() {
    let pricer = Pricer::builtin();
    let (cost, _) = pd(
        &pricer,
        Provider::OpenaiCompatible,
        "mistral-small-latest",
        &usage(1000, 200),
    );
    assert_eq!(cost, 150_000_000 + 120_000_000);
    // DeepSeek: prompt_cache_hit_tokens 600 of 1000.
    let u = Usage {
        cache_read_tokens: Some(600),
        ..usage(1000, 100)
    };
    let (cost, _) = pd(&pricer, Provider::OpenaiCompatible, "deepseek-chat", &u);
    assert_eq!(cost, 112_000_000 + 16_800_000 + 42_000_000);
    // Groq names its model with the publisher prefix.
    let (cost, matched) = pd(
        &pricer,
        Provider::OpenaiCompatible,
        "openai/gpt-oss-120b",
        &usage(1000, 1000),
    );
    assert_eq!(
        (cost, matched.as_str()),
        (150_000_000 + 600_000_000, "gpt-oss-120b")
    );
}

#[test]
fn case_prefix_and_unknown() {
    let pricer = Pricer::builtin();
    let u = usage(1_000_000, 0);
    assert_eq!(
        pd(&pricer, Provider::Openai, " GPT-4o ", &u).0,
        2_500_000_000_000
    );
    assert_eq!(
        pd(&pricer, Provider::OpenaiCompatible, "openai/gpt-4o", &u).1,
        "gpt-4o"
    );
    assert_eq!(pricer.unpriced_count(), 0);
    assert_eq!(
        pricer.price(Provider::Openai, "gpt-4o-finetuned-by-us", &u),
        None
    );
    assert_eq!(pricer.price(Provider::Ollama, "llama3.2:3b", &u), None);
    assert_eq!(pricer.price(Provider::Openai, "", &u), None);
    assert_eq!(
        pricer.price(Provider::Openai, &"x".repeat(10_000), &u),
        None
    );
    assert_eq!(pricer.unpriced_count(), 4);
    // A known model with no usage reported costs nothing (a refused call), and is priced.
    let none = pricer.price(Provider::Openai, "gpt-4o", &Usage::default());
    assert_eq!(none.map(|c| c.picodollars), Some(0));
}

#[test]
fn cache_counts_larger_than_input_do_not_underflow() {
    let pricer = Pricer::builtin();
    let u = Usage {
        input_tokens: Some(10),
        cache_read_tokens: Some(100),
        ..Usage::default()
    };
    // Uncached input saturates at 0; the 100 cache reads are charged at $1.25/1M.
    assert_eq!(pd(&pricer, Provider::Openai, "gpt-4o", &u).0, 125_000_000);
    let huge = usage(u64::MAX, u64::MAX);
    assert!(pd(&pricer, Provider::Openai, "o1", &huge).0 > u128::from(u64::MAX));
}

#[test]
fn user_files_override_builtin_and_litellm_is_imported() {
    let (dir, files) = fixture_files();
    let pricer = Pricer::from_files(&files).unwrap_or_else(|e| panic!("{e}"));
    let builtin = Pricer::builtin();
    // Override: negotiated gpt-4o-mini price replaces the list price.
    let u = usage(1_000_000, 1_000_000);
    assert_eq!(
        pd(&builtin, Provider::Openai, "gpt-4o-mini", &u).0,
        750_000_000_000
    );
    assert_eq!(
        pd(&pricer, Provider::Openai, "gpt-4o-mini-2024-07-18", &u).0,
        600_000_000_000
    );
    assert_eq!(pricer.len(), builtin.len() + 6);
    // Aliases, case and a prefixed alias.
    assert_eq!(
        pd(&pricer, Provider::OpenaiCompatible, "Acme-Large", &u).1,
        "acme-gateway-large"
    );
    assert_eq!(
        pd(&pricer, Provider::OpenaiCompatible, "acme/large-v2", &u).1,
        "acme-gateway-large"
    );
    // LiteLLM: Azure's own price wins for an Azure call, OpenAI's for an OpenAI call;
    // the plain Azure entry over a regional one (azure/eu/gpt-4o).
    assert_eq!(
        pd(&pricer, Provider::AzureOpenai, "gpt-4o", &u).0,
        13_750_000_000_000
    );
    assert_eq!(
        pd(&pricer, Provider::AzureOpenai, "gpt-4o", &u).1,
        "azure/gpt-4o"
    );
    assert_eq!(
        pd(&pricer, Provider::Openai, "gpt-4o", &u).0,
        12_500_000_000_000
    );
    // A LiteLLM key with a provider prefix is found by the bare name.
    let (cost, matched) = pd(
        &pricer,
        Provider::OpenaiCompatible,
        "llama-3.3-70b-versatile",
        &u,
    );
    assert_eq!(
        (cost, matched.as_str()),
        (1_380_000_000_000, "groq/llama-3.3-70b-versatile")
    );
    // Embedding without an output price: output is free.
    assert_eq!(
        pd(&pricer, Provider::OpenaiCompatible, "mistral-embed", &u).0,
        100_000_000_000
    );
    std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("cleanup: {e}"));
}

#[test]
fn litellm_skips_entries_without_token_prices() {
    let import = parse_litellm(LITELLM_JSON, Path::new("x.json")).unwrap_or_else(|e| panic!("{e}"));
    // sample_spec, dall-e-3 (per pixel) and the string price.
    assert_eq!(import.skipped, 3);
    let opus = import
        .models
        .iter()
        .find(|m| m.name == "vertex_ai/claude-opus-4-5@20251101")
        .unwrap_or_else(|| panic!("vertex opus imported"));
    assert_eq!(
        (opus.input, opus.output, opus.cache_read, opus.cache_write),
        (5_000_000, 25_000_000, 500_000, 6_250_000)
    );
}

#[test]
fn bad_catalogues_are_errors() {
    let p = Path::new("bad.toml");
    let bad_toml = parse_toml("[models.x\ninput = 1", p);
    assert!(
        matches!(bad_toml, Err(PricingError::Toml { .. })),
        "{bad_toml:?}"
    );
    let unknown = parse_toml("[models.x]\ninput = 1\noutput = 2\ncached = 3\n", p);
    assert!(
        matches!(unknown, Err(PricingError::Toml { .. })),
        "{unknown:?}"
    );
    let negative = parse_toml("[models.x]\ninput = -1\noutput = 2\n", p);
    assert!(
        matches!(negative, Err(PricingError::BadPrice { field: "input", .. })),
        "{negative:?}"
    );
    let nan = parse_toml("[models.x]\ninput = 1\noutput = nan\n", p);
    assert!(
        matches!(
            nan,
            Err(PricingError::BadPrice {
                field: "output",
                ..
            })
        ),
        "{nan:?}"
    );
    let date = parse_toml(
        "[models.x]\ninput = 1\noutput = 2\neffective = \"01/10/2026\"\n",
        p,
    );
    assert!(
        matches!(date, Err(PricingError::BadDate { .. })),
        "{date:?}"
    );
    let json = parse_litellm("[1, 2]", Path::new("x.json"));
    assert!(matches!(json, Err(PricingError::Json { .. })), "{json:?}");
    let missing = Pricer::from_files(&[PathBuf::from("/nonexistent/tokenscope-prices.toml")]);
    assert!(
        matches!(missing, Err(PricingError::Io { .. })),
        "{missing:?}"
    );
}

fn call(provider: Provider, request_model: Option<&str>, response_model: Option<&str>) -> LlmCall {
    LlmCall {
        provider,
        api: crate::record::Api::ChatCompletions,
        host: Some("api.openai.com".into()),
        path: "/v1/chat/completions".into(),
        request_model: request_model.map(str::to_owned),
        response_model: response_model.map(str::to_owned),
        streaming: false,
        status: Some(200),
        error_type: None,
        usage: usage(1_000_000, 0),
        finish_reason: Some("stop".into()),
        retry_after_s: None,
        start_ns: 0,
        request_end_ns: 1,
        response_start_ns: Some(2),
        first_token_ns: Some(2),
        end_ns: 3,
        output_chunks: 0,
        bytes_sent: 10,
        bytes_received: 10,
        http_method: Some("POST".into()),
        response_id: None,
    }
}

#[test]
fn calls_prefer_the_response_model_and_self_hosted_is_not_token_priced() {
    let pricer = Pricer::builtin();
    let c = call(
        Provider::Openai,
        Some("gpt-4o"),
        Some("gpt-4o-mini-2024-07-18"),
    );
    let priced = pricer.price_call(Side::Client, &c);
    assert!(
        matches!(&priced, CallPrice::Priced(cost) if cost.model_matched == "gpt-4o-mini"),
        "{priced:?}"
    );
    let c = call(Provider::Openai, Some("gpt-4o"), Some("some-new-snapshot"));
    let priced = pricer.price_call(Side::Client, &c);
    assert!(
        matches!(&priced, CallPrice::Priced(cost) if cost.model_matched == "gpt-4o"),
        "{priced:?}"
    );
    assert_eq!(pricer.price_call(Side::Server, &c), CallPrice::SelfHosted);
    assert_eq!(pricer.unpriced_count(), 0);
    let c = call(Provider::OpenaiCompatible, None, None);
    assert_eq!(pricer.price_call(Side::Client, &c), CallPrice::Unpriced);
    assert_eq!(pricer.unpriced_count(), 1);
}

#[test]
fn builtin_tiers_name_priced_models_of_the_same_provider() {
    use tiers::{ModelCatalogue, ModelKind, WorkloadClass};
    let models = ModelCatalogue::builtin().unwrap_or_else(|e| panic!("built-in models: {e}"));
    let pricer = Pricer::builtin();
    assert_eq!(
        models.tiers.iter().map(|t| t.level).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    // A higher tier suffices for everything a lower one does.
    for pair in models.tiers.windows(2) {
        if let [lower, higher] = pair {
            for class in &lower.suffices {
                assert!(higher.suffices.contains(class), "{} {class:?}", higher.name);
            }
        }
    }
    assert!(models.suffices(4, WorkloadClass::Reasoning));
    assert!(!models.suffices(3, WorkloadClass::Reasoning));
    assert!(models.suffices(1, WorkloadClass::Classification));
    assert!(!models.suffices(1, WorkloadClass::Chat));
    for m in &models.models {
        let price = pricer
            .entries()
            .iter()
            .find(|p| p.name == m.name)
            .unwrap_or_else(|| panic!("{} has a tier but no price", m.name));
        assert_eq!(
            price.provider.as_deref(),
            Some(m.provider.as_str()),
            "{}",
            m.name
        );
        if m.kind == ModelKind::Embedding {
            assert_eq!(price.output, 0, "{}", m.name);
        }
    }
    assert!(models.models.len() >= 70, "{}", models.models.len());
    let tier = |name: &str| models.model(name).map(|m| m.tier);
    assert_eq!(tier("gpt-4o"), Some(3));
    assert_eq!(tier("gpt-4o-mini"), Some(2));
    assert_eq!(tier("claude-haiku-4-5"), Some(2));
}

#[test]
fn model_catalogue_errors_are_reported() {
    use tiers::{ModelCatalogue, TierError};
    let bad_tier = "[tiers.x]\nname = \"a\"\nsuffices = []\n";
    assert!(matches!(
        ModelCatalogue::parse(bad_tier, Path::new("m.toml")),
        Err(TierError::BadTier { .. })
    ));
    let unknown = "[tiers.1]\nname = \"a\"\nsuffices = [\"chat\"]\n\
                   [models.m]\nprovider = \"openai\"\ntier = 2\n";
    assert!(matches!(
        ModelCatalogue::parse(unknown, Path::new("m.toml")),
        Err(TierError::UnknownTier { tier: 2, .. })
    ));
    let class = "[classes.poetry]\nmax_p95_output_tokens = 3\n";
    assert!(matches!(
        ModelCatalogue::parse(class, Path::new("m.toml")),
        Err(TierError::BadClass { .. })
    ));
    let suffices = "[tiers.1]\nname = \"a\"\nsuffices = [\"poetry\"]\n";
    assert!(ModelCatalogue::parse(suffices, Path::new("m.toml")).is_err());
}

#[test]
fn gpu_hour_prices_match_nvml_names_and_aliases() {
    let pricer = Pricer::builtin();
    assert!(pricer.gpus().len() >= 4);
    for gpu in pricer.gpus() {
        assert!(gpu.source.is_some() && gpu.taken.is_some(), "{}", gpu.name);
        assert!(gpu.usd_per_hour > 0.0, "{}", gpu.name);
    }
    assert_eq!(pricer.usd_per_gpu_hour("NVIDIA H100 80GB HBM3"), Some(2.49));
    // Case and spacing as NVML or a user may write them.
    assert_eq!(
        pricer.usd_per_gpu_hour("  nvidia  h100 80gb hbm3 "),
        Some(2.49)
    );
    assert_eq!(pricer.usd_per_gpu_hour("NVIDIA T4"), Some(0.79));
    assert_eq!(
        pricer.gpu_price("Tesla T4").map(|g| g.name.as_str()),
        Some("Tesla T4")
    );
    // No built-in default: an unknown GPU is unpriced, not priced at a guess.
    assert_eq!(pricer.usd_per_gpu_hour("NVIDIA GeForce RTX 4090"), None);
    assert_eq!(pricer.usd_per_gpu_hour(""), None);

    let dir = std::env::temp_dir().join(format!("tokenscope-gpu-prices-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let file = dir.join("contract.toml");
    std::fs::write(
        &file,
        "[gpu.\"NVIDIA H100 80GB HBM3\"]\nusd_per_hour = 1.85\nsource = \"contract\"\n\
         [gpu_default]\nusd_per_hour = 1.25\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let pricer = Pricer::from_files(std::slice::from_ref(&file)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pricer.usd_per_gpu_hour("NVIDIA H100 80GB HBM3"), Some(1.85));
    // The built-in alias still reaches the built-in entry it belongs to... which the file replaced.
    assert_eq!(pricer.usd_per_gpu_hour("NVIDIA L40S"), Some(2.15));
    assert_eq!(
        pricer.usd_per_gpu_hour("NVIDIA GeForce RTX 4090"),
        Some(1.25)
    );
    assert!(pricer.gpu_price("NVIDIA GeForce RTX 4090").is_none());
    assert!(pricer.len() > 60, "model prices kept");

    std::fs::write(&file, "[gpu.x]\nusd_per_hour = -1.0\n").unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        Pricer::from_files(std::slice::from_ref(&file)),
        Err(PricingError::BadPrice {
            field: "usd_per_hour",
            ..
        })
    ));
    std::fs::write(
        &file,
        "[gpu.x]\nusd_per_hour = 1.0\ntaken = \"yesterday\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        Pricer::from_files(std::slice::from_ref(&file)),
        Err(PricingError::BadDate { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
}
