//! Shared by the `gpu_*` end-to-end tests: replay files written at test time
//! with the real pids of the test's processes, an integrator of the test's own
//! that computes what the agent should report from the same samples, and
//! readers of the agent's Prometheus text.

#![allow(dead_code, reason = "each gpu_* test uses part of it")]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokenscope_tests::Agent;

pub const GPU_UUID: &str = "GPU-5f3c9a1e-2b7d-4c8e-9f10-0a1b2c3d4e5f";
/// A model no price catalogue lists, so GPU time is priced at `--usd-per-gpu-hour`.
pub const GPU_NAME: &str = "Tokenscope Replay GPU 80GB";
pub const GIB: u64 = 1 << 30;
/// Replay samples go out every 100 ms (`--gpu-interval-ms 100`); the agent
/// treats more than 3 intervals + 0.5 s between two samples as a gap.
pub const INTERVAL_MS: &str = "100";
pub const MAX_INTERVAL_S: f64 = 0.8;

/// One process on the GPU in one sample.
#[derive(Clone, Copy, Debug)]
pub struct Proc {
    pub pid: u32,
    pub sm_pct: f64,
    pub mem_gib: u64,
}

/// One line of a replay: a whole-GPU sample at `t_s`, or a failed round.
#[derive(Clone, Debug)]
pub enum Line {
    Sample {
        t_s: f64,
        device_sm_pct: f64,
        energy_j: f64,
        procs: Vec<Proc>,
    },
    Failed(&'static str),
}

const T0_NS: u64 = 1_800_000_000_000_000_000;

pub fn ns(t_s: f64) -> u64 {
    T0_NS + (t_s * 1e9).round() as u64
}

/// The JSON of one line, in the documented replay format.
pub fn line_json(line: &Line) -> Value {
    match line {
        Line::Failed(reason) => json!({ "failed": reason }),
        Line::Sample {
            t_s,
            device_sm_pct,
            energy_j,
            procs,
        } => json!({
            "timestamp_unix_nano": ns(*t_s),
            "devices": [{
                "index": 0, "uuid": GPU_UUID, "name": GPU_NAME,
                "sm_util_pct": device_sm_pct,
                "memory_used_bytes": procs.iter().map(|p| p.mem_gib * GIB).sum::<u64>(),
                "memory_total_bytes": 80 * GIB,
                "power_w": 350.0,
                "energy_mj": (energy_j * 1000.0).round() as u64,
            }],
            "processes": procs.iter().map(|p| json!({
                "pid": p.pid, "device": GPU_UUID, "sm_util_pct": p.sm_pct,
                "memory_used_bytes": p.mem_gib * GIB,
            })).collect::<Vec<_>>(),
        }),
    }
}

pub fn write_replay(path: &Path, lines: &[Value]) {
    let mut f = std::fs::File::create(path).expect("replay file");
    for line in lines {
        writeln!(f, "{line}").expect("write replay");
    }
}

/// Writes a replay into a FIFO the agent has opened for reading (waits up to
/// 40 s for it), then closes it: the agent sees the end of the file.
pub fn write_fifo(path: &Path, lines: &[Value]) {
    use std::os::unix::fs::OpenOptionsExt;
    const O_NONBLOCK: i32 = 0o4000;
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut f = loop {
        // Without a reader, a non-blocking open for writing fails (ENXIO).
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(O_NONBLOCK)
            .open(path)
        {
            Ok(f) => break f,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the agent never opened {}: {e}",
                    path.display()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    assert!(text.len() < 60_000, "the replay fits in the pipe buffer");
    f.write_all(text.as_bytes()).expect("write FIFO");
}

/// What the test expects per pid and for the device, integrated here on its own.
#[derive(Clone, Debug, Default)]
pub struct Expected {
    pub busy: BTreeMap<u32, f64>,
    pub held: BTreeMap<u32, f64>,
    pub idle_held: BTreeMap<u32, f64>,
    pub energy: BTreeMap<u32, f64>,
    pub wall: f64,
    pub idle: f64,
    pub device_energy: f64,
    pub idle_energy: f64,
    pub intervals: u64,
    pub gaps: u64,
    pub failed: u64,
}

/// Each interval between two good samples no more than `MAX_INTERVAL_S` apart
/// counts with the later sample's readings; a failure breaks the chain.
pub fn expected(lines: &[Line]) -> Expected {
    let mut e = Expected::default();
    let mut prev: Option<(f64, f64)> = None;
    for line in lines {
        let Line::Sample {
            t_s,
            energy_j,
            procs,
            ..
        } = line
        else {
            e.failed += 1;
            prev = None;
            continue;
        };
        if let Some((t0, e0)) = prev {
            let dt = t_s - t0;
            if dt > MAX_INTERVAL_S {
                e.gaps += 1;
            } else {
                e.intervals += 1;
                let joules = energy_j - e0;
                e.wall += dt;
                e.device_energy += joules;
                let mut busy_sum = 0.0;
                for p in procs {
                    let busy = p.sm_pct / 100.0 * dt;
                    busy_sum += busy;
                    *e.busy.entry(p.pid).or_default() += busy;
                    *e.energy.entry(p.pid).or_default() += joules * busy / dt;
                    if p.mem_gib > 0 {
                        *e.held.entry(p.pid).or_default() += dt;
                        if p.sm_pct < 5.0 {
                            *e.idle_held.entry(p.pid).or_default() += dt;
                        }
                    }
                }
                e.idle += dt - busy_sum;
                e.idle_energy += joules * (1.0 - busy_sum / dt);
            }
        }
        prev = Some((*t_s, *energy_j));
    }
    e
}

/// Sum of a family's samples whose labels include every `(name, value)` given.
pub fn metric(text: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= 1e-6 + 1e-6 * expected.abs(),
        "{what}: agent {actual}, test {expected}"
    );
}

/// Waits until the replay has ended and its last samples are published.
pub fn wait_replay_done(agent: &Agent) -> String {
    let deadline = Instant::now() + Duration::from_secs(40);
    while !agent.log_text().contains("gpu_replay_done") {
        assert!(
            Instant::now() < deadline,
            "replay did not end; log:\n{}",
            tokenscope_tests::tail(&agent.log_text(), 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The capture loop publishes GPU use once a second.
    std::thread::sleep(Duration::from_millis(2500));
    agent.get("/metrics")
}

/// A process that does nothing for a minute: a stand-in GPU user with a real pid.
pub fn idle_process(cmd: &mut std::process::Command) -> tokenscope_tests::Guard {
    tokenscope_tests::Guard(cmd.arg("60").spawn().expect("sleep"))
}
