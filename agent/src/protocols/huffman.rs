//! The HPACK Huffman code (RFC 7541 Appendix B). The code is canonical
//! (codes of one length are consecutive, in symbol order), so the code
//! lengths alone define it; the decoder walks it bit by bit with the
//! per-length first code, as in any canonical Huffman decoder.

/// Code length in bits of each symbol 0..=255 and EOS (256), from RFC 7541 Appendix B.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const MAX_LEN: usize = 30;
const EOS: u16 = 256;

struct Canonical {
    /// Symbols ordered by (code length, symbol).
    sorted: [u16; 257],
    /// First code of each length.
    first: [u32; MAX_LEN + 1],
    /// Number of codes of each length.
    count: [u32; MAX_LEN + 1],
    /// Index in `sorted` of the first symbol of each length.
    offset: [u16; MAX_LEN + 1],
}

const fn build() -> Canonical {
    let mut c = Canonical {
        sorted: [0; 257],
        first: [0; MAX_LEN + 1],
        count: [0; MAX_LEN + 1],
        offset: [0; MAX_LEN + 1],
    };
    let mut n = 0usize;
    let mut len = 1usize;
    let mut code: u32 = 0;
    while len <= MAX_LEN {
        c.first[len] = code;
        c.offset[len] = n as u16;
        let mut sym = 0usize;
        while sym < 257 {
            if CODE_LENGTHS[sym] as usize == len {
                c.sorted[n] = sym as u16;
                n += 1;
                c.count[len] += 1;
                code += 1;
            }
            sym += 1;
        }
        code <<= 1;
        len += 1;
    }
    c
}

const CANONICAL: Canonical = build();

/// Why a Huffman string is invalid (RFC 7541 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HuffmanError {
    /// No symbol has this code (only possible past 30 bits).
    BadCode,
    /// The EOS symbol appeared in the string.
    Eos,
    /// Padding longer than 7 bits or not all ones.
    BadPadding,
}

/// Decodes a Huffman-coded string; output is at most 8/5 of the input.
pub(crate) fn decode(input: &[u8]) -> Result<Vec<u8>, HuffmanError> {
    let c = &CANONICAL;
    let mut out = Vec::with_capacity(input.len() * 8 / 5 + 1);
    let mut code: u32 = 0;
    let mut len: usize = 0;
    for byte in input {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            if len > MAX_LEN {
                return Err(HuffmanError::BadCode);
            }
            let first = c.first.get(len).copied().unwrap_or(0);
            let count = c.count.get(len).copied().unwrap_or(0);
            if code >= first && code - first < count {
                let at =
                    usize::from(c.offset.get(len).copied().unwrap_or(0)) + (code - first) as usize;
                let sym = c.sorted.get(at).copied().ok_or(HuffmanError::BadCode)?;
                if sym == EOS {
                    return Err(HuffmanError::Eos);
                }
                out.push(sym as u8);
                code = 0;
                len = 0;
            }
        }
    }
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HuffmanError::BadPadding);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7541_c4_strings() {
        let www = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        assert_eq!(decode(&www).unwrap(), b"www.example.com");
        assert_eq!(
            decode(&[0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf]).unwrap(),
            b"no-cache"
        );
        assert_eq!(
            decode(&[0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f]).unwrap(),
            b"custom-key"
        );
    }

    #[test]
    fn codes_fill_the_space_exactly() {
        // Kraft equality: a complete prefix code.
        let sum: u64 = CODE_LENGTHS
            .iter()
            .map(|l| 1u64 << (30 - u32::from(*l)))
            .sum();
        assert_eq!(sum, 1u64 << 30);
    }

    #[test]
    fn invalid_padding_and_eos_are_rejected() {
        // 'a' is 00011 (5 bits); padding with zeros is invalid.
        assert_eq!(decode(&[0b0001_1000]), Err(HuffmanError::BadPadding));
        assert_eq!(decode(&[0b0001_1111]).unwrap(), b"a");
        // A full byte of padding is too long.
        assert_eq!(decode(&[0b0001_1111, 0xff]), Err(HuffmanError::BadPadding));
        // EOS: thirty one-bits.
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xfc]), Err(HuffmanError::Eos));
    }
}
