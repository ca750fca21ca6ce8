//! `tokenscope doctor` run as the built binary.
//!
//! Needs root: the doctor loads and attaches the real probes, and the second
//! test drops every capability with `setpriv` (util-linux) to see the doctor
//! fail. Not root: skipped with a message, except under CI=true, where it fails.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let uids = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .expect("a Uid line in /proc/self/status");
    uids.split_whitespace().nth(1) == Some("0")
}

/// False (after saying why) when the test cannot run here; panics under CI.
fn can_load_probes(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root to load eBPF programs, and CI=true forbids skipping"
    );
    eprintln!("skipping {test}: needs root to load eBPF programs");
    false
}

fn doctor(wrapper: &[&str], args: &[&str]) -> Output {
    let binary = env!("CARGO_BIN_EXE_tokenscope");
    let mut command = match wrapper.split_first() {
        Some((program, wrapper_args)) => {
            let mut command = Command::new(program);
            command.args(wrapper_args).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    command
        .arg("doctor")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {wrapper:?} {binary} doctor {args:?}: {e}"))
}

fn json_report(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// (status, detail) of the check `name`.
fn check<'a>(report: &'a Value, name: &str) -> (&'a str, &'a str) {
    let check = report["checks"]
        .as_array()
        .expect("a checks array")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {report:#}"));
    (
        check["status"].as_str().expect("a status string"),
        check["detail"].as_str().expect("a detail string"),
    )
}

fn assert_status(report: &Value, name: &str, want: &str) -> String {
    let (status, detail) = check(report, name);
    assert_eq!(status, want, "{name}: {detail}\nwhole report: {report:#}");
    detail.to_string()
}

#[test]
fn as_root_every_capture_step_works() {
    if !can_load_probes("as_root_every_capture_step_works") {
        return;
    }
    let output = doctor(&[], &["--json"]);
    let report = json_report(&output);
    assert!(
        output.status.success(),
        "exit {:?}; report: {report:#}",
        output.status
    );
    assert_eq!(report["capture_possible"], true);

    let privileges = assert_status(&report, "privileges", "ok");
    assert!(privileges.starts_with("root (uid 0)"), "{privileges}");
    for name in ["btf", "tracefs", "socket_programs", "kprobes"] {
        assert_status(&report, name, "ok");
    }
    let probes = assert_status(&report, "probes", "ok");
    assert!(
        probes.contains("sched_process_exec") && probes.contains("detached on drop"),
        "{probes}"
    );

    // The exec of the child came back through the ring buffer, decoded.
    let ring = assert_status(&report, "ring_buffer", "ok");
    assert!(ring.contains("exec of `true`"), "{ring}");

    let uprobes = assert_status(&report, "uprobes", "ok");
    assert!(
        uprobes.contains("uprobes attached to") && uprobes.contains("libssl.so"),
        "{uprobes}"
    );
    let targets = assert_status(&report, "tls_targets", "ok");
    assert!(targets.contains("libssl /"), "{targets}");

    // Most nodes have no GPU: absent NVML warns and does not block capture.
    let has_driver = Path::new("/proc/driver/nvidia").exists();
    let nvml = assert_status(&report, "nvml", if has_driver { "ok" } else { "warn" });
    if !has_driver {
        assert!(nvml.contains("libnvidia-ml.so.1"), "{nvml}");
    }

    let text = doctor(&[], &[]);
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).expect("UTF-8 text report");
    assert!(text.contains("ok    probes"), "{text}");
    assert!(
        text.ends_with("capture is possible on this node\n"),
        "{text}"
    );
}

/// Root in a container that was granted no capabilities: the doctor names
/// what is missing, loading fails, and the exit status says so.
#[test]
fn without_capabilities_capture_is_impossible() {
    if !can_load_probes("without_capabilities_capture_is_impossible") {
        return;
    }
    let drop_all = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"];
    let output = doctor(&drop_all, &["--json"]);
    let report = json_report(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "doctor must exit 1 when capture is impossible; report: {report:#}"
    );
    assert_eq!(report["capture_possible"], false);

    let privileges = assert_status(&report, "privileges", "warn");
    for cap in [
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_SYS_ADMIN",
        "CAP_SYS_PTRACE",
        "CAP_DAC_READ_SEARCH",
    ] {
        assert!(privileges.contains(cap), "{cap} not named: {privileges}");
    }
    let probes = assert_status(&report, "probes", "fail");
    assert!(probes.contains("Operation not permitted"), "{probes}");
    for name in ["ring_buffer", "socket_programs", "uprobes", "go_uprobes"] {
        let detail = assert_status(&report, name, "fail");
        assert!(detail.contains("not tried"), "{name}: {detail}");
    }
    // What needs no privilege still works.
    assert_status(&report, "btf", "ok");
    assert_status(&report, "kprobes", "ok");

    let text = doctor(&drop_all, &[]);
    assert_eq!(text.status.code(), Some(1));
    let text = String::from_utf8(text.stdout).expect("UTF-8 text report");
    assert!(
        text.ends_with(
            "capture is NOT possible on this node \
             (failed: probes, ring_buffer, socket_programs, uprobes, go_uprobes)\n"
        ),
        "{text}"
    );
}
