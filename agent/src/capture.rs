//! `tokenscope capture`: a debugging view of what the agent reassembles.
//!
//! It loads the same probes as `run`, and prints each connection's request
//! and response heads with the process, the addresses and the TLS library.
//! Credentials are never printed: the parsers drop them, and any header
//! named like one is shown as `[redacted]`. With `--dump DIR` it also
//! writes each connection's reassembled bytes, one file per direction.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::Write,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    events::{decode, Event, Flow},
    probes::{LoadSettings, Probes},
    protocols::event::{Header, HttpEvent},
    streams::{ConnMeta, Output, StreamLimits, StreamTable, Tapped, Verdict},
};

/// Header names whose values never leave the agent.
const SECRET_HEADERS: [&str; 6] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "cookie",
    "set-cookie",
];

#[derive(Debug, clap::Args)]
pub struct CaptureArgs {
    /// Write each connection's reassembled bytes to DIR/<pid>-<conn id>.out
    /// (what the process sent) and .in (what it received).
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// Only this process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// Keep capturing connections that are not LLM calls (by default they are
    /// muted in the kernel after their first request, as in `run`).
    #[arg(long)]
    pub all: bool,
    /// Bytes captured per call (default as in `run`).
    #[arg(long, default_value_t = 256 * 1024)]
    pub call_cap_bytes: u32,
}

/// Whether a header's value must be hidden.
pub fn is_secret(name: &str) -> bool {
    SECRET_HEADERS.iter().any(|s| name.eq_ignore_ascii_case(s))
}

fn header_line(h: Header<'_>) -> String {
    if is_secret(h.name) {
        format!("{}: [redacted]", h.name)
    } else {
        format!("{}: {}", h.name, h.value)
    }
}

/// The lines printed for one head.
pub fn render_head(meta: &ConnMeta, event: &HttpEvent) -> Vec<String> {
    let addrs = match meta.endpoints {
        Some(e) => format!("{} -> {}", e.local, e.remote),
        None => "addresses unknown".to_string(),
    };
    let tls = meta.tls.unwrap_or("plain");
    let who = format!(
        "[pid {} {}] {:?} {} {} conn {:x}",
        meta.pid, meta.comm, meta.side, addrs, tls, meta.conn_id
    );
    let mut lines = vec![who];
    match event {
        HttpEvent::Request { head, stream, .. } => {
            lines.push(format!(
                "  > {} {} (stream {stream}{})",
                head.method,
                head.path,
                head.authority
                    .as_deref()
                    .map(|a| format!(", authority {a}"))
                    .unwrap_or_default()
            ));
            lines.extend(
                head.headers
                    .iter()
                    .map(|h| format!("  > {}", header_line(h))),
            );
        }
        HttpEvent::Response { head, stream, .. } => {
            lines.push(format!("  < {} (stream {stream})", head.status));
            lines.extend(
                head.headers
                    .iter()
                    .map(|h| format!("  < {}", header_line(h))),
            );
        }
        _ => {}
    }
    lines
}

/// Open dump files, per (process, connection, direction). Connection ids
/// are socket and SSL object addresses, which the kernel and libraries
/// reuse: a connection's files are closed when it closes, and a later
/// connection with the same id gets files of its own (`-2`, `-3`, ...).
struct Dumper {
    dir: PathBuf,
    files: HashMap<(u32, u64, bool), File>,
}

impl Dumper {
    fn write(&mut self, conn_id: u64, pid: u32, flow: Flow, bytes: &[u8]) -> anyhow::Result<()> {
        let out = flow == Flow::Egress;
        let key = (pid, conn_id, out);
        if !self.files.contains_key(&key) {
            // A file per connection; bounded by the table's connection limit.
            if self.files.len() >= 4096 {
                self.files.clear();
            }
            let ext = if out { "out" } else { "in" };
            let mut path = self.dir.join(format!("{pid}-{conn_id:x}.{ext}"));
            let mut n = 2;
            while path.exists() {
                path = self.dir.join(format!("{pid}-{conn_id:x}-{n}.{ext}"));
                n += 1;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            self.files.insert(key, file);
        }
        if let Some(file) = self.files.get_mut(&key) {
            file.write_all(bytes)?;
        }
        Ok(())
    }

    /// The connection closed: its id may come back as another connection.
    fn close(&mut self, conn_id: u64) {
        self.files.retain(|(_, id, _), _| *id != conn_id);
    }
}

/// Runs the capture view until Ctrl-C or `--duration-s`.
pub fn run(args: &CaptureArgs) -> anyhow::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;

