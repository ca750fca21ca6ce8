use std::time::Duration;

use super::*;

const TWO_PODS: &str = include_str!("../../../tests/fixtures/gpu/two_pods.jsonl");
const MIG: &str = include_str!("../../../tests/fixtures/gpu/mig.jsonl");
const FAILED_AND_GAP: &str = include_str!("../../../tests/fixtures/gpu/failed_and_gap.jsonl");

const H100: &str = "GPU-5f3c9a1e-2b7d-4c8e-9f10-0a1b2c3d4e5f";
const A100: &str = "GPU-a100a100-0000-4000-8000-000000000001";

/// Replays a fixture through the accountant until the file ends.
fn replay(text: &'static str) -> WindowTotals {
    let mut source = ReplaySource::from_reader(Box::new(text.as_bytes()));
    let mut accountant = Accountant::new(Duration::from_secs(30));
    for _ in 0..1000 {
        match source.sample() {
            Err(GpuError::Exhausted) => return accountant.take_window(),
            result => accountant.add(result),
        }
    }
    panic!("replay did not end");
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

fn pid(w: &WindowTotals, pid: u32) -> &PidTotals {
    w.pids
        .get(&pid)
        .unwrap_or_else(|| panic!("pid {pid} missing: {:?}", w.pids))
}

fn device<'w>(w: &'w WindowTotals, uuid: &str) -> &'w DeviceTotals {
    w.devices
        .get(uuid)
        .unwrap_or_else(|| panic!("device {uuid} missing"))
}

/// Pids' GPU time plus idle is the integrated time; their energy plus idle energy the device's.
fn assert_adds_up(w: &WindowTotals) {
    let busy: f64 = w.pids.values().map(|p| p.gpu_seconds).sum();
    let energy: f64 = w.pids.values().map(|p| p.energy_joules).sum();
    let wall: f64 = w.devices.values().map(|d| d.wall_seconds).sum();
    let idle: f64 = w.devices.values().map(|d| d.idle_seconds).sum();
    let device_energy: f64 = w.devices.values().map(|d| d.energy_joules).sum();
    let idle_energy: f64 = w.devices.values().map(|d| d.idle_energy_joules).sum();
    assert!(
        ((busy + idle) - wall).abs() <= 0.01 * wall,
        "{busy} + {idle} vs {wall}"
    );
    assert!(
        ((energy + idle_energy) - device_energy).abs() <= 0.01 * device_energy,
        "{energy} + {idle_energy} vs {device_energy}"
    );
}

#[test]
fn two_pods_share_one_gpu() {
    let w = replay(TWO_PODS);
    assert_eq!((w.intervals, w.failed_samples, w.gaps), (4, 0, 0));
    // Interval utilisations (later sample): 1001: 20, 0, -, -; 2002: 60, 40, 10, 50; 3003: -, -, -, 25.
    let a = pid(&w, 1001);
    assert!(close(a.gpu_seconds, 1.0), "{a:?}");
    // 2000 J in the first interval, 1 of its 5 seconds busy for 1001.
    assert!(close(a.energy_joules, 400.0), "{a:?}");
    assert!(close(a.memory_gib_seconds, 100.0), "{a:?}");
    let b = pid(&w, 2002);
    assert!(close(b.gpu_seconds, 3.0 + 2.0 + 0.5 + 2.5), "{b:?}");
    assert!(
        close(b.energy_joules, 1200.0 + 600.0 + 100.0 + 625.0),
        "{b:?}"
    );
    assert!(close(b.memory_gib_seconds, 400.0), "{b:?}");
    let c = pid(&w, 3003);
    assert!(
        close(c.gpu_seconds, 1.25) && close(c.energy_joules, 312.5),
        "{c:?}"
    );
    assert_eq!(c.memory_gib_seconds, 0.0);
    let d = device(&w, H100);
    assert!(
        close(d.wall_seconds, 20.0) && close(d.energy_joules, 5750.0),
        "{d:?}"
    );
    assert!(
        close(d.idle_seconds, 9.75) && close(d.idle_energy_joules, 2512.5),
        "{d:?}"
    );
    assert_eq!(d.energy_from_power_intervals, 0);
    assert_adds_up(&w);

    let owners = w.by_owner(|pid| match pid {
        1001 => Some("payments/checkout-api".to_owned()),
        2002 => Some("ml-platform/vllm-llama".to_owned()),
        _ => None,
    });
    let names: Vec<&str> = owners.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "(unattributed)",
            "ml-platform/vllm-llama",
            "payments/checkout-api"
        ]
    );
    let unattributed = owners
        .get(UNATTRIBUTED)
        .unwrap_or_else(|| panic!("unattributed"));
    assert_eq!(unattributed.pids, [3003]);
    let owned: f64 = owners.values().map(|o| o.gpu_seconds).sum();
    assert!(close(owned, 10.25));
}

