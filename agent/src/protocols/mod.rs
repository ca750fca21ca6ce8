//! Protocol parsers: bytes and timestamps in, [`HttpEvent`]s out.
//!
//! One [`HttpParser`] per connection. It detects HTTP/1.1 or HTTP/2 from the
//! first bytes of either direction and then hands every chunk to the matching
//! parser. Nothing here does I/O or reads a clock; every buffer has a bound
//! from [`Limits`], and every drop is counted in [`ParseStats`].

pub mod body;
pub mod detect;
pub mod event;
pub mod hpack;
pub mod http1;
pub mod http2;
mod huffman;

#[cfg(test)]
mod tests;

pub use detect::{sniff, Sniff};
pub use event::{AbortReason, Direction, Header, Headers, HttpEvent, RequestHead, ResponseHead};

/// Bounds for one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest HTTP/1.1 head or HTTP/2 header block (after CONTINUATION) kept.
    pub max_header_block: usize,
    /// Largest decoded body of one message; past it the message is aborted
    /// with [`AbortReason::TooLarge`].
    pub max_body: usize,
    /// A compressed body whose decoded size passes both this many times its
    /// compressed size and [`Limits::bomb_floor`] is cut as a decompression bomb.
    pub max_decompression_ratio: u64,
    /// Decoded bytes always allowed before the ratio check applies.
    pub bomb_floor: u64,
    /// Open HTTP/2 streams tracked at once; more are dropped and counted.
    pub max_concurrent_streams: usize,
    /// Largest HPACK dynamic table accepted (SETTINGS_HEADER_TABLE_SIZE above
    /// it is clamped; a size update above it is a compression error).
    pub max_hpack_table: usize,
    /// An HTTP/2 stream with no frame for this long (in the capture clock
    /// passed in with the bytes) is aborted with [`AbortReason::Idle`], so
    /// streams whose end was never seen cannot pile up.
    pub stream_idle_ns: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_block: 64 * 1024,
            max_body: 16 * 1024 * 1024,
            max_decompression_ratio: 200,
            bomb_floor: 1024 * 1024,
            max_concurrent_streams: 256,
            max_hpack_table: 1024 * 1024,
            stream_idle_ns: 10 * 60 * 1_000_000_000,
        }
    }
}

/// Plain counters, read by the agent's metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParseStats {
    /// Bytes that were not valid HTTP (the connection stops being parsed for
    /// HTTP/1.1 heads and HTTP/2 framing; one stream only for a bad body).
    pub malformed: u64,
    /// Heads, header blocks or bodies past their bound.
    pub too_large: u64,
    /// Compressed bodies cut because they expanded past the ratio bound.
    pub decompression_bombs: u64,
    /// Bodies whose `content-encoding` is not one we decode; their bytes are dropped.
    pub unsupported_encoding: u64,
    /// HTTP/2 header blocks that referenced dynamic-table entries we never saw
    /// (capture started mid-connection or after a gap).
    pub hpack_unknown: u64,
    /// Streams ended by [`AbortReason`] of any kind.
    pub streams_aborted: u64,
    /// HTTP/2 streams not tracked because too many were open.
    pub streams_dropped: u64,
    /// Capture gaps reported through [`HttpParser::gap`].
    pub gaps: u64,
    /// Bytes skipped while looking for a place to resume parsing.
    pub bytes_skipped: u64,
    /// HTTP/2 streams aborted after [`Limits::stream_idle_ns`] without a frame.
    pub streams_idle: u64,
    /// Trailer lines that were not `name: value` and were skipped.
    pub bad_trailers: u64,
}

/// The protocol of a connection once known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolKind {
    Http1,
    Http2,
}

enum Inner {
    /// Not yet known: bytes are sniffed, at most a preface's worth kept.
    Detecting {
        pending_client: Vec<u8>,
        pending_server: Vec<u8>,
    },
    Http1(Box<http1::Http1Parser>),
    Http2(Box<http2::Http2Parser>),
}

/// One connection's parser; see the module docs.
pub struct HttpParser {
    limits: Limits,
    stats: ParseStats,
    inner: Inner,
}

impl HttpParser {
    pub fn new(limits: Limits) -> Self {
        HttpParser {
            limits,
            stats: ParseStats::default(),
            inner: Inner::Detecting {
                pending_client: Vec::new(),
                pending_server: Vec::new(),
            },
        }
    }

    pub fn kind(&self) -> Option<ProtocolKind> {
        match self.inner {
            Inner::Detecting { .. } => None,
            Inner::Http1(_) => Some(ProtocolKind::Http1),
            Inner::Http2(_) => Some(ProtocolKind::Http2),
        }
    }

    pub fn stats(&self) -> &ParseStats {
        &self.stats
    }