    let settings = LoadSettings {
        first_window: 64 * 1024,
        call_cap: args.call_cap_bytes,
        capture_sockets: true,
        capture_tls: true,
        filters: Default::default(),
    };
    let mut probes = Probes::load(&settings).context("loading the probes")?;
    let mut ring = probes.take_events().context("opening the ring buffer")?;
    let probes = Arc::new(Mutex::new(probes));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        let _ = ctrlc_like(move || stop.store(true, Ordering::Relaxed));
    }
    let (exec_tx, exec_rx) = mpsc::channel::<u32>();
    let tls_thread = {
        let probes = Arc::clone(&probes);
        let stop = Arc::clone(&stop);
        thread::Builder::new()
            .name("tls-attach".into())
            .spawn(move || {
                crate::daemon::tls_attacher(probes, exec_rx, stop, || {
                    // Scripts wait for this line before they start clients.
                    eprintln!("ready: TLS libraries of running processes are probed");
                })
            })?
    };
    if let Some(dir) = &args.dump {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut dumper = args.dump.clone().map(|dir| Dumper {
        dir,
        files: HashMap::new(),
    });
    let mut streams = StreamTable::new(StreamLimits::default());
    streams.set_tap(true);
    let mut out = Output::default();
    let mut closed: Vec<u64> = Vec::new();
    let started = Instant::now();
    let deadline = args.duration_s.map(Duration::from_secs);
    let stdout = std::io::stdout();
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| started.elapsed() < d) {
        {
            let mut fds = [PollFd::new(ring.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(100u16));
        }
        while let Some(item) = ring.next() {
            let Ok(event) = decode(&item) else { continue };
            match event {
                Event::Exec { pid, .. } => {
                    let _ = exec_tx.send(pid);
                }
                Event::Exit { pid, ts_ns } => streams.on_exit(pid, ts_ns, &mut out),
                Event::Data(data) => {
                    if args.pid.is_some_and(|p| p != data.pid) {
                        continue;
                    }
                    streams.on_data(data, &mut out);
                }
                Event::Close {
                    conn_id,
                    ts_ns,
                    sent,
                    received,
                } => {
                    streams.on_close(conn_id, ts_ns, sent, received, &mut out);
                    // After the closed connection's last bytes are written.
                    closed.push(conn_id);
                }
                Event::TlsLink {
                    ssl,
                    sock,
                    endpoints,
                    ..
                } => streams.on_tls_link(ssl, sock, endpoints),
            }
            let mut lock = stdout.lock();
            for tapped in out.tapped.drain(..) {
                match tapped {
                    Tapped::Head { meta, event } => {
                        for line in render_head(&meta, &event) {
                            let _ = writeln!(lock, "{line}");
                        }
                    }
                    Tapped::Bytes {
                        conn_id,
                        pid,
                        flow,
                        bytes,
                    } => {
                        if let Some(d) = dumper.as_mut() {
                            d.write(conn_id, pid, flow, &bytes)?;
                        }
                    }
                    Tapped::Gap {
                        conn_id,
                        flow,
                        lost,
                        ..
                    } => {
                        let _ = writeln!(lock, "  ! conn {conn_id:x} {flow:?}: {lost} bytes lost");
                    }
                }
            }
            if let Ok(mut p) = probes.lock() {
                for (conn, verdict) in out.verdicts.drain(..) {
                    if verdict != Verdict::Mute || !args.all {
                        p.set_verdict(conn, verdict);
                    }
                }
                for e in out.endpoints.drain(..) {
                    let _ = writeln!(
                        std::io::stdout().lock(),
                        "[pid {} {}] TLS to {} (not decrypted): {} bytes sent, {} received, {:.3} s",
                        e.pid,
                        e.comm,
                        e.server_name,
                        e.bytes_sent,
                        e.bytes_received,
                        e.end_ns.saturating_sub(e.start_ns) as f64 / 1e9
                    );
                }
                for conn_id in out.forget.drain(..) {
                    p.forget(conn_id);
                }
            }
            if let Some(d) = dumper.as_mut() {
                for conn_id in closed.drain(..) {
                    d.close(conn_id);
                }
            }
            closed.clear();
            out.calls.clear();
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(exec_tx);
    let _ = tls_thread.join();
    Ok(())
}

/// Calls `f` on SIGINT or SIGTERM, from a small thread.
fn ctrlc_like(f: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let Ok(mut term) = signal(SignalKind::terminate()) else {
                    return;
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            });
            f();
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::Endpoints,
        protocols::event::{Headers, RequestHead, ResponseHead},
        record::Side,
    };

    fn meta() -> ConnMeta {
        ConnMeta {
            conn_id: 0xabc,
            pid: 42,
            comm: "curl".into(),
            cgroup_id: 1,
            side: Side::Client,
            tls: Some("openssl"),
            endpoints: Some(Endpoints {
                local: "127.0.0.1:50000".parse().unwrap(),
                remote: "127.0.0.1:443".parse().unwrap(),
            }),
            authority: None,
            caller: None,
        }
    }

    #[test]
    fn heads_show_process_addresses_library_and_no_secret() {
        let request = HttpEvent::Request {
            stream: 0,
            head: RequestHead {
                method: "POST".into(),
                path: "/v1/chat/completions".into(),
                authority: Some("api.openai.com".into()),
                headers: Headers::from_iter([
                    ("Authorization", "Bearer sk-SECRET"),
                    ("x-api-key", "SECRET"),
                    ("Api-Key", "SECRET"),
                    ("Cookie", "session=SECRET"),
                    ("Proxy-Authorization", "Basic SECRET"),
                    ("content-type", "application/json"),
                ]),
            },
            ts_ns: 1,
        };
        let text = render_head(&meta(), &request).join("\n");
        assert!(!text.contains("SECRET"), "{text}");
        assert_eq!(text.matches("[redacted]").count(), 5, "{text}");
        assert!(text.contains("[pid 42 curl] Client 127.0.0.1:50000 -> 127.0.0.1:443 openssl"));
        assert!(text.contains("> POST /v1/chat/completions"));
        assert!(text.contains("> content-type: application/json"));

        let response = HttpEvent::Response {
            stream: 0,
            head: ResponseHead {
                status: 429,
                headers: Headers::from_iter([("set-cookie", "id=SECRET"), ("retry-after", "2")]),
            },
            ts_ns: 2,
        };
        let text = render_head(&meta(), &response).join("\n");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("< 429"));
        assert!(text.contains("< retry-after: 2"));
    }
}
