//! Ring buffer records → typed events. One decoder; kernel bytes are never
//! transmuted into enums.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use bytemuck::pod_read_unaligned;
use tokenscope_common::{
    ConnEvent, DataHeader, EventKind, ProcEvent, TlsLinkEvent, Tuple, CONN_CLOSE, CONN_EVENT_SIZE,
    DATA_HEADER_SIZE, DIR_EGRESS, FLAG_TRUNCATED, FLAG_UNREADABLE, PROC_EVENT_SIZE, SOURCE_SOCKET,
    SOURCE_TLS_BORINGSSL, SOURCE_TLS_GO, SOURCE_TLS_OPENSSL, SOURCE_TLS_OPENSSL_EMBEDDED,
    TLS_LINK_EVENT_SIZE,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty record")]
    Empty,
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
    #[error("{kind:?} record of {len} bytes is too short")]
    Short { kind: EventKind, len: usize },
    #[error("data record says {claimed} payload bytes but carries {actual}")]
    PayloadLength { claimed: usize, actual: usize },
    #[error("unknown connection event {0}")]
    UnknownConn(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Socket,
    /// TLS plaintext, from the library of this `SOURCE_TLS_*` kind.
    Tls(u8),
}

/// The name a record's `tls` field carries for a `SOURCE_TLS_*` kind.
pub fn tls_library_name(source: u8) -> &'static str {
    match source {
        SOURCE_TLS_OPENSSL => "openssl",
        SOURCE_TLS_OPENSSL_EMBEDDED => "openssl-embedded",
        SOURCE_TLS_BORINGSSL => "boringssl",
        SOURCE_TLS_GO => "go",
        _ => "unknown",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Egress,
    Ingress,
}

/// Local and remote address of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoints {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl Endpoints {
    fn from_tuple(t: &Tuple) -> Option<Endpoints> {
        if t.family == 0 {
            return None;
        }
        let addr = |b: [u8; 16]| {
            let v6 = Ipv6Addr::from(b);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        };
        Some(Endpoints {
            local: SocketAddr::new(addr(t.saddr), t.sport),
            remote: SocketAddr::new(addr(t.daddr), t.dport),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data {
    pub source: Source,
    pub flow: Flow,
    pub pid: u32,
    pub tid: u32,
    pub conn_id: u64,
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub comm: String,
    pub endpoints: Option<Endpoints>,
    /// Bytes the call moved in all.
    pub call_len: u32,
    /// Where `payload` sits inside the call.
    pub offset: u32,
    /// The rest of the call from `offset + payload.len()` was not captured.
    pub rest_lost: bool,
    pub payload: Vec<u8>,
    /// Bytes the kernel sent past what the call moved, dropped here.
    pub overrun: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Exec {
        pid: u32,
        ppid: u32,
        cgroup_id: u64,
        ts_ns: u64,
        comm: String,
        filename: String,
    },
    Exit {
        pid: u32,
        ts_ns: u64,
    },
    Data(Data),
    Close {
        conn_id: u64,
        ts_ns: u64,
        /// Ciphertext sockets: bytes the kernel counted after the verdict.
        sent: u64,
        received: u64,
    },
    TlsLink {
        pid: u32,
        ssl: u64,
        sock: u64,
        endpoints: Option<Endpoints>,
    },
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

pub fn decode(record: &[u8]) -> Result<Event, DecodeError> {
    let &first = record.first().ok_or(DecodeError::Empty)?;
    let kind = EventKind::try_from(first).map_err(DecodeError::UnknownKind)?;
    let need = match kind {
        EventKind::Exec | EventKind::Exit => PROC_EVENT_SIZE,
        EventKind::Data => DATA_HEADER_SIZE,
        EventKind::Conn => CONN_EVENT_SIZE,
        EventKind::TlsLink => TLS_LINK_EVENT_SIZE,
    };
    if record.len() < need {
        return Err(DecodeError::Short {
            kind,
            len: record.len(),
        });
    }
    let head = &record[..need];
    Ok(match kind {
        EventKind::Exec => {
            let e: ProcEvent = pod_read_unaligned(head);
            Event::Exec {
                pid: e.pid,
                ppid: e.ppid,
                cgroup_id: e.cgroup_id,
                ts_ns: e.ts_ns,
                comm: c_string(&e.comm),
                filename: c_string(&e.filename),
            }
        }
        EventKind::Exit => {
            let e: ProcEvent = pod_read_unaligned(head);
            Event::Exit {
                pid: e.pid,
                ts_ns: e.ts_ns,
            }
        }
        EventKind::Data => {
            let h: DataHeader = pod_read_unaligned(head);
            let payload = &record[need..];
            let claimed = h.len as usize;
            let within = (h.call_len as usize).saturating_sub(h.offset as usize);
            if payload.len() < claimed {
                return Err(DecodeError::PayloadLength {
                    claimed,
                    actual: payload.len(),
                });
            }
            Event::Data(Data {
                source: if h.source == SOURCE_SOCKET {
                    Source::Socket
                } else {
                    Source::Tls(h.source)
                },
                flow: if h.dir == DIR_EGRESS {
                    Flow::Egress
                } else {
                    Flow::Ingress
                },
                pid: h.pid,
                tid: h.tid,
                conn_id: h.conn_id,
                ts_ns: h.ts_ns,
                cgroup_id: h.cgroup_id,
                comm: c_string(&h.comm),
                endpoints: Endpoints::from_tuple(&h.tuple),
                call_len: h.call_len,
                offset: h.offset,
                rest_lost: h.flags & (FLAG_TRUNCATED | FLAG_UNREADABLE) != 0,
                // Bytes past what the call moved are not the connection's:
                // a partly filled receive buffer holds whatever was there.
                payload: payload[..claimed.min(within)].to_vec(),
                overrun: claimed.saturating_sub(within) as u32,
            })
        }
        EventKind::Conn => {
            let e: ConnEvent = pod_read_unaligned(head);
            if e.what != CONN_CLOSE {
                return Err(DecodeError::UnknownConn(e.what));
            }
            Event::Close {
                conn_id: e.conn_id,
                ts_ns: e.ts_ns,
                sent: e.sent,
                received: e.received,
            }
        }
        EventKind::TlsLink => {
            let e: TlsLinkEvent = pod_read_unaligned(head);
            Event::TlsLink {
                pid: e.pid,
                ssl: e.ssl,
                sock: e.sock,
                endpoints: Endpoints::from_tuple(&e.tuple),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytemuck::bytes_of;

    fn header(len: u32) -> DataHeader {
        let mut tuple = Tuple {
            family: 2,
            sport: 40000,
            dport: 8080,
            ..Tuple::default()
        };
        tuple.saddr[10..16].copy_from_slice(&[0xff, 0xff, 127, 0, 0, 1]);
        tuple.daddr[10..16].copy_from_slice(&[0xff, 0xff, 127, 0, 0, 2]);
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        DataHeader {
            kind: EventKind::Data as u8,
            dir: DIR_EGRESS,
            source: 0,
            flags: 0,
            pid: 7,
            tid: 8,
            len,
            conn_id: 0xffff_8880_0000_1000,
            ts_ns: 99,
            cgroup_id: 5,
            call_len: 10,
            offset: 0,
            comm,
            tuple,
        }
    }

    #[test]
    fn decodes_a_data_record_with_its_payload_and_endpoints() {
        let mut rec = bytes_of(&header(5)).to_vec();
        rec.extend_from_slice(b"GET /");
        let Event::Data(d) = decode(&rec).unwrap() else {
            panic!("not data")
        };
        assert_eq!(d.payload, b"GET /");
        assert_eq!(d.comm, "curl");
        assert_eq!(d.flow, Flow::Egress);
        let ep = d.endpoints.unwrap();
        assert_eq!(ep.local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(ep.remote, "127.0.0.2:8080".parse().unwrap());
        assert!(!d.rest_lost);
    }

    #[test]
    fn a_payload_never_runs_past_the_bytes_the_call_moved() {
        // The call moved 10 bytes; a chunk at offset 4 holds at most 6 of them.
        let mut h = header(16);
        h.offset = 4;
        let mut rec = bytes_of(&h).to_vec();
        rec.extend_from_slice(b"0123456789abcdef");
        let Event::Data(d) = decode(&rec).unwrap() else {
            panic!("not data")
        };
        assert_eq!((d.payload.as_slice(), d.overrun), (&b"012345"[..], 10));
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        assert_eq!(decode(&[42, 0, 0]), Err(DecodeError::UnknownKind(42)));
        assert!(matches!(decode(&[3; 20]), Err(DecodeError::Short { .. })));
        let rec = bytes_of(&header(50)).to_vec();
        assert_eq!(
            decode(&rec),
            Err(DecodeError::PayloadLength {
                claimed: 50,
                actual: 0
            })
        );
    }
}
