//! `tokenscope run`: wires probes → streams → pipeline → export.
//!
//! One capture thread owns the ring buffer, the stream table and the process
//! table, so the hot path takes no locks besides the probes' map writes. TLS
//! libraries are found and probed on a thread of their own. The HTTP server
//! and the OTLP exporter run on Tokio.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::{
    attribution::{k8s::TeamKeys, HostTeams, ProcessTable},
    config::{Config, GpuSourceKind, OtlpProtocol},
    events::{decode, Event},
    export::metrics::{Metrics, GPU_SOURCE_UP},
    export::{
        jsonl::{JsonlOptions, JsonlWriter},
        otlp::{OtlpExporter, OtlpOptions},
        server, Exporters,
    },
    gpu::{GpuSource, NvmlSource, ReplaySource},
    pipeline::{
        gpu::{spawn_sampler, GpuStage},
        monotonic_ns, Enricher, WallClock,
    },
    pricing::Pricer,
    probes::{tls::TlsScanner, LoadSettings, Probes},
    streams::{ConnRef, EndpointRecord, Output, StreamLimits, StreamTable, Verdict},
};

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let node = config.agent.node_name.clone().or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
    });

    let mut pricer = Pricer::builtin();
    if !config.pricing.catalogues.is_empty() {
        pricer =
            Pricer::from_files(&config.pricing.catalogues).context("loading price catalogues")?;
    }

    let mut builder = Exporters::builder();
    if let Some(path) = &config.export.events_path {
        let mut options = JsonlOptions::new(path);
        options.max_bytes = config.export.events_max_bytes;
        options.keep_files = config.export.events_keep;
        let writer = JsonlWriter::start(options)
            .with_context(|| format!("opening events file {}", path.display()))?;
        builder = builder.sink(Arc::new(writer));
    }
    let mut otlp = None;
    if let Some(endpoint) = &config.export.otlp_endpoint {
        let protocol = match config.export.otlp_protocol {
            OtlpProtocol::Grpc => crate::export::otlp::OtlpProtocol::Grpc,
            OtlpProtocol::Http => crate::export::otlp::OtlpProtocol::HttpProtobuf,
        };
        let mut options = OtlpOptions::new(endpoint.clone(), protocol);
        options.metrics_interval = Duration::from_secs(config.export.otlp_interval_s);
        options.node = node.clone();
        options.host = node.clone();
        let exporter =
            Arc::new(OtlpExporter::start(&options).context("starting the OTLP exporter")?);
        otlp = Some(Arc::clone(&exporter));
        builder = builder.sink(exporter);
    }
    let exporters = Arc::new(builder.build());
    let state = exporters.state();
    if let Some(otlp) = &otlp {
        // GPU use per pod and device, and hw.gpu.*, from the shared registry.
        otlp.observe(&state.metrics);
    }

    let listener = tokio::net::TcpListener::bind(config.export.listen)
        .await
        .with_context(|| format!("binding {}", config.export.listen))?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(server::serve(
        listener,
        Arc::clone(&state),
        shutdown.clone(),
    ));
    tracing::info!(event = "listening", addr = %config.export.listen);

    let settings = LoadSettings {
        first_window: config.capture.first_window_bytes,
        call_cap: config.capture.call_cap_bytes,
        capture_sockets: config.capture.sockets,
        capture_tls: config.capture.tls,
        filters: crate::probes::Filters::from_config(&config.capture)
            .context("resolving the capture filters")?,
    };
    let mut probes = Probes::load(&settings).with_context(|| {
        // Name what is missing, as `tokenscope doctor` would.
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        match crate::doctor::caps::missing_summary(&status) {
            Some(missing) => format!("loading eBPF programs: {missing}"),
            None => "loading eBPF programs".to_string(),
        }
    })?;
    let ring = probes.take_events()?;
    let probes = Arc::new(Mutex::new(probes));
    tracing::info!(event = "probes_attached");

    let pods = if config.kubernetes.enabled {
        let node_name = node
            .clone()
            .context("kubernetes.enabled needs the node name (TOKENSCOPE_NODE_NAME)")?;
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API (in-cluster config or kubeconfig)")?;
        let cache = crate::attribution::k8s::start_with(
            client,
            &node_name,
            TeamKeys::from_config(&config.kubernetes),
            shutdown.clone(),
        )
        .await
        .context("starting the pod watchers")?;
        tracing::info!(event = "kubernetes_attribution_on", node = %node_name);
        Some(cache)
    } else {
        None
    };

    let stop = Arc::new(AtomicBool::new(false));
    let (exec_tx, exec_rx) = mpsc::channel::<u32>();
    let tls_thread = if config.capture.tls {
        let probes = Arc::clone(&probes);
        let stop = Arc::clone(&stop);
        let ready = Arc::clone(&state);
        Some(
            thread::Builder::new()
                .name("tls-attach".into())
                .spawn(move || {
                    tls_attacher(probes, exec_rx, stop, move || ready.set_ready(true))
                })?,
        )
    } else {
        state.set_ready(true);
        None
    };

    let (gpu, gpu_thread) = match start_gpu(&config, Arc::clone(&stop), &state.metrics)? {
        Some((stage, handle)) => (Some(stage), Some(handle)),
        None => (None, None),
    };

    let capture = {
        let probes = Arc::clone(&probes);
        let stop = Arc::clone(&stop);
        let exporters = Arc::clone(&exporters);
        let enricher = Enricher {
            clock: WallClock::now(),
            node,
            pricer,
            pods,
        };
        let limits = StreamLimits {
            max_connections: config.capture.max_connections,
            ..StreamLimits::default()
        };
        let exclude = config.capture.exclude_comms.clone();
        let host_teams = HostTeams::from(&config.teams);
        let mut streams = StreamTable::new(limits);
        streams.set_endpoint_hosts(config.capture.endpoint_hosts.clone());
        let tls = config.capture.tls;
        thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                capture_loop(CaptureLoop {
                    ring,
                    probes,
                    stop,
                    exporters,
                    enricher,
                    streams,
                    procs: ProcessTable::new("/proc", 30_000_000_000, 65_536)
                        .with_host_teams(host_teams),
                    exec_tx: tls.then_some(exec_tx),
                    exclude,
                    gpu,
                    endpoint_totals: HashMap::new(),
                })
            })?
    };

    wait_for_signal().await;
    tracing::info!(event = "stopping");
    stop.store(true, Ordering::Relaxed);
    let _ = capture.join();
    if let Some(t) = tls_thread {
        let _ = t.join();
    }
    if let Some(t) = gpu_thread {
        let _ = t.join();
    }
    drop(probes);
    let flush = Arc::clone(&exporters);
    let _ = tokio::task::spawn_blocking(move || flush.shutdown()).await;
    shutdown.cancel();
    let _ = server.await;
    tracing::info!(event = "stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

struct CaptureLoop {
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    probes: Arc<Mutex<Probes>>,
    stop: Arc<AtomicBool>,
    exporters: Arc<Exporters>,
    enricher: Enricher,
    streams: StreamTable,
    procs: ProcessTable,
    exec_tx: Option<mpsc::Sender<u32>>,
    exclude: Vec<String>,
    gpu: Option<GpuStage>,
    /// (server name, team, namespace, workload) → [connections, bytes sent, bytes received].
    endpoint_totals: HashMap<(String, String, String, String), [u64; 3]>,
}

/// The GPU source the config names, sampled on its own thread. NVML missing
/// on a node is not an error (most nodes have no GPU): the agent runs on, says
/// so once in its log and as `tokenscope_gpu_source_up{source="nvml"} 0`. A
/// replay file that cannot be read is an error.
fn start_gpu(
    config: &Config,
    stop: Arc<AtomicBool>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<(GpuStage, thread::JoinHandle<()>)>> {
    let source: Box<dyn GpuSource + Send> = match config.gpu.source {
        GpuSourceKind::None => return Ok(None),
        GpuSourceKind::Nvml => match NvmlSource::new() {
            Ok(source) => Box::new(source),
            Err(error) => {
                tracing::warn!(
                    event = "gpu_unavailable",
                    error = %crate::gpu::describe(&error),
                    "GPU accounting is off: NVML is not available on this node"
                );
                metrics.set_float(
                    &GPU_SOURCE_UP,
                    &[("source", "nvml"), ("reason", "nvml_unavailable")],
                    0.0,
                );
                return Ok(None);
            }
        },
        GpuSourceKind::Replay => {
            let path = config
                .gpu
                .replay_path
                .as_deref()
                .context("gpu.replay_path is required with gpu.source = replay")?;
            Box::new(
                ReplaySource::open(path)
                    .with_context(|| format!("opening GPU replay {}", path.display()))?,
            )
        }
    };
    let interval = Duration::from_millis(config.gpu.interval_ms);
    let (rx, handle) = spawn_sampler(source, interval, stop, Arc::clone(metrics))?;
    let window = Duration::from_secs(config.gpu.window_s);
    let source_name = match config.gpu.source {
        GpuSourceKind::Replay => "replay",
        _ => "nvml",
    };
    // GPU time is priced by GPU model from the catalogue, else at gpu.usd_per_gpu_hour.
    let pricer = if config.pricing.catalogues.is_empty() {
        Pricer::builtin()
    } else {
        Pricer::from_files(&config.pricing.catalogues).context("loading price catalogues")?
    };
    let stage = GpuStage::new(
        rx,
        interval,
        window,
        config.gpu.usd_per_gpu_hour,
        Arc::clone(metrics),
        source_name,
    )
    .with_gpu_price(Box::new(move |model| pricer.usd_per_gpu_hour(model)));
    tracing::info!(event = "gpu_accounting_on", source = ?config.gpu.source);
    Ok(Some((stage, handle)))
}

fn capture_loop(mut l: CaptureLoop) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;

    l.procs.scan_proc();
    let mut out = Output::default();
    let mut last_tick = Instant::now();
    let mut decode_errors = 0u64;
    let mut overrun_bytes = 0u64;
    while !l.stop.load(Ordering::Relaxed) {
        {
            let mut fds = [PollFd::new(l.ring.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(100u16));
        }
        loop {
            let decoded = match l.ring.next() {
                Some(item) => decode(&item),
                None => break,
            };
            match decoded {
                Ok(event) => {
                    if let Event::Data(d) = &event {
                        overrun_bytes += u64::from(d.overrun);
                    }
                    handle(&mut l, event, &mut out)
                }
                Err(error) => {
                    decode_errors += 1;
                    tracing::debug!(event = "decode_error", %error);
                }
            }
            flush_output(&mut l, &mut out);
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            let now = monotonic_ns();
            l.streams.sweep(now, &mut out);
            l.procs.evict(now);
            if let Ok(mut probes) = l.probes.lock() {
                probes.sweep_go_calls();
            }
            flush_output(&mut l, &mut out);
            gpu_tick(&mut l, false);
            publish_counters(&l, decode_errors, overrun_bytes);
        }
    }
    // Calls still open at shutdown are reported as incomplete.
    l.streams.sweep(u64::MAX, &mut out);
    flush_output(&mut l, &mut out);
    gpu_tick(&mut l, true);
}

/// Releases held self-hosted calls once their GPU window closes.
fn gpu_tick(l: &mut CaptureLoop, force: bool) {
    let Some(gpu) = l.gpu.as_mut() else { return };
    for record in gpu.tick(&mut l.procs, l.enricher.pods.as_ref(), force) {
        l.exporters.record(&record);
    }
}

fn handle(l: &mut CaptureLoop, event: Event, out: &mut Output) {
    match event {
        Event::Exec {
            pid,
            ppid,
            cgroup_id,
            ts_ns,
            comm,
            filename,
        } => {
            tracing::debug!(event = "exec", pid, ppid, comm = %comm, filename = %filename, cgroup_id);
            l.procs
                .on_exec(pid, ppid, &comm, &filename, cgroup_id, ts_ns);
            if let Some(tx) = &l.exec_tx {
                let _ = tx.send(pid);
            }
        }
        Event::Exit { pid, ts_ns } => {
            l.procs.on_exit(pid, ts_ns);
            l.streams.on_exit(pid, ts_ns, out);
        }
        Event::Data(data) => {
            if l.exclude.contains(&data.comm) {
                out.verdicts.push((
                    ConnRef {
                        id: data.conn_id,
                        seen_ns: data.ts_ns,
                    },
                    Verdict::Mute,
                ));
                return;
            }
            l.streams.on_data(data, out);
        }
        Event::Close {
            conn_id,
            ts_ns,
            sent,
            received,
        } => l.streams.on_close(conn_id, ts_ns, sent, received, out),
        Event::TlsLink {
            pid,
            ssl,
            sock,
            endpoints,
            ..
        } => {
            tracing::debug!(
                event = "tls_link",
                pid,
                ssl,
                sock,
                endpoints = ?endpoints
            );
            l.streams.on_tls_link(ssl, sock, endpoints)
        }
    }
}

fn flush_output(l: &mut CaptureLoop, out: &mut Output) {
    if !out.verdicts.is_empty() || !out.forget.is_empty() {
        if let Ok(mut probes) = l.probes.lock() {
            for (conn, verdict) in out.verdicts.drain(..) {
                probes.set_verdict(conn, verdict);
            }
            for conn in out.forget.drain(..) {
                probes.forget(conn);
            }
        }
    }
    for endpoint in out.endpoints.drain(..) {
        record_endpoint(l, &endpoint);
    }
    for (meta, call) in out.calls.drain(..) {
        let record = l.enricher.enrich(&meta, call, &mut l.procs);
        tracing::debug!(
            event = "call",
            pid = record.attribution.pid,
            conn_id = meta.conn_id,
            provider = record.call.provider.as_str(),
            model = record.call.request_model.as_deref().unwrap_or(""),
            status = record.call.status.unwrap_or(0),
        );
        let ready = match l.gpu.as_mut() {
            Some(gpu) => gpu.admit(record, l.enricher.pods.as_ref()),
            None => Some(record),
        };
        if let Some(record) = ready {
            l.exporters.record(&record);
        }
    }
}

/// A TLS connection to an AI endpoint that was not decrypted: counted per
/// endpoint and team, and logged.
fn record_endpoint(l: &mut CaptureLoop, e: &EndpointRecord) {
    use crate::record::endpoint::{EndpointConnection, Observed};
    let info = l.procs.lookup(e.pid, &e.comm, e.cgroup_id);
    let mut who = crate::attribution::attribute(info, e.pid, &e.comm, l.enricher.node.as_deref());
    if let Some(pods) = &l.enricher.pods {
        if let Some(pod) = who.pod_uid.as_deref().and_then(|uid| pods.by_uid(uid)) {
            crate::pipeline::apply_pod(&mut who, pod);
        }
    }
    let team = who.team.clone().unwrap_or_default();
    let namespace = who.namespace.clone().unwrap_or_default();
    let workload = who.workload.clone().unwrap_or_default();
    tracing::info!(
        event = "ai_endpoint_connection",
        pid = e.pid,
        comm = %e.comm,
        server_address = %e.server_name,
        bytes_sent = e.bytes_sent,
        bytes_received = e.bytes_received,
        duration_s = e.end_ns.saturating_sub(e.start_ns) as f64 / 1e9,
        team = %team,
        "TLS connection to an AI endpoint, not decrypted"
    );
    let clock = &l.enricher.clock;
    l.exporters.record_endpoint(&EndpointConnection::new(
        Observed {
            server_address: e.server_name.clone(),
            start_time_unix_nano: clock.unix_ns(e.start_ns),
            end_time_unix_nano: clock.unix_ns(e.end_ns),
            bytes_sent: e.bytes_sent,
            bytes_received: e.bytes_received,
            local: e.endpoints.map(|ep| ep.local.to_string()),
            peer: e.endpoints.map(|ep| ep.remote.to_string()),
        },
        who,
    ));
    let key = (e.server_name.clone(), team, namespace, workload);
    if l.endpoint_totals.len() >= 1024 && !l.endpoint_totals.contains_key(&key) {
        return;
    }
    let totals = l.endpoint_totals.entry(key).or_default();
    totals[0] += 1;
    totals[1] += e.bytes_sent;
    totals[2] += e.bytes_received;
}

fn publish_counters(l: &CaptureLoop, decode_errors: u64, overrun_bytes: u64) {
    let metrics = &l.exporters.state().metrics;
    let mut stale_verdicts = 0;
    if let Ok(probes) = l.probes.lock() {
        stale_verdicts = probes.stale_skipped();
        for (name, value) in probes.counters() {
            metrics.set_agent_counter(
                "tokenscope_capture_kernel_total",
                &[("counter", name)],
                value,
            );
        }
    }
    let s = l.streams.stats();
    for (name, value) in [
        ("connections", s.connections),
        ("not_http", s.not_http),
        ("not_llm", s.not_llm),
        ("evicted", s.evicted),
        ("idle_closed", s.idle_closed),
        ("gaps", s.gaps),
        ("gap_bytes", s.gap_bytes),
        ("calls", s.calls),
        ("decode_errors", decode_errors),
        ("stale_verdicts", stale_verdicts),
        // Bytes the kernel copied past what a call moved (dropped; 0 when
        // the probes clip as they should).
        ("overrun_bytes", overrun_bytes),
    ] {
        metrics.set_agent_counter("tokenscope_streams_total", &[("counter", name)], value);
    }
    metrics.set_agent_gauge("tokenscope_open_connections", &[], l.streams.len() as f64);
    for ((server, team, namespace, workload), totals) in &l.endpoint_totals {
        let labels = [
            ("server_address", server.as_str()),
            ("team", team.as_str()),
            ("namespace", namespace.as_str()),
            ("workload", workload.as_str()),
        ];
        metrics.set_agent_counter("tokenscope_endpoint_connections_total", &labels, totals[0]);
        for (direction, value) in [("sent", totals[1]), ("received", totals[2])] {
            let mut with_dir = labels.to_vec();
            with_dir.push(("direction", direction));
            metrics.set_agent_counter("tokenscope_endpoint_bytes_total", &with_dir, value);
        }
    }
    for (placement, value) in crate::probes::ssl_placements() {
        metrics.set_agent_counter(
            "tokenscope_tls_probe_placements_total",
            &[("placement", placement)],
            value,
        );
    }
    if let Some(gpu) = &l.gpu {
        // GPU use per pod and device is published by the GPU stage itself.
        metrics.set_agent_counter(
            "tokenscope_gpu_failed_samples_total",
            &[],
            gpu.failed_samples,
        );
        metrics.set_agent_counter("tokenscope_gpu_gaps_total", &[], gpu.gaps);
    }
    metrics.set_agent_gauge("tokenscope_tracked_processes", &[], l.procs.len() as f64);
}

/// Probes every TLS library at start, then what each new process maps, a few
/// times shortly after its exec (libraries load after exec returns).
pub(crate) fn tls_attacher(
    probes: Arc<Mutex<Probes>>,
    execs: mpsc::Receiver<u32>,
    stop: Arc<AtomicBool>,
    on_ready: impl FnOnce(),
) {
    let mut scanner = TlsScanner::default();
    let attach = |paths: Vec<std::path::PathBuf>| {
        for path in paths {
            let Ok(mut p) = probes.lock() else { return };
            match p.attach_ssl(&path) {
                Ok(a) => {
                    tracing::info!(
                        event = "tls_attached",
                        path = %path.display(),
                        library = a.library,
                        probes = a.attached,
                        planned = a.planned,
                        emulated = a.emulated,
                        read = a.read.as_str(),
                        write = a.write.as_str(),
                        write_offsets = %a
                            .write_offsets
                            .iter()
                            .map(|o| format!("{o:#x}"))
                            .collect::<Vec<_>>()
                            .join(","),
                    );
                }
                Err(error) => {
                    tracing::warn!(event = "tls_attach_failed", path = %path.display(), %error)
                }
            }
        }
    };
    // Go executables carry their own crypto/tls; the scans collect them.
    let attach_go = |paths: Vec<std::path::PathBuf>| {
        for path in paths {
            let Ok(mut p) = probes.lock() else { return };
            match p.attach_go(&path) {
                Ok(a) => tracing::info!(
                    event = "tls_attached",
                    path = %path.display(),
                    library = "go",
                    go_version = a.version.as_deref().unwrap_or("unknown"),
                    lookup = a.lookup,
                    probes = a.attached,
                    planned = a.planned,
                    conn_layout = a.conn_layout.unwrap_or("none"),
                    tcp_itab = a.tcp_itab,
                    conn_layout_error = a.conn_error.as_ref().map(tracing::field::display),
                ),
                // Go binaries without crypto/tls are common: not a warning.
                Err(error) => {
                    tracing::debug!(event = "go_tls_not_attached", path = %path.display(), %error)
                }
            }
        }
    };
    attach(scanner.scan_host());
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                attach(scanner.scan_pid(pid));
                attach_go(scanner.take_go());
            }
        }
    }
    on_ready();
    const RECHECK_MS: [u64; 4] = [0, 50, 300, 1000];
    let mut due: BinaryHeap<Reverse<(Instant, u32)>> = BinaryHeap::new();
    while !stop.load(Ordering::Relaxed) {
        match execs.recv_timeout(Duration::from_millis(50)) {
            Ok(pid) => {
                let now = Instant::now();
                for ms in RECHECK_MS {
                    if due.len() < 100_000 {
                        due.push(Reverse((now + Duration::from_millis(ms), pid)));
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        while let Some(Reverse((when, pid))) = due.peek().copied() {
            if when > now {
                break;
            }
            due.pop();
            attach(scanner.scan_pid(pid));
            attach_go(scanner.take_go());
        }
    }
}
