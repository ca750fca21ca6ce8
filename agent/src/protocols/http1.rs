//! HTTP/1.1 (RFC 9112): heads with `httparse`, Content-Length, chunked and
//! close-delimited bodies, keep-alive and pipelining. Stream ids count
//! requests from 0; a response takes the id of the oldest unanswered request.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::mem::MaybeUninit;

use super::body::{BodyDecoder, BodyError};
use super::event::{AbortReason, Direction, Headers, HttpEvent, RequestHead, ResponseHead};
use super::{
    abort, clean_authority, clean_path, is_credential_header, target_authority, Limits, ParseStats,
};

mod helpers;
use helpers::*;

const MAX_HEADERS: usize = 128;
/// A chunk-size line (with extensions) longer than this is malformed.
const MAX_CHUNK_LINE: usize = 1024;

#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    SizeLine,
    Data(u64),
    DataEnd,
    Trailers,
}

struct BodyState {
    stream: u64,
    framing: Framing,
    /// `None` once the message was aborted (or its coding is unsupported):
    /// framing is still followed but nothing is emitted.
    decoder: Option<BodyDecoder>,
    /// False for a message whose events are not reported at all.
    reported: bool,
    /// Chunked trailer fields seen so far (bounded with the trailer bytes).
    trailers: Headers,
}

#[expect(
    clippy::large_enum_variant,
    reason = "two per connection; a boxed body state would allocate per message"
)]
enum State {
    Head,
    Body(BodyState),
}

struct Side {
    /// Head bytes not yet complete, or the current chunk-size/trailer line.
    buf: Vec<u8>,
    trailer_bytes: usize,
    /// `buf` holds a line end that may end the head: httparse runs on
    /// every feed from then on, so where the bytes were split never matters.
    end_seen: bool,
    state: State,
    /// After a gap: skip bytes up to the next message start.
    resync: bool,
}

impl Side {
    fn new() -> Self {
        Side {
            buf: Vec::new(),
            trailer_bytes: 0,
            end_seen: false,
            state: State::Head,
            resync: false,
        }
    }
}

/// A request whose response is still due.
struct Awaiting {
    stream: u64,
    head_method: bool,
    connect: bool,
    /// The request was aborted (gap): its response is parsed but not reported.
    reported: bool,
}

pub struct Http1Parser {
    limits: Limits,
    client: Side,
    server: Side,
    next_stream: u64,
    awaiting: VecDeque<Awaiting>,
    /// Malformed input, protocol switch or close: nothing more is parsed.
    stopped: bool,
}

enum Step {
    /// Bytes consumed; keep going with the rest.
    Consumed(usize),
    /// All remaining input kept or consumed; wait for more.
    Wait,
    Stop,
}

impl Http1Parser {
    pub fn new(limits: Limits) -> Self {
        Http1Parser {
            limits,
            client: Side::new(),
            server: Side::new(),
            next_stream: 0,
            awaiting: VecDeque::new(),
            stopped: false,
        }
    }

    pub fn feed(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        data: &[u8],
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) {
        let mut input = data;
        while !input.is_empty() && !self.stopped {
            let step = match self.side(dir).state {
                State::Head => self.feed_head(dir, ts_ns, input, stats, out),
                State::Body(_) => self.feed_body(dir, ts_ns, input, stats, out),
            };
            match step {
                Step::Consumed(n) => input = input.get(n..).unwrap_or_default(),
                Step::Wait => break,
                Step::Stop => {
                    self.stop(ts_ns, AbortReason::Malformed, stats, out);
                    break;
                }
            }
        }
    }

    pub fn gap(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        lost: u64,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) {
        if self.stopped {
            return;
        }
        let side = self.side_mut(dir);
        side.buf.clear();
        side.end_seen = false;
        let mut aborted = None;
        let mut resync = true;
        if let State::Body(body) = &mut side.state {
            if body.reported {
                aborted = Some(body.stream);
            }
            body.reported = false;
            // A Content-Length body keeps its framing across the hole.
            if let Framing::Length(rem) = &mut body.framing {
                if lost < *rem {
                    *rem -= lost;
                    resync = false;
                }
            }
        }
        if resync {
            side.state = State::Head;
            side.resync = true;
        }
        if let Some(stream) = aborted {
            abort(stream, AbortReason::Gap, ts_ns, stats, out);
            if dir == Direction::FromClient {
                if let Some(a) = self.awaiting.iter_mut().find(|a| a.stream == stream) {
                    a.reported = false;
                }
            }
        }
    }