    pub fn feed(&mut self, dir: Direction, ts_ns: u64, data: &[u8], out: &mut Vec<HttpEvent>) {
        match &mut self.inner {
            Inner::Http1(p) => p.feed(dir, ts_ns, data, &mut self.stats, out),
            Inner::Http2(p) => p.feed(dir, ts_ns, data, &mut self.stats, out),
            Inner::Detecting {
                pending_client,
                pending_server,
            } => {
                let (pending, other) = match dir {
                    Direction::FromClient => (pending_client, pending_server),
                    Direction::FromServer => (pending_server, pending_client),
                };
                if pending.is_empty() && other.is_empty() {
                    // The usual first write holds enough to tell: sniff it in
                    // place rather than copy it (it may hold a whole request).
                    let sniffed = detect::sniff(data);
                    if !matches!(sniffed, Sniff::NeedMore | Sniff::NotHttp) {
                        self.start(dir, sniffed, data.starts_with(detect::PREFACE));
                        self.feed(dir, ts_ns, data, out);
                        return;
                    }
                }
                let mut buf = std::mem::take(pending);
                buf.extend_from_slice(data);
                let sniffed = detect::sniff(&buf);
                let other = match sniffed {
                    Sniff::NeedMore => {
                        *pending = buf;
                        return;
                    }
                    Sniff::NotHttp => {
                        // Capture may have started mid-message: wait for a
                        // later write that starts a message.
                        self.stats.bytes_skipped += buf.len() as u64;
                        return;
                    }
                    _ => std::mem::take(other),
                };
                let other_dir = match dir {
                    Direction::FromClient => Direction::FromServer,
                    Direction::FromServer => Direction::FromClient,
                };
                self.start(dir, sniffed, buf.starts_with(detect::PREFACE));
                // The other side's first bytes, held while too short to
                // tell, came earlier: they go in first.
                if !other.is_empty() {
                    self.feed(other_dir, ts_ns, &other, out);
                }
                self.feed(dir, ts_ns, &buf, out);
            }
        }
    }

    /// Leaves detection for the parser of the sniffed protocol.
    fn start(&mut self, dir: Direction, sniffed: Sniff, starts_with_preface: bool) {
        let preface = dir == Direction::FromClient && starts_with_preface;
        self.inner = if sniffed == Sniff::LooksHttp2 {
            Inner::Http2(Box::new(http2::Http2Parser::new(
                self.limits.clone(),
                preface,
            )))
        } else {
            Inner::Http1(Box::new(http1::Http1Parser::new(self.limits.clone())))
        };
    }

    pub fn gap(&mut self, dir: Direction, ts_ns: u64, lost: u64, out: &mut Vec<HttpEvent>) {
        self.stats.gaps += 1;
        match &mut self.inner {
            Inner::Http1(p) => p.gap(dir, ts_ns, lost, &mut self.stats, out),
            Inner::Http2(p) => p.gap(dir, ts_ns, &mut self.stats, out),
            Inner::Detecting {
                pending_client,
                pending_server,
            } => match dir {
                Direction::FromClient => pending_client.clear(),
                Direction::FromServer => pending_server.clear(),
            },
        }
    }

    pub fn close(&mut self, ts_ns: u64, out: &mut Vec<HttpEvent>) {
        match &mut self.inner {
            Inner::Http1(p) => p.close(ts_ns, &mut self.stats, out),
            Inner::Http2(p) => p.close(ts_ns, &mut self.stats, out),
            Inner::Detecting { .. } => {}
        }
    }
}

/// Header names whose values are credentials: never kept.
pub(crate) const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
];

/// Whether a header name, in any case, carries credentials.
pub fn is_credential_header(name: &str) -> bool {
    // Every name of a head goes through here: compare with the one
    // credential name of the same length, if any (the lengths differ).
    CREDENTIAL_HEADERS
        .iter()
        .find(|c| c.len() == name.len())
        .is_some_and(|c| c.eq_ignore_ascii_case(name))
}

/// The path part of a request target: no query, no fragment, and for an
/// absolute-form target (`http://host/p`) only the path.
pub(crate) fn clean_path(target: &str) -> String {
    // Origin form (`/p?q`), the usual one, has no scheme to look for.
    let scheme = if target.starts_with('/') {
        None
    } else {
        target.find("://")
    };
    let path = match scheme {
        Some(i) => {
            let rest = target.get(i + 3..).unwrap_or("");
            match rest.find('/') {
                Some(j) => rest.get(j..).unwrap_or("/"),
                None => "/",
            }
        }
        None => target,
    };
    let end = path.find(['?', '#']).unwrap_or(path.len());
    path.get(..end).unwrap_or("").to_string()
}

/// The authority of an absolute-form target, if any.
pub(crate) fn target_authority(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return None;
    }
    let rest = target.get(target.find("://")? + 3..)?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    rest.get(..end)
}

/// An authority without `user:password@`.
pub(crate) fn clean_authority(authority: &str) -> String {
    match authority.rfind('@') {
        Some(i) => authority.get(i + 1..).unwrap_or("").to_string(),
        None => authority.to_string(),
    }
}

/// Emits an abort and counts it.
pub(crate) fn abort(
    stream: u64,
    reason: AbortReason,
    ts_ns: u64,
    stats: &mut ParseStats,
    out: &mut Vec<HttpEvent>,
) {
    stats.streams_aborted += 1;
    out.push(HttpEvent::Abort {
        stream,
        reason,
        ts_ns,
    });
}
