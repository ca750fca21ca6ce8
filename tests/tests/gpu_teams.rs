//! An inference server's GPU time charged to the teams that called it, end
//! to end: a real server process in the `vllm-0` pod's cgroup, two client
//! pods (teams `nlp` and `ml-platform`, a fake Kubernetes API) calling it
//! over loopback from their pod IPs in unequal token amounts while the agent
//! runs, and the server's GPU use replayed with its real pid. Each served
//! call's GPU-seconds and cost are checked against the test's own split of
//! the replay it wrote. Needs root (probes, cgroups, loopback addresses).

mod gpu_support;

use std::process::{Command, Stdio};

use gpu_support::*;
use tokenscope_tests::kube::{CgroupDriver, FakeApi, PodCgroup};
use tokenscope_tests::*;

/// Fixed usage the test server reports per call (tests/servers/fake_llm.py).
const TOKENS_PER_CALL: f64 = 21.0 + 7.0;
/// The price the test's own catalogue gives the replayed GPU model: $7.2 per
/// GPU-hour, which wins over `--usd-per-gpu-hour 3.6`.
const USD_PER_GPU_SECOND: f64 = 0.002;

/// A pod IP on the loopback device, so a client can call from it; removed on drop.
struct LoopbackAddress(String);

impl LoopbackAddress {
    fn add(ip: &str) -> LoopbackAddress {
        let status = Command::new("ip")
            .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
            .stderr(Stdio::null())
            .status()
            .expect("ip addr add");
        assert!(status.success() || has_address(ip), "cannot put {ip} on lo");
        LoopbackAddress(ip.to_owned())
    }
}

fn has_address(ip: &str) -> bool {
    run_ok(Command::new("ip").args(["-o", "addr", "show", "dev", "lo"])).contains(&format!("{ip}/"))
}

impl Drop for LoopbackAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.0), "dev", "lo"])
            .status();
    }
}

/// The test server started inside a pod's cgroup; (guard, port).
fn server_in(cgroup: &PodCgroup) -> (Guard, u16) {
    spawn_fake_llm(
        cgroup
            .command("python3")
            .arg(root().join("tests/servers/fake_llm.py")),
    )
}