    pub fn close(&mut self, ts_ns: u64, stats: &mut ParseStats, out: &mut Vec<HttpEvent>) {
        if self.stopped {
            return;
        }
        if let State::Body(body) = &mut self.server.state {
            if matches!(body.framing, Framing::UntilClose) {
                finish_body(body, Direction::FromServer, ts_ns, stats, out);
                self.server.state = State::Head;
            }
        }
        self.stop(ts_ns, AbortReason::Closed, stats, out);
    }

    /// Ends parsing: every message still in flight is aborted with `reason`.
    fn stop(
        &mut self,
        ts_ns: u64,
        reason: AbortReason,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) {
        if reason == AbortReason::Malformed {
            stats.malformed += 1;
        }
        self.stopped = true;
        let mut streams = Vec::new();
        for side in [&mut self.client, &mut self.server] {
            if let State::Body(body) = &side.state {
                if body.reported {
                    streams.push(body.stream);
                }
            }
            side.state = State::Head;
            side.buf = Vec::new();
        }
        for a in self.awaiting.drain(..) {
            if a.reported && !streams.contains(&a.stream) {
                streams.push(a.stream);
            }
        }
        for stream in streams {
            abort(stream, reason, ts_ns, stats, out);
        }
    }

    fn side(&self, dir: Direction) -> &Side {
        match dir {
            Direction::FromClient => &self.client,
            Direction::FromServer => &self.server,
        }
    }

    fn side_mut(&mut self, dir: Direction) -> &mut Side {
        match dir {
            Direction::FromClient => &mut self.client,
            Direction::FromServer => &mut self.server,
        }
    }

    fn feed_head(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        input: &[u8],
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) -> Step {
        let max_head = self.limits.max_header_block;
        let side = self.side_mut(dir);
        let old_len = side.buf.len();
        if side.resync {
            side.buf.extend_from_slice(input);
            match find_message_start(dir, &side.buf) {
                Some(start) => {
                    stats.bytes_skipped += start as u64;
                    side.buf.drain(..start);
                    side.resync = false;
                    side.state = State::Head;
                }
                None => {
                    // Keep a tail that may be the start of a split token.
                    let keep = side.buf.len().min(8);
                    let skip = side.buf.len() - keep;
                    stats.bytes_skipped += skip as u64;
                    side.buf.drain(..skip);
                    return Step::Wait;
                }
            }
            // Parse the resynchronised bytes as fresh input.
            let rest = std::mem::take(&mut side.buf);
            self.feed(dir, ts_ns, &rest, stats, out);
            return Step::Consumed(input.len());
        }
        // Never copy more than a head's bound: the rest of a large write
        // (bodies, pipelined messages) is parsed in place.
        let room = (max_head + 4).saturating_sub(old_len);
        if old_len == 0 {
            // The usual case, a write that starts with a whole head: parse it
            // where it lies, over the same bounded window the buffered path
            // would copy, so the outcome is the same.
            let window = input.get(..room.min(input.len())).unwrap_or_default();
            if has_head_end(window) {
                let parsed = match dir {
                    Direction::FromClient => self.parse_request(window, ts_ns, stats, out),
                    Direction::FromServer => self.parse_response(window, ts_ns, stats, out),
                };
                match parsed {
                    Parsed::Done(n) => return Step::Consumed(n),
                    Parsed::Malformed => return Step::Stop,
                    Parsed::Switched => {
                        self.stopped = true;
                        return Step::Wait;
                    }
                    // A blank line inside a partial head: buffer as usual.
                    Parsed::Partial => {}
                }
            }
        }
        let side = self.side_mut(dir);
        side.buf
            .extend_from_slice(input.get(..room.min(input.len())).unwrap_or_default());
        // Re-parse only once the end of a head may be present.
        let search_from = old_len.saturating_sub(3);
        side.end_seen = side.end_seen || side.buf.get(search_from..).is_some_and(has_head_end);
        if !side.end_seen {
            if side.buf.len() > max_head {
                stats.too_large += 1;
                return self.too_large_head(ts_ns, stats, out);
            }
            return Step::Wait;
        }
        let buf = std::mem::take(&mut side.buf);
        let parsed = match dir {
            Direction::FromClient => self.parse_request(&buf, ts_ns, stats, out),
            Direction::FromServer => self.parse_response(&buf, ts_ns, stats, out),
        };
        match parsed {
            Parsed::Done(n) => {
                self.side_mut(dir).end_seen = false;
                Step::Consumed(n.saturating_sub(old_len))
            }
            Parsed::Partial => {
                if buf.len() > max_head {
                    stats.too_large += 1;
                    return self.too_large_head(ts_ns, stats, out);
                }
                self.side_mut(dir).buf = buf;
                Step::Wait
            }
            Parsed::Malformed => Step::Stop,
            Parsed::Switched => {
                self.stopped = true;
                Step::Wait
            }
        }
    }

