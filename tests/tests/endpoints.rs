//! TLS the agent cannot decrypt still shows who talks to which AI endpoint:
//! the server name from the ClientHello, bytes and duration. Java's TLS
//! (JSSE) is not OpenSSL, so no probe sees its plaintext. Needs root.

use std::{process::Command, time::Duration};

use tokenscope_tests::*;

/// Runs the Java client naming `sni` against the local TLS server.
fn java_call(sni: &str, port: u16) {
    let out = Command::new("java")
        .arg(root().join("tests/java/SniClient.java"))
        .args([sni, &port.to_string()])
        .output()
        .expect("java (Debian: default-jdk-headless)");
    assert!(
        out.status.success(),
        "java client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn java_available() -> bool {
    let ok = Command::new("java").arg("-version").output().is_ok();
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "java is missing: cargo xtask setup installs default-jdk-headless"
        );
        eprintln!("skipping: no java");
    }
    ok
}

/// The value of a counter series whose labels contain all of `want`.
fn counter(metrics: &str, name: &str, want: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && want.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

#[test]
fn undecrypted_tls_to_ai_endpoints_is_counted_by_server_name() {
    if !ebpf_available() || !java_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = LlmServer::start(true);
    let agent = Agent::start(&[]);

    java_call("api.anthropic.com", server.port);
    java_call("api.anthropic.com", server.port);
    java_call("www.example.org", server.port);

    let sni = "server_address=\"api.anthropic.com\"";
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let metrics = loop {
        let metrics = agent.get("/metrics");
        if counter(&metrics, "tokenscope_endpoint_connections_total", &[sni]) == Some(2.0) {
            break metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no endpoint record for the Java client: {}\n{}",
            metrics
                .lines()
                .filter(|l| l.contains("endpoint") || l.contains("muted"))
                .collect::<Vec<_>>()
                .join("\n"),
            tail(&agent.log_text(), 30)
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    // A request and a response crossed each connection, encrypted.
    let sent = counter(&metrics, "tokenscope_endpoint_bytes_total", &[sni, "sent"]);
    let received = counter(
        &metrics,
        "tokenscope_endpoint_bytes_total",
        &[sni, "received"],
    );
    assert!(sent.is_some_and(|b| b > 2.0 * 200.0), "{metrics}");
    assert!(received.is_some_and(|b| b > 2.0 * 300.0), "{metrics}");
    // Hosts that are not AI endpoints make no endpoint figures. (The test
    // server's own decrypted calls are labelled with the Host it was sent,
    // so only the endpoint series are looked at.)
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("tokenscope_endpoint_") && l.contains("www.example.org")),
        "{metrics}"
    );
    // The log names the process.
    let log = agent.log_text();
    assert!(
        log.contains("ai_endpoint_connection") && log.contains("java"),
        "{}",
        tail(&log, 20)
    );
    // Nothing was decrypted, so no call record claims this traffic; the
    // event file holds one endpoint record per connection instead.
    let records = agent.records();
    assert!(
        records
            .iter()
            .filter(|r| r["record"].is_null())
            .all(|r| r["process"]["comm"] != "java"),
        "Java's TLS is not decrypted"
    );
    let java: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["record"] == "endpoint" && r["process"]["comm"] == "java")
        .collect();
    assert_eq!(java.len(), 2, "{records:#?}");
    for r in java {
        assert_eq!(r["server_address"], "api.anthropic.com", "{r:#}");
        assert!(r["bytes_sent"].as_u64().is_some_and(|b| b > 200), "{r:#}");
        assert!(
            r["bytes_received"].as_u64().is_some_and(|b| b > 300),
            "{r:#}"
        );
        assert_eq!(r["peer"], format!("127.0.0.1:{}", server.port), "{r:#}");
        assert!(r["duration_s"].as_f64().is_some_and(|d| d > 0.0), "{r:#}");
        assert!(
            r["start_time_unix_nano"]
                .as_u64()
                .is_some_and(|t| t > 1_700_000_000_000_000_000),
            "{r:#}"
        );
    }
}

#[test]
fn decrypted_tls_calls_carry_their_socket_addresses() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = LlmServer::start(true);
    let agent = Agent::start(&[]);
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let child = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "10",
            "-H",
            "content-type: application/json",
            "--resolve",
            &format!("api.openai.com:{}:127.0.0.1", server.port),
            "-d",
            body,
            &format!("https://api.openai.com:{}/v1/chat/completions", server.port),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("curl");
    let pid = child.id();
    assert!(child.wait_with_output().expect("curl").status.success());
    let records = agent.wait_records("curl over TLS", |r| !by_pid(r, pid, "client").is_empty());
    let r = by_pid(&records, pid, "client")[0];
    // The SSL object was linked to its socket: the record has the tuple.
    assert_eq!(r["peer"], format!("127.0.0.1:{}", server.port), "{r:#}");
    assert!(
        r["local"]
            .as_str()
            .is_some_and(|l| l.starts_with("127.0.0.1:")),
        "{r:#}"
    );
    assert_eq!(r["server_address"], "api.openai.com", "{r:#}");
    assert_eq!(r["server_port"], server.port, "{r:#}");
    assert_eq!(r["tls"], "openssl");
    // Decrypted traffic makes no endpoint-level record.
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = agent.get("/metrics");
    assert!(
        counter(
            &metrics,
            "tokenscope_endpoint_connections_total",
            &["api.openai.com"]
        )
        .is_none(),
        "{metrics}"
    );
}
