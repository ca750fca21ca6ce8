//! Go `crypto/tls` end to end: a Go client built here with `go build` (with
//! symbols, and stripped so the probes are placed through `.gopclntab`)
//! calls the local fake LLM server over TLS, plain and streamed, and the
//! agent's records must carry the Go process, `tls: "go"`, the exact token
//! counts, the model and the status, and the peer address: the probes tie
//! each conn to its socket through the conn's file descriptor (offsets from
//! DWARF, or from the Go release when stripped). Needs root (loads eBPF).

use std::{path::PathBuf, process::Command};

use serde_json::Value;
use tokenscope_tests::*;

/// Builds the test client; `None` (a skip) when `go` is missing, except
/// under CI, where a missing toolchain fails the test.
fn build_client(dir: &TempDir, name: &str, flags: &[&str]) -> Option<PathBuf> {
    let out = dir.path().join(name);
    let mut cmd = Command::new("go");
    cmd.arg("build").arg("-o").arg(&out).args(flags);
    cmd.arg("main.go")
        .current_dir(root().join("tests/go/tlsclient"))
        // Offline: the client uses the standard library only.
        .env("GOPROXY", "off");
    match cmd.output() {
        Ok(o) if o.status.success() => Some(out),
        Ok(o) => panic!("go build failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            assert!(
                std::env::var("CI").is_err(),
                "`go` is missing ({e}): install golang-go (apt-get install -y golang-go)"
            );
            eprintln!("skipping: `go` is missing ({e}); install golang-go");
            None
        }
    }
}

