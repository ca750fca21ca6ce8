//! Incremental `Content-Encoding` decoding (gzip, deflate, br, zstd) with a
//! bound on output: chunks go in as they arrive, decoded bytes come out, and
//! a body that grows past [`Limits::max_body`] or expands past the bomb ratio
//! is cut without ever holding more than the bound.

use std::io::{self, Write};

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use super::{AbortReason, Limits, ParseStats};

/// Why a body stopped being decoded.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    #[error("decoded body passed the per-message bound")]
    TooLarge,
    #[error("compressed body expanded past the decompression ratio bound")]
    Bomb,
    #[error("compressed body is not valid for its content-encoding")]
    Corrupt,
}

impl BodyError {
    /// Counts the failure in `stats` and gives the reason the message is aborted with.
    pub fn count(self, stats: &mut ParseStats) -> AbortReason {
        match self {
            BodyError::TooLarge => {
                stats.too_large += 1;
                AbortReason::TooLarge
            }
            BodyError::Bomb => {
                stats.decompression_bombs += 1;
                AbortReason::TooLarge
            }
            BodyError::Corrupt => {
                stats.malformed += 1;
                AbortReason::Malformed
            }
        }
    }
}

/// A `content-encoding` token we do not decode.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("unsupported content-encoding")]
pub struct UnsupportedEncoding;

/// Collects one stage's output up to `cap` bytes; writing past it fails and
/// sets `overflowed`, so a decoder can never grow memory past the bound.
#[derive(Default)]
struct Sink {
    buf: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.cap.saturating_sub(self.buf.len());
        if room == 0 && !data.is_empty() {
            self.overflowed = true;
            return Err(io::Error::other("decoded body bound reached"));
        }
        let n = data.len().min(room);
        self.buf
            .extend_from_slice(data.get(..n).unwrap_or_default());
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// zstd windows above 8 MiB are refused (RFC 8878 §3 advises this bound for HTTP).
const ZSTD_WINDOW_LOG_MAX: u32 = 23;
const BROTLI_BUFFER: usize = 4096;

enum Stage {
    Gzip(flate2::write::MultiGzDecoder<Sink>),
    /// `deflate` is zlib-wrapped per RFC 9110 but some servers send raw
    /// deflate; which one is told by the first two bytes.
    DeflateUndecided(Vec<u8>),
    Zlib(flate2::write::ZlibDecoder<Sink>),
    RawDeflate(flate2::write::DeflateDecoder<Sink>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Sink>>),
    Zstd(zstd::stream::write::Decoder<'static, Sink>),
}

impl Stage {
    fn sink(&mut self) -> Option<&mut Sink> {
        match self {
            Stage::Gzip(d) => Some(d.get_mut()),
            Stage::DeflateUndecided(_) => None,
            Stage::Zlib(d) => Some(d.get_mut()),
            Stage::RawDeflate(d) => Some(d.get_mut()),
            Stage::Brotli(d) => Some(d.get_mut()),
            Stage::Zstd(d) => Some(d.get_mut()),
        }
    }

    fn write_and_flush(&mut self, input: &[u8], cap: usize) -> io::Result<()> {
        if let Some(sink) = self.sink() {
            sink.cap = cap;
        }
        if let Stage::DeflateUndecided(head) = self {
            head.extend_from_slice(input);
            if head.len() < 2 {
                return Ok(());
            }
            let head = std::mem::take(head);
            *self = if looks_zlib(&head) {
                Stage::Zlib(flate2::write::ZlibDecoder::new(Sink::default()))
            } else {
                Stage::RawDeflate(flate2::write::DeflateDecoder::new(Sink::default()))
            };
            return self.write_and_flush(&head, cap);
        }
        match self {
            Stage::Gzip(d) => d.write_all(input).and_then(|()| d.flush()),
            Stage::Zlib(d) => d.write_all(input).and_then(|()| d.flush()),
            Stage::RawDeflate(d) => d.write_all(input).and_then(|()| d.flush()),
            Stage::Brotli(d) => d.write_all(input).and_then(|()| d.flush()),
            Stage::Zstd(d) => d.write_all(input).and_then(|()| d.flush()),
            Stage::DeflateUndecided(_) => Ok(()),
        }
    }

