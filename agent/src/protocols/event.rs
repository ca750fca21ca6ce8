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

/// A header kept after parsing. Names are lower-case. Credentials
/// (`authorization`, `proxy-authorization`, `cookie`, `set-cookie`,
/// `x-api-key`, `api-key`, `x-goog-api-key`) are dropped by the parsers and
/// never appear here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// Path without the query string: queries may carry API keys (`?key=`).
    pub path: String,
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2), without credentials.
    pub authority: Option<String>,
    pub headers: Vec<Header>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<Header>,
}

/// Looks a header up by lower-case name.
pub fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name == name)
        .map(|h| h.value.as_str())
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
        headers: Vec<Header>,
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
