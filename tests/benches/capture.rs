//! What the probes cost the traffic they watch: the same workloads with the
//! agent off and on, in alternating blocks of one run (off, on, off, on), so
//! the ratio on/off does not depend on how busy the machine was that day.
//!
//! - `getppid`: a syscall no probe looks at.
//! - `tcp_1k`: a 1 KiB loopback round trip over a plain socket, not HTTP: the
//!   agent mutes such a connection after its first window.
//! - `http_post`: an OpenAI chat POST on a keep-alive connection to the local
//!   LLM server (`tests/servers/fake_llm.py`), which the agent captures and
//!   decodes on both ends.
//!
//! During each on-block `kernel.bpf_stats_enabled` is 1 and each program's
//! `run_cnt` / `run_time_ns` (bpftool) is read before and after each
//! workload; the setting is restored on exit. Stats add two clock reads per
//! program run, which the criterion workloads' on figures include; the
//! loads time themselves with stats off and take the eBPF figures from a
//! second, shorter run.
//!
//! After each on-block the bench waits for the agent to drain its backlog and
//! prints how many of the POSTs it decoded (two calls each, one per end) with
//! its drop counters: at a few thousand POSTs/s the agent's ring buffer can
//! fill, which the wall-clock figures alone would not show.
//!
//! The same blocks also run the loads of `capture/loads.rs` (in-memory TLS
//! in Python, a Node TLS loop, nginx under wrk over HTTP and HTTPS), which
//! time themselves, with the agent's CPU and RSS under each.
//!
//! Needs root and kernel BTF (it loads the probes) and the debug agent binary
//! that `tokenscope_tests::Agent` starts:
//!
//!     cargo build -p tokenscope --bins && cargo bench -p tokenscope-tests --bench capture

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion};
use serde_json::Value;
use tokenscope_tests::{ebpf_available, root, Agent, Guard, SERIAL};

#[path = "capture/loads.rs"]
mod loads;

/// Off/on pairs; each on-block starts the agent afresh. On a noisy machine
/// more pairs help: `TOKENSCOPE_BENCH_ROUNDS=6 cargo bench ... -- loads`
/// (a filter that matches no criterion benchmark runs only the loads).
const ROUNDS: usize = 2;

fn rounds() -> usize {
    std::env::var("TOKENSCOPE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS)
}
/// Criterion's samples per benchmark (its minimum).
const SAMPLES: usize = 10;
const PAYLOAD: usize = 1024;
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Workload {
    Getppid,
    Tcp1k,
    HttpPost,
}

impl Workload {
    const ALL: [Workload; 3] = [Workload::Getppid, Workload::Tcp1k, Workload::HttpPost];

    fn name(self) -> &'static str {
        match self {
            Workload::Getppid => "getppid",
            Workload::Tcp1k => "tcp_1k",
            Workload::HttpPost => "http_post",
        }
    }
}

/// Turns `kernel.bpf_stats_enabled` on or off (the loads time themselves
/// with it off: the two clock reads per program run it adds are not a cost
/// of the agent).
fn set_stats(on: bool) {
    std::fs::write(BPF_STATS, if on { "1" } else { "0" })
        .unwrap_or_else(|e| panic!("set {BPF_STATS}: {e}"));
}

/// Puts `kernel.bpf_stats_enabled` back as it was, also on a panic.
struct StatsGuard {
    before: String,
}

impl StatsGuard {
    fn enable() -> StatsGuard {
        let before = std::fs::read_to_string(BPF_STATS)
            .unwrap_or_else(|e| panic!("{BPF_STATS}: {e}"))
            .trim()
            .to_string();
        std::fs::write(BPF_STATS, "1").unwrap_or_else(|e| panic!("enable {BPF_STATS}: {e}"));
        StatsGuard { before }
    }
}

impl Drop for StatsGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS, &self.before) {
            eprintln!("could not restore {BPF_STATS} to {}: {e}", self.before);
        }
    }
}

#[derive(Clone, Copy, Default)]
struct ProgStats {
    run_cnt: u64,
    run_time_ns: u64,
}

