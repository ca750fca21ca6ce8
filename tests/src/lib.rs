//! Harness for the end-to-end tests: the real agent binary with its probes,
//! real clients and a local LLM server. These tests need root (they load
//! eBPF); under `CI=true` a machine that cannot run them fails them.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod clients;
pub mod kube;

/// The end-to-end tests watch the whole node: run them one at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Whether this machine can load the probes. Under CI a machine that cannot
/// is a failure, never a skip.
pub fn ebpf_available() -> bool {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let ok = is_root && btf;
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "eBPF end-to-end test cannot run here (root: {is_root}, BTF: {btf}) and CI=true forbids skipping"
        );
        eprintln!("skipping: needs root and kernel BTF");
    }
    ok
}

/// The agent binary. `cargo xtask test` builds it before the tests run
/// (this package cannot depend on another package's binary). It is looked
/// for under `CARGO_TARGET_DIR` when that is set (two checkouts of the
/// repository build into their own target directories), else `target/`.
pub fn agent_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| root().join(dir))
        .unwrap_or_else(|| root().join("target"));
    let bin = target.join("debug/tokenscope");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p tokenscope` (cargo xtask test does it)",
        bin.display()
    );
    bin
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "tokenscope-{tag}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The agent, started with its events written to a JSON Lines file.
pub struct Agent {
    pub guard: Guard,
    pub port: u16,
    pub events: PathBuf,
    pub log: PathBuf,
    _dir: TempDir,
}

impl Agent {
    pub fn start(extra: &[&str]) -> Agent {
        Agent::start_within(extra, Duration::from_secs(60))
    }

    /// Starts the agent and waits up to `ready` for /readyz. Its start-up
    /// scan reads every object mapped on the node, which takes longer on a
    /// busy build machine.
    pub fn start_within(extra: &[&str], ready: Duration) -> Agent {
        let dir = TempDir::new("agent");
        let events = dir.path().join("events.jsonl");
        let log = dir.path().join("agent.log");
        let port = free_port();
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(agent_binary())
            .args(["run", "--log-level", "debug", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--events")
            .arg(&events)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start tokenscope");
        let agent = Agent {
            guard: Guard(child),
            port,
            events,
            log,
            _dir: dir,
        };
        agent.wait_ready_within(ready);
        agent
    }

    fn wait_ready(&self) {
        self.wait_ready_within(Duration::from_secs(60));
    }

    fn wait_ready_within(&self, ready: Duration) {
        let deadline = Instant::now() + ready;
        while Instant::now() < deadline {
            if http_get(self.port, "/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "agent not ready in {} s; log:\n{}",
            ready.as_secs(),
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's `tls_attached` log line for the file whose path contains
    /// `file` (its probe placement), as JSON; panics with the log's tail if
    /// there is none.
    pub fn tls_attached(&self, file: &str) -> Value {
        let log = self.log_text();
        log.lines()
            .filter(|l| l.contains("tls_attached") && l.contains(file))
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("{file} not attached; log:\n{}", tail(&log, 20)))
    }

    pub fn get(&self, path: &str) -> String {
        let (code, body) = http_get(self.port, path).expect("agent answers");
        assert_eq!(code, 200, "{path}: {body}");
        body
    }

    /// One Prometheus sample of the agent, by its full series text.
    pub fn metric(&self, series: &str) -> f64 {
        let metrics = self.get("/metrics");
        let prefix = format!("{series} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in /metrics:\n{metrics}"))
    }

    /// A kernel-side counter, `tokenscope_capture_kernel_total{counter=name}`.
    pub fn kernel_counter(&self, name: &str) -> u64 {
        self.metric(&format!(
            "tokenscope_capture_kernel_total{{counter=\"{name}\"}}"
        )) as u64
    }

    /// Records written so far.
    pub fn records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.events).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until `pred` holds over the records, or panics with what was seen.
    pub fn wait_records(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let records = self.records();
            if pred(&records) {
                return records;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; records: {records:#?}\nmetrics:\n{}\nlog tail:\n{}",
                    http_get(self.port, "/metrics").map(|r| r.1).unwrap_or_default(),
                    tail(&self.log_text(), 60)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Plain HTTP GET on loopback; (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1.to_string())?;
    Some((code, body))
}

/// The local LLM server (tests/servers/fake_llm.py), plain or TLS.
pub struct LlmServer {
    pub guard: Guard,
    pub port: u16,
    pub tls: Option<TlsFiles>,
}

pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: TempDir,
}

impl TlsFiles {
    /// A self-signed certificate for `localhost`, made with the openssl CLI.
    pub fn self_signed() -> TlsFiles {
        let dir = TempDir::new("tls");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl req failed");
        TlsFiles {
            cert,
            key,
            _dir: dir,
        }
    }
}

pub fn python() -> PathBuf {
    let venv = root().join("target/testenv/venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run `cargo xtask setup --test-env` (cargo xtask test does it)",
        venv.display()
    );
    venv
}

impl LlmServer {
    pub fn start(tls: bool) -> LlmServer {
        let tls = tls.then(TlsFiles::self_signed);
        let mut cmd = Command::new("python3");
        cmd.arg(root().join("tests/servers/fake_llm.py"));
        if let Some(t) = &tls {
            cmd.arg("--cert").arg(&t.cert).arg("--key").arg(&t.key);
        }
        let (guard, port) = spawn_fake_llm(cmd.stderr(Stdio::inherit()));
        LlmServer { guard, port, tls }
    }

    pub fn base(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://localhost:{}", self.port)
    }
}

/// Runs a command to completion and returns its stdout; panics with stderr on failure.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Records of one side made by one process.
pub fn by_pid<'a>(records: &'a [Value], pid: u32, side: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["process"]["pid"] == pid && r["side"] == side)
        .collect()
}

/// Starts `tests/servers/fake_llm.py` from `cmd` and waits for its
/// `READY <port>` line; (guard, port).
pub fn spawn_fake_llm(cmd: &mut Command) -> (Guard, u16) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .expect("start fake_llm.py");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("READY line");
    let port = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("fake_llm.py said {line:?}"));
    (Guard(child), port)
}

/// Entries in one of this agent's BPF maps, by map name. The maps of other
/// agents on the node (other test runs) are told apart by the map ids in the
/// fdinfo of this agent's file descriptors.
pub fn map_entries(agent_pid: u32, name: &str) -> usize {
    let id = agent_map_id(agent_pid, name);
    let dump: Vec<Value> = serde_json::from_str(&run_ok(Command::new("bpftool").args([
        "map",
        "dump",
        "id",
        &id.to_string(),
        "-j",
    ])))
    .expect("bpftool dump JSON");
    dump.len()
}

/// The id of the BPF map `name` among those the agent process holds.
fn agent_map_id(agent_pid: u32, name: &str) -> u64 {
    let ids: Vec<u64> = std::fs::read_dir(format!("/proc/{agent_pid}/fdinfo"))
        .expect("agent fdinfo")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect();
    let maps: Vec<Value> =
        serde_json::from_str(&run_ok(Command::new("bpftool").args(["map", "show", "-j"])))
            .expect("bpftool map JSON");
    maps.iter()
        .filter(|m| m["name"] == name)
        .filter_map(|m| m["id"].as_u64())
        .find(|id| ids.contains(id))
        .unwrap_or_else(|| panic!("no {name} map among the agent's maps {ids:?}"))
}

/// A kernel-side counter of the agent process (`tokenscope_common::Counter`),
/// summed over CPUs, read from its counters map.
pub fn counter_in_map(agent_pid: u32, counter: tokenscope_common::Counter) -> u64 {
    let id = agent_map_id(agent_pid, "COUNTERS");
    let key = (counter as u32).to_le_bytes().map(|b| b.to_string());
    let found: Value = serde_json::from_str(&run_ok(
        Command::new("bpftool")
            .args(["map", "lookup", "id", &id.to_string(), "key"])
            .args(&key)
            .arg("-j"),
    ))
    .expect("bpftool lookup JSON");
    // Without BTF, bpftool prints each CPU's value as hex bytes.
    found["values"]
        .as_array()
        .expect("per-CPU values")
        .iter()
        .map(|v| match &v["value"] {
            Value::Number(n) => n.as_u64().unwrap_or(0),
            Value::Array(bytes) => bytes
                .iter()
                .rev()
                .filter_map(|b| b.as_str())
                .filter_map(|b| u64::from_str_radix(b.trim_start_matches("0x"), 16).ok())
                .fold(0, |acc, b| acc << 8 | b),
            other => panic!("counter value {other}"),
        })
        .sum()
}

/// A uretprobe such as another tool would put on a function the agent
/// probes (a tracefs uprobe event, enabled); removed on drop.
pub struct ForeignReturnProbe {
    name: &'static str,
}

impl ForeignReturnProbe {
    pub fn add(path: &str, offset: &str) -> ForeignReturnProbe {
        let name = "tokenscope_e2e/foreign_write_ret";
        let events = "/sys/kernel/tracing/uprobe_events";
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(events)
            .expect("uprobe_events");
        // One write: tracefs parses each write(2) as a command.
        f.write_all(format!("r:{name} {path}:{offset}\n").as_bytes())
            .unwrap_or_else(|e| panic!("add a uretprobe at {path}:{offset}: {e}"));
        std::fs::write(format!("/sys/kernel/tracing/events/{name}/enable"), "1")
            .expect("enable the foreign uretprobe");
        ForeignReturnProbe { name }
    }
}

impl Drop for ForeignReturnProbe {
    fn drop(&mut self) {
        let _ = std::fs::write(
            format!("/sys/kernel/tracing/events/{}/enable", self.name),
            "0",
        );
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .open("/sys/kernel/tracing/uprobe_events")
        {
            let _ = f.write_all(format!("-:{}\n", self.name).as_bytes());
        }
    }
}
