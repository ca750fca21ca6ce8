//! Per-stream logic of the HTTP/2 parser: header blocks become request and
//! response heads, DATA becomes decoded body events, END_STREAM ends them.

use super::{abort, AbortReason, Direction, Http2Parser, HttpEvent};
use crate::protocols::body::{BodyDecoder, BodyError};
use crate::protocols::event::{Headers, RequestHead, ResponseHead};
use crate::protocols::hpack;
use crate::protocols::{clean_authority, clean_path, is_credential_header, ParseStats};

pub(super) enum RespBody {
    Decode(BodyDecoder),
    /// The encoding may be hidden behind an unknown HPACK field: the first
    /// bytes are held until there are enough to look for a magic number.
    Sniff(Vec<u8>),
    Drop,
}

pub(super) struct Stream {
    pub(super) request_done: bool,
    pub(super) response_started: bool,
    pub(super) response_done: bool,
    pub(super) request_body: Option<BodyDecoder>,
    pub(super) response_body: RespBody,
    /// Capture time of the stream's latest frame, for the idle bound.
    pub(super) last_ns: u64,
}

/// Enough bytes to see the gzip (2) or zstd (4) magic number.
const MAGIC_LEN: usize = 4;

/// Chooses the decoder of a body whose encoding header may be hidden, from
/// the bytes held so far, and returns those bytes to decode.
fn settle_sniff(body: &mut RespBody, limits: &crate::protocols::Limits) -> Vec<u8> {
    let RespBody::Sniff(head) = body else {
        return Vec::new();
    };
    let head = std::mem::take(head);
    let coding = if head.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else {
        None
    };
    *body = BodyDecoder::new(coding, limits).map_or(RespBody::Drop, RespBody::Decode);
    head
}