#[test]
fn owners_sum_their_pids() {
    let w = replay(TWO_PODS);
    let owners = w.by_owner(|_| Some("team-a".to_owned()));
    let team = owners.get("team-a").unwrap_or_else(|| panic!("team-a"));
    assert_eq!(team.pids, [1001, 2002, 3003]);
    assert!(
        close(team.gpu_seconds, 10.25) && close(team.energy_joules, 3237.5),
        "{team:?}"
    );
}

#[test]
fn mig_instances_share_their_parent() {
    let w = replay(MIG);
    assert_eq!(w.intervals, 2);
    // 1400 J and 7 s per interval; 3g holds 3/7, 2g 2/7, 2/7 unallocated.
    let p = pid(&w, 4001);
    assert!(
        close(p.gpu_seconds, 6.0) && close(p.energy_joules, 1200.0),
        "{p:?}"
    );
    assert!(close(p.memory_gib_seconds, 30.0 * 14.0), "{p:?}");
    // The 2g instance is split by memory (6:2) in the first interval, empty in the second.
    let q = pid(&w, 4002);
    assert!(
        close(q.gpu_seconds, 1.5) && close(q.energy_joules, 300.0),
        "{q:?}"
    );
    let r = pid(&w, 4003);
    assert!(
        close(r.gpu_seconds, 0.5) && close(r.energy_joules, 100.0),
        "{r:?}"
    );
    let d = device(&w, A100);
    assert!(
        close(d.wall_seconds, 14.0) && close(d.energy_joules, 2800.0),
        "{d:?}"
    );
    // Unallocated 2 s + 2 s, and the empty 2g instance's 2 s in the second interval.
    assert!(
        close(d.idle_seconds, 6.0) && close(d.idle_energy_joules, 1200.0),
        "{d:?}"
    );
    // MIG instances are not devices of their own in the totals.
    assert_eq!(w.devices.len(), 1);
    assert_adds_up(&w);
}

#[test]
fn failed_rounds_and_gaps_are_counted_not_integrated() {
    let w = replay(FAILED_AND_GAP);
    // 0-5 integrated; failure; 10-15 integrated; 15-75 a gap; 75-80 integrated; a bad line.
    assert_eq!((w.intervals, w.failed_samples, w.gaps), (3, 2, 1));
    let p = pid(&w, 5005);
    assert!(
        close(p.gpu_seconds, 15.0) && close(p.memory_gib_seconds, 60.0),
        "{p:?}"
    );
    // No energy counter: 300 W x 5 s per interval.
    assert!(close(p.energy_joules, 4500.0), "{p:?}");
    let d = w
        .devices
        .values()
        .next()
        .unwrap_or_else(|| panic!("device"));
    assert_eq!(d.energy_from_power_intervals, 3);
    assert!(
        close(d.wall_seconds, 15.0) && close(d.idle_seconds, 0.0),
        "{d:?}"
    );
    assert_eq!(w.start_unix_nano, Some(1_795_852_800_000_000_000));
    assert_eq!(w.end_unix_nano, Some(1_795_852_880_000_000_000));
    assert_adds_up(&w);
}

#[test]
fn windows_restart_and_out_of_order_samples_are_ignored() {
    let mut source = ReplaySource::from_reader(Box::new(TWO_PODS.as_bytes()));
    let mut samples = Vec::new();
    while let Ok(s) = source.sample() {
        samples.push(s);
    }
    assert_eq!(samples.len(), 5);
    let mut accountant = Accountant::new(Duration::from_secs(30));
    let mut first = None;
    for (i, s) in samples.iter().enumerate() {
        accountant.add_sample(s.clone());
        if i == 2 {
            accountant.add_sample(s.clone());
            first = Some(accountant.take_window());
        }
    }
    let first = first.unwrap_or_else(|| panic!("first window"));
    let second = accountant.take_window();
    assert_eq!((first.intervals, first.out_of_order), (2, 1));
    assert_eq!(second.intervals, 2);
    // Together the two windows are the whole replay.
    let whole = replay(TWO_PODS);
    let b = |w: &WindowTotals| pid(w, 2002).gpu_seconds;
    assert!(close(b(&first) + b(&second), b(&whole)));
}

