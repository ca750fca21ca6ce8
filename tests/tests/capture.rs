//! Capture end to end: the real agent with its probes, real clients and a
//! local LLM server, over plain HTTP and TLS. Needs root (loads eBPF).

use std::process::Command;

use serde_json::Value;
use tokenscope_tests::*;

fn curl(args: &[&str]) -> (u32, String) {
    let child = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "10",
            "-H",
            "content-type: application/json",
        ])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    let pid = child.id();
    let out = child.wait_with_output().expect("curl output");
    assert!(out.status.success(), "curl {args:?} failed");
    (pid, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn one(agent: &Agent, what: &str, pid: u32, side: &str) -> Value {
    let records = agent.wait_records(what, |r| !by_pid(r, pid, side).is_empty());
    let mine = by_pid(&records, pid, side);
    assert_eq!(
        mine.len(),
        1,
        "{what}: one {side} record for pid {pid}: {mine:#?}"
    );
    mine[0].clone()
}

/// A TCP sink on 127.0.0.1:47123 that reads until the peer closes.
const SINK: &str = "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('127.0.0.1', 47123)); s.listen(1)\nc,_=s.accept()\nwhile c.recv(65536): pass\n";
/// Sends 50 lines of 1 KiB that are not HTTP over one connection.
const SENDER: &str = "import socket, time\nc=socket.create_connection(('127.0.0.1', 47123))\nfor i in range(50):\n    c.sendall(b'x' * 1023 + b'\\n'); time.sleep(0.01)\nc.close()\n";

fn assert_usage(r: &Value, input: u64, output: u64) {
    assert_eq!(r["input_tokens"], input, "{r:#}");
    assert_eq!(r["output_tokens"], output, "{r:#}");
    assert_eq!(r["usage_source"], "reported", "{r:#}");
}

#[test]
fn plain_http_calls_are_decoded_on_both_sides_and_attributed() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = LlmServer::start(false);
    let agent = Agent::start(&[]);
    let url = format!("{}/v1/chat/completions", server.base());

    // A plain call: the client's record and the server's record, same usage.
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let (pid, _) = curl(&[
        "-H",
        "authorization: Bearer sk-live-SECRET-1",
        "-d",
        body,
        &url,
    ]);
    let client = one(&agent, "plain client call", pid, "client");
    assert_usage(&client, 21, 7);
    assert_eq!(client["cache_read_input_tokens"], 4);
    assert_eq!(client["request_model"], "gpt-4o");
    assert_eq!(client["response_model"], "gpt-4o-2025-01-01");
    assert_eq!(client["http_status"], 200);
    assert_eq!(client["provider"], "openai_compatible");
    assert_eq!(client["process"]["comm"], "curl");
    assert!(
        client["process"]["exe"]
            .as_str()
            .unwrap_or("")
            .ends_with("/curl"),
        "{client:#}"
    );
    assert_eq!(client["peer"], format!("127.0.0.1:{}", server.port));
    let served = agent.wait_records("server record", |r| {
        by_pid(r, server.guard.0.id(), "server").len() == 1
    });
    let served = by_pid(&served, server.guard.0.id(), "server")[0].clone();
    assert_usage(&served, 21, 7);
    // The server's record names the local process that made the call.
    assert_eq!(served["caller"]["pid"], pid, "{served:#}");
    assert_eq!(served["caller"]["comm"], "curl", "{served:#}");
    assert!(
        served["cost_usd"].is_null(),
        "self-hosted calls carry no token price"
    );

    // A streamed call: time to first token and chunks from the SSE events.
    let body = r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let (pid, text) = curl(&["-d", body, &url]);
    assert!(text.contains("[DONE]"));
    let streamed = one(&agent, "streamed call", pid, "client");
    assert_usage(&streamed, 21, 7);
    assert_eq!(streamed["stream"], true);
    assert_eq!(streamed["output_chunks"], 7);
    let ttft = streamed["ttft_s"].as_f64().expect("ttft");
    let duration = streamed["duration_s"].as_f64().expect("duration");
    // The server sleeps 10 ms between events: the stream lasts longer than its first token.
    assert!(
        ttft > 0.0 && ttft < duration && duration > 0.05,
        "{streamed:#}"
    );

    // A refused call: rate limited, with the server's retry-after.
    let body = r#"{"model":"rate-limited","messages":[]}"#;
    let (pid, _) = curl(&["-d", body, &url]);
    let limited = one(&agent, "rate-limited call", pid, "client");
    assert_eq!(limited["http_status"], 429);
    assert_eq!(limited["error_type"], "rate_limited");
    assert_eq!(limited["retry_after_s"], 3.0);

    // A 200 KiB prompt whose `model` comes after the messages, on a new
    // connection: the whole first call is captured before classification.
    let dir = TempDir::new("big");
    let big = dir.path().join("prompt.json");
    let prompt = "word ".repeat(40 * 1024);
    std::fs::write(
        &big,
        format!(r#"{{"messages":[{{"role":"user","content":"{prompt}"}}],"model":"gpt-4o"}}"#),
    )
    .expect("prompt file");
    let (pid, _) = curl(&["--data-binary", &format!("@{}", big.display()), &url]);
    let r = one(&agent, "200 KiB request", pid, "client");
    assert_eq!(r["request_model"], "gpt-4o", "{r:#}");
    assert_usage(&r, 21, 7);

    // A 2 MiB response: usage comes after the content.
    let body = r#"{"model":"big-response","messages":[]}"#;
    let (pid, text) = curl(&["-d", body, &url]);
    assert!(text.len() > 2 << 20);
    let r = one(&agent, "2 MiB response", pid, "client");
    assert_usage(&r, 21, 7);
    assert!(
        r["bytes_received"].as_u64().unwrap_or(0) >= 2 << 20,
        "{r:#}"
    );

    // Traffic that is not an LLM call leaves no record.
    let (pid, _) = curl(&[&format!("{}/healthz", server.base())]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(by_pid(&agent.records(), pid, "client").is_empty());

    // A connection that is not HTTP is muted in the kernel after its first
    // chunk: its later calls are counted as muted and never reach user space.
    let muted_before = agent.kernel_counter("muted");
    let sink = Command::new("python3")
        .args(["-c", SINK])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sink");
    let sink = Guard(sink);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let sender = Command::new("python3")
        .args(["-c", SENDER])
        .status()
        .expect("sender");
    assert!(sender.success());
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let muted = agent.kernel_counter("muted") - muted_before;
    assert!(muted >= 40, "only {muted} muted socket calls for 50 sends");
    let records = agent.records();
    assert!(by_pid(&records, sink.0.id(), "server").is_empty());
    drop(sink);

    // Secrets never leave the agent, in any output.
    let events = std::fs::read_to_string(&agent.events).expect("events");
    let metrics = agent.get("/metrics");
    let calls = agent.get("/api/v1/calls?limit=100");
    for text in [&events, &metrics, &calls] {
        assert!(!text.contains("SECRET"), "a secret leaked");
        assert!(
            !text.to_ascii_lowercase().contains("bearer"),
            "an auth header leaked"
        );
    }
    assert!(metrics.contains("tokenscope_llm_calls_total"), "{metrics}");
}

#[test]
fn tls_calls_from_real_sdks_are_decoded() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = LlmServer::start(true);
    let agent = Agent::start(&[]);
    let base = server.base();

    // curl: the system libssl's SSL_write/SSL_read.
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let (pid, _) = curl(&["-d", body, &format!("{base}/v1/chat/completions")]);
    let r = one(&agent, "curl over TLS", pid, "client");
    assert_usage(&r, 21, 7);
    assert_eq!(r["process"]["comm"], "curl");
    assert_eq!(r["tls"], "openssl", "{r:#}");
    assert_eq!(r["response_id"], "chatcmpl-1", "{r:#}");

    // Python openai SDK (httpx, libssl's SSL_read_ex/SSL_write_ex), plain and streamed.
    for mode in ["plain", "stream"] {
        let child = Command::new(python())
            .arg(root().join("tests/clients/openai_chat.py"))
            .args([&base, mode])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python");
        let pid = child.id();
        let out = child.wait_with_output().expect("python output");
        assert!(out.status.success(), "openai SDK {mode} failed");
        let r = one(&agent, &format!("openai SDK {mode}"), pid, "client");
        assert_usage(&r, 21, 7);
        assert_eq!(r["request_model"], "gpt-4o-mini");
        assert_eq!(r["stream"], mode == "stream");
        assert!(r["cost_usd"].as_f64().is_some_and(|c| c > 0.0), "{r:#}");
    }

    // Python anthropic SDK, streamed: input = input + cache creation + cache read.
    let child = Command::new(python())
        .arg(root().join("tests/clients/anthropic_messages.py"))
        .arg(&base)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    let pid = child.id();
    assert!(child.wait_with_output().expect("output").status.success());
    let r = one(&agent, "anthropic SDK", pid, "client");
    assert_usage(&r, 31, 7);
    assert_eq!(r["provider"], "anthropic");
    assert_eq!(r["cache_read_input_tokens"], 10);
    assert_eq!(r["finish_reasons"], serde_json::json!(["end_turn"]));

    // Node's openai SDK: OpenSSL linked into the node binary itself.
    let child = Command::new("node")
        .arg(root().join("tests/node/openai_chat.mjs"))
        .arg(&base)
        .current_dir(root().join("tests/node"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node");
    let pid = child.id();
    let out = child.wait_with_output().expect("node output");
    assert!(
        out.status.success(),
        "node: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = one(&agent, "node openai SDK", pid, "client");
    assert_usage(&r, 21, 7);
    // Node carries its own OpenSSL; the record names the library it came from.
    assert_eq!(r["tls"], "openssl-embedded", "{r:#}");

    let events = std::fs::read_to_string(&agent.events).expect("events");
    assert!(!events.contains("SECRET"), "an API key leaked");
}
