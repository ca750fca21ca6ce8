//! Framings of streamed JSON: newline-delimited JSON (Ollama) and the
//! top-level JSON array that Gemini streams without `alt=sse`.
//!
//! Both are incremental and bounded: an item past the bound is counted and
//! skipped without disturbing the items around it, whatever the chunking.

use memchr::memchr;

/// Splits a byte stream into non-empty lines (LF or CRLF).
#[derive(Debug)]
pub struct LineSplitter {
    line: Vec<u8>,
    skip: bool,
    max_line: usize,
    oversized: u64,
}

impl LineSplitter {
    pub fn new(max_line: usize) -> Self {
        LineSplitter {
            line: Vec::new(),
            skip: false,
            max_line,
            oversized: 0,
        }
    }

    /// Lines dropped because they went past the bound.
    pub fn oversized(&self) -> u64 {
        self.oversized
    }

    pub fn feed(&mut self, chunk: &[u8], mut on_line: impl FnMut(&[u8])) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let Some(i) = memchr(b'\n', rest) else {
                self.push(rest);
                break;
            };
            let part = rest.get(..i).unwrap_or_default();
            rest = rest.get(i + 1..).unwrap_or_default();
            if self.line.is_empty() && !self.skip {
                if part.len() > self.max_line {
                    self.oversized = self.oversized.saturating_add(1);
                } else {
                    emit(part, &mut on_line);
                }
            } else {
                self.push(part);
                self.end_line(&mut on_line);
            }
        }
    }

    /// Ends the stream: a last line without its newline still counts.
    pub fn finish(&mut self, mut on_line: impl FnMut(&[u8])) {
        if !self.line.is_empty() || self.skip {
            self.end_line(&mut on_line);
        }
    }

    fn push(&mut self, part: &[u8]) {
        if self.skip {
            return;
        }
        if self.line.len().saturating_add(part.len()) > self.max_line {
            self.skip = true;
            self.line = Vec::new();
        } else {
            self.line.extend_from_slice(part);
        }
    }

    fn end_line(&mut self, on_line: &mut impl FnMut(&[u8])) {
        if self.skip {
            self.skip = false;
            self.oversized = self.oversized.saturating_add(1);
        } else {
            emit(&self.line, on_line);
        }
        self.line.clear();
    }
}