#[test]
fn server_gpu_time_is_apportioned_by_tokens() {
    let w = replay(TWO_PODS);
    let server = pid(&w, 2002);
    let tokens = [1000, 3000, 0, 4000];
    let shares = apportion(server, &tokens, 2.0);
    assert_eq!(shares.len(), 4);
    assert!(close(shares[0].gpu_seconds, 1.0) && close(shares[1].gpu_seconds, 3.0));
    assert_eq!(shares[2].gpu_seconds, 0.0);
    assert!(close(shares[3].gpu_seconds, 4.0));
    // $2 per GPU-hour.
    assert!(close(shares[3].cost_usd, 4.0 * 2.0 / 3600.0));
    let seconds: f64 = shares.iter().map(|s| s.gpu_seconds).sum();
    let energy: f64 = shares.iter().map(|s| s.energy_joules).sum();
    assert!((seconds - server.gpu_seconds).abs() <= 0.01 * server.gpu_seconds);
    assert!((energy - server.energy_joules).abs() <= 0.01 * server.energy_joules);
    // No tokens reported: equal shares.
    let equal = apportion(server, &[0, 0], 2.0);
    assert!(close(equal[0].gpu_seconds, 4.0) && close(equal[1].gpu_seconds, 4.0));
    assert!(apportion(server, &[], 2.0).is_empty());
}

#[test]
fn replay_errors_are_clear() {
    let mut source = ReplaySource::from_reader(Box::new(FAILED_AND_GAP.as_bytes()));
    let mut errors = Vec::new();
    loop {
        match source.sample() {
            Ok(_) => {}
            Err(GpuError::Exhausted) => break,
            Err(e) => errors.push(e),
        }
    }
    assert!(
        matches!(&errors[..], [
        GpuError::RecordedFailure { line: 3, reason },
        GpuError::BadReplayLine { line: 9, .. },
    ] if reason == "GpuLost"),
        "{errors:?}"
    );
    let long = format!("{}\n{}", "x".repeat(replay::MAX_REPLAY_LINE + 5), TWO_PODS);
    let mut source = ReplaySource::from_reader(Box::new(std::io::Cursor::new(long.into_bytes())));
    assert!(matches!(
        source.sample(),
        Err(GpuError::ReplayLineTooLong { line: 1, .. })
    ));
    assert!(source.sample().is_ok());
    let missing = ReplaySource::open(std::path::Path::new("/nonexistent/gpu.jsonl"));
    assert!(matches!(missing, Err(GpuError::Io { .. })));
}

#[test]
fn served_calls_get_their_server_pid_share() {
    let w = replay(TWO_PODS);
    let calls = [
        ServedCall {
            pid: 2002,
            tokens: 300,
        },
        ServedCall {
            pid: 9999,
            tokens: 500,
        },
        ServedCall {
            pid: 2002,
            tokens: 100,
        },
        ServedCall {
            pid: 1001,
            tokens: 10,
        },
    ];
    let shares = apportion_calls(&w, &calls, &|_| 3.6);
    assert_eq!(shares.len(), 4);
    let seconds = |i: usize| {
        shares
            .get(i)
            .and_then(|s| s.as_ref())
            .map(|s| s.gpu_seconds)
    };
    // 2002 used 8 GPU-seconds: 3/4 and 1/4 by tokens; 1001 used 1; 9999 none.
    let near = |got: Option<f64>, want: f64| got.is_some_and(|g| close(g, want));
    assert!(near(seconds(0), 6.0), "{shares:?}");
    assert_eq!(seconds(1), None);
    assert!(near(seconds(2), 2.0) && near(seconds(3), 1.0), "{shares:?}");
    // $3.60 per GPU-hour is $0.001 per GPU-second.
    let cost = shares.first().and_then(|s| s.as_ref()).map(|s| s.cost_usd);
    assert!(cost.is_some_and(|c| close(c, 0.006)), "{cost:?}");
}

fn gpu(util: Option<f64>, energy_mj: Option<u64>) -> DeviceSample {
    DeviceSample {
        index: 0,
        uuid: "GPU-1".into(),
        name: "NVIDIA L40S".into(),
        mig: None,
        sm_util_pct: util,
        memory_used_bytes: 0,
        memory_total_bytes: 48 << 30,
        power_w: None,
        energy_mj,
    }
}

fn process(pid: u32, util: Option<f64>, gib: u64) -> ProcessSample {
    ProcessSample {
        pid,
        device: "GPU-1".into(),
        sm_util_pct: util,
        memory_used_bytes: Some(gib << 30),
    }
}

