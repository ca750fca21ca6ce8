//! An AI endpoint connection that was not decrypted, as an OTLP span: a
//! CLIENT span named `tls <server name>` over the connection's life, with
//! its bytes and who made it. Collectors see this traffic as they see calls.

use std::time::{Duration, UNIX_EPOCH};

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{RandomIdGenerator, SpanData};

use super::otlp::root_span;
use crate::record::endpoint::EndpointConnection;

pub fn endpoint_span(c: &EndpointConnection, ids: &RandomIdGenerator) -> SpanData {
    let start = UNIX_EPOCH + Duration::from_nanos(c.start_time_unix_nano);
    let end = UNIX_EPOCH + Duration::from_nanos(c.end_time_unix_nano);
    root_span(
        ids,
        SpanKind::Client,
        format!("tls {}", c.server_address),
        (start, end),
        attributes(c),
        Status::Unset,
    )
}

fn attributes(c: &EndpointConnection) -> Vec<KeyValue> {
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let mut out = vec![
        KeyValue::new("tokenscope.record", "endpoint"),
        KeyValue::new("server.address", c.server_address.clone()),
        KeyValue::new("tokenscope.bytes_sent", clamp(c.bytes_sent)),
        KeyValue::new("tokenscope.bytes_received", clamp(c.bytes_received)),
        KeyValue::new("process.pid", i64::from(c.process.pid)),
        KeyValue::new("process.executable.name", c.process.comm.clone()),
    ];
    let mut text = |key: &'static str, value: &Option<String>| {
        if let Some(value) = value {
            out.push(KeyValue::new(key, value.clone()));
        }
    };
    text("network.peer.address", &c.peer);
    text("network.local.address", &c.local);
    text("container.id", &c.container_id);
    text("k8s.namespace.name", &c.k8s.namespace);
    text("k8s.pod.name", &c.k8s.pod);
    text("k8s.pod.uid", &c.k8s.pod_uid);
    text("k8s.node.name", &c.k8s.node);
    text("tokenscope.workload", &c.k8s.workload);
    text("tokenscope.team", &c.team);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::endpoint::Observed;
    use crate::record::Attribution;

    #[test]
    fn the_span_covers_the_connection_and_names_server_bytes_and_team() {
        let c = EndpointConnection::new(
            Observed {
                server_address: "api.openai.com".into(),
                start_time_unix_nano: 1_800_000_000_000_000_000,
                end_time_unix_nano: 1_800_000_002_000_000_000,
                bytes_sent: 796,
                bytes_received: 2416,
                local: Some("10.0.0.5:41000".into()),
                peer: Some("104.18.7.192:443".into()),
            },
            Attribution {
                pid: 7,
                comm: "java".into(),
                team: Some("payments".into()),
                ..Attribution::default()
            },
        );
        let span = endpoint_span(&c, &RandomIdGenerator::default());
        assert_eq!(span.name, "tls api.openai.com");
        assert_eq!(span.span_kind, SpanKind::Client);
        assert_eq!(
            span.end_time.duration_since(span.start_time).ok(),
            Some(Duration::from_secs(2))
        );
        let get = |key: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(get("tokenscope.bytes_sent").as_deref(), Some("796"));
        assert_eq!(get("tokenscope.team").as_deref(), Some("payments"));
        assert_eq!(
            get("network.peer.address").as_deref(),
            Some("104.18.7.192:443")
        );
        assert_eq!(get("k8s.pod.name"), None);
    }
}