#[test]
fn served_gpu_time_is_charged_to_the_calling_teams_by_tokens() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let api = FakeApi::start();
    let vllm = api.pod("vllm-0");
    let nlp = api.pod("embed-nightly-29412360-q8z7m");
    let platform = api.pod("chat-api-7d9f8b6c5d-x2k4p");
    let server_cg = PodCgroup::for_pod(CgroupDriver::ContainerdSystemd, &vllm);
    let nlp_cg = PodCgroup::for_pod(CgroupDriver::ContainerdSystemd, &nlp);
    let platform_cg = PodCgroup::for_pod(CgroupDriver::ContainerdSystemd, &platform);
    let nlp_ip = nlp.ip.clone().expect("pod IP");
    let platform_ip = platform.ip.clone().expect("pod IP");
    let _addresses = [
        LoopbackAddress::add(&nlp_ip),
        LoopbackAddress::add(&platform_ip),
    ];
    let (server, port) = server_in(&server_cg);
    let server_pid = server.0.id();

    let dir = TempDir::new("gpu-teams");
    let fifo = dir.path().join("gpu.fifo");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let flag = format!("replay:{}", fifo.display());
    let prices = dir.path().join("prices.toml");
    std::fs::write(
        &prices,
        format!("[gpu.\"{GPU_NAME}\"]\nusd_per_hour = 7.2\n"),
    )
    .expect("prices");
    // One accounting window for the whole test: the shares are settled when the agent stops.
    let mut agent = api.start_agent(&[
        "--gpu",
        &flag,
        "--gpu-interval-ms",
        INTERVAL_MS,
        "--gpu-window-s",
        "3600",
        "--usd-per-gpu-hour",
        "3.6",
        "--prices",
        prices.to_str().expect("utf-8 path"),
    ]);
    api.wait_watching();

    // Team nlp makes three calls, team ml-platform one: 84 tokens against 28.
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let mut clients = Vec::new();
    for (cgroup, ip, calls) in [(&nlp_cg, &nlp_ip, 3), (&platform_cg, &platform_ip, 1)] {
        for _ in 0..calls {
            let body = r#"{"model":"llama-3.1-8b","messages":[{"role":"user","content":"hi"}]}"#;
            let out = cgroup
                .command("curl")
                .args([
                    "-s",
                    "--interface",
                    ip,
                    "-H",
                    "content-type: application/json",
                    "-d",
                    body,
                    &url,
                ])
                .output()
                .expect("curl");
            assert!(out.status.success(), "curl from {ip}: {out:?}");
            assert!(String::from_utf8_lossy(&out.stdout).contains("chatcmpl"));
        }
        clients.push(ip.clone());
    }

    // The server's GPU use: 50 % SM for 5 s, 300 W.
    let lines: Vec<Line> = (0..=10)
        .map(|i| {
            let t = f64::from(i) * 0.5;
            Line::Sample {
                t_s: t,
                device_sm_pct: 50.0,
                energy_j: 2_000.0 + 300.0 * t,
                procs: vec![Proc {
                    pid: server_pid,
                    sm_pct: 50.0,
                    mem_gib: 16,
                }],
            }
        })
        .collect();
    write_fifo(&fifo, &lines.iter().map(line_json).collect::<Vec<_>>());
    let text = wait_replay_done(&agent);
    let e = expected(&lines);
    let server_busy = e.busy.get(&server_pid).copied().unwrap_or(0.0);
    let server_energy = e.energy.get(&server_pid).copied().unwrap_or(0.0);
    close(server_busy, 2.5, "test's own server busy time");
    // The server pod's own GPU use, under its pod and team.
    close(
        metric(
            &text,
            "tokenscope_gpu_busy_seconds_total",
            &[("pod", "vllm-0"), ("team", "serving")],
        ),
        server_busy,
        "server pod busy",
    );

    // Stop the agent: the window closes and the held calls go out with their shares.
    run_ok(Command::new("kill").args(["-TERM", &agent.guard.0.id().to_string()]));
    let status = agent.guard.0.wait().expect("agent exit");
    assert!(
        status.success(),
        "agent exit: {status:?}\n{}",
        tail(&agent.log_text(), 40)
    );
    let records = agent.records();
    let served = by_pid(&records, server_pid, "server");
    assert_eq!(served.len(), 4, "{served:#?}");
    let total_tokens = 4.0 * TOKENS_PER_CALL;
    for (team, calls) in [("nlp", 3.0), ("ml-platform", 1.0)] {
        let mine: Vec<_> = served.iter().filter(|r| r["team"] == team).collect();
        assert_eq!(mine.len() as f64, calls, "{team}: {served:#?}");
        let seconds: f64 = mine.iter().filter_map(|r| r["gpu_seconds"].as_f64()).sum();
        let joules: f64 = mine
            .iter()
            .filter_map(|r| r["gpu_energy_joules"].as_f64())
            .sum();
        let cost: f64 = mine.iter().filter_map(|r| r["gpu_cost_usd"].as_f64()).sum();
        let share = calls * TOKENS_PER_CALL / total_tokens;
        close(seconds, server_busy * share, &format!("{team} GPU-seconds"));
        close(joules, server_energy * share, &format!("{team} GPU energy"));
        close(
            cost,
            server_busy * share * USD_PER_GPU_SECOND,
            &format!("{team} GPU cost"),
        );
        for r in &mine {
            let record_cost = r["cost_usd"].as_f64().expect("cost_usd");
            let gpu_cost = r["gpu_cost_usd"].as_f64().expect("gpu cost");
            assert!(
                record_cost >= gpu_cost - 1e-12,
                "cost_usd carries the GPU part: {r:#}"
            );
            assert_eq!(r["k8s"]["pod"], "vllm-0");
            assert_eq!(r["gpu_share"], "apportioned");
        }
    }
    // The clients' own records point at the server's: its node is this one.
    let calls_from_pods = records
        .iter()
        .filter(|r| r["side"] == "client" && r["server_port"] == port)
        .collect::<Vec<_>>();
    assert!(calls_from_pods.len() >= 4, "{calls_from_pods:#?}");
    for r in &calls_from_pods {
        assert_eq!(r["gpu_share"], "on_server_record", "{r:#}");
        assert!(r["gpu_seconds"].is_null());
    }
    // Shares add up to the server's own busy time (nothing lost, nothing made up).
    let all: f64 = served
        .iter()
        .filter_map(|r| r["gpu_seconds"].as_f64())
        .sum();
    assert!(
        (all - server_busy).abs() <= 0.01 * server_busy,
        "{all} vs {server_busy}"
    );
    drop(server);
}