fn emit(line: &[u8], on_line: &mut impl FnMut(&[u8])) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().any(|b| !b.is_ascii_whitespace()) {
        on_line(line);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArrayState {
    /// Before the opening `[`.
    Start,
    /// Between elements.
    Between,
    /// Inside an element.
    Element,
    /// After the closing `]`, or the input is not an array.
    Done,
}

/// Splits a top-level JSON array, arriving in pieces, into its elements.
#[derive(Debug)]
pub struct JsonArraySplitter {
    state: ArrayState,
    element: Vec<u8>,
    depth: u32,
    in_string: bool,
    escaped: bool,
    skip: bool,
    closed: bool,
    max_element: usize,
    oversized: u64,
}

impl JsonArraySplitter {
    pub fn new(max_element: usize) -> Self {
        JsonArraySplitter {
            state: ArrayState::Start,
            element: Vec::new(),
            depth: 0,
            in_string: false,
            escaped: false,
            skip: false,
            closed: false,
            max_element,
            oversized: 0,
        }
    }

    pub fn oversized(&self) -> u64 {
        self.oversized
    }

    /// True once the closing `]` was seen.
    pub fn closed(&self) -> bool {
        self.closed
    }

    pub fn feed(&mut self, chunk: &[u8], mut on_element: impl FnMut(&[u8])) {
        let mut i = 0;
        while let Some(&b) = chunk.get(i) {
            match self.state {
                ArrayState::Done => return,
                ArrayState::Start => {
                    i += 1;
                    if b == b'[' {
                        self.state = ArrayState::Between;
                    } else if !b.is_ascii_whitespace() {
                        self.state = ArrayState::Done;
                    }
                }
                ArrayState::Between => {
                    if b == b']' {
                        self.state = ArrayState::Done;
                        self.closed = true;
                        i += 1;
                    } else if b == b',' || b.is_ascii_whitespace() {
                        i += 1;
                    } else {
                        self.state = ArrayState::Element;
                        self.depth = 0;
                        self.in_string = false;
                        self.escaped = false;
                    }
                }
                ArrayState::Element => {
                    let rest = chunk.get(i..).unwrap_or_default();
                    let (used, end) = self.scan(rest);
                    self.keep(rest.get(..used).unwrap_or_default());
                    i += used;
                    if end {
                        self.end_element(&mut on_element);
                        self.state = ArrayState::Between;
                    }
                }
            }
        }
    }

    /// Scans element bytes; returns how many belong to the element and
    /// whether the element ended (the terminator is not consumed).
    fn scan(&mut self, bytes: &[u8]) -> (usize, bool) {
        let mut i = 0;
        while i < bytes.len() {
            if self.in_string {
                let rest = bytes.get(i..).unwrap_or_default();
                if self.escaped {
                    self.escaped = false;
                    i += 1;
                    continue;
                }
                match memchr::memchr2(b'"', b'\\', rest) {
                    None => return (bytes.len(), false),
                    Some(j) => {
                        if rest.get(j) == Some(&b'\\') {
                            self.escaped = true;
                        } else {
                            self.in_string = false;
                        }
                        i += j + 1;
                    }
                }
                continue;
            }
            let rest = bytes.get(i..).unwrap_or_default();
            let at_top = self.depth == 0;
            let next = rest.iter().position(|&c| {
                matches!(c, b'"' | b'{' | b'[' | b'}' | b']') || (at_top && c == b',')
            });
            let Some(j) = next else {
                return (bytes.len(), false);
            };
            let c = rest.get(j).copied().unwrap_or(b' ');
            match c {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth = self.depth.saturating_add(1),
                b'}' | b']' if self.depth > 0 => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        // An object or array element ends at its closing
                        // bracket: emit it now rather than at the next comma.
                        return (i + j + 1, true);
                    }
                }
                b',' | b']' => return (i + j, true),
                // A stray `}` at the top: malformed, kept as element bytes.
                _ => {}
            }
            i += j + 1;
        }
        (bytes.len(), false)
    }

    fn keep(&mut self, bytes: &[u8]) {
        if self.skip {
            return;
        }
        if self.element.len().saturating_add(bytes.len()) > self.max_element {
            self.skip = true;
            self.element = Vec::new();
        } else {
            self.element.extend_from_slice(bytes);
        }
    }

    fn end_element(&mut self, on_element: &mut impl FnMut(&[u8])) {
        if self.skip {
            self.skip = false;
            self.oversized = self.oversized.saturating_add(1);
        } else {
            let trimmed = self.element.trim_ascii_end();
            if !trimmed.is_empty() {
                on_element(trimmed);
            }
        }
        self.element.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]], max: usize) -> (Vec<Vec<u8>>, u64) {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |l| out.push(l.to_vec()));
        }
        s.finish(|l| out.push(l.to_vec()));
        (out, s.oversized())
    }

    fn elements(chunks: &[&[u8]], max: usize) -> (Vec<Vec<u8>>, u64, bool) {
        let mut s = JsonArraySplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |l| out.push(l.to_vec()));
        }
        (out, s.oversized(), s.closed())
    }

    #[test]
    fn lines_split_anywhere_give_the_same_lines() {
        let input = b"{\"a\":1}\r\n\n{\"b\":\"0123456789012345\"}\n{\"c\":3}";
        let whole = lines(&[input], 16);
        assert_eq!(whole.0, vec![b"{\"a\":1}".to_vec(), b"{\"c\":3}".to_vec()]);
        assert_eq!(whole.1, 1);
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let (a, rest) = input.split_at(i);
                let (b, c) = rest.split_at(j - i);
                assert_eq!(lines(&[a, b, c], 16), whole, "split {i},{j}");
            }
        }
    }

    #[test]
    fn array_elements_split_anywhere_give_the_same_elements() {
        let input = b" [{\"a\":\"x],}\\\"\"}\r\n,\r\n{\"b\":[1,{\"c\":2}]} , {\"long\":\"0123456789abcdefghij\"},{\"d\":4}]";
        let whole = elements(&[input], 24);
        assert_eq!(
            whole.0,
            vec![
                b"{\"a\":\"x],}\\\"\"}".to_vec(),
                b"{\"b\":[1,{\"c\":2}]}".to_vec(),
                b"{\"d\":4}".to_vec()
            ]
        );
        assert_eq!((whole.1, whole.2), (1, true));
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let (a, rest) = input.split_at(i);
                let (b, c) = rest.split_at(j - i);
                assert_eq!(elements(&[a, b, c], 24), whole, "split {i},{j}");
            }
        }
    }

    #[test]
    fn not_an_array_yields_nothing() {
        assert_eq!(elements(&[b"{\"a\":1}"], 100).0.len(), 0);
    }
}
