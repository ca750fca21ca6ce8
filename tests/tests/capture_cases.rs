//! Capture cases end to end: stdlib and Node clients over TLS, keep-alive,
//! processes and sockets older than the agent, a muted connection, a churn of
//! short-lived processes, a long SSE stream and byte-exact reassembly. Needs
//! root (the agent loads its eBPF probes).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tokenscope_common::Counter;
use tokenscope_tests::{clients::*, *};

/// `tests/servers/fake_llm.py`, optionally logging every connection's bytes.
struct Server {
    _guard: Guard,
    port: u16,
    tls: Option<TlsFiles>,
}

impl Server {
    fn start(tls: bool, log_dir: Option<&Path>) -> Server {
        let tls = tls.then(TlsFiles::self_signed);
        let mut cmd = Command::new("python3");
        cmd.arg(root().join("tests/servers/fake_llm.py"));
        if let Some(t) = &tls {
            cmd.arg("--cert").arg(&t.cert).arg("--key").arg(&t.key);
        }
        if let Some(dir) = log_dir {
            cmd.arg("--log-dir").arg(dir);
        }
        let (guard, port) = spawn_fake_llm(cmd.stderr(Stdio::inherit()));
        Server {
            _guard: guard,
            port,
            tls,
        }
    }

    fn base(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://localhost:{}", self.port)
    }
}

fn node_fetch(base: &str, models: &[&str]) -> Command {
    let mut cmd = Command::new("node");
    cmd.arg(root().join("tests/node/fetch_chat.mjs"))
        .arg(base)
        .args(models)
        .current_dir(root().join("tests/node"));
    cmd
}

fn curl() -> Command {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sSk",
        "--max-time",
        "20",
        "-H",
        "content-type: application/json",
    ]);
    cmd
}

fn chat_body(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi from {model}"}}]}}"#)
}

fn same_connection(records: &[Value]) -> bool {
    records
        .windows(2)
        .all(|p| p[0]["local"] == p[1]["local"] && p[0]["local"].is_string())
}

/// Asserts that the server read all `models` on one connection, in order
/// (the client really kept its connection alive), from its --log-dir.
fn served_on_one_connection(logs: &Path, models: &[&str]) {
    let served = server_logged(logs);
    let conn = served
        .iter()
        .find(|(read, _)| contains(read, models[0]))
        .unwrap_or_else(|| panic!("the server logged no {}", models[0]));
    let text = String::from_utf8_lossy(&conn.0);
    let at: Vec<Option<usize>> = models
        .iter()
        .map(|m| text.find(&format!("\"{m}\"")))
        .collect();
    assert!(
        at.iter().all(Option::is_some) && at.windows(2).all(|w| w[0] < w[1]),
        "the server did not read {models:?} on one connection, in order"
    );
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn stdlib_and_node_fetch_over_tls_are_exact_and_attributed() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let logs = TempDir::new("served");
    let server = Server::start(true, Some(logs.path()));
    let agent = Agent::start(&[]);
    let base = server.base();

    // urllib.request: a new connection per call, libssl's SSL_*_ex pair.
    let models = ["urllib-1", "urllib-2"];
    let pid = run_client(stdlib(&base, "urllib", &models), "urllib");
    let r = calls_in_order(&agent, "urllib over TLS", pid, &models);
    assert!(
        r.iter().all(|r| r["tls"] == "openssl" && python_comm(r)),
        "{r:#?}"
    );

    // http.client: three calls on one keep-alive connection, one record each.
    let models = ["keepalive-1", "keepalive-2", "keepalive-3"];
    let pid = run_client(stdlib(&base, "http.client", &models), "http.client");
    served_on_one_connection(logs.path(), &models);
    let r = calls_in_order(&agent, "http.client keep-alive over TLS", pid, &models);
    assert!(
        r.iter().all(|r| r["tls"] == "openssl" && python_comm(r)),
        "{r:#?}"
    );

    // Node's built-in fetch (undici over the OpenSSL inside the node binary).
    let models = ["fetch-1", "fetch-2"];
    let pid = run_client(node_fetch(&base, &models), "node fetch");
    let r = calls_in_order(&agent, "node fetch over TLS", pid, &models);
    assert!(r.iter().all(|r| r["process"]["comm"] == "node"), "{r:#?}");
    assert!(r.iter().all(|r| r["tls"] == "openssl-embedded"), "{r:#?}");

    // Those responses were read with one probe per SSL read, placed after
    // the record layer call in libssl and in node (no entry/return pair).
    for file in ["libssl.so", "/node"] {
        let attached = agent.tls_attached(file);
        assert_eq!(attached["read"], "record", "{attached}");
    }
}

