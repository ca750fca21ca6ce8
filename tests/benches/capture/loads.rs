//! Loads run as their own processes, timed by themselves, in the same
//! alternating off/on blocks as the criterion workloads:
//!
//! - `tls_memorybio`: in-memory TLS in Python with the system libssl
//!   (SSL_write_ex/SSL_read_ex, no socket): the time the TLS probes add per
//!   SSL call.
//! - `tls_node`: a loopback TLS echo loop in Node (`tls.connect`, Node's own
//!   OpenSSL): per round trip of 4 SSL calls and 4 socket calls.
//! - `nginx_http`: wrk against nginx serving a 1 KiB file over plain HTTP,
//!   traffic the agent classifies as not LLM and mutes in the kernel.
//! - `nginx_https`: the same over TLS, a loopback TLS request loop.
//!
//! During on-blocks each load also reports the agent's CPU (utime + stime
//! from /proc/<pid>/stat, as a share of one core over the load's wall time)
//! and its resident memory after the load. The timed runs have
//! `kernel.bpf_stats_enabled` off; a second, shorter run with it on gives
//! the eBPF run time per program.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tokenscope_tests::{root, Agent, Guard, TempDir, TlsFiles};

use super::{bpf_programs, median, print_program_table, program_deltas, programs_of, set_stats};

const SECONDS: f64 = 4.0;
/// The run that counts eBPF time, after each timed on-run.
const STATS_SECONDS: f64 = 2.0;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Load {
    TlsMemoryBio,
    TlsNode,
    NginxHttp,
    NginxHttps,
}

impl Load {
    const ALL: [Load; 4] = [
        Load::TlsMemoryBio,
        Load::TlsNode,
        Load::NginxHttp,
        Load::NginxHttps,
    ];

    fn name(self) -> &'static str {
        match self {
            Load::TlsMemoryBio => "tls_memorybio",
            Load::TlsNode => "tls_node",
            Load::NginxHttp => "nginx_http",
            Load::NginxHttps => "nginx_https",
        }
    }

    /// What one operation is, for the table.
    fn op(self) -> &'static str {
        match self {
            Load::TlsMemoryBio => "SSL call",
            Load::TlsNode => "round trip",
            Load::NginxHttp | Load::NginxHttps => "request",
        }
    }
}

/// One measured run: operations and wall time.
#[derive(Clone, Copy, Debug)]
struct Run {
    ops: f64,
    ns: f64,
}

impl Run {
    fn ns_per_op(self) -> f64 {
        self.ns / self.ops.max(1.0)
    }
    fn per_s(self) -> f64 {
        self.ops / (self.ns / 1e9)
    }
}

/// The agent's share of one core and its resident memory during one load.
#[derive(Clone, Copy, Debug, Default)]
struct AgentUse {
    cpu_share: f64,
    rss_mib: f64,
}