impl Http2Parser {
    pub(super) fn on_request_headers(
        &mut self,
        id: u32,
        end_stream: bool,
        block: hpack::Block,
        ts_ns: u64,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) {
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.last_ns = ts_ns;
            if !stream.request_done {
                let trailers = Fields::from(block).regular;
                self.end_side_with(Direction::FromClient, id, ts_ns, trailers, stats, out);
            }
            return;
        }
        if id <= self.highest_client_stream || id.is_multiple_of(2) {
            // A stream we dropped or finished, or one the server opened.
            return;
        }
        self.highest_client_stream = id;
        let fields = Fields::from(block);
        let Some(method) = fields.pseudo(":method") else {
            if fields.unknown == 0 {
                stats.malformed += 1;
            }
            return;
        };
        if self.streams.len() >= self.limits.max_concurrent_streams {
            stats.streams_dropped += 1;
            return;
        }
        let request_body =
            BodyDecoder::new(header(&fields.regular, "content-encoding"), &self.limits).ok();
        if request_body.is_none() {
            stats.unsupported_encoding += 1;
        }
        out.push(HttpEvent::Request {
            stream: u64::from(id),
            head: RequestHead {
                method: method.to_string(),
                path: fields.pseudo(":path").map(clean_path).unwrap_or_default(),
                authority: fields
                    .pseudo(":authority")
                    .or_else(|| header(&fields.regular, "host"))
                    .map(clean_authority),
                headers: fields.regular,
            },
            ts_ns,
        });
        self.streams.insert(
            id,
            Stream {
                request_done: false,
                response_started: false,
                response_done: false,
                request_body,
                response_body: RespBody::Drop,
                last_ns: ts_ns,
            },
        );
        if end_stream {
            self.end_side(Direction::FromClient, id, ts_ns, stats, out);
        }
    }

    pub(super) fn on_response_headers(
        &mut self,
        id: u32,
        end_stream: bool,
        block: hpack::Block,
        ts_ns: u64,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) {
        let limits = &self.limits;
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.last_ns = ts_ns;
        if stream.response_started {
            // Trailers: a second header block, which ends the response.
            if !stream.response_done {
                let trailers = Fields::from(block).regular;
                self.end_side_with(Direction::FromServer, id, ts_ns, trailers, stats, out);
            }
            return;
        }
        let fields = Fields::from(block);
        let status = fields.pseudo(":status").and_then(|s| s.parse::<u16>().ok());
        let Some(status) = status else {
            let reason = if fields.unknown > 0 {
                AbortReason::Gap
            } else {
                stats.malformed += 1;
                AbortReason::Malformed
            };
            self.streams.remove(&id);
            abort(u64::from(id), reason, ts_ns, stats, out);
            return;
        };
        if (100..200).contains(&status) {
            return;
        }
        stream.response_started = true;
        stream.response_body = match header(&fields.regular, "content-encoding") {
            None if fields.unknown_names > 0 => RespBody::Sniff(Vec::new()),
            encoding => match BodyDecoder::new(encoding, limits) {
                Ok(d) => RespBody::Decode(d),
                Err(_) => {
                    stats.unsupported_encoding += 1;
                    RespBody::Drop
                }
            },
        };
        out.push(HttpEvent::Response {
            stream: u64::from(id),
            head: ResponseHead {
                status,
                headers: fields.regular,
            },
            ts_ns,
        });
        if end_stream {
            self.end_side(Direction::FromServer, id, ts_ns, stats, out);
        }
    }

    pub(super) fn on_data(
        &mut self,
        dir: Direction,
        id: u32,
        data: &[u8],
        ts_ns: u64,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) {
        let limits = &self.limits;
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.last_ns = ts_ns;
        let mut held = Vec::new();
        let decoder = match dir {
            Direction::FromClient if !stream.request_done => stream.request_body.as_mut(),
            Direction::FromServer if stream.response_started && !stream.response_done => {
                if let RespBody::Sniff(head) = &mut stream.response_body {
                    head.extend_from_slice(data);
                    if head.len() < MAGIC_LEN {
                        return;
                    }
                    held = settle_sniff(&mut stream.response_body, limits);
                }
                match &mut stream.response_body {
                    RespBody::Decode(d) => Some(d),
                    _ => None,
                }
            }
            _ => None,
        };
        let Some(decoder) = decoder else {
            return;
        };
        let data = if held.is_empty() { data } else { &held };
        match decoder.push(data) {
            Ok(decoded) if decoded.is_empty() => {}
            Ok(data) => out.push(match dir {
                Direction::FromClient => HttpEvent::RequestBody {
                    stream: u64::from(id),
                    data,
                    ts_ns,
                },
                Direction::FromServer => HttpEvent::ResponseBody {
                    stream: u64::from(id),
                    data,
                    ts_ns,
                },
            }),
            Err(e) => self.body_failed(id, e, ts_ns, stats, out),
        }
    }

    pub(super) fn body_failed(
        &mut self,
        id: u32,
        e: BodyError,
        ts_ns: u64,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) {
        let reason = e.count(stats);
        self.streams.remove(&id);
        abort(u64::from(id), reason, ts_ns, stats, out);
    }

    /// END_STREAM from one side: flush its decoder and report the end.
    pub(super) fn end_side(
        &mut self,
        dir: Direction,
        id: u32,
        ts_ns: u64,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) {
        self.end_side_with(dir, id, ts_ns, Headers::new(), stats, out);
    }

    /// The end of one side, after its trailers (if any) are reported.
    pub(super) fn end_side_with(
        &mut self,
        dir: Direction,
        id: u32,
        ts_ns: u64,
        trailers: Headers,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.last_ns = ts_ns;
        let sid = u64::from(id);
        let mut held = Vec::new();
        let (decoder, end) = match dir {
            Direction::FromClient => {
                if stream.request_done {
                    return;
                }
                stream.request_done = true;
                (
                    stream.request_body.as_mut(),
                    HttpEvent::RequestEnd { stream: sid, ts_ns },
                )
            }
            Direction::FromServer => {
                if stream.response_done || !stream.response_started {
                    return;
                }
                stream.response_done = true;
                if let RespBody::Sniff(_) = stream.response_body {
                    held = settle_sniff(&mut stream.response_body, &self.limits);
                }
                let d = match &mut stream.response_body {
                    RespBody::Decode(d) => Some(d),
                    _ => None,
                };
                (d, HttpEvent::ResponseEnd { stream: sid, ts_ns })
            }
        };
        if let Some(decoder) = decoder {
            let pushed = if held.is_empty() {
                Ok(bytes::Bytes::new())
            } else {
                decoder.push(&held)
            };
            match pushed.and_then(|first| decoder.finish().map(|rest| [first, rest].concat())) {
                Ok(data) if data.is_empty() => {}
                Ok(data) => out.push(match dir {
                    Direction::FromClient => HttpEvent::RequestBody {
                        stream: sid,
                        data: data.into(),
                        ts_ns,
                    },
                    Direction::FromServer => HttpEvent::ResponseBody {
                        stream: sid,
                        data: data.into(),
                        ts_ns,
                    },
                }),
                Err(e) => return self.body_failed(id, e, ts_ns, stats, out),
            }
        }
        if !trailers.is_empty() {
            out.push(HttpEvent::Trailers {
                stream: sid,
                from: dir,
                headers: trailers,
                ts_ns,
            });
        }
        out.push(end);
        if stream.request_done && stream.response_done {
            self.streams.remove(&id);
        }
    }
}

/// A decoded header block split into pseudo-headers and kept headers.
struct Fields {
    pseudo: Vec<(String, String)>,
    regular: Headers,
    unknown: usize,
    unknown_names: usize,
}

impl From<hpack::Block> for Fields {
    fn from(block: hpack::Block) -> Self {
        let mut fields = Fields {
            pseudo: Vec::new(),
            regular: Headers::new(),
            unknown: block.unknown,
            unknown_names: block.unknown_names,
        };
        for f in block.fields {
            if f.name.starts_with(':') {
                let mut name = f.name;
                name.make_ascii_lowercase();
                fields.pseudo.push((name, f.value));
            } else if !is_credential_header(&f.name) {
                fields.regular.push(&f.name, &f.value);
            }
        }
        fields
    }
}

impl Fields {
    fn pseudo(&self, name: &str) -> Option<&str> {
        self.pseudo
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.get(name)
}