/// Workers forked from one process (a pre-fork server's, a process pool's)
/// have copies of one heap: their SSL objects can sit at the same address
/// at the same time. Each worker's calls must stay its own.
#[test]
fn forked_workers_with_twin_ssl_objects_keep_their_own_calls() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(true, None);
    let agent = Agent::start(&[]);
    let models = ["twin-1", "twin-2", "twin-3"];
    let out = stdlib(&server.base(), "forked", &models)
        .output()
        .expect("forked client");
    assert!(
        out.status.success(),
        "forked client failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let workers: Vec<u32> = serde_json::from_slice(&out.stdout).expect("worker pids");
    for (index, pid) in workers.iter().enumerate() {
        let mine: Vec<String> = models.iter().map(|m| format!("{m}-w{index}")).collect();
        let mine: Vec<&str> = mine.iter().map(String::as_str).collect();
        let r = calls_in_order(&agent, &format!("worker {index}"), *pid, &mine);
        assert!(r.iter().all(|r| r["tls"] == "openssl"), "{r:#?}");
    }
}

#[test]
fn tls_records_carry_the_connection_tuple() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(true, None);
    let agent = Agent::start(&[]);
    let base = server.base();
    let pid = run_client(stdlib(&base, "urllib", &["tuple-py"]), "urllib");
    let py = calls_in_order(&agent, "urllib over TLS", pid, &["tuple-py"]);
    let pid = run_client(node_fetch(&base, &["tuple-node"]), "node fetch");
    let node = calls_in_order(&agent, "node fetch over TLS", pid, &["tuple-node"]);
    // Issue #3: every captured chunk carries the local and peer address; a
    // TLS call is tied to its socket. Python's socket BIO writes inside the
    // SSL call; Node writes its ciphertext from a memory BIO right after
    // SSL_write returns, and that write links them.
    assert!(
        node.iter().all(|r| r["tls"] == "openssl-embedded"),
        "{node:#?}"
    );
    for r in py.iter().chain(node.iter()) {
        assert_eq!(
            r["peer"],
            format!("127.0.0.1:{}", server.port),
            "TLS record without its peer address: {r:#}"
        );
        assert!(
            r["local"]
                .as_str()
                .is_some_and(|l| l.starts_with("127.0.0.1:")),
            "{r:#}"
        );
    }
}

