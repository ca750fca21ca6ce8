//! Telling HTTP/1.1, HTTP/2 and other bytes apart from the first bytes of a
//! direction. Used by [`super::HttpParser`] and by the stream layer.

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a direction look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniff {
    LooksHttp1Request,
    LooksHttp1Response,
    /// The client preface, or a valid HTTP/2 frame header (capture started
    /// mid-connection).
    LooksHttp2,
    NotHttp,
    /// Too few bytes to tell.
    NeedMore,
}

const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"PATCH ",
    b"HEAD ",
    b"OPTIONS ",
    b"CONNECT ",
    b"TRACE ",
];

const RESPONSE_START: &[u8] = b"HTTP/1.";

/// Classifies the first bytes of one direction of a connection.
pub fn sniff(first_bytes: &[u8]) -> Sniff {
    if first_bytes.is_empty() {
        return Sniff::NeedMore;
    }
    let mut need_more = false;
    for candidate in [PREFACE, RESPONSE_START].iter().chain(METHODS.iter()) {
        if first_bytes.starts_with(candidate) {
            return if *candidate == PREFACE {
                Sniff::LooksHttp2
            } else if *candidate == RESPONSE_START {
                Sniff::LooksHttp1Response
            } else {
                Sniff::LooksHttp1Request
            };
        }
        if candidate.starts_with(first_bytes) {
            need_more = true;
        }
    }
    match first_bytes.get(..FRAME_HEADER_LEN) {
        Some(header) => {
            if FrameHeader::parse(header).is_some_and(|h| h.plausible()) {
                return Sniff::LooksHttp2;
            }
        }
        None => {
            if first_bytes.len() >= 4 && first_bytes.get(3).is_some_and(|t| *t <= 9) {
                need_more = true;
            }
        }
    }
    if need_more {
        Sniff::NeedMore
    } else {
        Sniff::NotHttp
    }
}

pub(crate) const FRAME_HEADER_LEN: usize = 9;

/// An HTTP/2 frame header (RFC 9113 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub length: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

pub(crate) mod frame {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

impl FrameHeader {
    pub fn parse(bytes: &[u8]) -> Option<FrameHeader> {
        let b: &[u8; FRAME_HEADER_LEN] = bytes.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
        Some(FrameHeader {
            length: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        })
    }

    /// Strict checks used only to recognise a connection picked up in the
    /// middle: a known frame type, the stream id that type requires, the
    /// fixed length of fixed-size frames and no more than the default
    /// SETTINGS_MAX_FRAME_SIZE.
    pub fn plausible(&self) -> bool {
        use frame::*;
        if self.length > 16_384 {
            return false;
        }
        match self.kind {
            DATA | HEADERS | CONTINUATION => self.stream != 0,
            PRIORITY => self.stream != 0 && self.length == 5,
            RST_STREAM => self.stream != 0 && self.length == 4,
            SETTINGS => {
                self.stream == 0
                    && self.length.is_multiple_of(6)
                    && (self.flags & 0x1 == 0 || self.length == 0)
            }
            PING => self.stream == 0 && self.length == 8,
            GOAWAY => self.stream == 0 && self.length >= 8,
            WINDOW_UPDATE => self.length == 4,
            _ => false,
        }
    }
}