fn run_client(bin: &PathBuf, base: &str, mode: &str) -> u32 {
    let child = Command::new(bin)
        // The agent attaches to a new executable within a second of its
        // exec; the client waits that long before its call.
        .args([base, mode, "1500"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("go client");
    let pid = child.id();
    let out = child.wait_with_output().expect("go client output");
    assert!(
        out.status.success(),
        "go client {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pid
}

fn one(agent: &Agent, what: &str, pid: u32) -> Value {
    let records = agent.wait_records(what, |r| !by_pid(r, pid, "client").is_empty());
    let mine = by_pid(&records, pid, "client");
    assert_eq!(
        mine.len(),
        1,
        "{what}: one client record for pid {pid}: {mine:#?}"
    );
    mine[0].clone()
}

/// Waits for a kernel counter (published once a second) to reach `at_least`.
fn wait_counter(agent: &Agent, name: &str, at_least: u64, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let value = agent.kernel_counter(name);
        if value >= at_least {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {name} is {value}, expected at least {at_least}; log:\n{}",
            tail(&agent.log_text(), 20)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn go_crypto_tls_calls_are_captured_with_and_without_symbols() {
    if !ebpf_available() {
        return;
    }
    let dir = TempDir::new("gotls");
    let Some(full) = build_client(&dir, "gotls-full", &[]) else {
        return;
    };
    let stripped =
        build_client(&dir, "gotls-stripped", &["-ldflags=-s -w"]).expect("go is present");
    // Position-independent: the itab is found from the probed address, whatever the load bias.
    let pie = build_client(&dir, "gotls-pie", &["-buildmode=pie"]).expect("go is present");
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = LlmServer::start(true);
    let agent = Agent::start(&[]);
    let base = server.base();

    // The full binary's conn offsets come from its DWARF, the stripped
    // one's (no DWARF) from the table of Go releases.
    let mut runs = 0;
    for (bin, comm, lookup, layout) in [
        (&full, "gotls-full", "symtab", "dwarf"),
        (&stripped, "gotls-stripped", "gopclntab", "version_table"),
        (&pie, "gotls-pie", "symtab", "dwarf"),
    ] {
        for mode in ["plain", "stream"] {
            let pid = run_client(bin, &base, mode);
            let what = format!("{comm} {mode}");
            let r = one(&agent, &what, pid);
            assert_eq!(r["process"]["comm"], comm, "{what}: {r:#}");
            assert_eq!(r["tls"], "go", "{what}: {r:#}");
            assert_eq!(r["input_tokens"], 21, "{what}: {r:#}");
            assert_eq!(r["output_tokens"], 7, "{what}: {r:#}");
            assert_eq!(r["usage_source"], "reported", "{what}: {r:#}");
            assert_eq!(r["request_model"], "gpt-4o-mini", "{what}: {r:#}");
            assert_eq!(
                r["response_model"], "gpt-4o-mini-2025-01-01",
                "{what}: {r:#}"
            );
            assert_eq!(r["http_status"], 200, "{what}: {r:#}");
            assert_eq!(r["stream"], mode == "stream", "{what}: {r:#}");
            assert_eq!(r["response_id"], "chatcmpl-1", "{what}: {r:#}");
            // The conn was tied to its socket: the record has the peer,
            // streamed or not.
            let peer = r["peer"].as_str().unwrap_or_default();
            assert!(
                peer.ends_with(&format!(":{}", server.port)),
                "{what}: peer {peer:?} is the server's socket: {r:#}"
            );
            // And it was tied at call entry, through the conn's descriptor
            // (one link per client: each makes one connection).
            runs += 1;
            wait_counter(&agent, "go_fd_links", runs, &what);
        }
        let log = agent.log_text();
        assert!(
            log.lines().any(|l| l.contains("tls_attached")
                && l.contains(comm)
                && l.contains(lookup)
                && l.contains(&format!("\"conn_layout\":\"{layout}\""))),
            "{comm}: attached through {lookup}, conn layout from {layout}; log:\n{}",
            tail(&log, 40)
        );
    }

    // A conn over the client's own net.Conn type, a *wrappedConn embedding
    // the net.TCPConn: the same fields lead to the descriptor. With symbols
    // the itab is not *net.TCPConn's, so the fields are not followed and the
    // socket programs tie the conn to its socket through the goroutine;
    // stripped, the type is unknown and the descriptor, a TCP socket, is
    // taken.
    for (bin, comm, type_checked) in [
        (&full, "gotls-full", true),
        (&stripped, "gotls-stripped", false),
    ] {
        let what = format!("{comm} wrapped");
        // Counters are published once a second: let the last link show.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let links = agent.kernel_counter("go_fd_links");
        let misses = agent.kernel_counter("go_fd_misses");
        let pid = run_client(bin, &base, "wrapped");
        let r = one(&agent, &what, pid);
        assert_eq!(r["tls"], "go", "{what}: {r:#}");
        assert_eq!(r["output_tokens"], 7, "{what}: {r:#}");
        let peer = r["peer"].as_str().unwrap_or_default();
        assert!(
            peer.ends_with(&format!(":{}", server.port)),
            "{what}: peer {peer:?} is the server's socket: {r:#}"
        );
        if type_checked {
            wait_counter(&agent, "go_fd_misses", misses + 1, &what);
            assert_eq!(
                agent.kernel_counter("go_fd_links"),
                links,
                "{what}: a conn that is not a *net.TCPConn was linked through a descriptor"
            );
        } else {
            wait_counter(&agent, "go_fd_links", links + 1, &what);
        }
    }
    eprintln!(
        "go_fd_links {}, go_fd_misses {}",
        agent.kernel_counter("go_fd_links"),
        agent.kernel_counter("go_fd_misses")
    );
    let events = std::fs::read_to_string(&agent.events).expect("events");
    assert!(!events.contains("SECRET"), "an API key leaked");

    // Go's HTTP transport keeps a goroutine blocked in (*Conn).Read until
    // the process exits, and a program may be killed mid-Read: either way
    // the call stays in flight in the kernel map. The agent drops the
    // entries of processes that are gone.
    let agent_pid = agent.guard.0.id();
    let go_calls = || map_entries(agent_pid, "GO_CALLS");
    let settled = |what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while go_calls() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "GO_CALLS kept {} entries {what}",
                go_calls()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    settled("of Go clients that exited");
    let mut slow = Command::new(&full)
        .args([base.as_str(), "slow", "1500"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("go client");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while go_calls() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow Go client's Read never showed in GO_CALLS"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    slow.kill().expect("kill the go client");
    let _ = slow.wait();
    settled("of a killed Go client");
}
