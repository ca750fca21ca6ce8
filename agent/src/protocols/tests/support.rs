//! Helpers shared by the parser tests: fixture loading, feeding, and
//! turning events into comparable records.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

use crate::protocols::{Direction, HttpEvent, HttpParser, Limits, ParseStats};

#[derive(Deserialize)]
pub struct Fixture {
    #[expect(dead_code, reason = "read by people, not tests")]
    pub description: String,
    pub chunks: Vec<Chunk>,
    pub expect: Vec<Expected>,
}

#[derive(Deserialize)]
pub struct Chunk {
    pub dir: String,
    pub b64: String,
}

/// What the real server handled, recorded by `record.py`.
#[derive(Deserialize, Debug)]
pub struct Expected {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub request_body: String,
    /// `None` where the server's body is not known (nginx error page).
    pub response_body: Option<String>,
}

pub fn load(json: &str) -> Vec<(Direction, Vec<u8>)> {
    fixture(json).chunks.into_iter().map(decode_chunk).collect()
}

pub fn fixture(json: &str) -> Fixture {
    serde_json::from_str(json).expect("fixture is valid JSON")
}

pub fn decode_chunk(c: Chunk) -> (Direction, Vec<u8>) {
    let dir = match c.dir.as_str() {
        "client" => Direction::FromClient,
        "server" => Direction::FromServer,
        other => panic!("bad direction {other}"),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(c.b64)
        .expect("fixture chunk is base64");
    (dir, bytes)
}

/// Feeds chunks in order (timestamps = chunk index) and closes.
pub fn run(chunks: &[(Direction, Vec<u8>)]) -> (Vec<HttpEvent>, ParseStats) {
    let mut parser = HttpParser::new(Limits::default());
    let mut out = Vec::new();
    for (i, (dir, bytes)) in chunks.iter().enumerate() {
        parser.feed(*dir, i as u64, bytes, &mut out);
    }
    parser.close(u64::MAX, &mut out);
    (out, parser.stats().clone())
}

/// Events with timestamps zeroed and adjacent body pieces of one stream
/// merged, so that different chunkings of the same bytes compare equal.
pub fn normalize(events: &[HttpEvent]) -> Vec<HttpEvent> {
    crate::fuzzing::zero_times_and_join_bodies(events.to_vec(), &[])
}

/// One exchange as the events told it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Exchange {
    pub method: Option<String>,
    pub path: Option<String>,
    pub authority: Option<String>,
    pub status: Option<u16>,
    pub header_names: Vec<String>,
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    pub request_end: bool,
    pub response_end: bool,
    pub aborts: Vec<String>,
    pub trailer_names: Vec<String>,
}

pub fn exchanges(events: &[HttpEvent]) -> BTreeMap<u64, Exchange> {
    let mut map: BTreeMap<u64, Exchange> = BTreeMap::new();
    for e in events {
        match e {
            HttpEvent::Request { stream, head, .. } => {
                let x = map.entry(*stream).or_default();
                x.method = Some(head.method.clone());
                x.path = Some(head.path.clone());
                x.authority = head.authority.clone();
                x.header_names
                    .extend(head.headers.iter().map(|h| h.name.to_string()));
            }
            HttpEvent::RequestBody { stream, data, .. } => map
                .entry(*stream)
                .or_default()
                .request_body
                .extend_from_slice(data),
            HttpEvent::RequestEnd { stream, .. } => {
                map.entry(*stream).or_default().request_end = true
            }
            HttpEvent::Response { stream, head, .. } => {
                let x = map.entry(*stream).or_default();
                x.status = Some(head.status);
                x.header_names
                    .extend(head.headers.iter().map(|h| h.name.to_string()));
            }
            HttpEvent::ResponseBody { stream, data, .. } => map
                .entry(*stream)
                .or_default()
                .response_body
                .extend_from_slice(data),
            HttpEvent::ResponseEnd { stream, .. } => {
                map.entry(*stream).or_default().response_end = true
            }
            HttpEvent::Abort { stream, reason, .. } => map
                .entry(*stream)
                .or_default()
                .aborts
                .push(format!("{reason:?}")),
            HttpEvent::Trailers {
                stream, headers, ..
            } => map
                .entry(*stream)
                .or_default()
                .trailer_names
                .extend(headers.iter().map(|h| h.name.to_string())),
        }
    }
    map
}

/// Splits every chunk at the given cut points (positions within the chunk).
pub fn split(
    chunks: &[(Direction, Vec<u8>)],
    cuts: &mut dyn FnMut(usize) -> Vec<usize>,
) -> Vec<(Direction, Vec<u8>)> {
    let mut out = Vec::new();
    for (dir, bytes) in chunks {
        let mut points = cuts(bytes.len());
        points.retain(|p| *p > 0 && *p < bytes.len());
        points.sort_unstable();
        points.dedup();
        let mut start = 0;
        for p in points.into_iter().chain(std::iter::once(bytes.len())) {
            out.push((*dir, bytes[start..p].to_vec()));
            start = p;
        }
    }
    out
}
