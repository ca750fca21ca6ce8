//! HPACK header decoding (RFC 7541) with the dynamic table, Huffman strings
//! and table size updates.
//!
//! Hand-written rather than taken from a crate because a capture may start
//! mid-connection: the dynamic table's older entries are then unknown, and a
//! decoder must go on past a reference to one instead of failing the whole
//! block. The `hpack` crate is unmaintained since 2016 and `fluke-hpack` /
//! `httlib-hpack` fail the block on the first unknown index.
//!
//! Why this is sound: the dynamic table is a list of the newest entries, and
//! index `62 + k` is always the k-th newest. Entries inserted since we started
//! watching are therefore known exactly, whatever older entries exist. When
//! the state is unknown we keep at least as many of them as the peer's table
//! can hold (sizes of unknown names count as zero), so a known index never
//! names the wrong entry; anything beyond is reported as unknown.

use thiserror::Error;

use super::huffman;

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The default SETTINGS_HEADER_TABLE_SIZE (RFC 9113 §6.5.2).
pub const DEFAULT_TABLE_SIZE: usize = 4096;
const ENTRY_OVERHEAD: usize = 32;

/// A decoding error: the block is invalid and the table is no longer trustworthy.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum HpackError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("integer does not fit")]
    IntegerOverflow,
    #[error("index 0 or past the table")]
    BadIndex,
    #[error("invalid Huffman string")]
    Huffman,
    #[error("table size update above the allowed maximum")]
    SizeUpdateTooLarge,
    #[error("table size update after the first field")]
    SizeUpdateMisplaced,
    #[error("decoded header list passes its bound")]
    ListTooLarge,
}

/// One decoded field; `None` for a field that referenced an entry we never saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub value: String,
}

/// A decoded header block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Block {
    /// Known fields, in order.
    pub fields: Vec<Field>,
    /// Fields skipped because they referenced unknown table entries.
    pub unknown: usize,
    /// Unknown fields whose name was unknown too (so any header may be missing).
    pub unknown_names: usize,
}

#[derive(Debug, Clone)]
struct Entry {
    name: Option<String>,
    value: String,
}

impl Entry {
    fn size(&self) -> usize {
        self.name.as_ref().map_or(0, String::len) + self.value.len() + ENTRY_OVERHEAD
    }
}

/// The HPACK decoder of one direction of one connection.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Newest first.
    table: std::collections::VecDeque<Entry>,
    size: usize,
    max_size: usize,
    /// Largest size an update may set: the receiver's SETTINGS_HEADER_TABLE_SIZE.
    allowed_max: usize,
    /// Our own memory bound on the table.
    cap: usize,
    max_list: usize,
    /// False when entries older than what we saw may exist.
    complete: bool,
}