#[test]
fn plain_keep_alive_a_200_chunk_stream_and_a_muted_connection() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let logs = TempDir::new("served");
    let server = Server::start(false, Some(logs.path()));
    let agent = Agent::start(&[]);
    let url = format!("{}/v1/chat/completions", server.base());

    // curl with several URLs reuses one connection: one record per request.
    let models = ["curl-ka-1", "curl-ka-2", "curl-ka-3", "curl-ka-4"];
    let mut cmd = curl();
    for (i, model) in models.iter().enumerate() {
        if i > 0 {
            cmd.args(["--next", "-H", "content-type: application/json"]);
        }
        cmd.args(["-o", "/dev/null", "-d", &chat_body(model), &url]);
    }
    let pid = run_client(cmd, "curl keep-alive");
    served_on_one_connection(logs.path(), &models);
    let r = calls_in_order(&agent, "curl keep-alive", pid, &models);
    assert!(same_connection(&r), "one connection: {r:#?}");
    assert!(r.iter().all(|r| r["tls"].is_null()), "{r:#?}");

    // http.client keep-alive over plain HTTP.
    let models = ["plain-ka-1", "plain-ka-2", "plain-ka-3"];
    let base = server.base();
    let pid = run_client(stdlib(&base, "http.client", &models), "http.client");
    served_on_one_connection(logs.path(), &models);
    let r = calls_in_order(&agent, "http.client keep-alive", pid, &models);
    assert!(same_connection(&r), "one connection: {r:#?}");

    // 200 SSE chunks 5 ms apart: every chunk counted, the first token early,
    // the stream as long as the server made it.
    let body = r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"test_chunks":200,"test_delay_ms":5,"messages":[{"role":"user","content":"count"}]}"#;
    let started = Instant::now();
    let mut cmd = curl();
    cmd.args(["-N", "-d", body, &url]);
    let child = cmd.stdout(Stdio::piped()).spawn().expect("curl");
    let pid = child.id();
    let out = child.wait_with_output().expect("curl output");
    let wall = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("\"content\"").count(), 200, "200 chunks sent");
    let records = agent.wait_records("200-chunk stream", |r| !by_pid(r, pid, "client").is_empty());
    let r = by_pid(&records, pid, "client")[0].clone();
    assert_eq!(r["stream"], true, "{r:#}");
    assert_eq!(r["output_chunks"], 200, "{r:#}");
    assert_eq!(r["output_tokens"], 7, "{r:#}");
    let ttft = r["ttft_s"].as_f64().expect("ttft_s");
    let duration = r["duration_s"].as_f64().expect("duration_s");
    // 199 gaps of at least 5 ms between the first and last chunk.
    assert!(
        duration >= 1.0 && duration <= wall,
        "{r:#} (curl ran {wall:.3} s)"
    );
    assert!(ttft > 0.0 && ttft < 0.5 && ttft + 0.99 <= duration, "{r:#}");

    // curl reads with vectored calls into buffers it fills only partly: the
    // probes copy no byte past what each call moved (counters tick each second).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        agent.metric("tokenscope_streams_total{counter=\"overrun_bytes\"}"),
        0.0
    );

    an_uninteresting_connection_is_muted_in_the_kernel(&agent);
}

/// A stdlib client started before the agent: it has made one call on its
/// connection before the agent exists, then waits for `go`.
struct EarlyClient {
    child: std::process::Child,
    pid: u32,
}

fn start_early_client(base: &str, go: &Path) -> EarlyClient {
    let mut cmd = stdlib(base, "http.client", &[]);
    cmd.arg("--before").arg(go).arg("after-reused");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("early client");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("WAITING line");
    assert_eq!(line.trim(), "WAITING", "early client said {line:?}");
    let pid = child.id();
    EarlyClient { child, pid }
}

#[test]
fn processes_and_sockets_older_than_the_agent_are_captured() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tls_logs = TempDir::new("served-tls");
    let plain_logs = TempDir::new("served-plain");
    let tls_server = Server::start(true, Some(tls_logs.path()));
    let plain_server = Server::start(false, Some(plain_logs.path()));
    let dir = TempDir::new("early");
    let go = dir.path().join("go");
    // libssl is mapped, the sockets open and one call made, all before the
    // agent starts: it must find the library by its /proc scan and the
    // sockets' tuples from `struct sock` on their next use.
    let mut clients: Vec<EarlyClient> = [&tls_server, &plain_server]
        .iter()
        .map(|s| start_early_client(&s.base(), &go))
        .collect();
    let agent = Agent::start(&[]);
    std::fs::write(&go, b"go").expect("go file");
    for c in &mut clients {
        assert!(c.child.wait().expect("early client").success());
    }
    for logs in [&tls_logs, &plain_logs] {
        served_on_one_connection(logs.path(), &["before-agent", "after-reused"]);
    }
    for (c, tls) in clients.iter().zip(["openssl", ""]) {
        let r = calls_in_order(
            &agent,
            &format!("client started before the agent (tls: {tls:?})"),
            c.pid,
            &["after-reused", "after-new-connection"],
        );
        for r in &r {
            if tls.is_empty() {
                assert!(r["tls"].is_null(), "{r:#}");
            } else {
                assert_eq!(r["tls"], tls, "{r:#}");
            }
            assert!(python_comm(r), "{r:#}");
        }
    }
}

