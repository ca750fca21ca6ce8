//! RFC 7541 Appendix C examples, decoded in sequence so the dynamic table
//! carries over between blocks, plus the mid-connection (unknown table) rules.

use crate::protocols::hpack::{Decoder, HpackError};

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn fields(d: &mut Decoder, block: &str) -> Vec<(String, String)> {
    let b = d.decode(&hex(block)).unwrap();
    assert_eq!(b.unknown, 0);
    b.fields.into_iter().map(|f| (f.name, f.value)).collect()
}

fn list(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

const CAP: usize = 1 << 20;
const LIST: usize = 64 * 1024;

fn requests(blocks: [&str; 3]) {
    let mut d = Decoder::new(CAP, LIST);
    let first = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ];
    assert_eq!(fields(&mut d, blocks[0]), list(&first));
    assert_eq!(d.table_usage(), (57, 1));
    let mut second = first.to_vec();
    second.push(("cache-control", "no-cache"));
    assert_eq!(fields(&mut d, blocks[1]), list(&second));
    assert_eq!(d.table_usage(), (110, 2));
    let third = [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ];
    assert_eq!(fields(&mut d, blocks[2]), list(&third));
    assert_eq!(d.table_usage(), (164, 3));
}

#[test]
fn c3_requests_without_huffman() {
    requests([
        "828684410f7777772e6578616d706c652e636f6d",
        "828684be58086e6f2d6361636865",
        "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
    ]);
}

#[test]
fn c4_requests_with_huffman() {
    requests([
        "828684418cf1e3c2e5f23a6ba0ab90f4ff",
        "828684be5886a8eb10649cbf",
        "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
    ]);
}

fn responses(blocks: [&str; 3]) {
    // The examples use a 256-byte table, so entries are evicted.
    let mut d = Decoder::with_table_size(256, CAP, LIST);
    let first = [
        (":status", "302"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("location", "https://www.example.com"),
    ];
    assert_eq!(fields(&mut d, blocks[0]), list(&first));
    assert_eq!(d.table_usage(), (222, 4));
    let mut second = first;
    second[0] = (":status", "307");
    assert_eq!(fields(&mut d, blocks[1]), list(&second));
    assert_eq!(d.table_usage(), (222, 4));
    let third = [
        (":status", "200"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
        ("location", "https://www.example.com"),
        ("content-encoding", "gzip"),
        (
            "set-cookie",
            "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
        ),
    ];
    assert_eq!(fields(&mut d, blocks[2]), list(&third));
    assert_eq!(d.table_usage(), (215, 3));
}

#[test]
fn c5_responses_without_huffman() {
    responses([
        "4803333032580770726976617465611d4d6f6e2c203231204f63742032303133\
         2032303a31333a323120474d546e1768747470733a2f2f7777772e6578616d70\
         6c652e636f6d",
        "4803333037c1c0bf",
        "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d\
         54c05a04677a69707738666f6f3d4153444a4b48514b425a584f5157454f5049\
         5541585157454f49553b206d61782d616765 3d333630303b2076657273696f6e3d31",
    ]);
}

#[test]
fn c6_responses_with_huffman() {
    responses([
        "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a6\
         2d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
        "4883640effc1c0bf",
        "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab\
         77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f\
         9587316065c003ed4ee5b1063d5007",
    ]);
}

#[test]
fn mid_connection_decodes_what_is_known_and_counts_the_rest() {
    // C.3.2 alone: index 62 (`:authority`) was added by a block we never saw.
    let mut d = Decoder::new_unknown(CAP, LIST);
    let b = d.decode(&hex("828684be58086e6f2d6361636865")).unwrap();
    assert_eq!(b.unknown, 1);
    assert_eq!(b.unknown_names, 1);
    let got: Vec<_> = b
        .fields
        .iter()
        .map(|f| (f.name.as_str(), f.value.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            ("cache-control", "no-cache")
        ]
    );
    // C.3.3 next: index 62 is now the cache-control entry we saw inserted
    // (not referenced by C.3.3), index 63 is still unknown.
    let b = d
        .decode(&hex(
            "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
        ))
        .unwrap();
    assert_eq!(b.unknown, 1);
    assert!(b
        .fields
        .iter()
        .any(|f| f.name == "custom-key" && f.value == "custom-value"));
    // A known entry referenced afterwards decodes: index 62 = custom-key.
    let b = d.decode(&[0xbe]).unwrap();
    assert_eq!((b.fields[0].name.as_str(), b.unknown), ("custom-key", 0));
    // Index 63 is the cache-control entry we saw inserted; 64 is older.
    let b = d.decode(&[0xbf]).unwrap();
    assert_eq!((b.fields[0].name.as_str(), b.unknown), ("cache-control", 0));
    let b = d.decode(&[0xc0]).unwrap();
    assert_eq!((b.fields.len(), b.unknown), (0, 1));
}

#[test]
fn a_complete_table_rejects_unknown_indexes() {
    let mut d = Decoder::new(CAP, LIST);
    assert_eq!(d.decode(&[0xbe]), Err(HpackError::BadIndex));
    assert_eq!(d.decode(&[0x80]), Err(HpackError::BadIndex));
}

#[test]
fn size_updates_are_bounded_and_placed_first() {
    let mut d = Decoder::new(CAP, LIST);
    // Update to 0 is allowed and empties the table.
    assert_eq!(
        fields(&mut d, "20 828684410f7777772e6578616d706c652e636f6d").len(),
        4
    );
    // 0x3f e1 1f = 4096 + ... above the 4096 default setting.
    assert_eq!(
        d.decode(&[0x3f, 0xe2, 0x1f]),
        Err(HpackError::SizeUpdateTooLarge)
    );
    let mut d = Decoder::new(CAP, LIST);
    assert_eq!(
        d.decode(&[0x82, 0x20]),
        Err(HpackError::SizeUpdateMisplaced)
    );
    let mut d = Decoder::new(CAP, LIST);
    d.set_allowed_max(8192);
    assert!(
        d.decode(&[0x3f, 0xe1, 0x3f]).is_ok(),
        "8192 allowed after SETTINGS"
    );
}

#[test]
fn truncated_and_oversized_input_is_an_error() {
    let mut d = Decoder::new(CAP, LIST);
    assert_eq!(d.decode(&hex("410f7777")), Err(HpackError::Truncated));
    assert_eq!(
        d.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
        Err(HpackError::IntegerOverflow)
    );
    // Many references to one big entry pass the decoded-list bound.
    let mut d = Decoder::new(CAP, 1000);
    let mut block = vec![0x40, 0x01, b'a', 0x7f, 0x81, 0x03];
    block.extend(std::iter::repeat_n(b'x', 0x7f + 0x181 - 0x7f - 0x80 + 0x80));
    let _ = d.decode(&block);
    let refs = vec![0xbe; 100];
    assert!(matches!(
        d.decode(&refs),
        Err(HpackError::ListTooLarge) | Err(HpackError::BadIndex)
    ));
}
