//! The capture checks: load and attach the probes as the agent does, read an
//! event back, run the socket programs, attach uprobes, then detach.

use std::{
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use tokenscope_common::names;

use super::{checks::is_libssl, error_chain, Check};
use crate::{
    config::CaptureConfig,
    events::{decode, Event},
    probes::{LoadSettings, Probes},
};

/// How long the exec of a child may take to come back through the ring buffer.
const RING_BUFFER_WAIT: Duration = Duration::from_secs(2);

/// Loads and attaches the probes as the agent does, reads an event back, runs
/// the socket programs, attaches uprobes, then drops (detaches) everything.
/// Returns the `probes`, `ring_buffer`, `socket_programs`, `uprobes` and
/// `go_uprobes` checks.
pub fn capture(host_targets: &[PathBuf]) -> Vec<Check> {
    let defaults = CaptureConfig::default();
    let settings = LoadSettings {
        first_window: defaults.first_window_bytes,
        call_cap: defaults.call_cap_bytes,
        capture_sockets: true,
        capture_tls: true,
        filters: Default::default(),
    };
    let started = Instant::now();
    let mut probes = match Probes::load(&settings) {
        Ok(probes) => probes,
        Err(e) => {
            let skipped = "not tried: the probes did not load";
            return vec![
                Check::fail("probes", error_chain(&e)),
                Check::fail("ring_buffer", skipped),
                Check::fail("socket_programs", skipped),
                Check::fail("uprobes", skipped),
                Check::fail("go_uprobes", skipped),
            ];
        }
    };
    let load_ms = started.elapsed().as_millis();
    // Programs loaded later (the uprobes) refer to the ring buffer by its
    // file descriptor, so it stays open until everything is done.
    let (ring, ring_buffer) = match probes.take_events() {
        Ok(mut ring) => {
            let check = ring_buffer(|| ring.next().map(|record| record.to_vec()));
            (Some(ring), check)
        }
        Err(e) => (None, Check::fail("ring_buffer", error_chain(&e))),
    };
    let socket_programs = socket_programs(&probes);
    let uprobes = uprobes(&mut probes, host_targets);
    let go_uprobes = go_uprobes(&mut probes);
    let held = kernel_object_fds();
    drop(probes);
    drop(ring);
    let left = kernel_object_fds();
    let attached = format!(
        "loaded and attached in {load_ms} ms: tracepoints sched/{}, sched/{}; \
         BTF tracepoints {}, {}, {}",
        names::EXEC,
        names::EXIT,
        names::SOCK_SEND,
        names::SOCK_RECV,
        names::SOCK_STATE
    );
    // Every program, map, link and perf event is a descriptor: none left open
    // means nothing stays attached.
    let probes = match left.len() {
        0 => Check::ok(
            "probes",
            format!(
                "{attached}\ndetached on drop: {} BPF and perf-event descriptors closed",
                held.len()
            ),
        ),
        _ => Check::warn(
            "probes",
            format!(
                "{attached}\n{} of {} BPF and perf-event descriptors still open after drop: {}",
                left.len(),
                held.len(),
                left.join(", ")
            ),
        ),
    };
    vec![probes, ring_buffer, socket_programs, uprobes, go_uprobes]
}

/// Go executables that link `crypto/tls` and are found on most build hosts.
const GO_TARGETS: [&str; 2] = ["/usr/lib/go/bin/go", "/usr/local/go/bin/go"];

/// Loads the Go `crypto/tls` programs (the verifier's check) and attaches
/// them to the Go toolchain when the host has one.
fn go_uprobes(probes: &mut Probes) -> Check {
    const NAME: &str = "go_uprobes";
    if let Err(e) = probes.load_go() {
        return Check::fail(NAME, error_chain(&e));
    }
    let Some(target) = GO_TARGETS
        .iter()
        .find_map(|p| std::fs::canonicalize(p).ok())
    else {
        return Check::ok(
            NAME,
            "Go TLS programs verified; no Go toolchain here to attach them to \
             (Go executables are probed when a process runs them)",
        );
    };
    match probes.attach_go(&target) {
        Ok(a) if a.attached == 0 => Check::fail(
            NAME,
            format!(
                "none of the {} Go TLS uprobes attached to {}",
                a.planned,
                target.display()
            ),
        ),
        Ok(a) => {
            let link = match (a.conn_layout, a.tcp_itab) {
                (Some(from), true) => format!("through the descriptor, offsets from {from}"),
                (Some(from), false) => format!(
                    "through the descriptor, offsets from {from}, conn type unchecked (no symbols)"
                ),
                (None, _) => "by the socket programs only: conn offsets unknown".to_string(),
            };
            Check::ok(
                NAME,
                format!(
                    "{} of {} Go TLS uprobes attached to {} ({}, found through {}); \
                     conns tied to sockets {link}",
                    a.attached,
                    a.planned,
                    target.display(),
                    a.version.as_deref().unwrap_or("unknown Go"),
                    a.lookup,
                ),
            )
        }
        Err(e) => Check::fail(NAME, format!("{}: {}", target.display(), error_chain(&e))),
    }
}

/// This process's descriptors that hold kernel BPF objects or perf events,
/// as `fd -> anon_inode:…`.
fn kernel_object_fds() -> Vec<String> {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let target = fs::read_link(entry.path()).ok()?;
            let target = target.to_string_lossy();
            let kernel_object = target.starts_with("anon_inode:bpf")
                || target == "anon_inode:btf"
                || target == "anon_inode:[perf_event]";
            kernel_object.then(|| format!("{} -> {target}", entry.file_name().to_string_lossy()))
        })
        .collect()
}

