//! GPU accounting end to end: the real agent (probes loaded, so root) reads
//! replays that this test writes with the real pids of processes it started,
//! and its Prometheus figures are checked against what the test integrates
//! on its own from the same samples: two pods sharing one GPU (real pod
//! cgroups and a fake Kubernetes API), a MIG device, missing samples, NVML
//! errors midway, and a node without NVML.

mod gpu_support;

use std::process::Command;

use gpu_support::*;
use serde_json::json;
use tokenscope_tests::kube::{CgroupDriver, FakeApi, PodCgroup};
use tokenscope_tests::*;

/// $3.6 per GPU-hour: $0.001 per GPU-second.
const USD_PER_GPU_HOUR: &str = "3.6";
const USD_PER_GPU_SECOND: f64 = 0.001;

fn pid_pod(pid: u32, comm: &str) -> String {
    format!("pid:{pid} {comm}")
}

/// Per-pod busy, held, energy and idle waste, and the device's idle, as the agent shows them.
fn check_pod(text: &str, pod: &str, e: &Expected, pid: u32) {
    let at = [("pod", pod)];
    let get = |family: &str| metric(text, family, &at);
    let want = |m: &std::collections::BTreeMap<u32, f64>| m.get(&pid).copied().unwrap_or(0.0);
    close(
        get("tokenscope_gpu_busy_seconds_total"),
        want(&e.busy),
        &format!("{pod} busy"),
    );
    close(
        get("tokenscope_gpu_held_seconds_total"),
        want(&e.held),
        &format!("{pod} held"),
    );
    close(
        get("tokenscope_gpu_idle_held_seconds_total"),
        want(&e.idle_held),
        &format!("{pod} idle waste"),
    );
    close(
        get("tokenscope_gpu_idle_held_cost_usd_total"),
        want(&e.idle_held) * USD_PER_GPU_SECOND,
        &format!("{pod} idle waste USD"),
    );
    close(
        get("tokenscope_gpu_busy_cost_usd_total"),
        want(&e.busy) * USD_PER_GPU_SECOND,
        &format!("{pod} busy USD"),
    );
    close(
        get("tokenscope_gpu_energy_joules_total"),
        want(&e.energy),
        &format!("{pod} energy"),
    );
}

/// Attributed shares plus idle are the device totals, within 1 %.
fn check_device(text: &str, e: &Expected) {
    let dev = [("hw_id", GPU_UUID)];
    let wall = metric(text, "tokenscope_gpu_device_seconds_total", &dev);
    let idle = metric(text, "tokenscope_gpu_idle_seconds_total", &dev);
    let energy = metric(text, "tokenscope_gpu_device_energy_joules_total", &dev);
    let idle_energy = metric(text, "tokenscope_gpu_idle_energy_joules_total", &dev);
    close(wall, e.wall, "device seconds");
    close(idle, e.idle, "device idle seconds");
    close(energy, e.device_energy, "device energy");
    close(idle_energy, e.idle_energy, "device idle energy");
    let busy = metric(text, "tokenscope_gpu_busy_seconds_total", &[]);
    let pod_energy = metric(text, "tokenscope_gpu_energy_joules_total", &[]);
    assert!(
        (busy + idle - wall).abs() <= 0.01 * wall,
        "busy {busy} + idle {idle} vs device {wall}"
    );
    assert!(
        (pod_energy + idle_energy - energy).abs() <= 0.01 * energy,
        "pods {pod_energy} J + idle {idle_energy} J vs device {energy} J"
    );
}