/// A plain HTTP/1.1 file server (not an LLM) and a client making `requests`
/// GETs on one keep-alive connection.
const FILE_SERVER: &str = "import http.server, sys\n\
class H(http.server.SimpleHTTPRequestHandler):\n    protocol_version = 'HTTP/1.1'\n    def log_message(self, *a): pass\n\
s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), lambda *a: H(*a, directory=sys.argv[1]))\n\
print(s.server_address[1], flush=True)\ns.serve_forever()\n";
const FILE_CLIENT: &str = "import http.client, sys\n\
c = http.client.HTTPConnection('127.0.0.1', int(sys.argv[1]))\n\
for i in range(int(sys.argv[2])):\n    c.request('GET', '/page.html'); r = c.getresponse(); assert r.status == 200; r.read()\n";

/// Part of the plain-HTTP test, which has an agent running already.
fn an_uninteresting_connection_is_muted_in_the_kernel(agent: &Agent) {
    let dir = TempDir::new("files");
    std::fs::write(
        dir.path().join("page.html"),
        "<p>not an LLM</p>\n".repeat(200),
    )
    .expect("page");
    let mut server = Command::new("python3")
        .args(["-c", FILE_SERVER])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("file server");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("port line");
    let server = Guard(server);
    let port = line.trim().to_string();

    const GETS: u64 = 1000;
    let kernel = |name: &str| {
        agent.metric(&format!(
            "tokenscope_capture_kernel_total{{counter=\"{name}\"}}"
        )) as u64
    };
    // Counters are published once a second. Other tests on the node mute
    // their own uninteresting connections: measure that rate first.
    let idle_started = Instant::now();
    let idle_before = kernel("muted");
    std::thread::sleep(Duration::from_secs(3));
    let idle_rate = (kernel("muted") - idle_before) as f64 / idle_started.elapsed().as_secs_f64();
    let started = Instant::now();
    let (muted_before, calls_before) = (kernel("muted"), kernel("socket_calls"));
    let mut cmd = Command::new("python3");
    cmd.args(["-c", FILE_CLIENT, &port, &GETS.to_string()]);
    let pid = run_client(cmd, "file client");
    std::thread::sleep(Duration::from_millis(2500));
    let muted_calls = kernel("muted") - muted_before;
    let socket_calls = kernel("socket_calls") - calls_before;
    let others = idle_rate * started.elapsed().as_secs_f64();
    eprintln!(
        "muted: {muted_calls} of {socket_calls} socket calls during {GETS} GETs; \
         others mute {idle_rate:.0}/s"
    );
    // Each GET is at least a send and a receive on each end: four socket
    // calls. After the first window has classified the connection (HTTP, not
    // an LLM API), the kernel drops them before any copy to the ring buffer.
    assert!(
        muted_calls as f64 - others >= 4.0 * GETS as f64,
        "only {muted_calls} muted socket calls ({others:.0} of them others') for {GETS} GETs on one connection"
    );
    let records = agent.records();
    assert!(by_pid(&records, pid, "client").is_empty(), "no record");
    assert!(by_pid(&records, server.0.id(), "server").is_empty());
}

/// A loopback HTTP server that answers every connection once and closes it.
fn closing_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 2048];
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
                );
            });
        }
    });
    port
}

#[derive(Debug, Clone, Copy)]
struct Levels {
    /// Processes alive on the node, from /proc.
    #[expect(dead_code, reason = "shown in the diagnostics, through Debug")]
    alive: usize,
    processes: f64,
    connections: f64,
    conn_state: usize,
    ssl_active: usize,
}

fn levels(agent: &Agent) -> Levels {
    let pid = agent.guard.0.id();
    let alive = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count();
    Levels {
        alive,
        processes: agent.metric("tokenscope_tracked_processes"),
        connections: agent.metric("tokenscope_open_connections"),
        conn_state: map_entries(pid, "CONN_STATE"),
        ssl_active: map_entries(pid, "SSL_ACTIVE"),
    }
}

