//! Tests that drive the parsers as a whole; unit tests of one piece sit in
//! that piece's file.

mod fixtures;
mod hpack_rfc;
mod http1_cases;
mod http2_cases;
mod support;
