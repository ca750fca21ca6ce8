//! The checks of the node around the probes. Each performs what it reports on.

use std::{
    fs,
    path::{Path, PathBuf},
};

use tokenscope_common::names;

use super::{caps, error_chain, Check};
use crate::{
    gpu::{GpuSource, NvmlSource},
    probes::{kernel_offsets, tls::TlsScanner},
};

/// Targets listed before the rest are only counted.
const LISTED_TARGETS: usize = 25;
/// Where aya looks for tracefs, in its order.
const TRACEFS_ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
/// `sock_send_length` and `sock_recv_length` appeared in Linux 6.3.
const SOCKET_TRACEPOINTS_SINCE: (u32, u32) = (6, 3);

pub fn privileges() -> Check {
    const NAME: &str = "privileges";
    let creds = match fs::read_to_string("/proc/self/status") {
        Ok(text) => caps::parse_status(&text).map_err(|e| error_chain(&e)),
        Err(e) => Err(format!("cannot read /proc/self/status: {e}")),
    };
    let creds = match creds {
        Ok(creds) => creds,
        Err(why) => return Check::warn(NAME, why),
    };
    let who = if creds.effective_uid == 0 {
        "root (uid 0)".to_string()
    } else {
        format!("uid {} (not root)", creds.effective_uid)
    };
    let absent = caps::missing(creds.effective_caps);
    if absent.is_empty() {
        let all: Vec<&str> = caps::NEEDED.iter().map(|c| c.name).collect();
        return Check::ok(
            NAME,
            format!("{who}; effective capabilities include {}", all.join(", ")),
        );
    }
    let mut detail = format!(
        "{who}; missing effective capabilities: {}",
        absent.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
    );
    for cap in absent {
        detail.push_str(&format!("\n{} is needed for {}", cap.name, cap.needed_for));
    }
    Check::warn(NAME, detail)
}

pub fn kernel() -> Check {
    const NAME: &str = "kernel";
    let release = match fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(release) => release.trim().to_string(),
        Err(e) => return Check::warn(NAME, format!("cannot read the kernel release: {e}")),
    };
    match caps::kernel_version(&release) {
        Some(version) if version >= SOCKET_TRACEPOINTS_SINCE => Check::ok(NAME, release),
        Some(_) => Check::warn(
            NAME,
            format!(
                "{release}: older than {}.{}, which added the sock_send_length and \
                 sock_recv_length tracepoints; expect the probes to fail to attach",
                SOCKET_TRACEPOINTS_SINCE.0, SOCKET_TRACEPOINTS_SINCE.1
            ),
        ),
        None => Check::warn(NAME, format!("{release}: version not recognised")),
    }
}

pub fn btf() -> Check {
    match kernel_offsets() {
        Ok(off) => Check::ok(
            "btf",
            format!(
                "kernel BTF read; sock.skc_family at {}, sock.skc_dport at {}, sock.sk_type at {}, \
                 task_struct.tgid at {}, task_struct.real_parent at {}",
                off.sk_family, off.sk_dport, off.sk_type, off.task_tgid, off.task_real_parent
            ),
        ),
        Err(e) => Check::fail("btf", error_chain(&e)),
    }
}

pub fn tracefs() -> Check {
    let mut tried = Vec::new();
    let mut denied = false;
    for root in TRACEFS_ROOTS {
        let id = format!("{root}/events/sched/{}/id", names::EXEC);
        match fs::read_to_string(&id) {
            Ok(_) => {
                return Check::ok(
                    "tracefs",
                    format!("{root} is mounted; tracepoint sched/{} found", names::EXEC),
                )
            }
            Err(e) => {
                denied |= e.kind() == std::io::ErrorKind::PermissionDenied;
                tried.push(format!("{id}: {e}"));
            }
        }
    }
    let why = if denied {
        "tracefs is mounted but this process may not read it (run as root)"
    } else {
        "tracefs is not mounted (mount -t tracefs tracefs /sys/kernel/tracing)"
    };
    Check::fail("tracefs", format!("{why}\n{}", tried.join("\n")))
}

pub(super) fn is_libssl(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libssl.so"))
}

pub fn kprobes() -> Check {
    Check::ok(
        "kprobes",
        "not used: the agent attaches no kprobes, fentry or fexit programs, only \
         tracepoints, BTF tracepoints and uprobes",
    )
}

pub fn nvml() -> Check {
    const NAME: &str = "nvml";
    const NOT_NEEDED: &str = "with --gpu nvml the agent runs without GPU accounting and \
         exports tokenscope_gpu_source_up{reason=\"nvml_unavailable\"} 0; capture does not need NVML";
    let mut source = match NvmlSource::new() {
        Ok(source) => source,
        Err(e) => return Check::warn(NAME, format!("{}\n{NOT_NEEDED}", error_chain(&e))),
    };
    match source.sample() {
        Ok(sample) => {
            let mut detail = format!(
                "NVML loaded; {} device(s), {} GPU process(es)",
                sample.devices.len(),
                sample.processes.len()
            );
            for device in &sample.devices {
                detail.push_str(&format!("\n{} {}", device.uuid, device.name));
            }
            Check::ok(NAME, detail)
        }
        Err(e) => Check::warn(
            NAME,
            format!("NVML loaded but sampling failed: {}", error_chain(&e)),
        ),
    }
}

/// Every TLS target the agent would probe now: host libraries and what running
/// processes map (through `/proc/<pid>/root`).
pub fn tls_targets(scanner: &mut TlsScanner, host_targets: Vec<PathBuf>) -> Check {
    const NAME: &str = "tls_targets";
    let mut targets = host_targets;
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                targets.extend(scanner.scan_pid(pid));
            }
        }
    }
    if targets.is_empty() {
        return Check::warn(
            NAME,
            "no libssl and no executable exporting SSL_write, on the host or in running \
             processes: nothing for TLS capture to probe yet",
        );
    }
    let libraries = targets.iter().filter(|p| is_libssl(p)).count();
    let mut detail = format!(
        "{libraries} libssl, {} executable(s) exporting SSL_write",
        targets.len() - libraries
    );
    for target in targets.iter().take(LISTED_TARGETS) {
        let kind = if is_libssl(target) {
            "libssl"
        } else {
            "executable"
        };
        detail.push_str(&format!("\n{kind} {}", target.display()));
    }
    if targets.len() > LISTED_TARGETS {
        detail.push_str(&format!("\n… and {} more", targets.len() - LISTED_TARGETS));
    }
    Check::ok(NAME, detail)
}
