//! The HTTP/1.1 parser's free helpers: body delivery and ends, trailers,
//! framing from the headers, head and chunk-line scanning.

use super::*;

/// Sends decoded body bytes as an event, or aborts the message on error.
pub(super) fn deliver(
    body: &mut BodyState,
    dir: Direction,
    data: &[u8],
    ts_ns: u64,
    stats: &mut ParseStats,
    out: &mut Vec<HttpEvent>,
) {
    if !body.reported || data.is_empty() {
        return;
    }
    let Some(decoder) = &mut body.decoder else {
        return;
    };
    match decoder.push(data) {
        Ok(decoded) if decoded.is_empty() => {}
        Ok(data) => out.push(body_event(dir, body.stream, data, ts_ns)),
        Err(e) => fail_body(body, e, ts_ns, stats, out),
    }
}

pub(super) fn finish_body(
    body: &mut BodyState,
    dir: Direction,
    ts_ns: u64,
    stats: &mut ParseStats,
    out: &mut Vec<HttpEvent>,
) {
    if !body.reported {
        return;
    }
    if let Some(decoder) = &mut body.decoder {
        match decoder.finish() {
            Ok(rest) => {
                if !rest.is_empty() {
                    out.push(body_event(dir, body.stream, rest, ts_ns));
                }
            }
            Err(e) => {
                fail_body(body, e, ts_ns, stats, out);
                return;
            }
        }
    }
    let stream = body.stream;
    if !body.trailers.is_empty() {
        out.push(HttpEvent::Trailers {
            stream,
            from: dir,
            headers: std::mem::take(&mut body.trailers),
            ts_ns,
        });
    }
    out.push(match dir {
        Direction::FromClient => HttpEvent::RequestEnd { stream, ts_ns },
        Direction::FromServer => HttpEvent::ResponseEnd { stream, ts_ns },
    });
}

/// Adds one trailer line to `trailers` (a credential is dropped); `false`
/// when it is not `name: value`.
pub(super) fn push_trailer_field(trailers: &mut Headers, line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|b| *b == b':') else {
        return false;
    };
    let (Some(name), Some(value)) = (line.get(..colon), line.get(colon + 1..)) else {
        return false;
    };
    let token = |b: &u8| b.is_ascii_graphic() && !b"\"(),/:;<=>?@[\\]{}".contains(b);
    if name.is_empty() || !name.iter().all(token) {
        return false;
    }
    // A token is ASCII, so always UTF-8.
    let Ok(name) = std::str::from_utf8(name) else {
        return false;
    };
    if !is_credential_header(name) {
        trailers.push_bytes(name, value.trim_ascii());
    }
    true
}

pub(super) fn fail_body(
    body: &mut BodyState,
    e: BodyError,
    ts_ns: u64,
    stats: &mut ParseStats,
    out: &mut Vec<HttpEvent>,
) {
    let reason = e.count(stats);
    body.decoder = None;
    body.reported = false;
    abort(body.stream, reason, ts_ns, stats, out);
}

pub(super) fn body_event(dir: Direction, stream: u64, data: bytes::Bytes, ts_ns: u64) -> HttpEvent {
    match dir {
        Direction::FromClient => HttpEvent::RequestBody {
            stream,
            data,
            ts_ns,
        },
        Direction::FromServer => HttpEvent::ResponseBody {
            stream,
            data,
            ts_ns,
        },
    }
}

/// Body framing from the headers (RFC 9112 §6.3): `Ok(None)` when neither
/// Transfer-Encoding nor Content-Length is present.
pub(super) fn body_framing(
    headers: &[httparse::Header<'_>],
    response: bool,
) -> Result<Option<Framing>, ()> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoded = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoded = true;
            let text = std::str::from_utf8(h.value).map_err(|_| ())?;
            chunked = text
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value).map_err(|_| ())?;
            for part in text.split(',') {
                let n: u64 = part.trim().parse().map_err(|_| ())?;
                if length.is_some_and(|l| l != n) {
                    return Err(());
                }
                length = Some(n);
            }
        }
    }
    if transfer_encoded {
        return match (chunked, response) {
            (true, _) => Ok(Some(Framing::Chunked(Chunk::SizeLine))),
            (false, true) => Ok(Some(Framing::UntilClose)),
            (false, false) => Err(()),
        };
    }
    Ok(length.map(Framing::Length))
}

/// Whether `buf` holds a line end that may end a head (`\n\n` or `\n\r`).
pub(super) fn has_head_end(buf: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', buf).any(|i| matches!(buf.get(i + 1), Some(b'\n' | b'\r')))
}

/// Headers to report (credentials dropped, names lower-case), the `Host`
/// value and the `Content-Encoding` value. `head` holds the whole head the
/// fields were parsed from.
pub(super) fn keep_headers<'h>(
    head: &'h [u8],
    headers: &[httparse::Header<'h>],
) -> (Headers, Option<Cow<'h, str>>, Option<String>) {
    // One UTF-8 check of the whole head instead of one per value: a value
    // is then sliced out of it by its place in the head.
    let head_text = std::str::from_utf8(head).ok();
    let head_start = head.as_ptr() as usize;
    let text: usize = headers.iter().map(|h| h.name.len() + h.value.len()).sum();
    let mut kept = Headers::with_capacity(headers.len(), text);
    let mut host = None;
    let mut encoding: Option<String> = None;
    for h in headers {
        if is_credential_header(h.name) {
            continue;
        }
        let value: Cow<'h, str> = match head_text.and_then(|t| {
            let at = (h.value.as_ptr() as usize).checked_sub(head_start)?;
            t.get(at..at.checked_add(h.value.len())?)
        }) {
            Some(text) => Cow::Borrowed(text),
            None => String::from_utf8_lossy(h.value),
        };
        kept.push(h.name, &value);
        if h.name.eq_ignore_ascii_case("host") {
            host = Some(value);
        } else if h.name.eq_ignore_ascii_case("content-encoding") {
            encoding = Some(match encoding {
                Some(prev) => format!("{prev}, {value}"),
                None => value.into_owned(),
            });
        }
    }
    (kept, host, encoding)
}

pub(super) fn chunk_size(line: &[u8]) -> Option<u64> {
    let end = line.iter().position(|b| *b == b';').unwrap_or(line.len());
    let digits = std::str::from_utf8(line.get(..end)?).ok()?.trim();
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// Where the next request line (client) or status line (server) starts.
pub(super) fn find_message_start(dir: Direction, buf: &[u8]) -> Option<usize> {
    let at_line_start = |i: usize| i == 0 || buf.get(i - 1) == Some(&b'\n');
    (0..buf.len()).find(|&i| {
        if !at_line_start(i) {
            return false;
        }
        let rest = buf.get(i..).unwrap_or_default();
        match dir {
            Direction::FromServer => rest.starts_with(b"HTTP/1."),
            Direction::FromClient => matches!(
                crate::protocols::detect::sniff(rest.get(..rest.len().min(24)).unwrap_or_default()),
                crate::protocols::Sniff::LooksHttp1Request
            ),
        }
    })
}