#[test]
fn unknown_process_utilisation_shares_what_the_device_leaves() {
    let mut accountant = Accountant::new(Duration::from_secs(30));
    let at = |s: u64, energy: u64, util: Option<f64>, processes| GpuSample {
        timestamp_unix_nano: s * 1_000_000_000,
        devices: vec![gpu(util, Some(energy))],
        processes,
    };
    accountant.add_sample(at(100, 0, Some(10.0), vec![]));
    // Device 80% busy over 10 s; pid 1 says 30%; pids 2 and 3 unknown, 2 and 6 GiB.
    let procs = vec![
        process(1, Some(30.0), 1),
        process(2, None, 2),
        process(3, None, 6),
    ];
    accountant.add_sample(at(110, 1_000_000, Some(80.0), procs));
    // Utilisations adding up past 100% are scaled to the device.
    let procs = vec![process(1, Some(90.0), 1), process(2, Some(60.0), 2)];
    accountant.add_sample(at(120, 2_000_000, Some(100.0), procs));
    let w = accountant.take_window();
    let seconds = |p: u32| pid(&w, p).gpu_seconds;
    assert!(close(seconds(1), 3.0 + 6.0), "{:?}", w.pids);
    assert!(close(seconds(2), 1.25 + 4.0), "{:?}", w.pids);
    assert!(close(seconds(3), 3.75), "{:?}", w.pids);
    let d = device(&w, "GPU-1");
    assert!(
        close(d.idle_seconds, 2.0) && close(d.idle_energy_joules, 200.0),
        "{d:?}"
    );
    assert!(close(pid(&w, 3).energy_joules, 375.0), "{:?}", w.pids);
    assert_adds_up(&w);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// A process reading: pid, which unit it runs on, utilisation, memory.
    type Proc = (u32, usize, (Option<f64>, Option<u64>));
    /// One round: device utilisation, energy step, MIG or not, processes.
    type Round = (Option<f64>, u64, bool, Vec<Proc>);

    fn reading() -> impl Strategy<Value = (Option<f64>, Option<u64>)> {
        (
            prop::option::of(0.0f64..150.0),
            prop::option::of(0u64..(80 << 30)),
        )
    }

    /// One interval's readings: device util, energy step, MIG or not, processes (pid, unit, reading).
    fn round() -> impl Strategy<Value = Round> {
        (
            prop::option::of(0.0f64..100.0),
            0u64..5_000_000,
            any::<bool>(),
            prop::collection::vec((1u32..6, 0usize..3, reading()), 0..6),
        )
    }

    fn sample(
        t: u64,
        energy: u64,
        device_util: Option<f64>,
        mig: bool,
        procs: &[Proc],
    ) -> GpuSample {
        let parent = gpu(device_util, Some(energy));
        let mut devices = vec![parent];
        let units: Vec<String> = if mig {
            for (i, fraction) in [(0, 3.0 / 7.0), (1, 2.0 / 7.0)] {
                devices.push(DeviceSample {
                    uuid: format!("MIG-{i}"),
                    mig: Some(MigInstance {
                        parent_uuid: "GPU-1".into(),
                        fraction,
                    }),
                    energy_mj: None,
                    ..gpu(None, None)
                });
            }
            vec!["MIG-0".into(), "MIG-1".into(), "MIG-9".into()]
        } else {
            vec!["GPU-1".into(), "GPU-1".into(), "GPU-1".into()]
        };
        let processes = procs
            .iter()
            .map(|(pid, unit, (util, memory))| ProcessSample {
                pid: *pid,
                device: units.get(*unit).cloned().unwrap_or_default(),
                sm_util_pct: *util,
                memory_used_bytes: *memory,
            })
            .collect();
        GpuSample {
            timestamp_unix_nano: t * 1_000_000_000,
            devices,
            processes,
        }
    }

    proptest! {
        #[test]
        fn shares_and_idle_add_up_to_the_device(rounds in prop::collection::vec(round(), 2..12), steps in prop::collection::vec(1u64..20, 12)) {
            let mut accountant = Accountant::new(Duration::from_secs(30));
            let (mut t, mut energy) = (1000u64, 0u64);
            for (i, (util, step, mig, procs)) in rounds.iter().enumerate() {
                t += steps.get(i).copied().unwrap_or(1);
                energy += step;
                accountant.add_sample(sample(t, energy, *util, *mig, procs));
            }
            let w = accountant.take_window();
            prop_assert_eq!(w.intervals as usize, rounds.len() - 1);
            for p in w.pids.values() {
                prop_assert!(p.gpu_seconds >= 0.0 && p.energy_joules >= 0.0);
            }
            let d = device(&w, "GPU-1");
            prop_assert!(d.idle_seconds >= -1e-9 && d.idle_energy_joules >= -1e-6);
            assert_adds_up(&w);
        }
    }
}

