//! HTTP/2 (RFC 9113): frames from both directions, HPACK header blocks, and
//! per-stream request/response events with content decoding.
//!
//! Capture that starts mid-connection (no client preface) decodes HPACK with
//! an unknown table (see [`super::hpack`]): fields that reference entries we
//! never saw are left out and counted in `hpack_unknown`. A request whose
//! `:method` is unknown, or a response whose `:status` is unknown, cannot be
//! reported truthfully; such a stream is dropped (a response is closed with
//! [`AbortReason::Gap`], since what is missing is bytes we never captured).
//! An unknown `:path` is reported as the empty string. When a response's
//! `content-encoding` may be hidden behind an unknown field, the body is
//! decoded as gzip or zstd only if it starts with that format's magic bytes.

use std::collections::HashMap;

#[path = "http2_streams.rs"]
mod streams;
use streams::Stream;

use super::detect::{frame, FrameHeader, FRAME_HEADER_LEN, PREFACE};
use super::event::{AbortReason, Direction, HttpEvent};
use super::hpack::Decoder;
use super::{abort, Limits, ParseStats};

const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
/// Non-DATA frames other than header blocks larger than this are skipped.
const MAX_CONTROL_FRAME: u32 = 16 * 1024;

enum Read {
    /// Client side only, at the start: matching the connection preface.
    Preface {
        matched: usize,
    },
    Header {
        buf: Vec<u8>,
    },
    /// A non-DATA frame's payload, buffered whole (bounded).
    Payload {
        hdr: FrameHeader,
        buf: Vec<u8>,
    },
    /// A DATA frame's payload, handed on as it arrives.
    Data {
        hdr: FrameHeader,
        data_left: u32,
        pad_left: u32,
        /// False until the pad-length byte of a PADDED frame is read.
        pad_known: bool,
    },
    Skip {
        left: u32,
    },
    /// After a gap: the next write must start with a frame header.
    Resync,
}

struct Continuation {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
    /// Past the header-block bound: fragments are dropped.
    overflowed: bool,
    /// A PUSH_PROMISE block: decoded for HPACK state, then ignored.
    promise: bool,
}

struct Reader {
    read: Read,
    hpack: Decoder,
    blocks_decoded: u64,
    frames_seen: u64,
    continuation: Option<Continuation>,
    /// SETTINGS_HEADER_TABLE_SIZE this side sent and the other has not acked.
    pending_table_size: Option<u32>,
}

impl Reader {
    fn new(read: Read, limits: &Limits) -> Self {
        Reader {
            read,
            hpack: Decoder::new_unknown(limits.max_hpack_table, limits.max_header_block),
            blocks_decoded: 0,
            frames_seen: 0,
            continuation: None,
            pending_table_size: None,
        }
    }
}

pub struct Http2Parser {
    limits: Limits,
    client: Reader,
    server: Reader,
    streams: HashMap<u32, Stream>,
    highest_client_stream: u32,
    stopped: bool,
    /// Capture time of the next look for idle streams.
    next_idle_check_ns: u64,
}

impl Http2Parser {
    /// `preface`: the client's first bytes were seen and start with the preface.
    pub fn new(limits: Limits, preface: bool) -> Self {
        let client_read = if preface {
            Read::Preface { matched: 0 }
        } else {
            Read::Header { buf: Vec::new() }
        };
        let mut parser = Http2Parser {
            client: Reader::new(client_read, &limits),
            server: Reader::new(Read::Header { buf: Vec::new() }, &limits),
            limits,
            streams: HashMap::new(),
            highest_client_stream: 0,
            stopped: false,
            next_idle_check_ns: 0,
        };
        if preface {
            parser.saw_preface();
        }
        parser
    }

