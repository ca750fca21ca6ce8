//! Debian's real `prometheus` scrapes a real agent every second, after real
//! calls (TLS through the openai SDK, HTTP 429s, an unpriced model, and
//! self-hosted calls whose GPU use is replayed). Every PromQL expression of
//! the Grafana dashboard and of the alert rules is then evaluated through
//! Prometheus's HTTP API and must parse and return data.
//!
//! An alert's condition usually filters its series away (nothing fires on a
//! healthy node), so each alert expression is evaluated twice: as written
//! (it must parse), and with `bool` after each comparison, which turns the
//! filter into a 0/1 value per watched series: that form must return data,
//! so every metric and label the alert relies on exists. The alerts this
//! load must set off (429 surge, unpriced model, and the agent down once it
//! is stopped) must return data as written.
//!
//! Needs root (the agent loads eBPF) and `prometheus` (Debian: apt-get
//! install -y prometheus); under `CI=true` a machine without them fails.

use std::{
    io::Write,
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tokenscope_tests::*;

const DASHBOARD: &str = include_str!("../../deploy/grafana/tokenscope.json");
const RULES: &str = include_str!("../../deploy/prometheus/rules.yaml");

fn prometheus_available() -> bool {
    let found = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "prometheus is missing (apt-get install -y prometheus) and CI=true forbids skipping"
        );
        eprintln!("skipping: prometheus not installed");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// GET over HTTP/1.0, so that the answer is never chunked; (status, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((code, body))
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

struct Prometheus {
    _guard: Guard,
    port: u16,
    _dir: TempDir,
}

impl Prometheus {
    /// Scrapes the agent every second under job "tokenscope" and evaluates
    /// `rules` (its groups' `interval: 1m` shortened to 1s for the test).
    fn start(agent_port: u16, rules: &str) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let rules = rules.replace("interval: 1m", "interval: 1s");
        std::fs::write(dir.path().join("rules.yaml"), rules).expect("rules");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - rules.yaml\nscrape_configs:\n  - job_name: tokenscope\n    static_configs:\n      - targets: ['127.0.0.1:{agent_port}']\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            _guard: Guard(child),
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(port, "/-/ready").is_none_or(|(code, _)| code != 200) {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready; log:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    fn log(&self) -> String {
        tail(
            &std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default(),
            30,
        )
    }

    /// `/api/v1/query`: `Ok(result)` or `Err(error)` as Prometheus says.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let (_, body) = get(self.port, &format!("/api/v1/query?query={}", encode(expr)))
            .expect("prometheus answers");
        let answer: Value = serde_json::from_str(&body).expect("JSON answer");
        if answer["status"] != "success" {
            return Err(format!("{}: {}", answer["errorType"], answer["error"]));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// What Prometheus holds of each metric `expr` names, for a failure message.
    fn series_of(&self, expr: &str) -> String {
        let mut names: Vec<String> = Vec::new();
        let mut current = String::new();
        for c in expr.chars().chain([' ']) {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                current.push(c);
            } else {
                if current.starts_with("tokenscope_") || current.contains(':') {
                    names.push(std::mem::take(&mut current));
                }
                current.clear();
            }
        }
        names
            .iter()
            .map(|name| {
                let series = self.query(name).map(|r| r.len()).unwrap_or_default();
                let two = self
                    .query(&format!("count_over_time({name}[1m]) >= 2"))
                    .map(|r| r.len())
                    .unwrap_or_default();
                format!("{name}: {series} series, {two} with 2+ samples in 1m")
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn wait_for(&self, what: &str, expr: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Ok(result) = self.query(expr) {
                if !result.is_empty() {
                    return result;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{what}: `{expr}` returned nothing in 40 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// `expr` with `bool` after every comparison operator outside label
/// matchers, ranges and strings: the condition as a 0/1 value per series.
fn with_bool(expr: &str) -> String {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::new();
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut index = 0;
    while let Some(&c) = chars.get(index) {
        out.push(c);
        index += 1;
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            '>' | '<' | '=' | '!' if depth == 0 => {
                let next = chars.get(index).copied();
                let operator = match (c, next) {
                    ('=' | '!' | '>' | '<', Some('=')) => {
                        out.push('=');
                        index += 1;
                        true
                    }
                    ('>' | '<', _) => true,
                    _ => false,
                };
                let rest: String = chars[index..].iter().collect();
                if operator && !rest.trim_start().starts_with("bool") {
                    out.push_str(" bool");
                }
            }
            _ => {}
        }
    }
    out
}

/// Every PromQL expression of the dashboard, with Grafana's variables as the
/// dashboard's "All" selection over the last 10 minutes sets them.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .expect("target expr")
                .replace("$__rate_interval", "1m")
                .replace("$__range", "10m")
                .replace("$team", ".*");
            assert!(!expr.contains('$'), "unsubstituted variable in {expr}");
            out.push((panel["title"].as_str().unwrap_or_default().to_owned(), expr));
        }
    }
    out
}

/// (name, expression, is an alert) of every rule, read with PyYAML.
fn rules() -> Vec<(String, String, bool)> {
    let mut python = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (apt-get install -y python3-yaml)");
    python
        .stdin
        .take()
        .expect("stdin")
        .write_all(RULES.as_bytes())
        .expect("write rules");
    let out = python.wait_with_output().expect("python3");
    assert!(out.status.success(), "PyYAML cannot read rules.yaml");
    let rules: Value = serde_json::from_slice(&out.stdout).expect("rules JSON");
    let mut list = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let alert = rule["alert"].as_str();
            let name = alert
                .or(rule["record"].as_str())
                .expect("alert or record name");
            let expr = rule["expr"].as_str().expect("expr").trim().to_owned();
            list.push((name.to_owned(), expr, alert.is_some()));
        }
    }
    list
}

/// Replay samples: the self-hosted server at 50 % SM use for two minutes.
fn replay_file(dir: &TempDir, server_pid: u32) -> std::path::PathBuf {
    let path = dir.path().join("gpu.jsonl");
    let mut file = std::fs::File::create(&path).expect("replay file");
    let uuid = "GPU-00000000-1111-2222-3333-444444444444";
    for i in 0..=120u64 {
        let line = serde_json::json!({
            "timestamp_unix_nano": 1_800_000_000_000_000_000u64 + i * 1_000_000_000,
            "devices": [{"index": 0, "uuid": uuid, "name": "NVIDIA H100 80GB HBM3",
                         "sm_util_pct": 50.0, "memory_used_bytes": 10u64 << 30,
                         "memory_total_bytes": 80u64 << 30, "power_w": 400.0,
                         "energy_mj": 1_000_000 + i * 400_000}],
            "processes": [{"pid": server_pid, "device": uuid, "sm_util_pct": 50.0,
                           "memory_used_bytes": 10u64 << 30}]
        });
        writeln!(file, "{line}").expect("write");
    }
    path
}

fn curl_call(url: &str, model: &str) -> u32 {
    let child = Command::new("curl")
        .args(["-sk", "-H", "content-type: application/json", "-d"])
        .arg(format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#
        ))
        .arg(url)
        .stdout(Stdio::null())
        .spawn()
        .expect("curl");
    let pid = child.id();
    assert!(child.wait_with_output().expect("curl").status.success());
    pid
}

#[test]
fn every_dashboard_and_alert_expression_returns_data_from_a_real_agent() {
    if !ebpf_available() || !prometheus_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let tls = LlmServer::start(true);
    let served = LlmServer::start(false);
    let dir = TempDir::new("prometheus-gpu");
    let replay = replay_file(&dir, served.guard.0.id());
    let mut agent = Agent::start(&[
        "--gpu",
        "replay",
        "--gpu-replay",
        replay.to_str().expect("utf-8 path"),
        "--usd-per-gpu-hour",
        "3.6",
        "--gpu-window-s",
        "2",
    ]);
    let prometheus = Prometheus::start(agent.port, RULES);

    // Real calls: the openai SDK over TLS (plain and streamed, for TTFT),
    // 429s, a model no catalogue prices, and self-hosted calls.
    let mut client_pids = Vec::new();
    for mode in ["plain", "stream"] {
        let child = Command::new(python())
            .arg(root().join("tests/clients/openai_chat.py"))
            .args([&tls.base(), mode])
            .stdout(Stdio::null())
            .spawn()
            .expect("python");
        client_pids.push(child.id());
        assert!(child.wait_with_output().expect("python").status.success());
    }
    let tls_url = format!("{}/v1/chat/completions", tls.base());
    // The 429s in two rounds, the first scraped before the second: a series
    // born with all its calls counted shows no rate() for the alert to see.
    for round in 1..=2usize {
        for _ in 0..10 {
            client_pids.push(curl_call(&tls_url, "rate-limited"));
        }
        prometheus.wait_for(
            "a round of 429s scraped",
            &format!(
                "sum(tokenscope_llm_rate_limited_calls_total{{side=\"client\"}}) >= {}",
                10 * round
            ),
        );
    }
    // No catalogue prices a self-hosted llama.
    client_pids.push(curl_call(&tls_url, "llama-3.1-8b"));
    // Self-hosted calls in two rounds: a counter series is born with its
    // first call's value, which rate() cannot see; the second round's GPU
    // cost is what the $/1M tokens panel shows.
    let served_url = format!("{}/v1/chat/completions", served.base());
    let served_pid = served.guard.0.id();
    for round in 1..=2usize {
        for model in ["llama-3.1-8b", "llama-3.1-8b"] {
            client_pids.push(curl_call(&served_url, model));
        }
        agent.wait_records("self-hosted calls with their GPU share", |records| {
            by_pid(records, served_pid, "server")
                .iter()
                .filter(|r| r["gpu_seconds"].as_f64().is_some_and(|g| g > 0.0))
                .count()
                >= 2 * round
        });
        prometheus.wait_for(
            "the GPU cost of served calls scraped",
            &format!(
                "count_over_time(tokenscope_llm_gpu_cost_usd_total[1m]) >= {}",
                1 + round
            ),
        );
    }
    let last = *client_pids.last().expect("calls");
    agent.wait_records("every call", |records| {
        !by_pid(records, last, "client").is_empty()
    });

    // Prometheus has scraped the agent after the calls, the GPU share and
    // the 429s included, and evaluated the rules at least once.
    prometheus.wait_for(
        "429s scraped",
        "sum(tokenscope_llm_rate_limited_calls_total{side=\"client\"}) >= 20",
    );
    prometheus.wait_for(
        "GPU cost of served calls rising",
        "sum(rate(tokenscope_llm_gpu_cost_usd_total[1m])) > 0",
    );
    prometheus.wait_for(
        "GPU busy seconds scraped",
        "sum(tokenscope_gpu_busy_seconds_total) > 0",
    );
    prometheus.wait_for(
        "recording rules evaluated",
        "team:tokenscope_llm_cost_usd:rate1h",
    );
    prometheus.wait_for(
        "two scrapes after the GPU share",
        "count_over_time(tokenscope_gpu_busy_seconds_total[1m]) >= 2",
    );

    let mut failures = Vec::new();
    let queries = dashboard_queries();
    for (title, expr) in &queries {
        match prometheus.query(expr) {
            Ok(result) if result.is_empty() => failures.push(format!(
                "{title}: no data: {expr}\n  {}",
                prometheus.series_of(expr)
            )),
            Ok(_) => {}
            Err(error) => failures.push(format!("{title}: {error}: {expr}")),
        }
    }
    let rules = rules();
    for (name, expr, alert) in &rules {
        let evaluated = if *alert {
            with_bool(expr)
        } else {
            expr.clone()
        };
        if let Err(error) = prometheus.query(expr) {
            failures.push(format!("{name}: {error}: {expr}"));
        }
        match prometheus.query(&evaluated) {
            Ok(result) if result.is_empty() => failures.push(format!(
                "{name}: no data: {evaluated}\n  {}",
                prometheus.series_of(expr)
            )),
            Ok(_) => {}
            Err(error) => failures.push(format!("{name}: {error}: {evaluated}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Figures that must be more than present.
    let value = |expr: &str| -> f64 {
        let result = prometheus.query(expr).unwrap_or_else(|e| panic!("{e}"));
        result
            .iter()
            .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
            .fold(0.0, f64::max)
    };
    let per_million = queries
        .iter()
        .find(|(title, _)| title.contains("1M tokens"))
        .map(|(_, expr)| value(expr))
        .expect("self-hosted panel");
    assert!(
        per_million.is_finite() && per_million > 0.0,
        "self-hosted USD per 1M tokens: {per_million}"
    );
    let rules_by_name = |wanted: &str| {
        rules
            .iter()
            .find(|(name, _, _)| name == wanted)
            .map(|(_, expr, _)| expr.clone())
            .unwrap_or_else(|| panic!("no rule {wanted}"))
    };
    for fires in ["TokenscopeRateLimitSpike", "TokenscopeUnpricedModel"] {
        let expr = rules_by_name(fires);
        let result = prometheus.query(&expr).unwrap_or_else(|e| panic!("{e}"));
        assert!(!result.is_empty(), "{fires} does not fire: {expr}");
        if fires == "TokenscopeUnpricedModel" {
            // The 429s have no tokens to price: they are not "unpriced".
            let models: Vec<&Value> = result
                .iter()
                .map(|r| &r["metric"]["request_model"])
                .collect();
            assert_eq!(models, vec!["llama-3.1-8b"], "{result:?}");
        }
    }

    // The agent goes away: its scrape fails and TokenscopeAgentDown's
    // condition holds.
    let stopped = Command::new("kill")
        .args(["-TERM", &agent.guard.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(stopped.success());
    let _ = agent.guard.0.wait();
    let down = rules_by_name("TokenscopeAgentDown");
    prometheus.wait_for("the agent seen down", &down);
    drop(agent);
    eprintln!(
        "{} dashboard queries and {} rules returned data; {:.1} s",
        queries.len(),
        rules.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn bool_goes_after_comparisons_outside_matchers() {
    assert_eq!(
        with_bool("rate(x{a!=\"b\", c=~\"d\"}[5m]) > 0.2 and on (t) y >= 1"),
        "rate(x{a!=\"b\", c=~\"d\"}[5m]) > bool 0.2 and on (t) y >= bool 1"
    );
    assert_eq!(with_bool("up{job=\"x\"} == 0"), "up{job=\"x\"} == bool 0");
    assert_eq!(with_bool("a > bool 1"), "a > bool 1");
    assert_eq!(with_bool("a\n  > on (team)\nb"), "a\n  > bool on (team)\nb");
}