    fn too_large_head(
        &mut self,
        ts_ns: u64,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) -> Step {
        self.stop(ts_ns, AbortReason::TooLarge, stats, out);
        Step::Wait
    }

    fn parse_request(
        &mut self,
        buf: &[u8],
        ts_ns: u64,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) -> Parsed {
        // Uninitialised slots: httparse writes only the headers it finds.
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let n = match req.parse_with_uninit_headers(buf, &mut headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Malformed,
        };
        let (Some(method), Some(target)) = (req.method, req.path) else {
            return Parsed::Malformed;
        };
        let Ok(framing) = body_framing(req.headers, false) else {
            return Parsed::Malformed;
        };
        let framing = framing.unwrap_or(Framing::Length(0));
        let (kept, host, encoding) = keep_headers(buf.get(..n).unwrap_or_default(), req.headers);
        let authority = target_authority(target)
            .map(Cow::Borrowed)
            .or(host)
            .map(|a| clean_authority(&a));
        let stream = self.next_stream;
        self.next_stream += 1;
        if self.awaiting.len() >= self.limits.max_concurrent_streams {
            // Pipelining this deep is not real traffic: forget the oldest.
            if let Some(old) = self.awaiting.pop_front() {
                stats.streams_dropped += 1;
                if old.reported {
                    abort(old.stream, AbortReason::TooLarge, ts_ns, stats, out);
                }
            }
        }
        self.awaiting.push_back(Awaiting {
            stream,
            head_method: method == "HEAD",
            connect: method == "CONNECT",
            reported: true,
        });
        out.push(HttpEvent::Request {
            stream,
            head: RequestHead {
                method: method.to_string(),
                path: clean_path(target),
                authority,
                headers: kept,
            },
            ts_ns,
        });
        self.start_body(
            Direction::FromClient,
            stream,
            framing,
            encoding.as_deref(),
            true,
            ts_ns,
            stats,
            out,
        );
        Parsed::Done(n)
    }