pub struct Loads {
    tls: TlsFiles,
    _nginx: Option<Guard>,
    http_port: u16,
    https_port: u16,
    _dir: TempDir,
    runs: HashMap<(Load, bool), Vec<Run>>,
    agent_use: HashMap<Load, Vec<AgentUse>>,
    missing: Vec<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Loads {
    pub fn start() -> Loads {
        let tls = TlsFiles::self_signed();
        let dir = TempDir::new("nginx");
        let (http_port, https_port) = (free_port(), free_port());
        let mut missing = Vec::new();
        let nginx = if have("nginx") && have("wrk") {
            Some(start_nginx(dir.path(), &tls, http_port, https_port))
        } else {
            missing.push(
                "nginx_http and nginx_https need nginx and wrk (apt-get install nginx wrk)".into(),
            );
            None
        };
        Loads {
            tls,
            _nginx: nginx,
            http_port,
            https_port,
            _dir: dir,
            runs: HashMap::new(),
            agent_use: HashMap::new(),
            missing,
        }
    }

    fn available(&self, load: Load) -> bool {
        match load {
            Load::NginxHttp | Load::NginxHttps => self._nginx.is_some(),
            Load::TlsMemoryBio | Load::TlsNode => true,
        }
    }

    fn run(&self, load: Load, seconds: f64) -> Run {
        let secs = seconds;
        let seconds = seconds.to_string();
        let out = match load {
            Load::TlsMemoryBio => Command::new("python3")
                .arg(root().join("tests/benches/capture/tls_memorybio.py"))
                .arg(&self.tls.cert)
                .arg(&self.tls.key)
                .arg(&seconds)
                .output(),
            Load::TlsNode => Command::new("node")
                .arg(root().join("tests/benches/capture/tls_loop.mjs"))
                .arg(&self.tls.cert)
                .arg(&self.tls.key)
                .arg(&seconds)
                .output(),
            Load::NginxHttp | Load::NginxHttps => {
                let url = if load == Load::NginxHttp {
                    format!("http://127.0.0.1:{}/page.html", self.http_port)
                } else {
                    format!("https://127.0.0.1:{}/page.html", self.https_port)
                };
                Command::new("wrk")
                    .args(["-t2", "-c16", &format!("-d{}s", secs.ceil() as u64), &url])
                    .output()
            }
        }
        .unwrap_or_else(|e| panic!("{}: {e}", load.name()));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{} failed: {text}{}",
            load.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        match load {
            Load::TlsMemoryBio | Load::TlsNode => {
                let v: Value = serde_json::from_str(text.trim())
                    .unwrap_or_else(|e| panic!("{}: {e}: {text}", load.name()));
                Run {
                    ops: v["ops"].as_f64().expect("ops"),
                    ns: v["ns"].as_f64().expect("ns"),
                }
            }
            Load::NginxHttp | Load::NginxHttps => {
                // "  123456 requests in 4.00s, 150.00MB read"
                let line = text
                    .lines()
                    .find(|l| l.contains(" requests in "))
                    .unwrap_or_else(|| panic!("wrk said {text}"));
                let mut words = line.split_whitespace();
                let ops: f64 = words.next().and_then(|w| w.parse().ok()).expect("requests");
                let secs = words
                    .nth(2)
                    .and_then(|w| {
                        w.trim_end_matches(',')
                            .strip_suffix('s')?
                            .parse::<f64>()
                            .ok()
                    })
                    .expect("duration");
                assert!(
                    !text.contains("Non-2xx"),
                    "{}: nginx answered errors: {text}",
                    load.name()
                );
                Run {
                    ops,
                    ns: secs * 1e9,
                }
            }
        }
    }

    /// Runs every load once, with the agent on or off.
    pub fn block(&mut self, round: usize, agent: Option<&Agent>) {
        let ours = agent
            .map(|a| programs_of(a.guard.0.id()))
            .unwrap_or_default();
        let loads: Vec<Load> = Load::ALL
            .into_iter()
            .filter(|l| self.available(*l))
            .collect();
        for load in loads {
            let before_cpu = agent.map(|a| cpu_ticks(a.guard.0.id()));
            set_stats(false);
            let started = Instant::now();
            let run = self.run(load, SECONDS);
            let wall = started.elapsed();
            set_stats(true);
            println!(
                "{} round {round} agent {}: {:.0} {}s in {:.2} s, {:.1} ns per {}",
                load.name(),
                if agent.is_some() { "on" } else { "off" },
                run.ops,
                load.op(),
                run.ns / 1e9,
                run.ns_per_op(),
                load.op()
            );
            self.runs
                .entry((load, agent.is_some()))
                .or_default()
                .push(run);
            if let (Some(agent), Some(before_cpu)) = (agent, before_cpu) {
                let pid = agent.guard.0.id();
                let used = AgentUse {
                    cpu_share: ticks_to_s(cpu_ticks(pid) - before_cpu) / wall.as_secs_f64(),
                    rss_mib: rss_kib(pid) / 1024.0,
                };
                println!(
                    "  agent during {}: {:.1} % of one core, RSS {:.1} MiB",
                    load.name(),
                    used.cpu_share * 100.0,
                    used.rss_mib
                );
                self.agent_use.entry(load).or_default().push(used);
                let before_progs = bpf_programs();
                let counted = self.run(load, STATS_SECONDS);
                let deltas = program_deltas(&ours, &before_progs, &bpf_programs());
                print_program_table(load.name(), round, counted.ops as u64, &deltas);
            }
        }
    }

    pub fn print_ratios(&self) {
        println!("\nloads, agent on / agent off, medians of the alternating blocks:");
        println!(
            "{:<14} {:>12} {:>12} {:>13} {:>13} {:>9} {:>12} {:>10} {:>9}",
            "load",
            "off ops/s",
            "on ops/s",
            "off ns/op",
            "on ns/op",
            "on/off",
            "+ns/op",
            "agent CPU",
            "agent RSS"
        );
        for load in Load::ALL {
            let off = self.runs.get(&(load, false)).cloned().unwrap_or_default();
            let on = self.runs.get(&(load, true)).cloned().unwrap_or_default();
            if off.is_empty() || on.is_empty() {
                continue;
            }
            let ns = |runs: &[Run]| median(runs.iter().map(|r| r.ns_per_op()).collect());
            let rate = |runs: &[Run]| median(runs.iter().map(|r| r.per_s()).collect());
            let uses = self.agent_use.get(&load).cloned().unwrap_or_default();
            let cpu = median(uses.iter().map(|u| u.cpu_share).collect());
            let rss = uses.iter().map(|u| u.rss_mib).fold(0.0, f64::max);
            println!(
                "{:<14} {:>12.0} {:>12.0} {:>13.1} {:>13.1} {:>9.3} {:>12.1} {:>9.1}% {:>6.1} MiB   ({} per op)",
                load.name(),
                rate(&off),
                rate(&on),
                ns(&off),
                ns(&on),
                rate(&on) / rate(&off),
                ns(&on) - ns(&off),
                cpu * 100.0,
                rss,
                load.op()
            );
        }
        if let (Some(off), Some(on)) = (
            self.runs.get(&(Load::TlsNode, false)),
            self.runs.get(&(Load::TlsNode, true)),
        ) {
            let added = median(on.iter().map(|r| r.ns_per_op()).collect())
                - median(off.iter().map(|r| r.ns_per_op()).collect());
            println!(
                "tls_node: {:.2} us added per SSL call at most (a round trip is 4 SSL calls and 4 socket calls)",
                added / 4.0 / 1e3
            );
        }
        if let (Some(off), Some(on)) = (
            self.runs.get(&(Load::NginxHttp, false)),
            self.runs.get(&(Load::NginxHttp, true)),
        ) {
            let (off, on) = (
                median(off.iter().map(|r| r.per_s()).collect()),
                median(on.iter().map(|r| r.per_s()).collect()),
            );
            println!(
                "nginx_http: throughput loss with the agent {:.1} % (target < 5 %)",
                (1.0 - on / off) * 100.0
            );
        }
        for m in &self.missing {
            println!("not run: {m}");
        }
    }
}

/// One nginx process (`master_process off`): with a master, nginx maps
/// shared memory that /proc/<pid>/maps shows as `/dev/zero (deleted)`, and
/// the agent's TLS scanner then reads /dev/zero without end and never gets
/// ready (an agent bug, reported).
fn start_nginx(dir: &Path, tls: &TlsFiles, http_port: u16, https_port: u16) -> Guard {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::create_dir_all(dir.join("tmp")).expect("nginx tmp");
    std::fs::write(www.join("page.html"), "x".repeat(1023) + "\n").expect("page");
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir}/tmp;\n  proxy_temp_path {dir}/tmp;\n\
           fastcgi_temp_path {dir}/tmp;\n  uwsgi_temp_path {dir}/tmp;\n  scgi_temp_path {dir}/tmp;\n\
           server {{ listen 127.0.0.1:{http_port}; root {www}; }}\n\
           server {{ listen 127.0.0.1:{https_port} ssl; root {www};\n\
             ssl_certificate {cert}; ssl_certificate_key {key}; }}\n}}\n",
        dir = dir.display(),
        www = www.display(),
        cert = tls.cert.display(),
        key = tls.key.display(),
    );
    let conf_path: PathBuf = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("nginx.conf");
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx");
    let guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", https_port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    guard
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces, start at field 3.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

fn ticks_to_s(ticks: u64) -> f64 {
    // CLK_TCK is 100 on Linux x86_64 and arm64.
    ticks as f64 / 100.0
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0)
}