impl Decoder {
    /// A decoder that saw the connection from its start.
    pub fn new(cap: usize, max_list: usize) -> Self {
        Decoder {
            table: Default::default(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE.min(cap),
            allowed_max: DEFAULT_TABLE_SIZE.min(cap),
            cap,
            max_list,
            complete: true,
        }
    }

    /// A decoder for a connection picked up in the middle (or after state
    /// was lost): any entry not seen is unknown.
    pub fn new_unknown(cap: usize, max_list: usize) -> Self {
        Decoder {
            max_size: cap,
            allowed_max: cap,
            complete: false,
            ..Decoder::new(cap, max_list)
        }
    }

    /// A decoder whose peer agreed on a table size other than the default.
    pub fn with_table_size(size: usize, cap: usize, max_list: usize) -> Self {
        let size = size.min(cap);
        Decoder {
            max_size: size,
            allowed_max: size,
            ..Decoder::new(cap, max_list)
        }
    }

    /// Bytes the dynamic table holds (RFC 7541 §4.1), and its entry count.
    pub fn table_usage(&self) -> (usize, usize) {
        (self.size, self.table.len())
    }

    /// Whether the full table is known.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Forgets the table: after an error or a capture gap.
    pub fn lose_state(&mut self) {
        *self = Decoder::new_unknown(self.cap, self.max_list);
    }

    /// The largest table size an update may set now.
    pub fn allowed_max(&self) -> usize {
        self.allowed_max
    }

    /// Applies the peer's SETTINGS_HEADER_TABLE_SIZE bound (clamped to our cap).
    pub fn set_allowed_max(&mut self, value: u32) {
        let value = usize::try_from(value).unwrap_or(usize::MAX).min(self.cap);
        if self.complete {
            self.allowed_max = value;
        }
    }

    pub fn decode(&mut self, mut input: &[u8]) -> Result<Block, HpackError> {
        let mut block = Block::default();
        let mut list_size = 0usize;
        let mut fields_seen = false;
        while let Some(&first) = input.first() {
            if first & 0x80 != 0 {
                let index = read_int(&mut input, 7)?;
                fields_seen = true;
                match self.lookup(index)? {
                    (Some(name), Some(value)) => {
                        push(&mut block, &mut list_size, self.max_list, name, value)?
                    }
                    (name, _) => {
                        block.unknown += 1;
                        block.unknown_names += usize::from(name.is_none());
                    }
                }
            } else if first & 0x20 != 0 && first & 0x40 == 0 {
                if fields_seen {
                    return Err(HpackError::SizeUpdateMisplaced);
                }
                let size = read_int(&mut input, 5)?;
                if size > self.allowed_max {
                    return Err(HpackError::SizeUpdateTooLarge);
                }
                self.max_size = size;
                self.evict(0);
            } else {
                fields_seen = true;
                let (prefix, indexing) = if first & 0x40 != 0 {
                    (6, true)
                } else {
                    (4, false)
                };
                let name_index = read_int(&mut input, prefix)?;
                let name = if name_index == 0 {
                    Some(read_string(&mut input)?)
                } else {
                    self.lookup(name_index)?.0
                };
                let value = read_string(&mut input)?;
                if indexing {
                    self.insert(Entry {
                        name: name.clone(),
                        value: value.clone(),
                    });
                }
                match name {
                    Some(name) => push(&mut block, &mut list_size, self.max_list, name, value)?,
                    None => {
                        block.unknown += 1;
                        block.unknown_names += 1;
                    }
                }
            }
        }
        Ok(block)
    }

    /// Name and value of an index: `None` where the entry was never seen.
    fn lookup(&self, index: usize) -> Result<(Option<String>, Option<String>), HpackError> {
        if index == 0 {
            return Err(HpackError::BadIndex);
        }
        if let Some((name, value)) = STATIC_TABLE.get(index - 1) {
            return Ok((Some((*name).to_string()), Some((*value).to_string())));
        }
        match self.table.get(index - STATIC_TABLE.len() - 1) {
            Some(entry) => Ok((
                entry.name.clone(),
                entry.name.as_ref().map(|_| entry.value.clone()),
            )),
            None if self.complete => Err(HpackError::BadIndex),
            None => Ok((None, None)),
        }
    }

    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        if size > self.max_size {
            // RFC 7541 §4.4: an entry larger than the table empties it.
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front(entry);
    }

    fn evict(&mut self, incoming: usize) {
        while self.size + incoming > self.max_size {
            match self.table.pop_back() {
                Some(old) => self.size -= old.size(),
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }
}

fn push(
    block: &mut Block,
    list_size: &mut usize,
    max_list: usize,
    name: String,
    value: String,
) -> Result<(), HpackError> {
    *list_size += name.len() + value.len() + ENTRY_OVERHEAD;
    if *list_size > max_list {
        return Err(HpackError::ListTooLarge);
    }
    block.fields.push(Field { name, value });
    Ok(())
}

/// RFC 7541 §5.1 integer with an N-bit prefix.
fn read_int(input: &mut &[u8], prefix_bits: u8) -> Result<usize, HpackError> {
    let (&first, rest) = input.split_first().ok_or(HpackError::Truncated)?;
    *input = rest;
    let mask = (1u16 << prefix_bits) - 1;
    let mut value = usize::from(first) & usize::from(mask);
    if value < usize::from(mask) {
        return Ok(value);
    }
    let mut shift = 0u32;
    loop {
        let (&byte, rest) = input.split_first().ok_or(HpackError::Truncated)?;
        *input = rest;
        if shift > 28 {
            return Err(HpackError::IntegerOverflow);
        }
        value = value
            .checked_add(usize::from(byte & 0x7f) << shift)
            .ok_or(HpackError::IntegerOverflow)?;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// RFC 7541 §5.2 string literal.
fn read_string(input: &mut &[u8]) -> Result<String, HpackError> {
    let huffman_coded = input.first().is_some_and(|b| b & 0x80 != 0);
    let len = read_int(input, 7)?;
    if len > input.len() {
        return Err(HpackError::Truncated);
    }
    let (raw, rest) = input.split_at(len);
    *input = rest;
    let bytes = if huffman_coded {
        huffman::decode(raw).map_err(|_| HpackError::Huffman)?
    } else {
        raw.to_vec()
    };
    Ok(String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}
