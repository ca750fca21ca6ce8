//! A tolerant scanner over the top-level members of a JSON object.
//!
//! Request bodies are only needed for a few fields (`model`, `stream`, ...)
//! that may come after a large `messages` array, and the kept prefix may be
//! cut at its bound. The scanner walks the members without building values
//! and stops quietly at the first truncated or malformed member.

use std::borrow::Cow;

use memchr::memchr2;
use serde::Deserialize as _;

/// Calls `on_member(key, raw_value)` for each complete top-level member of
/// the object in `buf`. Keys are the raw bytes between the quotes.
pub(crate) fn for_each_member<'a>(buf: &'a [u8], mut on_member: impl FnMut(&'a [u8], &'a [u8])) {
    let mut i = skip_ws(buf, 0);
    if buf.get(i) != Some(&b'{') {
        return;
    }
    i += 1;
    loop {
        i = skip_ws(buf, i);
        match buf.get(i) {
            Some(b'"') => {}
            _ => return,
        }
        let Some(key_end) = skip_string(buf, i) else {
            return;
        };
        let key = buf.get(i + 1..key_end - 1).unwrap_or_default();
        i = skip_ws(buf, key_end);
        if buf.get(i) != Some(&b':') {
            return;
        }
        i = skip_ws(buf, i + 1);
        let Some(value_end) = skip_value(buf, i) else {
            return;
        };
        if let Some(value) = buf.get(i..value_end) {
            on_member(key, value);
        }
        i = skip_ws(buf, value_end);
        match buf.get(i) {
            Some(b',') => i += 1,
            _ => return,
        }
    }
}

fn skip_ws(buf: &[u8], mut i: usize) -> usize {
    while buf.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// `buf[i]` is `"`; returns the index after the closing quote.
fn skip_string(buf: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let rest = buf.get(j..)?;
        let k = memchr2(b'"', b'\\', rest)?;
        if rest.get(k) == Some(&b'"') {
            return Some(j + k + 1);
        }
        j += k + 2;
    }
}

/// Returns the index after the value starting at `buf[i]`, or `None` when
/// the value is cut off or malformed.
fn skip_value(buf: &[u8], i: usize) -> Option<usize> {
    match buf.get(i)? {
        b'"' => skip_string(buf, i),
        b'{' | b'[' => {
            let mut depth = 0u32;
            let mut j = i;
            loop {
                match buf.get(j)? {
                    b'"' => {
                        j = skip_string(buf, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let rest = buf.get(i..)?;
            let n = rest
                .iter()
                .position(|&b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace())?;
            (n > 0).then_some(i + n)
        }
    }
}

/// The value of the last `"key":` in `buf`, a piece of JSON that may start
/// anywhere (the kept end of a cut body). `None` if absent or not decodable.
pub(crate) fn last_member_value<T: serde::de::DeserializeOwned>(
    buf: &[u8],
    key: &[u8],
) -> Option<T> {
    let mut quoted = Vec::with_capacity(key.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(key);
    quoted.push(b'"');
    let at = memchr::memmem::rfind(buf, &quoted)?;
    let mut i = skip_ws(buf, at + quoted.len());
    if buf.get(i) != Some(&b':') {
        return None;
    }
    i = skip_ws(buf, i + 1);
    let end = skip_value(buf, i)?;
    serde_json::from_slice(buf.get(i..end)?).ok()
}

/// Decodes a JSON document. Checking UTF-8 once over the whole document
/// costs less than serde_json's check of each string; bytes that are not
/// UTF-8 go to `from_slice`, which decides as it always has.
pub(crate) fn from_bytes<'a, T: serde::Deserialize<'a>>(data: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(data) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(data),
    }
}

/// For `#[serde(borrow, default, deserialize_with = "json::text")]` on an
/// `Option<Cow<str>>` field: serde borrows a `Cow` only when it is the whole
/// field type, so inside an `Option` every string would be copied. This
/// borrows the string when it has no escapes, as a plain `Cow` field does.
pub(crate) fn text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct Text<'de>(Cow<'de, str>);

    impl<'de> serde::Deserialize<'de> for Text<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_str(TextVisitor)
        }
    }

    struct TextVisitor;

    impl<'de> serde::de::Visitor<'de> for TextVisitor {
        type Value = Text<'de>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }

        fn visit_borrowed_str<E: serde::de::Error>(self, text: &'de str) -> Result<Text<'de>, E> {
            Ok(Text(Cow::Borrowed(text)))
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Text<'de>, E> {
            Ok(Text(Cow::Owned(text.to_owned())))
        }

        fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Text<'de>, E> {
            Ok(Text(Cow::Owned(text)))
        }
    }

    Option::<Text<'de>>::deserialize(deserializer).map(|text| text.map(|t| t.0))
}

/// A raw JSON string value decoded (escapes included); `None` if not a string.
pub(crate) fn as_string(raw: &[u8]) -> Option<String> {
    if raw.first() != Some(&b'"') {
        return None;
    }
    from_bytes(raw).ok()
}

pub(crate) fn as_bool(raw: &[u8]) -> Option<bool> {
    match raw {
        b"true" => Some(true),
        b"false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(buf: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for_each_member(buf, |k, v| {
            out.push((
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        });
        out
    }

    #[test]
    fn finds_members_after_nested_values_with_tricky_strings() {
        let body = br#" { "messages" : [{"content":"a \"}] {"}, [1,2]], "n":-1.5e3,"model":"m\u00e9","stream":true}"#;
        let m = members(body);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1], ("n".into(), "-1.5e3".into()));
        assert_eq!(as_string(m[2].1.as_bytes()).as_deref(), Some("m\u{e9}"));
        assert_eq!(as_bool(m[3].1.as_bytes()), Some(true));
    }

    #[test]
    fn truncated_object_keeps_complete_members_only() {
        let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hel"#;
        assert_eq!(members(body), vec![("model".into(), "\"gpt-4o\"".into())]);
        for cut in 0..body.len() {
            let _ = members(&body[..cut]);
        }
        assert!(members(b"[1]").is_empty());
    }
}