#[test]
fn a_churn_of_short_lived_processes_leaves_tables_and_maps_at_baseline() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let port = closing_server();
    let agent = Agent::start(&[]);
    std::thread::sleep(Duration::from_secs(2));
    let baseline = levels(&agent);

    // 2,000 bash processes, 100 at a time, each one HTTP/1.0 connection
    // (bash's /dev/tcp: an exec and a connection at a fraction of curl's
    // start-up cost).
    const PROCESSES: usize = 2000;
    let script = format!(
        "for b in $(seq {}); do for i in $(seq 100); do \
         bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port} && printf \"GET /churn HTTP/1.0\\r\\n\\r\\n\" >&3 && cat <&3 >/dev/null' & \
         done; wait; done",
        PROCESSES / 100
    );
    let started = Instant::now();
    run_ok(Command::new("sh").args(["-c", &script]));
    let churn_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(1500));
    let peak = levels(&agent);
    eprintln!(
        "churn of {PROCESSES} processes took {churn_s:.1} s; baseline {baseline:?}, after {peak:?}"
    );
    // The table saw them (exited processes stay for a 30 s grace period):
    // without this the return to baseline below would prove nothing.
    assert!(
        peak.processes >= baseline.processes + 500.0,
        "the agent tracked too few of the churned processes: {baseline:?} -> {peak:?}"
    );

    // Other work on the node adds processes and connections of its own: on a
    // busy build machine a few hundred processes exit in any 30 s. The churn
    // added thousands.
    let settled = |l: &Levels| {
        l.processes <= baseline.processes + 250.0
            && l.connections <= baseline.connections + 20.0
            && l.conn_state <= baseline.conn_state + 20
            && l.ssl_active <= baseline.ssl_active + 5
    };
    let deadline = Instant::now() + Duration::from_secs(75);
    let mut now = levels(&agent);
    while !settled(&now) {
        assert!(
            Instant::now() < deadline,
            "not back to baseline: {baseline:?} then {now:?}\nlog tail:\n{}",
            tail(&agent.log_text(), 40)
        );
        std::thread::sleep(Duration::from_secs(5));
        now = levels(&agent);
        eprintln!(
            "{:.0} s after the churn: {now:?}",
            started.elapsed().as_secs_f64() - churn_s
        );
    }
    eprintln!(
        "back to baseline {:.0} s after the churn: {now:?}",
        started.elapsed().as_secs_f64() - churn_s
    );
}

/// Files of `tokenscope capture --dump`, by pid: (out, in) per connection.
fn dumped(dir: &Path, pid: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut by_conn: BTreeMap<String, (Vec<u8>, Vec<u8>)> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("dump dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((stem, ext)) = name.rsplit_once('.') else {
            continue;
        };
        if stem.split('-').next() != Some(&pid.to_string()) {
            continue;
        }
        let bytes = std::fs::read(entry.path()).expect("dump file");
        let slot = by_conn.entry(stem.to_string()).or_default();
        match ext {
            "out" => slot.0 = bytes,
            "in" => slot.1 = bytes,
            _ => {}
        }
    }
    by_conn.into_values().filter(|c| !c.0.is_empty()).collect()
}

