//! GPU accounting and the cost report end to end: the real agent, a local
//! inference server whose GPU use is replayed from NVML-shaped samples, and
//! `tokenscope report` over the agent's own events. Needs root (loads eBPF).

use std::{io::Write, process::Command, time::Duration};

use tokenscope_tests::*;

/// Replay samples: one GPU (a model no catalogue prices, so `--usd-per-gpu-hour`
/// applies), the server process at 50 % SM for `seconds` seconds.
fn replay_file(dir: &TempDir, server_pid: u32, seconds: u64) -> std::path::PathBuf {
    let path = dir.path().join("gpu.jsonl");
    let mut f = std::fs::File::create(&path).expect("replay file");
    let uuid = "GPU-00000000-1111-2222-3333-444444444444";
    for i in 0..=seconds {
        let line = serde_json::json!({
            "timestamp_unix_nano": 1_800_000_000_000_000_000u64 + i * 1_000_000_000,
            "devices": [{"index": 0, "uuid": uuid, "name": "Tokenscope Replay GPU 80GB",
                         "sm_util_pct": 50.0, "memory_used_bytes": 10u64 << 30,
                         "memory_total_bytes": 80u64 << 30, "power_w": 400.0,
                         "energy_mj": 1_000_000 + i * 400_000}],
            "processes": [{"pid": server_pid, "device": uuid, "sm_util_pct": 50.0,
                           "memory_used_bytes": 10u64 << 30}]
        });
        writeln!(f, "{line}").expect("write");
    }
    path
}

#[test]
fn self_hosted_calls_get_a_gpu_share_and_the_report_prices_them() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = LlmServer::start(false);
    let dir = TempDir::new("gpu");
    let replay = replay_file(&dir, server.guard.0.id(), 60);
    let agent = Agent::start(&[
        "--gpu",
        "replay",
        "--gpu-replay",
        replay.to_str().expect("utf-8 path"),
        "--usd-per-gpu-hour",
        "3.6",
        "--gpu-window-s",
        "4",
    ]);

    let url = format!("{}/v1/chat/completions", server.base());
    let mut pids = Vec::new();
    for (model, tokens) in [("llama-3.1-8b", "short"), ("gpt-4o", "plain")] {
        let body =
            format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"{tokens}"}}]}}"#);
        let out = Command::new("curl")
            .args([
                "-s",
                "-H",
                "content-type: application/json",
                "-d",
                &body,
                &url,
            ])
            .spawn()
            .expect("curl");
        pids.push(out.id());
        assert!(out.wait_with_output().expect("curl").status.success());
    }

    // The server's records wait for their GPU window, then carry a share.
    let server_pid = server.guard.0.id();
    let records = agent.wait_records("served calls with GPU shares", |r| {
        let served = by_pid(r, server_pid, "server");
        served.len() == 2 && served.iter().all(|s| s["gpu_seconds"].is_number())
    });
    let served = by_pid(&records, server_pid, "server");
    let mut total = 0.0;
    for s in &served {
        let gpu_seconds = s["gpu_seconds"].as_f64().expect("gpu_seconds");
        let cost = s["gpu_cost_usd"].as_f64().expect("cost");
        assert!(gpu_seconds > 0.0, "{s:#}");
        // $3.6 per GPU-hour is $0.001 per GPU-second.
        assert!((cost - gpu_seconds * 0.001).abs() < 1e-12, "{s:#}");
        assert!(s["gpu_energy_joules"].as_f64().expect("energy") > 0.0);
        total += gpu_seconds;
    }
    // Equal tokens, equal shares.
    let a = served[0]["gpu_seconds"].as_f64().unwrap_or(0.0);
    assert!((a * 2.0 - total).abs() < 1e-9, "{served:#?}");
    for pid in &pids {
        let client = by_pid(&records, *pid, "client");
        assert_eq!(client.len(), 1);
        assert_eq!(
            client[0]["gpu_share"], "on_server_record",
            "{:#}",
            client[0]
        );
        assert!(
            client[0]["gpu_seconds"].is_null(),
            "remote-style calls carry no GPU share"
        );
    }

    // Per-pod GPU use, whether or not calls were served.
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = agent.get("/metrics");
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("tokenscope_gpu_busy_seconds_total{")
                && l.contains(&format!("pod=\"pid:{server_pid} python3\""))
        })
        .unwrap_or_else(|| panic!("no GPU use for the server pod:\n{metrics}"));
    let used: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    assert!(used >= total - 1e-9, "{line} vs shares {total}");

    // The report reads the agent's events: the priced client call and the GPU-costed served ones.
    let report = run_ok(
        Command::new(agent_binary())
            .args(["report", "--format", "json", "--by", "model"])
            .arg(&agent.events),
    );
    let report: serde_json::Value = serde_json::from_str(&report).expect("report JSON");
    let text = report.to_string();
    assert!(
        text.contains("gpt-4o") && text.contains("llama-3.1-8b"),
        "{report:#}"
    );
}
