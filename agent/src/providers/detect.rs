//! Recognises the provider and API of a request from its host, path,
//! headers and, when those say nothing, the shape of its JSON body.

use crate::protocols::event::RequestHead;
use crate::record::{Api, Provider};

/// What a request was recognised as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub provider: Provider,
    pub api: Api,
    /// Model named by the path (Gemini `models/{model}:...`, Azure deployment).
    pub path_model: Option<String>,
    /// The response's wire format, which picks the decoder.
    pub wire: Wire,
}

/// Response wire formats: one decoder each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// OpenAI Chat Completions, Completions and Embeddings, and every
    /// server that speaks them (llama.cpp's native `/completion` included:
    /// its fields are read by the same decoder).
    OpenAi,
    Responses,
    Anthropic,
    /// Gemini `generateContent`, `embedContent`, `batchEmbedContents` and
    /// Vertex `predict` (embeddings).
    Gemini,
    Ollama,
    /// Hugging Face text-generation-inference native `/generate`,
    /// `/generate_stream` and `/` (compat route).
    Tgi,
}

impl Wire {
    /// The usual wire of an API.
    pub fn of(api: Api) -> Wire {
        match api {
            Api::ChatCompletions | Api::Completions | Api::Embeddings => Wire::OpenAi,
            Api::Responses => Wire::Responses,
            Api::Messages => Wire::Anthropic,
            Api::GenerateContent => Wire::Gemini,
            Api::OllamaChat | Api::OllamaGenerate | Api::OllamaEmbed => Wire::Ollama,
        }
    }
}

impl Target {
    fn new(provider: Provider, api: Api, path_model: Option<String>) -> Target {
        Target {
            provider,
            api,
            path_model,
            wire: Wire::of(api),
        }
    }
}

/// The provider behind a TLS server name or `Host`, for endpoint-level records.
pub fn provider_for_host(host: &str) -> Option<Provider> {
    let host = strip_port(host).trim_end_matches('.');
    let eq = |name: &str| host.eq_ignore_ascii_case(name);
    let ends_with = |suffix: &str| {
        host.len()
            .checked_sub(suffix.len())
            .and_then(|at| host.as_bytes().get(at..))
            .is_some_and(|end| end.eq_ignore_ascii_case(suffix.as_bytes()))
    };
    let is = |domain: &str| {
        eq(domain)
            || (ends_with(domain)
                && host
                    .len()
                    .checked_sub(domain.len() + 1)
                    .and_then(|dot| host.as_bytes().get(dot))
                    == Some(&b'.'))
    };
    if eq("api.openai.com") {
        Some(Provider::Openai)
    } else if is("openai.azure.com") || is("cognitiveservices.azure.com") {
        Some(Provider::AzureOpenai)
    } else if eq("api.anthropic.com") {
        Some(Provider::Anthropic)
    } else if eq("generativelanguage.googleapis.com")
        || eq("aiplatform.googleapis.com")
        || ends_with("-aiplatform.googleapis.com")
    {
        Some(Provider::Gemini)
    } else if [
        "api.groq.com",
        "api.mistral.ai",
        "api.deepseek.com",
        "api.together.xyz",
        "api.together.ai",
        "openrouter.ai",
        "api.fireworks.ai",
        "api.perplexity.ai",
        "api.x.ai",
        "api.cerebras.ai",
        "api.deepinfra.com",
    ]
    .iter()
    .any(|d| is(d))
    {
        Some(Provider::OpenaiCompatible)
    } else {
        None
    }
}

fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => authority,
    }
}

/// Recognises a request by host, path and headers alone.
pub(crate) fn detect_by_path(head: &RequestHead) -> Option<Target> {
    let path = head.path.as_str();
    let host_provider = head.authority.as_deref().and_then(provider_for_host);
    if let Some(target) = ollama_path(path) {
        return Some(target);
    }
    if let Some((model, api)) = gemini_path(path) {
        return Some(Target {
            wire: Wire::Gemini,
            ..Target::new(Provider::Gemini, api, Some(model.to_string()))
        });
    }
    if let Some(target) = native_server_path(path) {
        return Some(target);
    }
    if let Some(api) = openai_path(path) {
        let deployment = azure_deployment(path);
        let provider = match host_provider {
            Some(Provider::OpenaiCompatible) | None if deployment.is_some() => {
                Provider::AzureOpenai
            }
            Some(p) => p,
            None => Provider::OpenaiCompatible,
        };
        return Some(Target::new(provider, api, deployment.map(str::to_string)));
    }
    if is_anthropic_messages(path) {
        return Some(Target::new(Provider::Anthropic, Api::Messages, None));
    }
    None
}

