//! A TLS connection to an AI endpoint whose plaintext no probe could read
//! (Java, rustls, an unhooked library), as exported next to call records.
//!
//! In a JSON Lines file it is one line of its own whose first field is
//! `"record":"endpoint"`: readers of call records tell the two apart by it.

use serde::{Deserialize, Serialize};

use super::{
    wire::{K8s, Process},
    Attribution,
};

/// The `record` value of an endpoint line.
pub const KIND: &str = "endpoint";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointConnection {
    /// Always [`KIND`]; first, so a reader can tell the line by its start.
    pub record: String,
    /// The server name the client sent in its ClientHello.
    pub server_address: String,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub duration_s: f64,
    /// Ciphertext bytes, the TLS handshake included.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub local: Option<String>,
    pub peer: Option<String>,
    pub process: Process,
    pub container_id: Option<String>,
    pub systemd_unit: Option<String>,
    pub k8s: K8s,
    pub team: Option<String>,
}

/// The connection's times and sizes; who made it comes from `who`.
pub struct Observed {
    pub server_address: String,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub local: Option<String>,
    pub peer: Option<String>,
}

impl EndpointConnection {
    pub fn new(seen: Observed, who: Attribution) -> EndpointConnection {
        EndpointConnection {
            record: KIND.to_string(),
            server_address: seen.server_address,
            start_time_unix_nano: seen.start_time_unix_nano,
            end_time_unix_nano: seen.end_time_unix_nano,
            duration_s: seen
                .end_time_unix_nano
                .saturating_sub(seen.start_time_unix_nano) as f64
                / 1e9,
            bytes_sent: seen.bytes_sent,
            bytes_received: seen.bytes_received,
            local: seen.local,
            peer: seen.peer,
            process: Process {
                pid: who.pid,
                comm: who.comm,
                exe: who.exe,
                uid: who.uid,
                user: who.user,
            },
            container_id: who.container_id,
            systemd_unit: who.systemd_unit,
            k8s: K8s {
                namespace: who.namespace,
                pod: who.pod,
                pod_uid: who.pod_uid,
                container: who.container,
                workload_kind: who.workload_kind,
                workload: who.workload,
                node: who.node,
            },
            team: who.team,
        }
    }
}

/// Whether a JSON Lines line (trimmed) is an endpoint record.
pub fn is_endpoint_line(line: &[u8]) -> bool {
    line.starts_with(br#"{"record":"endpoint""#)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_line_is_told_from_a_call_line_by_its_first_field() {
        let who = Attribution {
            pid: 42,
            comm: "java".into(),
            team: Some("payments".into()),
            namespace: Some("shop".into()),
            ..Attribution::default()
        };
        let e = EndpointConnection::new(
            Observed {
                server_address: "api.openai.com".into(),
                start_time_unix_nano: 1_000_000_000,
                end_time_unix_nano: 3_500_000_000,
                bytes_sent: 796,
                bytes_received: 2416,
                local: Some("10.0.0.5:41000".into()),
                peer: Some("104.18.7.192:443".into()),
            },
            who,
        );
        let line = serde_json::to_vec(&e).unwrap_or_default();
        assert!(
            is_endpoint_line(&line),
            "{}",
            String::from_utf8_lossy(&line)
        );
        let back: EndpointConnection =
            serde_json::from_slice(&line).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, e);
        assert_eq!(back.duration_s, 2.5);
        assert_eq!(back.k8s.namespace.as_deref(), Some("shop"));
        assert!(!is_endpoint_line(
            br#"{"provider":"openai","record":"endpoint"}"#
        ));
    }
}