/// Starts `true` and waits for its exec to come back as a decoded event.
fn ring_buffer(mut next_record: impl FnMut() -> Option<Vec<u8>>) -> Check {
    const NAME: &str = "ring_buffer";
    let started = Instant::now();
    let mut child = match Command::new("true").spawn() {
        Ok(child) => child,
        Err(e) => return Check::fail(NAME, format!("cannot start `true` to watch: {e}")),
    };
    let pid = child.id();
    // The exec is recorded before `true` exits; reap it so it is no zombie.
    let _ = child.wait();
    let (mut other, mut undecodable) = (0u64, 0u64);
    loop {
        while let Some(record) = next_record() {
            match decode(&record) {
                Ok(Event::Exec {
                    pid: seen,
                    filename,
                    ..
                }) if seen == pid => {
                    return Check::ok(
                        NAME,
                        format!(
                            "read back the exec of `true` (pid {pid}, {filename}) after {} ms; \
                             {other} other records before it",
                            started.elapsed().as_millis()
                        ),
                    )
                }
                Ok(_) => other += 1,
                Err(_) => undecodable += 1,
            }
        }
        if started.elapsed() >= RING_BUFFER_WAIT {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Check::fail(
        NAME,
        format!(
            "no exec event for `true` (pid {pid}) within {} s; {other} other records, \
             {undecodable} undecodable",
            RING_BUFFER_WAIT.as_secs()
        ),
    )
}

/// Moves bytes over loopback TCP and checks that the socket programs counted
/// the calls (they count before skipping the agent's own traffic).
fn socket_programs(probes: &Probes) -> Check {
    const NAME: &str = "socket_programs";
    let before = probes.counters().get("socket_calls").copied().unwrap_or(0);
    if let Err(e) = loopback_exchange() {
        return Check::fail(NAME, format!("loopback TCP exchange failed: {e}"));
    }
    let after = probes.counters().get("socket_calls").copied().unwrap_or(0);
    if after > before {
        Check::ok(
            NAME,
            format!(
                "a loopback TCP exchange ran the socket programs ({} calls counted)",
                after - before
            ),
        )
    } else {
        Check::fail(
            NAME,
            "a loopback TCP exchange ran no socket program: socket payloads cannot be captured",
        )
    }
}

fn loopback_exchange() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    client.set_read_timeout(Some(Duration::from_secs(1)))?;
    server.set_read_timeout(Some(Duration::from_secs(1)))?;
    client.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf)?;
    server.write_all(b"pong")?;
    client.read_exact(&mut buf)?;
    Ok(())
}

/// Attaches the OpenSSL uprobes to the first host libssl (else the first
/// executable that carries OpenSSL).
fn uprobes(probes: &mut Probes, host_targets: &[PathBuf]) -> Check {
    const NAME: &str = "uprobes";
    let target = host_targets
        .iter()
        .find(|p| is_libssl(p))
        .or(host_targets.first());
    let Some(target) = target else {
        return Check::warn(
            NAME,
            "no libssl.so.* in the host library directories, so no uprobe was tried; \
             TLS capture attaches to each libssl a process maps",
        );
    };
    match probes.attach_ssl(target) {
        Ok(a) if a.attached == 0 => Check::fail(
            NAME,
            format!(
                "none of the {} SSL uprobes attached to {}",
                a.planned,
                target.display()
            ),
        ),
        Ok(a) => Check::ok(
            NAME,
            format!(
                "{} of {} {} uprobes attached to {} (reads on the {} function, writes on the {} \
                 function; {} on emulated instructions)",
                a.attached,
                a.planned,
                a.library,
                target.display(),
                a.read.as_str(),
                a.write.as_str(),
                a.emulated,
            ),
        ),
        Err(e) => Check::fail(NAME, format!("{}: {}", target.display(), error_chain(&e))),
    }
}