#[test]
fn two_pods_share_one_gpu() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let api = FakeApi::start();
    // embed-nightly: team nlp (pod label); chat-api: team ml-platform (namespace label).
    let embed = api.pod("embed-nightly-29412360-q8z7m");
    let chat = api.pod("chat-api-7d9f8b6c5d-x2k4p");
    let embed_cg = PodCgroup::for_pod(CgroupDriver::ContainerdSystemd, &embed);
    let chat_cg = PodCgroup::for_pod(CgroupDriver::ContainerdSystemd, &chat);
    let a = idle_process(&mut embed_cg.command("sleep"));
    let b = idle_process(&mut chat_cg.command("sleep"));
    let (pid_a, pid_b) = (a.0.id(), b.0.id());

    // The agent opens the replay at start; a FIFO holds it there until the pod
    // cache is filled, so every sample is charged to a pod, not a bare pid.
    let dir = TempDir::new("gpu-pods");
    let fifo = dir.path().join("gpu.fifo");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let flag = format!("replay:{}", fifo.display());
    let agent = api.start_agent(&[
        "--gpu",
        &flag,
        "--gpu-interval-ms",
        INTERVAL_MS,
        "--usd-per-gpu-hour",
        USD_PER_GPU_HOUR,
    ]);
    api.wait_watching();

    // 10 s: pod A works at 60 %, pod B at 25 % for the first half and then
    // holds its memory at 2 % (idle waste).
    let mut lines = Vec::new();
    let mut energy = 5_000.0;
    for i in 0..=20 {
        let t = f64::from(i) * 0.5;
        let b_pct = if i <= 10 { 25.0 } else { 2.0 };
        energy += 0.5 * (150.0 + 3.0 * (60.0 + b_pct));
        lines.push(Line::Sample {
            t_s: t,
            device_sm_pct: 60.0 + b_pct,
            energy_j: energy,
            procs: vec![
                Proc {
                    pid: pid_a,
                    sm_pct: 60.0,
                    mem_gib: 20,
                },
                Proc {
                    pid: pid_b,
                    sm_pct: b_pct,
                    mem_gib: 8,
                },
            ],
        });
    }
    let json: Vec<_> = lines.iter().map(line_json).collect();
    write_fifo(&fifo, &json);
    let text = wait_replay_done(&agent);

    let e = expected(&lines);
    assert_eq!(e.intervals, 20);
    let pod_a = [
        ("pod", embed.name.as_str()),
        ("team", "nlp"),
        ("namespace", "research"),
    ];
    let pod_b = [
        ("pod", chat.name.as_str()),
        ("team", "ml-platform"),
        ("namespace", "inference"),
    ];
    assert!(
        metric(&text, "tokenscope_gpu_busy_seconds_total", &pod_a) > 0.0
            && metric(&text, "tokenscope_gpu_busy_seconds_total", &pod_b) > 0.0,
        "GPU use is charged to the pods and their teams:\n{text}"
    );
    check_pod(&text, &embed.name, &e, pid_a);
    check_pod(&text, &chat.name, &e, pid_b);
    // Pod B was idle for 5 s of its 10 s held; pod A never.
    close(
        e.idle_held.get(&pid_b).copied().unwrap_or(0.0),
        5.0,
        "test's own idle waste",
    );
    check_device(&text, &e);
    // The hardware semantic conventions, per device, from the last sample.
    close(
        metric(&text, "hw_gpu_utilization_ratio", &[("hw_id", GPU_UUID)]),
        0.62,
        "hw.gpu.utilization",
    );
    close(
        metric(&text, "hw_gpu_memory_usage_bytes", &[("hw_id", GPU_UUID)]),
        (28 * GIB) as f64,
        "hw.gpu.memory.usage",
    );
    assert!(text.contains("# TYPE tokenscope_gpu_busy_seconds_total counter"));
}

#[test]
fn a_mig_instance_is_split_by_memory_and_flagged() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let big = idle_process(&mut Command::new("sleep"));
    let small = idle_process(&mut Command::new("sleep"));
    let (pid_big, pid_small) = (big.0.id(), small.0.id());
    let parent = "GPU-a100a100-0000-4000-8000-000000000001";
    let instance = "MIG-11111111-2222-4333-8444-555555555555";
    let fraction = 3.0 / 7.0;
    // No utilisation on MIG: the 3g instance is held by its two processes,
    // split 12 GiB : 4 GiB; the other 4/7 of the GPU is not allocated (idle).
    let dir = TempDir::new("gpu-mig");
    let path = dir.path().join("gpu.jsonl");
    let samples: u32 = 11;
    let lines: Vec<_> = (0..samples)
        .map(|i| {
            json!({
                "timestamp_unix_nano": ns(f64::from(i) * 0.5),
                "devices": [
                    {"index": 0, "uuid": parent, "name": GPU_NAME, "sm_util_pct": null,
                     "memory_used_bytes": 16 * GIB, "memory_total_bytes": 80 * GIB,
                     "power_w": 210.0, "energy_mj": 1_000_000 + u64::from(i) * 105_000},
                    {"index": 0, "uuid": instance, "name": "NVIDIA A100-SXM4-80GB MIG 3g.40gb",
                     "sm_util_pct": null, "memory_used_bytes": 16 * GIB,
                     "memory_total_bytes": 40 * GIB,
                     "mig": {"parent_uuid": parent, "fraction": fraction}}
                ],
                "processes": [
                    {"pid": pid_big, "device": instance, "memory_used_bytes": 12 * GIB},
                    {"pid": pid_small, "device": instance, "memory_used_bytes": 4 * GIB}
                ]
            })
        })
        .collect();
    write_replay(&path, &lines);
    let flag = format!("replay:{}", path.display());
    let agent = Agent::start(&[
        "--gpu",
        &flag,
        "--gpu-interval-ms",
        INTERVAL_MS,
        "--usd-per-gpu-hour",
        USD_PER_GPU_HOUR,
    ]);
    let text = wait_replay_done(&agent);

    let wall = f64::from(samples - 1) * 0.5;
    let pod_big = pid_pod(pid_big, "sleep");
    let pod_small = pid_pod(pid_small, "sleep");
    let busy = |pod: &str| metric(&text, "tokenscope_gpu_busy_seconds_total", &[("pod", pod)]);
    close(busy(&pod_big), wall * fraction * 0.75, "MIG 12 GiB share");
    close(busy(&pod_small), wall * fraction * 0.25, "MIG 4 GiB share");
    let held = |pod: &str| metric(&text, "tokenscope_gpu_held_seconds_total", &[("pod", pod)]);
    close(held(&pod_big), wall * fraction, "MIG held");
    close(held(&pod_small), wall * fraction, "MIG held");
    // Idleness is unknown on MIG: no idle waste is claimed.
    close(
        metric(
            &text,
            "tokenscope_gpu_idle_held_seconds_total",
            &[("pod", &pod_small)],
        ),
        0.0,
        "MIG idle waste",
    );
    // 105 J per 0.5 s interval (210 W): split like the time, the rest idle.
    let energy = |pod: &str| metric(&text, "tokenscope_gpu_energy_joules_total", &[("pod", pod)]);
    close(
        energy(&pod_big),
        105_000.0 / 1000.0 * 10.0 * fraction * 0.75,
        "MIG energy",
    );
    let dev = [("hw_id", parent)];
    close(
        metric(&text, "tokenscope_gpu_idle_seconds_total", &dev),
        wall * (1.0 - fraction),
        "unallocated slices are idle",
    );
    // The fallback is flagged: every interval was a memory-share split.
    close(
        metric(&text, "tokenscope_gpu_memory_share_splits_total", &dev),
        f64::from(samples - 1),
        "memory-share splits",
    );
    // The instance's memory is reported per MIG device, with its parent.
    close(
        metric(
            &text,
            "hw_gpu_memory_usage_bytes",
            &[("hw_id", instance), ("hw_parent", parent)],
        ),
        (16 * GIB) as f64,
        "hw.gpu.memory.usage of the instance",
    );
}

