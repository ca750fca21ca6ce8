//! Incremental Server-Sent Events parser (WHATWG `text/event-stream`).
//!
//! Bytes may arrive split anywhere, including between the CR and LF of one
//! line ending. Every event is bounded: an event larger than the bound is
//! counted and skipped up to its terminating blank line, and the events
//! around it are unaffected. Because the bound is checked against the running
//! size of the event (not of a chunk), the result does not depend on how the
//! bytes were split.

use memchr::memchr2;

/// Longest `event:` name kept; longer names mark the event oversized.
const MAX_EVENT_NAME: usize = 128;

/// One dispatched event. `data` is the `data:` lines joined with `\n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field, empty when absent.
    pub event: &'a str,
    pub data: &'a [u8],
}

#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the current line when it spans chunks.
    line: Vec<u8>,
    data: Vec<u8>,
    event: String,
    has_data: bool,
    /// The rest of the current line is dropped (the event went past its bound).
    skip_line: bool,
    /// The current event went past its bound; it is dropped at its blank line.
    oversized: bool,
    /// The previous chunk ended with CR: a leading LF completes that line ending.
    pending_cr: bool,
    /// Nothing but a possible byte-order mark has been seen yet.
    at_start: bool,
    max_event: usize,
    oversized_events: u64,
}

impl SseParser {
    /// `max_event` bounds the bytes of one event (all its lines together).
    pub fn new(max_event: usize) -> Self {
        SseParser {
            line: Vec::new(),
            data: Vec::new(),
            event: String::new(),
            has_data: false,
            skip_line: false,
            oversized: false,
            pending_cr: false,
            at_start: true,
            max_event,
            oversized_events: 0,
        }
    }

    /// Events dropped because they went past the bound.
    pub fn oversized_events(&self) -> u64 {
        self.oversized_events
    }