    fn reader(&mut self, dir: Direction) -> &mut Reader {
        match dir {
            Direction::FromClient => &mut self.client,
            Direction::FromServer => &mut self.server,
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
        if ts_ns >= self.next_idle_check_ns && !self.stopped {
            self.close_idle(ts_ns, stats, out);
        }
        let mut input = data;
        while !input.is_empty() && !self.stopped {
            let n = self.step(dir, ts_ns, input, stats, out);
            input = input.get(n..).unwrap_or_default();
        }
    }

    /// Aborts the streams that saw no frame for `stream_idle_ns` before
    /// `now_ns` (the time of the bytes being fed: the parser has no clock).
    /// Runs at most a few times per idle period, so its cost stays small.
    fn close_idle(&mut self, now_ns: u64, stats: &mut ParseStats, out: &mut Vec<HttpEvent>) {
        let idle = self.limits.stream_idle_ns;
        if idle == 0 {
            // No bound.
            self.next_idle_check_ns = u64::MAX;
            return;
        }
        self.next_idle_check_ns = now_ns.saturating_add((idle / 4).max(1));
        let Some(cutoff) = now_ns.checked_sub(idle) else {
            return;
        };
        let mut ids: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| s.last_ns < cutoff)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            self.streams.remove(&id);
            stats.streams_idle += 1;
            abort(u64::from(id), AbortReason::Idle, now_ns, stats, out);
        }
    }

    /// Consumes some of `input` and returns how much.
    fn step(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        input: &[u8],
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) -> usize {
        let reader = self.reader(dir);
        match &mut reader.read {
            Read::Preface { matched } => {
                let want = PREFACE.get(*matched..).unwrap_or_default();
                let n = want.len().min(input.len());
                if input.get(..n) != want.get(..n) {
                    self.fail(ts_ns, stats, out);
                    return input.len();
                }
                *matched += n;
                if *matched == PREFACE.len() {
                    reader.read = Read::Header { buf: Vec::new() };
                }
                n
            }
            Read::Resync => {
                let plausible = FrameHeader::parse(input).is_some_and(|h| h.plausible());
                if plausible {
                    reader.read = Read::Header { buf: Vec::new() };
                    0
                } else {
                    stats.bytes_skipped += input.len() as u64;
                    input.len()
                }
            }
            Read::Header { buf } => {
                if dir == Direction::FromClient
                    && buf.is_empty()
                    && reader.frames_seen == 0
                    && input.first() == Some(&b'P')
                {
                    // The preface after all (server bytes were seen first).
                    reader.read = Read::Preface { matched: 0 };
                    self.saw_preface();
                    return 0;
                }
                let n = (FRAME_HEADER_LEN - buf.len()).min(input.len());
                buf.extend_from_slice(input.get(..n).unwrap_or_default());
                if let Some(hdr) = FrameHeader::parse(buf) {
                    reader.frames_seen += 1;
                    self.start_frame(dir, hdr, ts_ns, stats, out);
                }
                n
            }
            Read::Payload { hdr, buf } => {
                let n = (hdr.length as usize - buf.len()).min(input.len());
                buf.extend_from_slice(input.get(..n).unwrap_or_default());
                if buf.len() == hdr.length as usize {
                    let hdr = *hdr;
                    let payload = std::mem::take(buf);
                    reader.read = Read::Header { buf: Vec::new() };
                    self.on_frame(dir, hdr, &payload, ts_ns, stats, out);
                }
                n
            }
            Read::Skip { left } => {
                let n = (*left as usize).min(input.len());
                *left -= n as u32;
                if *left == 0 {
                    reader.read = Read::Header { buf: Vec::new() };
                }
                n
            }
            Read::Data {
                hdr,
                data_left,
                pad_left,
                pad_known,
            } => {
                let hdr = *hdr;
                let n = if !*pad_known {
                    let pad_len = u32::from(input.first().copied().unwrap_or(0));
                    let rest = hdr.length.saturating_sub(1);
                    if pad_len > rest {
                        self.fail(ts_ns, stats, out);
                        return input.len();
                    }
                    *pad_known = true;
                    *data_left = rest - pad_len;
                    *pad_left = pad_len;
                    1
                } else if *data_left > 0 {
                    let n = (*data_left as usize).min(input.len());
                    *data_left -= n as u32;
                    self.on_data(
                        dir,
                        hdr.stream,
                        input.get(..n).unwrap_or_default(),
                        ts_ns,
                        stats,
                        out,
                    );
                    n
                } else {
                    let n = (*pad_left as usize).min(input.len());
                    *pad_left -= n as u32;
                    n
                };
                if let Read::Data {
                    data_left: 0,
                    pad_left: 0,
                    pad_known: true,
                    ..
                } = self.reader(dir).read
                {
                    self.reader(dir).read = Read::Header { buf: Vec::new() };
                    if hdr.flags & FLAG_END_STREAM != 0 {
                        self.end_side(dir, hdr.stream, ts_ns, stats, out);
                    }
                }
                n
            }
        }
    }

    /// A frame header is complete: choose how to read its payload.
    fn start_frame(
        &mut self,
        dir: Direction,
        hdr: FrameHeader,
        ts_ns: u64,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) {
        let max_block = self.limits.max_header_block as u32;
        let in_block = self.reader(dir).continuation.is_some();
        let read = match hdr.kind {
            frame::DATA if hdr.length > 0 => {
                if in_block || hdr.stream == 0 {
                    return self.fail(ts_ns, stats, out);
                }
                let padded = hdr.flags & FLAG_PADDED != 0;
                Read::Data {
                    hdr,
                    data_left: if padded { 0 } else { hdr.length },
                    pad_left: 0,
                    pad_known: !padded,
                }
            }
            frame::HEADERS | frame::CONTINUATION | frame::PUSH_PROMISE
                if hdr.length > max_block + 300 =>
            {
                if (hdr.kind == frame::CONTINUATION) != in_block {
                    return self.fail(ts_ns, stats, out);
                }
                self.block_too_large(dir, hdr, ts_ns, stats, out);
                Read::Skip { left: hdr.length }
            }
            frame::HEADERS | frame::CONTINUATION | frame::PUSH_PROMISE => Read::Payload {
                hdr,
                buf: Vec::with_capacity(hdr.length as usize),
            },
            _ if hdr.length > MAX_CONTROL_FRAME => Read::Skip { left: hdr.length },
            _ => Read::Payload {
                hdr,
                buf: Vec::with_capacity(hdr.length as usize),
            },
        };
        if hdr.length == 0 {
            self.reader(dir).read = Read::Header { buf: Vec::new() };
            self.on_frame(dir, hdr, &[], ts_ns, stats, out);
        } else {
            self.reader(dir).read = read;
        }
    }

    /// The client preface was seen: both tables start empty and known,
    /// unless server header blocks were already decoded without it.
    fn saw_preface(&mut self) {
        let (cap, list) = (self.limits.max_hpack_table, self.limits.max_header_block);
        self.client.hpack = Decoder::new(cap, list);
        if self.server.blocks_decoded == 0 {
            self.server.hpack = Decoder::new(cap, list);
        }
    }

    fn on_frame(
        &mut self,
        dir: Direction,
        hdr: FrameHeader,
        payload: &[u8],
        ts_ns: u64,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) {
        let expecting_continuation = self.reader(dir).continuation.is_some();
        if expecting_continuation != (hdr.kind == frame::CONTINUATION) {
            // RFC 9113 §6.10: only CONTINUATION may follow an open header block.
            self.fail(ts_ns, stats, out);
            return;
        }
        match hdr.kind {
            frame::DATA => {
                // Zero-length DATA (only way here): may carry END_STREAM.
                if hdr.stream == 0 {
                    return self.fail(ts_ns, stats, out);
                }
                if hdr.flags & FLAG_END_STREAM != 0 {
                    self.end_side(dir, hdr.stream, ts_ns, stats, out);
                }
            }
            frame::HEADERS | frame::PUSH_PROMISE => {
                if hdr.stream == 0 {
                    return self.fail(ts_ns, stats, out);
                }
                let promise = hdr.kind == frame::PUSH_PROMISE;
                let Some(fragment) = header_fragment(&hdr, payload) else {
                    return self.fail(ts_ns, stats, out);
                };
                let cont = Continuation {
                    stream: hdr.stream,
                    end_stream: !promise && hdr.flags & FLAG_END_STREAM != 0,
                    block: fragment.to_vec(),
                    overflowed: false,
                    promise,
                };
                self.header_piece(
                    dir,
                    cont,
                    hdr.flags & FLAG_END_HEADERS != 0,
                    ts_ns,
                    stats,
                    out,
                );
            }
            frame::CONTINUATION => {
                let Some(mut cont) = self.reader(dir).continuation.take() else {
                    return;
                };
                if cont.stream != hdr.stream {
                    return self.fail(ts_ns, stats, out);
                }
                if !cont.overflowed {
                    cont.block.extend_from_slice(payload);
                }
                self.header_piece(
                    dir,
                    cont,
                    hdr.flags & FLAG_END_HEADERS != 0,
                    ts_ns,
                    stats,
                    out,
                );
            }
            frame::RST_STREAM if self.streams.remove(&hdr.stream).is_some() => {
                abort(u64::from(hdr.stream), AbortReason::Reset, ts_ns, stats, out);
            }
            frame::GOAWAY => {
                let Some(last) = payload.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
                    return self.fail(ts_ns, stats, out);
                };
                let last = u32::from_be_bytes(last) & 0x7fff_ffff;
                let mut gone: Vec<u32> = self
                    .streams
                    .keys()
                    .copied()
                    .filter(|id| *id > last)
                    .collect();
                gone.sort_unstable();
                for id in gone {
                    self.streams.remove(&id);
                    abort(u64::from(id), AbortReason::Reset, ts_ns, stats, out);
                }
            }
            frame::SETTINGS => self.on_settings(dir, hdr, payload, ts_ns, stats, out),
            // PRIORITY, PING, WINDOW_UPDATE and unknown types carry nothing we report.
            _ => {}
        }
    }

    fn on_settings(
        &mut self,
        dir: Direction,
        hdr: FrameHeader,
        payload: &[u8],
        ts_ns: u64,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) {
        if hdr.stream != 0 || !payload.len().is_multiple_of(6) {
            return self.fail(ts_ns, stats, out);
        }
        // The setting bounds the table of the sender's decoder, which
        // mirrors the other direction's encoder.
        let (sender, other) = match dir {
            Direction::FromClient => (&mut self.client, &mut self.server),
            Direction::FromServer => (&mut self.server, &mut self.client),
        };
        if hdr.flags & FLAG_ACK != 0 {
            // The ack applies what the other side asked for.
            if let Some(size) = other.pending_table_size.take() {
                sender.hpack.set_allowed_max(size);
            }
            return;
        }
        for setting in payload.chunks_exact(6) {
            if let [a, b, c, d, e, f] = *setting {
                if u16::from_be_bytes([a, b]) == SETTINGS_HEADER_TABLE_SIZE {
                    let size = u32::from_be_bytes([c, d, e, f]);
                    // Until acked the encoder may still use the larger of old and new.
                    other
                        .hpack
                        .set_allowed_max(size.max(other.hpack.allowed_max() as u32));
                    sender.pending_table_size = Some(size);
                }
            }
        }
    }

    fn header_piece(
        &mut self,
        dir: Direction,
        mut cont: Continuation,
        end_headers: bool,
        ts_ns: u64,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) {
        if !cont.overflowed && cont.block.len() > self.limits.max_header_block {
            cont.overflowed = true;
            cont.block = Vec::new();
            self.header_block_lost(dir, cont.stream, cont.promise, ts_ns, stats, out);
        }
        if !end_headers {
            self.reader(dir).continuation = Some(cont);
            return;
        }
        if cont.overflowed {
            return;
        }
        self.on_header_block(dir, cont, ts_ns, stats, out);
    }

    /// A header block we did not decode: HPACK state is lost for this direction.
    fn header_block_lost(
        &mut self,
        dir: Direction,
        stream: u32,
        promise: bool,
        ts_ns: u64,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) {
        stats.too_large += 1;
        self.reader(dir).hpack.lose_state();
        if !promise && self.streams.remove(&stream).is_some() {
            abort(u64::from(stream), AbortReason::TooLarge, ts_ns, stats, out);
        } else if dir == Direction::FromClient && !promise {
            self.highest_client_stream = self.highest_client_stream.max(stream);
        }
    }

    fn block_too_large(
        &mut self,
        dir: Direction,
        hdr: FrameHeader,
        ts_ns: u64,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) {
        let (stream, promise, end_stream) = match self.reader(dir).continuation.take() {
            Some(c) if c.overflowed => (c.stream, c.promise, c.end_stream),
            Some(c) => {
                self.header_block_lost(dir, c.stream, c.promise, ts_ns, stats, out);
                (c.stream, c.promise, c.end_stream)
            }
            None => {
                let promise = hdr.kind == frame::PUSH_PROMISE;
                self.header_block_lost(dir, hdr.stream, promise, ts_ns, stats, out);
                (hdr.stream, promise, hdr.flags & FLAG_END_STREAM != 0)
            }
        };
        if hdr.flags & FLAG_END_HEADERS == 0 {
            self.reader(dir).continuation = Some(Continuation {
                stream,
                end_stream,
                block: Vec::new(),
                overflowed: true,
                promise,
            });
        }
    }

    fn on_header_block(
        &mut self,
        dir: Direction,
        cont: Continuation,
        ts_ns: u64,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) {
        let reader = self.reader(dir);
        let decoded = reader.hpack.decode(&cont.block);
        reader.blocks_decoded += 1;
        let block = match decoded {
            Ok(block) => block,
            Err(_) => {
                // The table may now differ from the peer's: forget it.
                stats.malformed += 1;
                self.reader(dir).hpack.lose_state();
                if !cont.promise && self.streams.remove(&cont.stream).is_some() {
                    abort(
                        u64::from(cont.stream),
                        AbortReason::Malformed,
                        ts_ns,
                        stats,
                        out,
                    );
                }
                return;
            }
        };
        if block.unknown > 0 {
            stats.hpack_unknown += 1;
        }
        if cont.promise {
            return;
        }
        match dir {
            Direction::FromClient => {
                self.on_request_headers(cont.stream, cont.end_stream, block, ts_ns, stats, out)
            }
            Direction::FromServer => {
                self.on_response_headers(cont.stream, cont.end_stream, block, ts_ns, stats, out)
            }
        }
    }

    /// Bytes that are not valid HTTP/2: every open stream is aborted and the
    /// connection is no longer parsed.
    fn fail(&mut self, ts_ns: u64, stats: &mut ParseStats, out: &mut Vec<HttpEvent>) {
        stats.malformed += 1;
        self.abort_all(AbortReason::Malformed, ts_ns, stats, out);
        self.stopped = true;
    }

    fn abort_all(
        &mut self,
        reason: AbortReason,
        ts_ns: u64,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) {
        let mut ids: Vec<u32> = self.streams.keys().copied().collect();
        ids.sort_unstable();
        self.streams.clear();
        for id in ids {
            abort(u64::from(id), reason, ts_ns, stats, out);
        }
    }

    /// Lost bytes in one direction: streams still open on that side are
    /// aborted, HPACK state for it is forgotten, and parsing resumes at the
    /// next write that starts with a plausible frame header.
    pub fn gap(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        stats: &mut ParseStats,
        out: &mut Vec<HttpEvent>,
    ) {
        if self.stopped {
            return;
        }
        let mut ids: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| match dir {
                Direction::FromClient => !s.request_done,
                Direction::FromServer => !s.response_done,
            })
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            self.streams.remove(&id);
            abort(u64::from(id), AbortReason::Gap, ts_ns, stats, out);
        }
        let reader = self.reader(dir);
        reader.read = Read::Resync;
        reader.continuation = None;
        reader.hpack.lose_state();
    }

    pub fn close(&mut self, ts_ns: u64, stats: &mut ParseStats, out: &mut Vec<HttpEvent>) {
        if !self.stopped {
            self.abort_all(AbortReason::Closed, ts_ns, stats, out);
            self.stopped = true;
        }
    }
}

/// The header block fragment of a HEADERS or PUSH_PROMISE payload, without
/// padding, priority or promised stream id.
fn header_fragment<'a>(hdr: &FrameHeader, payload: &'a [u8]) -> Option<&'a [u8]> {
    let mut body = payload;
    let mut pad = 0usize;
    if hdr.flags & FLAG_PADDED != 0 {
        let (&p, rest) = body.split_first()?;
        pad = usize::from(p);
        body = rest;
    }
    let skip = if hdr.kind == frame::PUSH_PROMISE {
        4
    } else if hdr.flags & FLAG_PRIORITY != 0 {
        5
    } else {
        0
    };
    let body = body.get(skip..)?;
    body.get(..body.len().checked_sub(pad)?)
}