/// What the server read and wrote per connection: (in, out).
fn server_logged(dir: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut stems: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("log dir")
        .flatten()
        .map(|e| e.path().with_extension(""))
        .collect();
    stems.sort();
    stems.dedup();
    stems
        .iter()
        .map(|s| {
            (
                std::fs::read(s.with_extension("in")).unwrap_or_default(),
                std::fs::read(s.with_extension("out")).unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn reassembly_is_byte_exact_against_what_the_server_saw() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for tls in [true, false] {
        let logs = TempDir::new("server-bytes");
        let dump = TempDir::new("dump");
        let server = Server::start(tls, Some(logs.path()));
        let err = dump.path().join("capture.err");
        let capture = Guard(
            Command::new(agent_binary())
                .args(["capture", "--dump"])
                .arg(dump.path())
                .args(["--duration-s", "300"])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&err).expect("stderr file"))
                .spawn()
                .expect("tokenscope capture"),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&err)
            .unwrap_or_default()
            .contains("ready")
        {
            assert!(
                Instant::now() < deadline,
                "tokenscope capture not ready in 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let base = server.base();
        let mut clients: Vec<(&str, Command, String)> = Vec::new();
        let body = chat_body("dump-curl-big").replace("hi", &"word ".repeat(20_000));
        let mut c = curl();
        c.args([
            "-o",
            "/dev/null",
            "-d",
            &body,
            &format!("{base}/v1/chat/completions"),
        ]);
        clients.push(("curl", c, "dump-curl-big".into()));
        clients.push((
            "python http.client",
            stdlib(&base, "http.client", &["dump-py-1", "dump-py-2"]),
            "dump-py-1".into(),
        ));
        // 200 KB through a full socket: over TLS the library's write fails
        // (want-write) and is called again; its bytes must appear once.
        clients.push((
            "python http.client, full socket",
            stdlib(&base, "big", &["dump-py-full-socket"]),
            "dump-py-full-socket".into(),
        ));
        if tls {
            // libssl in partial-write mode: each write returns after one
            // record and the next goes on from inside the same buffer.
            let mut partial = Command::new(python());
            partial
                .arg(root().join("tests/clients/partial_write.py"))
                .args(["127.0.0.1", &server.port.to_string(), "dump-partial-write"]);
            clients.push((
                "libssl partial writes",
                partial,
                "dump-partial-write".into(),
            ));
            clients.push((
                "python urllib",
                stdlib(&base, "urllib", &["dump-urllib"]),
                "dump-urllib".into(),
            ));
            clients.push((
                "node fetch",
                node_fetch(&base, &["dump-node"]),
                "dump-node".into(),
            ));
        }
        let pids: Vec<(&str, u32, String)> = clients
            .into_iter()
            .map(|(what, cmd, marker)| (what, run_client(cmd, what), marker))
            .collect();
        std::thread::sleep(Duration::from_secs(3));
        if tls {
            let repeats = counter_in_map(capture.0.id(), Counter::SslWriteRepeats);
            assert!(
                repeats > 0,
                "the full socket made no SSL write repeat (the case this checks did not happen)"
            );
            eprintln!("SSL writes repeated after a full socket, skipped: {repeats}");
        }
        drop(capture);
        let served = server_logged(logs.path());
        for (what, pid, marker) in pids {
            let conns = dumped(dump.path(), pid);
            let (out, inn) = conns
                .iter()
                .find(|c| contains(&c.0, &marker))
                .unwrap_or_else(|| {
                    panic!("{what} (tls {tls}): no dumped connection with {marker}")
                });
            let (seen_in, seen_out) = served
                .iter()
                .find(|s| contains(&s.0, &marker))
                .unwrap_or_else(|| panic!("{what}: the server logged no {marker}"));
            let first_difference = |a: &[u8], b: &[u8]| {
                a.iter()
                    .zip(b)
                    .position(|(x, y)| x != y)
                    .unwrap_or(a.len().min(b.len()))
            };
            assert!(
                out == seen_in,
                "{what} (tls {tls}): request bytes differ: dumped {} vs served {}, first difference at {}",
                out.len(),
                seen_in.len(),
                first_difference(out, seen_in)
            );
            assert!(
                inn == seen_out,
                "{what} (tls {tls}): response bytes differ: dumped {} vs served {}, first difference at {}",
                inn.len(),
                seen_out.len(),
                first_difference(inn, seen_out)
            );
        }
        drop(server);
    }
}

#[test]
fn a_write_repeated_after_a_full_socket_is_taken_once_beside_another_tools_return_probe() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(true, None);
    let agent = Agent::start(&[]);
    // Where the agent probes libssl's writes, from its log.
    let attached = agent.tls_attached("libssl.so");
    let path = attached["path"].as_str().expect("path field");
    let offset = attached["write_offsets"]
        .as_str()
        .and_then(|o| o.split(',').next())
        .unwrap_or_else(|| panic!("no write offset in {attached}"));
    // Its return probe swaps the return address at each entry: the agent's
    // test of "still inside the write" must see through it.
    let _foreign = ForeignReturnProbe::add(path, offset);

    let repeats = |agent: &Agent| {
        agent.metric("tokenscope_capture_kernel_total{counter=\"ssl_write_repeats\"}")
    };
    let before = repeats(&agent);
    let models = ["beside-a-uretprobe"];
    let pid = run_client(stdlib(&server.base(), "big", &models), "full socket");
    calls_in_order(
        &agent,
        "a 200 KB prompt through a full socket",
        pid,
        &models,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while repeats(&agent) <= before {
        assert!(
            Instant::now() < deadline,
            "no SSL write repeat was recognised beside another tool's return probe"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        agent.metric("tokenscope_streams_total{counter=\"decode_errors\"}"),
        0.0,
        "a repeated write left bytes the decoder could not read"
    );
}