#[test]
fn missing_samples_and_nvml_errors_midway_are_not_integrated() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let worker = idle_process(&mut Command::new("sleep"));
    let pid = worker.0.id();
    let dir = TempDir::new("gpu-gaps");
    let path = dir.path().join("gpu.jsonl");
    let sample = |t_s: f64, pct: f64| Line::Sample {
        t_s,
        device_sm_pct: pct,
        energy_j: 1_000.0 + t_s * 300.0,
        procs: vec![Proc {
            pid,
            sm_pct: pct,
            mem_gib: 10,
        }],
    };
    let lines = vec![
        sample(0.0, 40.0),
        sample(0.5, 40.0),
        sample(1.0, 80.0),
        // NVML fails twice midway: nothing is integrated across the failure.
        Line::Failed("NVML process_utilization_stats failed: GPU is lost"),
        Line::Failed("NVML device_count failed: driver not loaded"),
        sample(1.5, 90.0),
        sample(2.0, 50.0),
        // 3 s without samples: a gap, not integrated.
        sample(5.0, 70.0),
        sample(5.5, 30.0),
        sample(6.0, 3.0),
    ];
    write_replay(&path, &lines.iter().map(line_json).collect::<Vec<_>>());
    let flag = format!("replay:{}", path.display());
    let agent = Agent::start(&[
        "--gpu",
        &flag,
        "--gpu-interval-ms",
        INTERVAL_MS,
        "--usd-per-gpu-hour",
        USD_PER_GPU_HOUR,
    ]);
    let text = wait_replay_done(&agent);

    let e = expected(&lines);
    assert_eq!((e.intervals, e.failed, e.gaps), (5, 2, 1), "{e:?}");
    check_pod(&text, &pid_pod(pid, "sleep"), &e, pid);
    check_device(&text, &e);
    assert_eq!(
        metric(&text, "tokenscope_gpu_failed_samples_total", &[]),
        2.0,
        "{text}"
    );
    assert_eq!(metric(&text, "tokenscope_gpu_gaps_total", &[]), 1.0);
    assert!(
        text.contains("tokenscope_gpu_samples_dropped_total 0\n"),
        "{text}"
    );
    // The failure is logged once when it starts, and its end once.
    let log = agent.log_text();
    assert_eq!(log.matches("gpu_sampling_failed").count(), 1, "{log}");
    assert_eq!(log.matches("gpu_sampling_recovered").count(), 1, "{log}");
}

#[test]
fn without_nvml_the_agent_runs_and_says_so_once() {
    if !ebpf_available() || std::path::Path::new("/proc/driver/nvidia").exists() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let agent = Agent::start(&["--gpu", "nvml"]);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let text = agent.get("/metrics");
    assert!(
        text.contains("tokenscope_gpu_source_up{reason=\"nvml_unavailable\",source=\"nvml\"} 0\n"),
        "{text}"
    );
    assert_eq!(agent.get("/healthz"), "ok\n", "the agent runs on");
    let log = agent.log_text();
    assert_eq!(
        log.matches("gpu_unavailable").count(),
        1,
        "said once:\n{log}"
    );
    let doctor = Command::new(agent_binary())
        .arg("doctor")
        .output()
        .expect("tokenscope doctor");
    let report = String::from_utf8_lossy(&doctor.stdout);
    let nvml = report
        .lines()
        .find(|l| l.contains("nvml"))
        .unwrap_or_else(|| panic!("no nvml line:\n{report}"));
    assert!(nvml.starts_with("WARN"), "{report}");
    assert!(report.contains("libnvidia-ml.so.1"), "{report}");
    assert!(report.contains("tokenscope_gpu_source_up"), "{report}");
}