    /// Feeds one chunk, calling `on_event` for every event it completes.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(SseEvent<'_>)) {
        let mut rest = chunk;
        if self.at_start {
            // A UTF-8 BOM may open the stream; it may itself be split.
            const BOM: &[u8] = b"\xEF\xBB\xBF";
            let have = self.line.len();
            let want = BOM.get(have..).unwrap_or_default();
            let n = want.len().min(rest.len());
            if rest.get(..n) == want.get(..n) && n > 0 {
                if n < want.len() {
                    self.line.extend_from_slice(rest);
                    return;
                }
                self.line.clear();
                rest = rest.get(n..).unwrap_or_default();
                self.at_start = false;
            } else if !rest.is_empty() {
                // Not a BOM after all: whatever was held back is line content.
                self.at_start = false;
            } else {
                return;
            }
        }
        if self.pending_cr && !rest.is_empty() {
            self.pending_cr = false;
            if rest.first() == Some(&b'\n') {
                rest = rest.get(1..).unwrap_or_default();
            }
        }
        while !rest.is_empty() {
            let Some(i) = memchr2(b'\n', b'\r', rest) else {
                self.push_partial(rest);
                break;
            };
            let part = rest.get(..i).unwrap_or_default();
            let was_cr = rest.get(i) == Some(&b'\r');
            rest = rest.get(i + 1..).unwrap_or_default();
            if was_cr {
                match rest.first() {
                    Some(b'\n') => rest = rest.get(1..).unwrap_or_default(),
                    None => self.pending_cr = true,
                    Some(_) => {}
                }
            }
            if self.line.is_empty() && !self.skip_line {
                self.check_bound(part.len());
                if self.skip_line {
                    self.skip_line = false;
                } else {
                    self.process_line(part, &mut on_event);
                }
            } else {
                self.push_partial(part);
                if self.skip_line {
                    self.skip_line = false;
                } else {
                    let line = std::mem::take(&mut self.line);
                    self.process_line(&line, &mut on_event);
                    self.line = line;
                    self.line.clear();
                }
            }
        }
    }

    /// Ends the stream. Per the specification an event without its
    /// terminating blank line is discarded; the parser is ready for reuse.
    pub fn finish(&mut self) {
        self.line.clear();
        self.reset_event();
        self.skip_line = false;
        self.pending_cr = false;
        self.at_start = true;
    }

    fn check_bound(&mut self, extra: usize) {
        if self.skip_line {
            return;
        }
        let size = self
            .data
            .len()
            .saturating_add(self.line.len())
            .saturating_add(extra);
        if size > self.max_event {
            self.oversized = true;
            self.skip_line = true;
            self.line.clear();
            self.data = Vec::new();
        }
    }

    fn push_partial(&mut self, part: &[u8]) {
        self.check_bound(part.len());
        if !self.skip_line {
            self.line.extend_from_slice(part);
        }
    }

    fn process_line(&mut self, line: &[u8], on_event: &mut impl FnMut(SseEvent<'_>)) {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if self.oversized || line.first() == Some(&b':') {
            return;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(c) => {
                let value = line.get(c + 1..).unwrap_or_default();
                let value = value.strip_prefix(b" ").unwrap_or(value);
                (line.get(..c).unwrap_or_default(), value)
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
                if self.data.len() > self.max_event {
                    self.oversized = true;
                    self.data = Vec::new();
                }
            }
            b"event" => match std::str::from_utf8(value) {
                Ok(name) if name.len() <= MAX_EVENT_NAME => {
                    self.event.clear();
                    self.event.push_str(name);
                }
                _ => self.oversized = true,
            },
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(SseEvent<'_>)) {
        if self.oversized {
            self.oversized_events = self.oversized_events.saturating_add(1);
        } else if self.has_data {
            on_event(SseEvent {
                event: &self.event,
                data: &self.data,
            });
        }
        self.reset_event();
    }

    fn reset_event(&mut self) {
        self.data.clear();
        self.event.clear();
        self.has_data = false;
        self.oversized = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]], max: usize) -> (Vec<(String, Vec<u8>)>, u64) {
        let mut p = SseParser::new(max);
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, |e| out.push((e.event.to_string(), e.data.to_vec())));
        }
        (out, p.oversized_events())
    }

    fn all_splits(input: &[u8], max: usize) -> (Vec<(String, Vec<u8>)>, u64) {
        let whole = parse_chunks(&[input], max);
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let (a, rest) = input.split_at(i);
                let (b, c) = rest.split_at(j - i);
                assert_eq!(parse_chunks(&[a, b, c], max), whole, "split at {i},{j}");
            }
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(parse_chunks(&bytes, max), whole, "byte by byte");
        whole
    }

    #[test]
    fn line_endings_comments_multiline_and_event_names() {
        let input =
            b"\xEF\xBB\xBF: comment\r\nevent: ping\rdata: a\r\ndata:b\n\ndata\n\nid: 7\nretry: 5\ndata: {\"x\":1}\r\n\r\n";
        let (events, over) = all_splits(input, 1 << 20);
        assert_eq!(over, 0);
        assert_eq!(
            events,
            vec![
                ("ping".to_string(), b"a\nb".to_vec()),
                (String::new(), Vec::new()),
                (String::new(), b"{\"x\":1}".to_vec()),
            ]
        );
    }

    #[test]
    fn oversized_event_is_skipped_and_counted_the_same_for_any_split() {
        let input =
            b"data: small\n\ndata: 0123456789abcdef\ndata: more\n\nevent: e\ndata: after\n\n";
        let (events, over) = all_splits(input, 12);
        assert_eq!(over, 1);
        assert_eq!(
            events,
            vec![
                (String::new(), b"small".to_vec()),
                ("e".to_string(), b"after".to_vec()),
            ]
        );
    }

    #[test]
    fn event_without_blank_line_at_end_is_discarded() {
        let mut p = SseParser::new(100);
        let mut n = 0;
        p.feed(b"data: x\n", |_| n += 1);
        p.finish();
        p.feed(b"\n", |_| n += 1);
        assert_eq!(n, 0);
    }

    #[test]
    fn event_name_resets_between_events() {
        let (events, _) = all_splits(b"event: a\ndata: 1\n\ndata: 2\n\n", 100);
        assert_eq!(events.get(1).map(|e| e.0.as_str()), Some(""));
    }
}
