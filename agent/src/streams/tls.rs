//! What a TLS connection shows before encryption: the server name (SNI) in
//! the ClientHello, and whether its host is an AI endpoint. Pure and bounded.

/// Bytes of handshake kept while waiting for a whole ClientHello record.
pub const HELLO_MAX: usize = 16 * 1024 + 5;

/// Whether the first bytes of a connection are a TLS handshake record.
pub fn looks_tls(first: &[u8]) -> bool {
    matches!(first, [0x16, 0x03, v, ..] if *v <= 0x04) || first == [0x16] || first == [0x16, 0x03]
}

/// The outcome of reading a ClientHello.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// The record is not complete yet.
    NeedMore,
    /// A ClientHello, with its server name when it carries one.
    Client(Option<String>),
    /// Another handshake message (a ServerHello: this side is the server).
    Other,
    /// Not a TLS handshake record.
    Invalid,
}

/// Reads the server name from the first TLS record (RFC 8446 4.1.2, RFC 6066 3).
pub fn client_hello(buf: &[u8]) -> Hello {
    let Some(header) = buf.get(..5) else {
        return Hello::NeedMore;
    };
    if header[0] != 0x16 || header[1] != 0x03 {
        return Hello::Invalid;
    }
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    let Some(record) = buf.get(5..5 + len) else {
        return if 5 + len > HELLO_MAX {
            Hello::Invalid
        } else {
            Hello::NeedMore
        };
    };
    let mut r = Reader(record);
    let Some(kind) = r.u8() else {
        return Hello::Invalid;
    };
    if kind != 1 {
        return Hello::Other;
    }
    match parse_client_hello(&mut r) {
        Some(name) => Hello::Client(name),
        None => Hello::Invalid,
    }
}

fn parse_client_hello(r: &mut Reader<'_>) -> Option<Option<String>> {
    let body_len = r.u24()?;
    let mut body = Reader(r.take(body_len.min(r.0.len()))?);
    body.take(2 + 32)?; // legacy_version, random
    let sid = usize::from(body.u8()?);
    body.take(sid)?;
    let suites = usize::from(body.u16()?);
    body.take(suites)?;
    let compression = usize::from(body.u8()?);
    body.take(compression)?;
    if body.0.is_empty() {
        return Some(None);
    }
    let ext_len = usize::from(body.u16()?);
    let mut exts = Reader(body.take(ext_len.min(body.0.len()))?);
    while exts.0.len() >= 4 {
        let kind = exts.u16()?;
        let len = usize::from(exts.u16()?);
        let data = exts.take(len)?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(data);
        let list_len = usize::from(list.u16()?);
        let mut names = Reader(list.take(list_len)?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name_len = usize::from(names.u16()?);
            let name = names.take(name_len)?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                let valid = !name.is_empty()
                    && name.len() <= 253
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
                return Some(valid.then(|| name.to_ascii_lowercase()));
            }
        }
    }
    Some(None)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

/// AI endpoints beyond the providers the decoders know by host: hosted
/// model APIs whose traffic is worth an endpoint-level record. Matched as
/// the host itself or a subdomain of it.
pub const AI_ENDPOINT_HOSTS: [&str; 16] = [
    "bedrock-runtime.amazonaws.com",
    "bedrock.amazonaws.com",
    "api.githubcopilot.com",
    "copilot-proxy.githubusercontent.com",
    "api.cohere.ai",
    "api.cohere.com",
    "api.ai21.com",
    "api.replicate.com",
    "api-inference.huggingface.co",
    "router.huggingface.co",
    "inference.ai.azure.com",
    "models.inference.ai.azure.com",
    "api.voyageai.com",
    "api.jina.ai",
    "api.sambanova.ai",
    "api.novita.ai",
];

/// Whether `host` is an AI endpoint: a provider the decoders know, the
/// shipped list, or one of the configured `extra` hosts.
pub fn is_ai_endpoint(host: &str, extra: &[String]) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let matches = |domain: &str| {
        let domain = domain.trim_start_matches("*.");
        host == domain
            || host
                .strip_suffix(domain)
                .is_some_and(|prefix| prefix.ends_with('.'))
    };
    crate::providers::provider_for_host(&host).is_some()
        || ((host.starts_with("bedrock-runtime") || host.contains(".bedrock-runtime"))
            && host.ends_with(".amazonaws.com"))
        || AI_ENDPOINT_HOSTS.iter().any(|d| matches(d))
        || extra.iter().any(|d| matches(d))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A minimal ClientHello built field by field (RFC 8446 4.1.2).
    pub(crate) fn hello(name: Option<&str>) -> Vec<u8> {
        let mut ext = Vec::new();
        if let Some(name) = name {
            let n = name.as_bytes();
            let mut sni = Vec::new();
            sni.extend_from_slice(&((n.len() + 3) as u16).to_be_bytes());
            sni.push(0);
            sni.extend_from_slice(&(n.len() as u16).to_be_bytes());
            sni.extend_from_slice(n);
            ext.extend_from_slice(&0u16.to_be_bytes());
            ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
            ext.extend_from_slice(&sni);
        }
        // supported_versions: TLS 1.3
        ext.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]);
        body.push(32);
        body.extend_from_slice(&[9; 32]);
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]);
        body.extend_from_slice(&[0x01, 0x00]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![0x01];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn the_server_name_is_read_from_a_client_hello() {
        let h = hello(Some("API.OpenAI.com"));
        assert!(looks_tls(&h));
        assert_eq!(
            client_hello(&h),
            Hello::Client(Some("api.openai.com".into()))
        );
        assert_eq!(client_hello(&hello(None)), Hello::Client(None));
    }

    #[test]
    fn partial_and_garbage_records_never_panic() {
        let h = hello(Some("api.anthropic.com"));
        for cut in 0..h.len() {
            let got = client_hello(&h[..cut]);
            assert!(
                matches!(got, Hello::NeedMore | Hello::Invalid),
                "cut {cut}: {got:?}"
            );
        }
        // Every corruption of the body is an answer, never a panic.
        for i in 5..h.len() {
            let mut bad = h.clone();
            bad[i] ^= 0xff;
            let _ = client_hello(&bad);
        }
        assert_eq!(client_hello(b"GET / HTTP/1.1\r\n"), Hello::Invalid);
        assert!(!looks_tls(b"POST /v1"));
    }

    #[test]
    fn ai_endpoints_are_known_hosts_the_list_and_extras() {
        assert!(is_ai_endpoint("api.openai.com", &[]));
        assert!(is_ai_endpoint(
            "bedrock-runtime.us-east-1.amazonaws.com",
            &[]
        ));
        assert!(is_ai_endpoint("api.githubcopilot.com", &[]));
        assert!(!is_ai_endpoint("github.com", &[]));
        assert!(!is_ai_endpoint("evilapi.openai.com.example.org", &[]));
        assert!(is_ai_endpoint(
            "llm.internal.example",
            &["internal.example".into()]
        ));
    }
}