/// Recognises a request on an unknown path by headers and body shape.
pub(crate) fn detect_by_body(head: &RequestHead, fields: &BodyShape) -> Option<Target> {
    if head.method != "POST" {
        return None;
    }
    let anthropic_header = head.headers.get("anthropic-version").is_some();
    let target = |provider, api| Some(Target::new(provider, api, None));
    if fields.contents {
        return target(Provider::Gemini, Api::GenerateContent);
    }
    if fields.inputs && !fields.model {
        // TGI's compat route `/` (what `huggingface_hub` posts to).
        return Some(tgi_target());
    }
    if !fields.model {
        return None;
    }
    if fields.messages {
        if anthropic_header {
            return target(Provider::Anthropic, Api::Messages);
        }
        return target(Provider::OpenaiCompatible, Api::ChatCompletions);
    }
    if fields.prompt {
        return target(Provider::OpenaiCompatible, Api::Completions);
    }
    if fields.input {
        // The Responses API is the one that takes `instructions`/`tools`.
        if fields.instructions || fields.tools {
            return target(Provider::OpenaiCompatible, Api::Responses);
        }
        return target(Provider::OpenaiCompatible, Api::Embeddings);
    }
    None
}

/// Which top-level keys a request body has, for shape detection.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct BodyShape {
    pub model: bool,
    pub messages: bool,
    pub prompt: bool,
    pub input: bool,
    pub contents: bool,
    pub instructions: bool,
    pub tools: bool,
    /// TGI's `inputs`.
    pub inputs: bool,
}

fn ollama_path(path: &str) -> Option<Target> {
    let api = match path.trim_end_matches('/') {
        "/api/chat" => Api::OllamaChat,
        "/api/generate" => Api::OllamaGenerate,
        "/api/embed" | "/api/embeddings" => Api::OllamaEmbed,
        _ => return None,
    };
    Some(Target::new(Provider::Ollama, api, None))
}

fn tgi_target() -> Target {
    Target {
        wire: Wire::Tgi,
        ..Target::new(Provider::OpenaiCompatible, Api::Completions, None)
    }
}

/// Native routes of inference servers: TGI `/generate`, `/generate_stream`;
/// llama.cpp `/completion` (read by the OpenAI decoder, which knows its fields).
fn native_server_path(path: &str) -> Option<Target> {
    match path.trim_end_matches('/') {
        "/generate" | "/generate_stream" => Some(tgi_target()),
        "/completion" => Some(Target::new(
            Provider::OpenaiCompatible,
            Api::Completions,
            None,
        )),
        _ => None,
    }
}

/// `.../models/{model}:generateContent` (also Vertex `publishers/google/models/`),
/// and the embedding methods `embedContent`, `batchEmbedContents` and Vertex `predict`.
fn gemini_path(path: &str) -> Option<(&str, Api)> {
    let (before, method) = path.rsplit_once(':')?;
    let api = match method {
        "generateContent" | "streamGenerateContent" => Api::GenerateContent,
        "embedContent" | "batchEmbedContents" | "predict" => Api::Embeddings,
        _ => return None,
    };
    let (_, model) = before.rsplit_once("/models/")?;
    (!model.is_empty() && !model.contains('/')).then_some((model, api))
}

fn openai_path(path: &str) -> Option<Api> {
    let path = path.trim_end_matches('/');
    if path.ends_with("/chat/completions") {
        Some(Api::ChatCompletions)
    } else if path.ends_with("/completions") {
        Some(Api::Completions)
    } else if path.ends_with("/responses") {
        Some(Api::Responses)
    } else if path.ends_with("/embeddings") {
        Some(Api::Embeddings)
    } else {
        None
    }
}

/// `/openai/deployments/{deployment}/...`
fn azure_deployment(path: &str) -> Option<&str> {
    const MARK: &str = "/openai/deployments/";
    let at = memchr::memmem::find(path.as_bytes(), MARK.as_bytes())?;
    let rest = path.get(at + MARK.len()..)?;
    let deployment = rest.split('/').next()?;
    (!deployment.is_empty()).then_some(deployment)
}