    fn finish(&mut self) -> io::Result<()> {
        match self {
            Stage::Gzip(d) => d.try_finish(),
            Stage::Zlib(d) => d.try_finish(),
            Stage::RawDeflate(d) => d.try_finish(),
            Stage::Brotli(d) => d.close(),
            Stage::Zstd(d) => d.flush(),
            Stage::DeflateUndecided(head) if head.is_empty() => Ok(()),
            Stage::DeflateUndecided(_) => Err(io::Error::other("truncated deflate stream")),
        }
    }
}

fn looks_zlib(head: &[u8]) -> bool {
    match head {
        [cmf, flg, ..] => cmf & 0x0f == 8 && (u16::from(*cmf) * 256 + u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

fn new_stage(token: &str) -> Result<Option<Stage>, UnsupportedEncoding> {
    Ok(Some(match token {
        "identity" | "" => return Ok(None),
        "gzip" | "x-gzip" => Stage::Gzip(flate2::write::MultiGzDecoder::new(Sink::default())),
        "deflate" => Stage::DeflateUndecided(Vec::new()),
        "br" => Stage::Brotli(Box::new(brotli_decompressor::DecompressorWriter::new(
            Sink::default(),
            BROTLI_BUFFER,
        ))),
        "zstd" => {
            let mut d = zstd::stream::write::Decoder::new(Sink::default())
                .map_err(|_| UnsupportedEncoding)?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|_| UnsupportedEncoding)?;
            Stage::Zstd(d)
        }
        _ => return Err(UnsupportedEncoding),
    }))
}

/// Decodes one message body.
pub struct BodyDecoder {
    /// Applied in order: the last coding listed in the header is undone first.
    stages: Vec<Stage>,
    max_body: u64,
    ratio: u64,
    bomb_floor: u64,
    compressed_in: u64,
    decoded_out: u64,
    /// Where decoded pieces are handed out from: once the consumer has
    /// dropped the previous piece its room is reused, so a stream of small
    /// writes does not allocate per write.
    out: BytesMut,
    /// One stage's output on its way to the next.
    carry: Vec<u8>,
    /// A piece was handed out already: later ones come from `out`.
    streamed: bool,
}

impl BodyDecoder {
    /// A decoder for a `content-encoding` header value (absent: identity).
    pub fn new(
        content_encoding: Option<&str>,
        limits: &Limits,
    ) -> Result<Self, UnsupportedEncoding> {
        let mut stages = Vec::new();
        if let Some(value) = content_encoding {
            let tokens: Vec<String> = value
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect();
            if tokens.len() > 4 {
                return Err(UnsupportedEncoding);
            }
            for token in tokens.iter().rev() {
                if let Some(stage) = new_stage(token)? {
                    stages.push(stage);
                }
            }
        }
        Ok(BodyDecoder {
            stages,
            max_body: limits.max_body as u64,
            ratio: limits.max_decompression_ratio,
            bomb_floor: limits.bomb_floor,
            compressed_in: 0,
            decoded_out: 0,
            out: BytesMut::new(),
            carry: Vec::new(),
            streamed: false,
        })
    }

    /// Whether any decoding happens (false for identity).
    pub fn is_identity(&self) -> bool {
        self.stages.is_empty()
    }

    /// The output bound for the next step and which error passing it means.
    fn bound(&self) -> (u64, BodyError) {
        let body_room = self.max_body.saturating_sub(self.decoded_out);
        if self.stages.is_empty() {
            return (body_room, BodyError::TooLarge);
        }
        let ratio_total = self
            .compressed_in
            .saturating_mul(self.ratio)
            .max(self.bomb_floor);
        let ratio_room = ratio_total.saturating_sub(self.decoded_out);
        if ratio_room < body_room {
            (ratio_room, BodyError::Bomb)
        } else {
            (body_room, BodyError::TooLarge)
        }
    }

    /// Decodes the next piece of the body.
    pub fn push(&mut self, input: &[u8]) -> Result<Bytes, BodyError> {
        self.compressed_in = self.compressed_in.saturating_add(input.len() as u64);
        self.run(Some(input))
    }

    /// Ends the body: flushes what decoders held back and checks the
    /// compressed stream was complete.
    pub fn finish(&mut self) -> Result<Bytes, BodyError> {
        self.run(None)
    }

    fn run(&mut self, input: Option<&[u8]>) -> Result<Bytes, BodyError> {
        let (room, over) = self.bound();
        let cap = usize::try_from(room).unwrap_or(usize::MAX);
        if self.stages.is_empty() {
            let data = input.unwrap_or_default();
            if data.len() > cap {
                return Err(over);
            }
            self.decoded_out += data.len() as u64;
            return Ok(self.hand_out(data));
        }
        let mut from_input = true;
        for stage in &mut self.stages {
            let piece: &[u8] = if from_input {
                input.unwrap_or_default()
            } else {
                &self.carry
            };
            let result = match input {
                Some(_) => stage.write_and_flush(piece, cap),
                None => {
                    let fed = if piece.is_empty() {
                        Ok(())
                    } else {
                        stage.write_and_flush(piece, cap)
                    };
                    fed.and_then(|()| {
                        if let Some(sink) = stage.sink() {
                            sink.cap = cap;
                        }
                        stage.finish()
                    })
                }
            };
            from_input = false;
            let sink = stage.sink();
            let overflowed = sink.as_ref().is_some_and(|s| s.overflowed);
            // The stage's output becomes the carry; the old carry's room
            // becomes the stage's next output buffer.
            match sink {
                Some(sink) => {
                    std::mem::swap(&mut self.carry, &mut sink.buf);
                    sink.buf.clear();
                }
                None => self.carry.clear(),
            }
            match result {
                Ok(()) => {}
                Err(_) if overflowed => return Err(over),
                Err(_) => return Err(BodyError::Corrupt),
            }
        }
        if self.carry.len() > cap {
            return Err(over);
        }
        self.decoded_out += self.carry.len() as u64;
        let carry = std::mem::take(&mut self.carry);
        let piece = self.hand_out(&carry);
        self.carry = carry;
        self.carry.clear();
        Ok(piece)
    }

    /// `data` as a shared piece of `out`.
    fn hand_out(&mut self, data: &[u8]) -> Bytes {
        if data.is_empty() {
            return Bytes::new();
        }
        if !self.streamed {
            // A body in one piece (most JSON) needs no buffer of its own.
            self.streamed = true;
            return Bytes::copy_from_slice(data);
        }
        // Reclaims the whole buffer when the pieces handed out before are gone.
        self.out.reserve(data.len());
        self.out.extend_from_slice(data);
        self.out.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn decode_in_pieces(
        enc: Option<&str>,
        data: &[u8],
        piece: usize,
        limits: &Limits,
    ) -> Result<Vec<u8>, BodyError> {
        let mut d = BodyDecoder::new(enc, limits).unwrap();
        let mut out = Vec::new();
        for chunk in data.chunks(piece.max(1)) {
            out.extend_from_slice(&d.push(chunk)?);
        }
        out.extend_from_slice(&d.finish()?);
        Ok(out)
    }

    #[test]
    fn every_coding_round_trips_byte_by_byte() {
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("data: {i}\n\n").into_bytes())
            .collect();
        let limits = Limits::default();
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zlib.write_all(&text).unwrap();
        let zlib = zlib.finish().unwrap();
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        raw.write_all(&text).unwrap();
        let raw = raw.finish().unwrap();
        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            w.write_all(&text).unwrap();
        }
        let zst = zstd::stream::encode_all(&text[..], 3).unwrap();
        let gz_then_br = {
            let mut out = Vec::new();
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(&gzip(&text)).unwrap();
            drop(w);
            out
        };
        for (enc, data) in [
            ("gzip", gzip(&text)),
            ("deflate", zlib),
            ("deflate", raw),
            ("br", br),
            ("zstd", zst),
            ("gzip, br", gz_then_br),
        ] {
            for piece in [1, 7, 4096] {
                let got = decode_in_pieces(Some(enc), &data, piece, &limits).unwrap();
                assert!(got == text, "{enc} in pieces of {piece}");
            }
        }
    }

    #[test]
    fn gzip_bomb_is_cut_and_bounded() {
        let zeros = vec![0u8; 64 * 1024 * 1024];
        let bomb = gzip(&zeros);
        assert!(bomb.len() < 100_000, "test bomb is small: {}", bomb.len());
        let limits = Limits::default();
        let mut d = BodyDecoder::new(Some("gzip"), &limits).unwrap();
        let mut total = 0usize;
        let mut err = None;
        for chunk in bomb.chunks(16 * 1024) {
            match d.push(chunk) {
                Ok(b) => total += b.len(),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert_eq!(err, Some(BodyError::Bomb));
        let bound = (bomb.len() as u64 * limits.max_decompression_ratio).max(limits.bomb_floor);
        assert!(total as u64 <= bound, "emitted {total} > bound {bound}");
    }

    #[test]
    fn identity_past_max_body_is_too_large() {
        let limits = Limits {
            max_body: 10,
            ..Limits::default()
        };
        assert_eq!(
            decode_in_pieces(None, b"0123456789", 3, &limits),
            Ok(b"0123456789".to_vec())
        );
        assert_eq!(
            decode_in_pieces(None, b"0123456789a", 3, &limits),
            Err(BodyError::TooLarge)
        );
    }

    #[test]
    fn corrupt_and_truncated_data_is_an_error() {
        let limits = Limits::default();
        assert_eq!(
            decode_in_pieces(Some("gzip"), b"not gzip at all", 4, &limits),
            Err(BodyError::Corrupt)
        );
        let gz = gzip(b"hello world hello world");
        assert_eq!(
            decode_in_pieces(Some("gzip"), &gz[..gz.len() - 6], 4, &limits),
            Err(BodyError::Corrupt)
        );
        assert_eq!(
            decode_in_pieces(Some("zstd"), b"\x28\xb5\x2f\xfdgarbage!!", 4, &limits),
            Err(BodyError::Corrupt)
        );
        assert_eq!(
            decode_in_pieces(Some("br"), &[0xff; 32], 4, &limits),
            Err(BodyError::Corrupt)
        );
        assert!(BodyDecoder::new(Some("compress"), &limits).is_err());
    }
}