/// Loaded programs by id: (name, counters). Empty when bpftool is missing.
fn bpf_programs() -> HashMap<u64, (String, ProgStats)> {
    let out = match Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
    {
        Ok(o) if o.status.success() => o.stdout,
        Ok(o) => panic!("bpftool prog show: {}", String::from_utf8_lossy(&o.stderr)),
        Err(_) => return HashMap::new(),
    };
    let progs: Vec<Value> = serde_json::from_slice(&out).expect("bpftool JSON");
    progs
        .iter()
        .filter_map(|p| {
            let stats = ProgStats {
                run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
                run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
            };
            Some((p["id"].as_u64()?, (p["name"].as_str()?.to_string(), stats)))
        })
        .collect()
}

/// Counter deltas of the agent's programs, summed by name (the TLS programs
/// are attached once per library).
fn program_deltas(
    ours: &HashSet<u64>,
    before: &HashMap<u64, (String, ProgStats)>,
    after: &HashMap<u64, (String, ProgStats)>,
) -> BTreeMap<String, ProgStats> {
    let mut out: BTreeMap<String, ProgStats> = BTreeMap::new();
    for (id, (name, a)) in after.iter().filter(|(id, _)| ours.contains(id)) {
        let b = before.get(id).map(|x| x.1).unwrap_or_default();
        let sum = out.entry(name.clone()).or_default();
        sum.run_cnt += a.run_cnt.saturating_sub(b.run_cnt);
        sum.run_time_ns += a.run_time_ns.saturating_sub(b.run_time_ns);
    }
    out
}

/// `tests/servers/fake_llm.py` with Nagle's algorithm off. The script writes
/// a response head and body separately; with Nagle on, the body waits for the
/// client's delayed ACK and every keep-alive round trip takes ~40 ms, which
/// would hide the agent's cost. (`LlmServer::start` runs the script as is.)
fn llm_server() -> (Guard, u16) {
    let script = root().join("tests/servers/fake_llm.py");
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(
            "import runpy, socketserver, sys\n\
             socketserver.StreamRequestHandler.disable_nagle_algorithm = True\n\
             sys.argv = sys.argv[1:]\n\
             runpy.run_path(sys.argv[0], run_name='__main__')",
        )
        .arg(&script)
        .stderr(Stdio::inherit());
    tokenscope_tests::spawn_fake_llm(&mut cmd)
}

/// A loopback echo server for the plain-socket workload.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo server");
    let port = listener.local_addr().expect("echo address").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let _ = conn.set_nodelay(true);
                let mut buf = [0u8; PAYLOAD];
                while conn.read_exact(&mut buf).is_ok() && conn.write_all(&buf).is_ok() {}
            });
        }
    });
    port
}

struct TcpClient {
    conn: TcpStream,
    buf: [u8; PAYLOAD],
}

impl TcpClient {
    fn connect(port: u16) -> TcpClient {
        let conn = TcpStream::connect(("127.0.0.1", port)).expect("connect echo server");
        conn.set_nodelay(true).expect("nodelay");
        TcpClient {
            conn,
            buf: [0x5a; PAYLOAD],
        }
    }

    fn round_trip(&mut self) {
        self.conn.write_all(&self.buf).expect("echo write");
        self.conn.read_exact(&mut self.buf).expect("echo read");
    }
}

/// A keep-alive HTTP/1.1 client for the LLM server's chat endpoint.
struct HttpClient {
    conn: BufReader<TcpStream>,
    request: Vec<u8>,
    body: Vec<u8>,
}

impl HttpClient {
    fn connect(port: u16) -> HttpClient {
        let conn = TcpStream::connect(("127.0.0.1", port)).expect("connect LLM server");
        conn.set_nodelay(true).expect("nodelay");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let body =
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello to the team."}]}"#;
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        HttpClient {
            conn: BufReader::new(conn),
            request,
            body: Vec::new(),
        }
    }