#[test]
fn held_time_and_idle_waste() {
    let mut accountant = Accountant::new(Duration::from_secs(30));
    // Pid 1 works at 30 %, pid 2 holds memory at 0 %, pid 3 at 2 % (below the
    // idle threshold), pid 4 is listed with no memory (holds nothing).
    let at = |s: u64| GpuSample {
        timestamp_unix_nano: s * 1_000_000_000,
        devices: vec![gpu(Some(32.0), Some(s * 100_000))],
        processes: vec![
            process(1, Some(30.0), 4),
            process(2, Some(0.0), 2),
            process(3, Some(2.0), 1),
            process(4, Some(0.0), 0),
        ],
    };
    for s in [10, 11, 13] {
        accountant.add_sample(at(s));
    }
    let w = accountant.take_window();
    let held = |p: u32| (pid(&w, p).held_seconds, pid(&w, p).idle_held_seconds);
    assert_eq!(held(1), (3.0, 0.0));
    assert_eq!(held(2), (3.0, 3.0));
    assert_eq!(held(3), (3.0, 3.0));
    assert_eq!(held(4), (0.0, 0.0));
    assert!(close(pid(&w, 1).gpu_seconds, 0.9));
    assert_eq!(pid(&w, 1).gpu_model, "NVIDIA L40S");
    assert_adds_up(&w);
    // Owners sum held and idle time too.
    let owners = w.by_owner(|p| (p != 1).then(|| "idle-pod".to_owned()));
    let idle = owners
        .get("idle-pod")
        .map(|o| (o.held_seconds, o.idle_held_seconds));
    assert_eq!(idle, Some((6.0, 6.0)));
}

#[test]
fn mig_memory_share_splits_are_flagged() {
    let w = replay(MIG);
    // The 2g instance is split by memory in the first interval; 3g (one process,
    // no utilisation) in both: every MIG share is a memory-share split.
    assert_eq!(pid(&w, 4002).memory_share_intervals, 1);
    assert_eq!(pid(&w, 4001).memory_share_intervals, 2);
    assert_eq!(device(&w, A100).memory_share_intervals, 2);
    // No utilisation on MIG: idleness is unknown, so no idle waste is claimed.
    assert_eq!(pid(&w, 4001).idle_held_seconds, 0.0);
    assert!(close(pid(&w, 4001).held_seconds, 6.0));
}

#[test]
fn merged_windows_equal_the_whole_replay() {
    let mut source = ReplaySource::from_reader(Box::new(FAILED_AND_GAP.as_bytes()));
    let mut accountant = Accountant::new(Duration::from_secs(30));
    let mut merged = WindowTotals::default();
    loop {
        match source.sample() {
            Err(GpuError::Exhausted) => break,
            result => accountant.add(result),
        }
        merged.merge(accountant.take_window());
    }
    let whole = replay(FAILED_AND_GAP);
    let p = |w: &WindowTotals| pid(w, 5005).clone();
    assert!(close(p(&merged).gpu_seconds, p(&whole).gpu_seconds));
    assert!(close(p(&merged).held_seconds, p(&whole).held_seconds));
    assert_eq!(merged.gaps, whole.gaps);
    assert_eq!(merged.start_unix_nano, whole.start_unix_nano);
    assert_eq!(merged.end_unix_nano, whole.end_unix_nano);
}

#[test]
fn a_replayed_sample_seen_twice_counts_once() {
    // Every line twice, as a sampler re-reading the same NVML buffer would give it.
    let doubled: String = TWO_PODS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .flat_map(|l| [l, "\n", l, "\n"])
        .collect();
    let mut source = ReplaySource::from_reader(Box::new(std::io::Cursor::new(doubled)));
    let mut accountant = Accountant::new(Duration::from_secs(30));
    while let Ok(sample) = source.sample() {
        accountant.add_sample(sample);
    }
    let twice = accountant.take_window();
    let once = replay(TWO_PODS);
    assert_eq!(twice.intervals, once.intervals);
    assert_eq!(twice.out_of_order, once.intervals + 1);
    for (p, t) in &once.pids {
        assert!(close(pid(&twice, *p).gpu_seconds, t.gpu_seconds));
        assert!(close(pid(&twice, *p).energy_joules, t.energy_joules));
    }
}
