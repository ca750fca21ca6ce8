//! How a model name seen on the wire is matched to a catalogue entry.
//!
//! Order: the name as sent (lower-cased), then with its dated snapshot suffix
//! removed; the same again for each shorter form after a `/` (provider
//! prefixes such as `openai/gpt-4o`, `models/gemini-2.5-pro`,
//! `groq/openai/gpt-oss-120b`). Within one key, an entry of the call's own
//! provider wins, then an exact name over an alias over a prefixed catalogue
//! name, then the name with fewest `/` parts, then the catalogue loaded last.

use crate::record::Provider;

/// The longest model name looked up; longer names are unpriced.
pub const MAX_MODEL_NAME: usize = 256;
/// At most this many `/`-separated forms of one name are tried.
const MAX_FORMS: usize = 8;

/// How a catalogue entry is reachable under an index key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyKind {
    Name,
    Alias,
    /// The entry's name after one of its `/` (e.g. `gpt-oss-120b` for `groq/openai/gpt-oss-120b`).
    Suffix,
}

/// The name itself, then each part after a `/`, longest first.
pub fn slash_forms(name: &str) -> impl Iterator<Item = &str> {
    std::iter::once(name)
        .chain(
            name.match_indices('/')
                .filter_map(move |(i, _)| name.get(i + 1..)),
        )
        .filter(|form| !form.is_empty())
        .take(MAX_FORMS)
}

/// The name without a dated snapshot or version suffix, when it has one:
/// `-2024-08-06`, `-20250929`, `@20251101` (Vertex), `-0613` (month-day), `-002` (Gemini).
pub fn strip_snapshot(name: &str) -> Option<&str> {
    if let Some((base, _)) = name.rsplit_once('@') {
        return (!base.is_empty()).then_some(base);
    }
    let (base, suffix) = name.rsplit_once('-')?;
    if base.is_empty() {
        return None;
    }
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let month_day = |m: &str, d: &str| {
        matches!(m.parse::<u8>(), Ok(1..=12)) && matches!(d.parse::<u8>(), Ok(1..=31))
    };
    match suffix.len() {
        // YYYYMMDD
        8 if digits(suffix) && suffix.starts_with("20") => {
            let (m, d) = (suffix.get(4..6)?, suffix.get(6..8)?);
            month_day(m, d).then_some(base)
        }
        // MMDD
        4 if digits(suffix) => month_day(suffix.get(0..2)?, suffix.get(2..4)?).then_some(base),
        // 0NN
        3 if digits(suffix) && suffix.starts_with('0') => Some(base),
        // DD of YYYY-MM-DD: the whole date is the last 11 characters.
        2 if digits(suffix) => {
            let cut = name.len().checked_sub(11)?;
            let date = name.get(cut..)?;
            let b = date.as_bytes();
            let shaped = b.first() == Some(&b'-')
                && b.get(5) == Some(&b'-')
                && b.get(8) == Some(&b'-')
                && date.get(1..5).is_some_and(digits)
                && date.get(6..8).is_some_and(digits);
            let base = name.get(..cut)?;
            (shaped && !base.is_empty() && month_day(date.get(6..8)?, date.get(9..11)?))
                .then_some(base)
        }
        _ => None,
    }
}

/// 0 for the call's own provider, 1 for a related one (Azure for OpenAI, Vertex
/// for Gemini) or an entry naming none, 2 for any other.
pub fn provider_rank(call: Option<Provider>, entry: Option<&str>) -> u8 {
    let Some(call) = call else { return 0 };
    let Some(entry) = entry else { return 1 };
    let (own, related): (&[&str], &[&str]) = match call {
        Provider::Openai => (&["openai", "text-completion-openai"], &["azure"]),
        Provider::AzureOpenai => (&["azure", "azure_ai"], &["openai"]),
        Provider::Anthropic => (&["anthropic"], &[]),
        Provider::Gemini => (&["gemini"], &["vertex_ai"]),
        Provider::Ollama => (&["ollama"], &[]),
        // Groq, Mistral, DeepSeek, vLLM ...: the name alone decides.
        Provider::OpenaiCompatible => return 0,
    };
    if own.contains(&entry) {
        0
    } else if related.iter().any(|r| entry.starts_with(r)) {
        1
    } else {
        2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_suffixes() {
        assert_eq!(strip_snapshot("gpt-4o-2024-08-06"), Some("gpt-4o"));
        assert_eq!(
            strip_snapshot("claude-sonnet-4-5-20250929"),
            Some("claude-sonnet-4-5")
        );
        assert_eq!(
            strip_snapshot("claude-opus-4-5@20251101"),
            Some("claude-opus-4-5")
        );
        assert_eq!(strip_snapshot("gpt-4-0613"), Some("gpt-4"));
        assert_eq!(strip_snapshot("gemini-1.5-pro-002"), Some("gemini-1.5-pro"));
        // Not snapshots: version numbers and sizes are part of the name.
        assert_eq!(strip_snapshot("claude-sonnet-4-5"), None);
        assert_eq!(strip_snapshot("gpt-oss-120b"), None);
        assert_eq!(strip_snapshot("mistral-large-2512"), None);
        assert_eq!(strip_snapshot("llama-3.1-405"), None);
        assert_eq!(strip_snapshot("gpt-4o-2024-13-06"), None);
        assert_eq!(strip_snapshot("-2024-08-06"), None);
        assert_eq!(strip_snapshot("2024-08-06"), None);
        assert_eq!(strip_snapshot("@x"), None);
    }

    #[test]
    fn forms_after_slashes() {
        let forms: Vec<&str> = slash_forms("groq/openai/gpt-oss-120b").collect();
        assert_eq!(
            forms,
            [
                "groq/openai/gpt-oss-120b",
                "openai/gpt-oss-120b",
                "gpt-oss-120b"
            ]
        );
        let forms: Vec<&str> = slash_forms("models/").collect();
        assert_eq!(forms, ["models/"]);
        assert_eq!(slash_forms(&"a/".repeat(100)).count(), MAX_FORMS);
    }
}