    fn round_trip(&mut self) {
        self.conn
            .get_mut()
            .write_all(&self.request)
            .expect("POST write");
        let mut line = String::new();
        let mut length = None;
        let mut status_line = true;
        loop {
            line.clear();
            self.conn.read_line(&mut line).expect("response head");
            if status_line {
                assert!(line.starts_with("HTTP/1.1 200"), "LLM server said {line:?}");
                status_line = false;
            } else if line == "\r\n" || line.is_empty() {
                break;
            } else if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        self.body
            .resize(length.expect("content-length in response"), 0);
        self.conn.read_exact(&mut self.body).expect("response body");
    }
}

/// One block's connections, opened before its timing starts.
struct Clients {
    tcp: TcpClient,
    http: HttpClient,
}

/// Per (workload, agent on) the ns/op of every routine call; criterion's
/// warm-up calls come first, its `SAMPLES` measured ones last.
type Samples = Arc<Mutex<HashMap<(Workload, bool), Vec<Vec<f64>>>>>;

struct Bench {
    echo_port: u16,
    llm_port: u16,
    samples: Samples,
}

impl Bench {
    /// Runs every workload once; returns how many HTTP POSTs were made.
    fn block(&self, c: &mut Criterion, round: usize, agent: Option<&Agent>) -> u64 {
        let on = agent.is_some();
        let mut http_posts = 0;
        let state = if on { "on" } else { "off" };
        let mut clients = Clients {
            tcp: TcpClient::connect(self.echo_port),
            http: HttpClient::connect(self.llm_port),
        };
        let ours: HashSet<u64> = if let Some(agent) = agent {
            programs_of(agent.guard.0.id())
        } else {
            let stray = agent_programs();
            if !stray.is_empty() {
                eprintln!(
                    "warning: {} tokenscope programs are loaded during an off-block \
                     (another agent is running): the off figures include them",
                    stray.len()
                );
            }
            HashSet::new()
        };
        for workload in Workload::ALL {
            let before = on.then(bpf_programs);
            let ops = Arc::new(Mutex::new(0u64));
            self.samples
                .lock()
                .expect("samples")
                .entry((workload, on))
                .or_default()
                .push(Vec::new());
            let mut group = c.benchmark_group(workload.name());
            group.bench_function(BenchmarkId::new(state, round), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        match workload {
                            Workload::Getppid => {
                                std::hint::black_box(std::os::unix::process::parent_id());
                            }
                            Workload::Tcp1k => clients.tcp.round_trip(),
                            Workload::HttpPost => clients.http.round_trip(),
                        }
                    }
                    let elapsed = start.elapsed();
                    *ops.lock().expect("ops") += iters;
                    if let Some(block) = self
                        .samples
                        .lock()
                        .expect("samples")
                        .get_mut(&(workload, on))
                        .and_then(|blocks| blocks.last_mut())
                    {
                        block.push(elapsed.as_nanos() as f64 / iters as f64);
                    }
                    elapsed
                })
            });
            group.finish();
            if let Some(before) = before {
                let deltas = program_deltas(&ours, &before, &bpf_programs());
                print_program_table(workload.name(), round, *ops.lock().expect("ops"), &deltas);
            }
            if workload == Workload::HttpPost {
                http_posts = *ops.lock().expect("ops");
            }
        }
        http_posts
    }
}

