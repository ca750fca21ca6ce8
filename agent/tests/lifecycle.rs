//! Process tracking end to end: the real sched exec/exit probes feed the
//! process table, which learns real processes and drops them after they exit.
//! Needs root (loads eBPF); under `CI=true` a machine that cannot fails.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use tokenscope::{
    attribution::ProcessTable,
    config::CaptureConfig,
    events::{decode, Event},
    probes::{LoadSettings, Probes},
};

fn can_load() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true: this eBPF test must run as root"
        );
        eprintln!("skipping: needs root");
    }
    root
}

#[test]
fn real_processes_enter_the_table_on_exec_and_leave_after_exit() {
    if !can_load() {
        return;
    }
    let defaults = CaptureConfig::default();
    let mut probes = Probes::load(&LoadSettings {
        first_window: defaults.first_window_bytes,
        call_cap: defaults.call_cap_bytes,
        capture_sockets: false,
        capture_tls: false,
        filters: Default::default(),
    })
    .expect("probes load");
    let mut ring = probes.take_events().expect("ring buffer");
    // A grace period of 200 ms: exited processes stay that long for late calls.
    let mut table = ProcessTable::new("/proc", 200_000_000, 10_000);

    let mut children = Vec::new();
    for _ in 0..5 {
        children.push(
            Command::new("/bin/sleep")
                .arg("0.3")
                .spawn()
                .expect("spawn sleep"),
        );
    }
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let me = std::process::id();

    let mut exits = 0;
    let mut last_ts = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while exits < pids.len() && Instant::now() < deadline {
        for child in &mut children {
            let _ = child.try_wait();
        }
        while let Some(item) = ring.next() {
            match decode(&item).expect("well-formed record") {
                Event::Exec {
                    pid,
                    ppid,
                    cgroup_id,
                    ts_ns,
                    comm,
                    filename,
                } => {
                    table.on_exec(pid, ppid, &comm, &filename, cgroup_id, ts_ns);
                    if pids.contains(&pid) {
                        let p = table.get(pid).expect("just added");
                        assert_eq!(p.comm, "sleep");
                        assert_eq!(p.ppid, me, "parent read from the task's real_parent");
                        assert!(p.exe.as_deref().unwrap_or("").ends_with("sleep"), "{p:?}");
                        assert!(p.cgroup_path.is_some(), "{p:?}");
                        assert_ne!(p.cgroup_id, 0);
                    }
                }
                Event::Exit { pid, ts_ns } => {
                    if pids.contains(&pid) {
                        assert!(table.get(pid).is_some(), "exit of a known process");
                        exits += 1;
                    }
                    table.on_exit(pid, ts_ns);
                    last_ts = last_ts.max(ts_ns);
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(exits, pids.len(), "every child's exit was seen");
    for pid in &pids {
        assert!(table.get(*pid).is_some(), "kept during the grace period");
    }
    table.evict(last_ts + 300_000_000);
    for pid in &pids {
        assert!(table.get(*pid).is_none(), "pid {pid} left the table");
    }
    for mut child in children {
        let _ = child.wait();
    }
}
