//! What the protocol parsers emit: one stream of HTTP events per connection,
//! the same for HTTP/1.1 and HTTP/2, so the call assembler need not know which.

use bytes::Bytes;

/// Which peer sent a chunk of bytes. The stream layer maps the kernel's
/// egress/ingress onto this from the side it watched (client or server).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Bytes the client sent: requests.
    FromClient,
    /// Bytes the server sent: responses.
    FromServer,
}

/// One header field of a [`Headers`] block. Names are lower-case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

/// The header fields kept after parsing a head or a trailer block, in
/// order. Names are lower-case. Credentials (`authorization`,
/// `proxy-authorization`, `cookie`, `set-cookie`, `x-api-key`, `api-key`,
/// `x-goog-api-key`) are dropped by the parsers and never appear here.
///
/// All names and values share one text buffer, so a head costs two
/// allocations rather than two per field (a chat call's heads carry ~20).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    text: String,
    /// Per field: where its name ends and where its value ends in `text`;
    /// the name starts where the previous field's value ended.
    ends: Vec<(usize, usize)>,
}

impl Headers {
    pub fn new() -> Self {
        Headers::default()
    }

    /// Room for `fields` fields of `text` bytes of names and values in all.
    pub fn with_capacity(fields: usize, text: usize) -> Self {
        Headers {
            text: String::with_capacity(text),
            ends: Vec::with_capacity(fields),
        }
    }

    /// Appends a field; the name is stored lower-case.
    pub fn push(&mut self, name: &str, value: &str) {
        let start = self.text.len();
        self.text.push_str(name);
        // Most names come lower-case already. A check without an early exit
        // is vectorised, so it costs less than lower-casing byte by byte.
        if name
            .bytes()
            .fold(false, |upper, b| upper | b.is_ascii_uppercase())
        {
            if let Some(stored) = self.text.get_mut(start..) {
                stored.make_ascii_lowercase();
            }
        }
        let name_end = self.text.len();
        self.text.push_str(value);
        self.ends.push((name_end, self.text.len()));
    }

    /// Appends a field whose value is raw bytes: bytes that are not UTF-8
    /// become U+FFFD.
    pub(crate) fn push_bytes(&mut self, name: &str, value: &[u8]) {
        match std::str::from_utf8(value) {
            Ok(text) => self.push(name, text),
            Err(_) => self.push(name, &String::from_utf8_lossy(value)),
        }
    }

    /// The first value of a field, by lower-case name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|h| h.name == name).map(|h| h.value)
    }

    pub fn iter(&self) -> impl Iterator<Item = Header<'_>> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(name_end, value_end)| {
            let field = Header {
                name: self.text.get(start..name_end).unwrap_or_default(),
                value: self.text.get(name_end..value_end).unwrap_or_default(),
            };
            start = value_end;
            field
        })
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|h| (h.name, h.value)))
            .finish()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(fields: I) -> Self {
        let mut headers = Headers::new();
        for (name, value) in fields {
            headers.push(name.as_ref(), value.as_ref());
        }
        headers
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// Path without the query string: queries may carry API keys (`?key=`).
    pub path: String,
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2), without credentials.
    pub authority: Option<String>,
    pub headers: Headers,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Headers,
}

/// One step of one exchange. `stream` is 0.. per connection for HTTP/1.1
/// (one per request in order) and the stream id for HTTP/2.
#[derive(Clone, Debug, PartialEq)]
pub enum HttpEvent {
    Request {
        stream: u64,
        head: RequestHead,
        ts_ns: u64,
    },
    /// Request body bytes after content decoding.
    RequestBody {
        stream: u64,
        data: Bytes,
        ts_ns: u64,
    },
    RequestEnd {
        stream: u64,
        ts_ns: u64,
    },
    /// A final response head (1xx interim responses are not reported).
    Response {
        stream: u64,
        head: ResponseHead,
        ts_ns: u64,
    },
    /// Response body bytes after transfer and content decoding, as they arrived.
    ResponseBody {
        stream: u64,
        data: Bytes,
        ts_ns: u64,
    },
    ResponseEnd {
        stream: u64,
        ts_ns: u64,
    },
    /// Trailer fields of a message (HTTP/1.1 chunked trailers, HTTP/2
    /// trailing HEADERS), such as `grpc-status`; credentials are dropped as
    /// in heads. Comes after the message's last body bytes and right before
    /// its `RequestEnd` / `ResponseEnd`; never sent when there are none.
    Trailers {
        stream: u64,
        /// Which message: the request (`FromClient`) or the response.
        from: Direction,
        headers: Headers,
        ts_ns: u64,
    },
    /// The exchange ended early: reset stream, connection closed mid-message,
    /// or bytes that could not be parsed. What was emitted before still stands.
    Abort {
        stream: u64,
        reason: AbortReason,
        ts_ns: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortReason {
    /// HTTP/2 RST_STREAM or GOAWAY covering the stream.
    Reset,
    /// The connection closed before the message ended.
    Closed,
    /// The bytes were not valid HTTP; the connection is no longer parsed.
    Malformed,
    /// Capture lost bytes (a gap) inside the message.
    Gap,
    /// A body or header block went past its bound.
    TooLarge,
    /// An HTTP/2 stream saw no frame for longer than its idle bound
    /// ([`Limits::stream_idle_ns`](super::Limits)) while others went on.
    Idle,
}