/// Ids of the programs one agent process holds, from the fdinfo of its file
/// descriptors: another agent on the node (another test run) has programs
/// of the same names, which must not count as this one's.
fn programs_of(pid: u32) -> HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|info| {
                    info.lines()
                        .find_map(|l| l.strip_prefix("prog_id:"))
                        .and_then(|id| id.trim().parse().ok())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Ids of the loaded programs the agent's probes are made of.
fn agent_programs() -> HashSet<u64> {
    const NAMES: &[&str] = &[
        "sock_send_length",
        "sock_recv_length",
        "inet_sock_set_state",
        "sched_process_exec",
        "sched_process_exit",
    ];
    bpf_programs()
        .into_iter()
        .filter(|(_, (name, _))| NAMES.contains(&name.as_str()) || name.starts_with("ssl_"))
        .map(|(id, _)| id)
        .collect()
}

fn print_program_table(
    workload: &str,
    round: usize,
    ops: u64,
    deltas: &BTreeMap<String, ProgStats>,
) {
    println!(
        "\neBPF programs during {workload} (agent on, round {round}, {ops} operations incl. warm-up):"
    );
    println!(
        "{:<24} {:>12} {:>10} {:>10}",
        "program", "runs", "runs/op", "ns/run"
    );
    let mut total = ProgStats::default();
    for (name, s) in deltas.iter().filter(|(_, s)| s.run_cnt > 0) {
        println!(
            "{name:<24} {:>12} {:>10.2} {:>10.1}",
            s.run_cnt,
            s.run_cnt as f64 / ops.max(1) as f64,
            s.run_time_ns as f64 / s.run_cnt as f64
        );
        total.run_cnt += s.run_cnt;
        total.run_time_ns += s.run_time_ns;
    }
    println!(
        "{:<24} {:>12} {:>10.2} {:>10.1}   ({:.1} ns of eBPF per operation)",
        "all",
        total.run_cnt,
        total.run_cnt as f64 / ops.max(1) as f64,
        total.run_time_ns as f64 / total.run_cnt.max(1) as f64,
        total.run_time_ns as f64 / ops.max(1) as f64
    );
}

fn llm_calls_total(agent: &Agent) -> u64 {
    agent
        .get("/metrics")
        .lines()
        .filter(|l| l.starts_with("tokenscope_llm_calls_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Whether the agent kept up: every POST is one call on each end. Waits for
/// the agent to drain its backlog before counting.
fn report_agent(agent: &Agent, http_posts: u64) {
    let at_end = llm_calls_total(agent);
    let started = Instant::now();
    let mut calls = at_end;
    while started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(2));
        let now = llm_calls_total(agent);
        if now == calls {
            break;
        }
        calls = now;
    }
    println!(
        "agent decoded {calls} of {} calls ({http_posts} POSTs, both ends); {at_end} when the \
         block ended, the rest {:.1} s later",
        2 * http_posts,
        started.elapsed().as_secs_f64()
    );
    let metrics = agent.get("/metrics");
    for line in metrics.lines().filter(|l| {
        [
            "tokenscope_capture_dropped_total",
            "tokenscope_capture_kernel_total{counter=\"ringbuf_full\"}",
            "tokenscope_streams_total",
            "tokenscope_process_cpu_seconds",
        ]
        .iter()
        .any(|p| l.starts_with(p))
    }) {
        println!("  {line}");
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// The measured samples (criterion's last `SAMPLES` calls) of every block.
fn measured(blocks: &[Vec<f64>]) -> Vec<f64> {
    blocks
        .iter()
        .flat_map(|b| b[b.len().saturating_sub(SAMPLES)..].iter().copied())
        .collect()
}

fn print_ratios(samples: &Samples) {
    let samples = samples.lock().expect("samples");
    println!(
        "\nagent on / agent off, medians of {} alternating blocks each:",
        rounds()
    );
    println!(
        "{:<12} {:>14} {:>14} {:>8} {:>12}   per block (off | on)",
        "workload", "off ns/op", "on ns/op", "on/off", "+ns/op"
    );
    for workload in Workload::ALL {
        let off = samples.get(&(workload, false)).cloned().unwrap_or_default();
        let on = samples.get(&(workload, true)).cloned().unwrap_or_default();
        let per_block = |blocks: &[Vec<f64>]| {
            blocks
                .iter()
                .map(|b| format!("{:.0}", median(measured(std::slice::from_ref(b)))))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let (m_off, m_on) = (median(measured(&off)), median(measured(&on)));
        println!(
            "{:<12} {:>14.1} {:>14.1} {:>8.3} {:>12.1}   {} | {}",
            workload.name(),
            m_off,
            m_on,
            m_on / m_off,
            m_on - m_off,
            per_block(&off),
            per_block(&on)
        );
    }
}

fn main() {
    if !ebpf_available() {
        eprintln!("capture bench skipped: it loads the probes, which needs root and kernel BTF");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let (_server, llm_port) = llm_server();
    let bench = Bench {
        echo_port: echo_server(),
        llm_port,
        samples: Samples::default(),
    };
    let mut loads = loads::Loads::start();
    let _stats = StatsGuard::enable();
    for round in 1..=rounds() {
        bench.block(&mut c, round, None);
        loads.block(round, None);
        let started = Instant::now();
        let agent = Agent::start_within(&[], Duration::from_secs(240));
        eprintln!("agent ready in {:.1} s", started.elapsed().as_secs_f64());
        let http_posts = bench.block(&mut c, round, Some(&agent));
        report_agent(&agent, http_posts);
        loads.block(round, Some(&agent));
        drop(agent);
    }
    print_ratios(&bench.samples);
    loads.print_ratios();
    c.final_summary();
}