fn is_anthropic_messages(path: &str) -> bool {
    path.trim_end_matches('/').ends_with("/v1/messages")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::event::Headers;

    fn head(authority: &str, path: &str) -> RequestHead {
        RequestHead {
            method: "POST".into(),
            path: path.into(),
            authority: Some(authority.into()),
            headers: Headers::new(),
        }
    }

    fn detect(authority: &str, path: &str) -> Option<(Provider, Api, Option<String>)> {
        detect_by_path(&head(authority, path)).map(|t| (t.provider, t.api, t.path_model))
    }

    #[test]
    fn hosts() {
        assert_eq!(
            provider_for_host("api.openai.com:443"),
            Some(Provider::Openai)
        );
        assert_eq!(
            provider_for_host("x.openai.azure.com"),
            Some(Provider::AzureOpenai)
        );
        assert_eq!(provider_for_host("evilopenai.azure.com"), None);
        assert_eq!(
            provider_for_host("API.Anthropic.com"),
            Some(Provider::Anthropic)
        );
        assert_eq!(
            provider_for_host("us-central1-aiplatform.googleapis.com"),
            Some(Provider::Gemini)
        );
        assert_eq!(
            provider_for_host("openrouter.ai"),
            Some(Provider::OpenaiCompatible)
        );
        assert_eq!(provider_for_host("[::1]:8000"), None);
        assert_eq!(provider_for_host("example.com"), None);
    }

    #[test]
    fn paths() {
        use Api::*;
        use Provider::*;
        assert_eq!(
            detect("api.openai.com", "/v1/chat/completions"),
            Some((Openai, ChatCompletions, None))
        );
        assert_eq!(
            detect("localhost:8000", "/v1/chat/completions"),
            Some((OpenaiCompatible, ChatCompletions, None))
        );
        assert_eq!(
            detect(
                "r.openai.azure.com",
                "/openai/deployments/gpt4o-prod/chat/completions"
            ),
            Some((AzureOpenai, ChatCompletions, Some("gpt4o-prod".into())))
        );
        assert_eq!(
            detect("api.groq.com", "/openai/v1/chat/completions").map(|t| t.0),
            Some(OpenaiCompatible)
        );
        assert_eq!(
            detect("h", "/v1/completions").map(|t| t.1),
            Some(Completions)
        );
        assert_eq!(detect("h", "/v1/responses").map(|t| t.1), Some(Responses));
        assert_eq!(detect("h", "/v1/embeddings").map(|t| t.1), Some(Embeddings));
        assert_eq!(
            detect("api.anthropic.com", "/v1/messages").map(|t| t.0),
            Some(Anthropic)
        );
        assert_eq!(
            detect(
                "generativelanguage.googleapis.com",
                "/v1beta/models/gemini-2.0-flash:streamGenerateContent"
            ),
            Some((Gemini, GenerateContent, Some("gemini-2.0-flash".into())))
        );
        assert_eq!(
            detect(
                "us-aiplatform.googleapis.com",
                "/v1/projects/p/locations/l/publishers/google/models/gemini-1.5-pro:generateContent"
            )
            .and_then(|t| t.2),
            Some("gemini-1.5-pro".into())
        );
        assert_eq!(
            detect("h:11434", "/api/embeddings").map(|t| t.1),
            Some(OllamaEmbed)
        );
        assert_eq!(
            detect(
                "generativelanguage.googleapis.com",
                "/v1beta/models/gemini-embedding-001:batchEmbedContents"
            ),
            Some((Gemini, Embeddings, Some("gemini-embedding-001".into())))
        );
        let wire = |path: &str| detect_by_path(&head("h:8080", path)).map(|t| (t.api, t.wire));
        assert_eq!(wire("/generate_stream"), Some((Completions, Wire::Tgi)));
        assert_eq!(wire("/generate"), Some((Completions, Wire::Tgi)));
        assert_eq!(wire("/completion"), Some((Completions, Wire::OpenAi)));
        assert_eq!(
            wire("/v1/models/m:embedContent"),
            Some((Embeddings, Wire::Gemini))
        );
        assert_eq!(detect("h", "/v1/messages/count_tokens"), None);
        assert_eq!(detect("h", "/healthz"), None);
    }
}