    fn parse_response(
        &mut self,
        buf: &[u8],
        ts_ns: u64,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) -> Parsed {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let n = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Malformed,
        };
        let Some(status) = resp.code else {
            return Parsed::Malformed;
        };
        if status == 101 {
            return Parsed::Switched;
        }
        if (100..200).contains(&status) {
            // Interim response: not reported; the final one follows.
            return Parsed::Done(n);
        }
        let (stream, head_method, connect, reported) = match self.awaiting.pop_front() {
            Some(a) => (a.stream, a.head_method, a.connect, a.reported),
            None => {
                // A response to a request we did not see (capture gap).
                let s = self.next_stream;
                self.next_stream += 1;
                (s, false, false, true)
            }
        };
        if connect && (200..300).contains(&status) {
            return Parsed::Switched;
        }
        let no_body = head_method || status == 204 || status == 304;
        let Ok(framing) = body_framing(resp.headers, true) else {
            return Parsed::Malformed;
        };
        let framing = if no_body {
            Framing::Length(0)
        } else {
            framing.unwrap_or(Framing::UntilClose)
        };
        let (kept, _, encoding) = keep_headers(buf.get(..n).unwrap_or_default(), resp.headers);
        if reported {
            out.push(HttpEvent::Response {
                stream,
                head: ResponseHead {
                    status,
                    headers: kept,
                },
                ts_ns,
            });
        }
        self.start_body(
            Direction::FromServer,
            stream,
            framing,
            encoding.as_deref(),
            reported,
            ts_ns,
            stats,
            out,
        );
        Parsed::Done(n)
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per direction; a struct would only rename them"
    )]
    fn start_body(
        &mut self,
        dir: Direction,
        stream: u64,
        framing: Framing,
        encoding: Option<&str>,
        reported: bool,
        ts_ns: u64,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) {
        let decoder = match BodyDecoder::new(encoding, &self.limits) {
            Ok(d) => Some(d),
            Err(_) => {
                if reported {
                    stats.unsupported_encoding += 1;
                }
                None
            }
        };
        let mut body = BodyState {
            stream,
            framing,
            decoder,
            reported,
            trailers: Headers::new(),
        };
        if matches!(body.framing, Framing::Length(0)) {
            if reported {
                finish_body(&mut body, dir, ts_ns, stats, out);
            }
            return;
        }
        self.side_mut(dir).state = State::Body(body);
    }

    fn feed_body(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        input: &[u8],
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) -> Step {
        let max_trailers = self.limits.max_header_block;
        let side = self.side_mut(dir);
        let State::Body(body) = &mut side.state else {
            return Step::Consumed(0);
        };
        match &mut body.framing {
            Framing::UntilClose => {
                deliver(body, dir, input, ts_ns, stats, out);
                Step::Consumed(input.len())
            }
            Framing::Length(rem) => {
                let take = input.len().min(usize::try_from(*rem).unwrap_or(usize::MAX));
                *rem -= take as u64;
                let done = *rem == 0;
                deliver(
                    body,
                    dir,
                    input.get(..take).unwrap_or_default(),
                    ts_ns,
                    stats,
                    out,
                );
                if done {
                    finish_body(body, dir, ts_ns, stats, out);
                    side.state = State::Head;
                }
                Step::Consumed(take)
            }
            Framing::Chunked(Chunk::Data(rem)) => {
                let take = input.len().min(usize::try_from(*rem).unwrap_or(usize::MAX));
                *rem -= take as u64;
                if *rem == 0 {
                    body.framing = Framing::Chunked(Chunk::DataEnd);
                }
                deliver(
                    body,
                    dir,
                    input.get(..take).unwrap_or_default(),
                    ts_ns,
                    stats,
                    out,
                );
                Step::Consumed(take)
            }
            Framing::Chunked(chunk) => {
                // Line-oriented parts: size line, CRLF after data, trailers.
                let bound = if *chunk == Chunk::Trailers {
                    max_trailers
                } else {
                    MAX_CHUNK_LINE
                };
                let Some(nl) = memchr::memchr(b'\n', input) else {
                    side.buf.extend_from_slice(input);
                    if side.buf.len() + side.trailer_bytes > bound {
                        return Step::Stop;
                    }
                    return Step::Wait;
                };
                let piece = input.get(..nl).unwrap_or_default();
                // A line within one write (the usual case) is read in place;
                // one split across writes is joined in `buf`, whose
                // capacity is kept for the next.
                let mut held = std::mem::take(&mut side.buf);
                let line: &[u8] = if held.is_empty() {
                    piece
                } else {
                    held.extend_from_slice(piece);
                    &held
                };
                if line.len() + side.trailer_bytes > bound {
                    return Step::Stop;
                }
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                match *chunk {
                    Chunk::SizeLine => {
                        let Some(size) = chunk_size(line) else {
                            return Step::Stop;
                        };
                        *chunk = if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        };
                        side.trailer_bytes = 0;
                    }
                    Chunk::DataEnd => {
                        if !line.is_empty() {
                            return Step::Stop;
                        }
                        *chunk = Chunk::SizeLine;
                    }
                    Chunk::Trailers => {
                        if line.is_empty() {
                            finish_body(body, dir, ts_ns, stats, out);
                            side.state = State::Head;
                        } else {
                            side.trailer_bytes += line.len() + 2;
                            if side.trailer_bytes > max_trailers {
                                return Step::Stop;
                            }
                            if body.reported && !push_trailer_field(&mut body.trailers, line) {
                                stats.bad_trailers += 1;
                            }
                        }
                    }
                    Chunk::Data(_) => {}
                }
                held.clear();
                side.buf = held;
                Step::Consumed(nl + 1)
            }
        }
    }
}

enum Parsed {
    Done(usize),
    Partial,
    Malformed,
    /// 101 Switching Protocols or a CONNECT tunnel: no longer HTTP/1.1.
    Switched,
}
