//! The GPU stage: samples from a [`GpuSource`] on a thread of its own, GPU
//! use per process (and so per pod and team) published as metrics every
//! tick, and each self-hosted call's share of its server's GPU time.
//!
//! Calls served on this node are held until the accounting window they fall
//! in closes (`gpu.window_s`), then get their share of their server process's
//! busy time and energy in that window, split by tokens (input + output), and
//! are exported. Calls made to remote APIs pass straight through.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    attribution::{attribute, k8s::PodCache, ProcessTable},
    export::metrics::{
        Metrics, GPU_BUSY_COST, GPU_BUSY_SECONDS, GPU_DEVICE_ENERGY, GPU_DEVICE_SECONDS,
        GPU_ENERGY, GPU_HELD_SECONDS, GPU_IDLE_ENERGY, GPU_IDLE_HELD_COST, GPU_IDLE_HELD_SECONDS,
        GPU_IDLE_SECONDS, GPU_MEMORY_GIB_SECONDS, GPU_MEMORY_SHARE_INTERVALS, GPU_SOURCE_UP,
        HW_GPU_MEMORY_LIMIT, HW_GPU_MEMORY_USAGE, HW_GPU_UTILIZATION,
    },
    gpu::{apportion_calls, Accountant, GpuError, GpuSample, GpuSource, ServedCall, WindowTotals},
    pipeline::apply_pod,
    record::{Attribution, CallRecord, GpuShareStatus, Provider, Side},
};

/// Most calls held for one window; past it they go out without a share (counted).
const MAX_HELD: usize = 100_000;

/// Sampling results as they arrive from the sampler thread.
pub type Samples = mpsc::Receiver<Result<GpuSample, GpuError>>;

/// USD per GPU-hour of a GPU model (the device name NVML reports), when the
/// price catalogue knows it.
pub type GpuPriceLookup = Box<dyn Fn(&str) -> Option<f64> + Send>;

/// Starts sampling `source` every `interval` on a thread; samples arrive on the
/// receiver. A sample the stage has no room for is dropped and counted in
/// `tokenscope_gpu_samples_dropped_total` (its interval then counts as a gap).
pub fn spawn_sampler(
    mut source: Box<dyn GpuSource + Send>,
    interval: Duration,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> std::io::Result<(Samples, thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::sync_channel(64);
    let handle = thread::Builder::new()
        .name("gpu-sampler".into())
        .spawn(move || {
            // Failures are logged when they start and when they end, not per round.
            let mut failing = false;
            let mut dropped = 0u64;
            metrics.set_agent_counter("tokenscope_gpu_samples_dropped_total", &[], 0);
            while !stop.load(Ordering::Relaxed) {
                let result = source.sample();
                match &result {
                    Err(GpuError::Exhausted) => {
                        tracing::info!(event = "gpu_replay_done");
                        return;
                    }
                    Err(error) if !failing => {
                        failing = true;
                        tracing::warn!(
                            event = "gpu_sampling_failed",
                            error = %crate::gpu::describe(error),
                            "GPU sampling failed; the time until it works again is not counted"
                        );
                    }
                    Ok(_) if failing => {
                        failing = false;
                        tracing::info!(event = "gpu_sampling_recovered");
                    }
                    _ => {}
                }
                if tx.try_send(result).is_err() {
                    dropped += 1;
                    metrics.set_agent_counter("tokenscope_gpu_samples_dropped_total", &[], dropped);
                }
                thread::sleep(interval);
            }
        })?;
    Ok((rx, handle))
}

/// Labels GPU use is kept under.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    pub namespace: String,
    pub pod: String,
    pub workload: String,
    pub team: String,
}

impl Owner {
    pub fn of(a: &Attribution) -> Owner {
        let or = |v: &Option<String>| v.clone().unwrap_or_default();
        Owner {
            namespace: or(&a.namespace),
            pod: a
                .pod
                .clone()
                .unwrap_or_else(|| format!("pid:{} {}", a.pid, a.comm)),
            workload: or(&a.workload),
            team: or(&a.team),
        }
    }

    fn attributes(&self) -> [(&'static str, &str); 4] {
        [
            ("k8s.namespace.name", self.namespace.as_str()),
            ("k8s.pod.name", self.pod.as_str()),
            ("tokenscope.workload", self.workload.as_str()),
            ("tokenscope.team", self.team.as_str()),
        ]
    }
}

/// Attributes of a GPU in the hardware semantic conventions: `hw.id` (its
/// UUID), `hw.name` (`gpu<index>`, a MIG instance under its GPU), `hw.model`,
/// `hw.vendor`, `hw.type`, and `hw.parent` (a MIG instance's GPU; empty: none).
fn hw_attributes<'a>(
    uuid: &'a str,
    name: &'a str,
    model: &'a str,
    parent: &'a str,
) -> [(&'static str, &'a str); 6] {
    [
        ("hw.id", uuid),
        ("hw.name", name),
        ("hw.model", model),
        ("hw.vendor", "NVIDIA"),
        ("hw.type", "gpu"),
        ("hw.parent", parent),
    ]
}

/// Where a client call's GPU share stands: on the server's own record when the
/// server runs on this node (loopback, this node's address, or a pod of this
/// node), unknowable here when it runs elsewhere. Hosted APIs (priced by
/// token) have none.
fn client_share(record: &CallRecord, pods: Option<&PodCache>) -> Option<GpuShareStatus> {
    if !matches!(
        record.call.provider,
        Provider::Ollama | Provider::OpenaiCompatible
    ) {
        return None;
    }
    let ip = |addr: &Option<String>| {
        addr.as_deref()
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.ip())
    };
    let on_this_node = ip(&record.peer).is_some_and(|peer| {
        peer.is_loopback()
            || Some(peer) == ip(&record.local)
            || pods.is_some_and(|pods| pods.by_ip(&peer.to_string()).is_some())
    });
    Some(if on_this_node {
        GpuShareStatus::OnServerRecord
    } else {
        GpuShareStatus::Remote
    })
}

/// The owner of a GPU process, through the same attribution path as calls:
/// process -> cgroup (container, pod uid) -> pod metadata.
fn owner_of(pid: u32, procs: &mut ProcessTable, pods: Option<&PodCache>) -> Owner {
    let comm = procs.get(pid).map(|p| p.comm.clone()).unwrap_or_default();
    let info = procs.lookup(pid, &comm, 0);
    let mut attribution = attribute(info, pid, &comm, None);
    if let Some(pod) = pods.and_then(|pods| {
        attribution
            .pod_uid
            .as_deref()
            .and_then(|uid| pods.by_uid(uid))
    }) {
        apply_pod(&mut attribution, pod);
    }
    Owner::of(&attribution)
}

pub struct GpuStage {
    samples: Samples,
    accountant: Accountant,
    window: Duration,
    window_started: Instant,
    /// Used where the catalogue has no price for the GPU model.
    usd_per_gpu_hour: f64,
    gpu_price: Option<GpuPriceLookup>,
    metrics: Arc<Metrics>,
    source: &'static str,
    /// GPU use since the window started, for apportioning.
    pending: WindowTotals,
    held: Vec<CallRecord>,
    pub failed_samples: u64,
    pub gaps: u64,
    pub released_without_share: u64,
}

impl GpuStage {
    /// `source` names the GPU source in `tokenscope_gpu_source_up`.
    pub fn new(
        samples: Samples,
        interval: Duration,
        window: Duration,
        usd_per_gpu_hour: f64,
        metrics: Arc<Metrics>,
        source: &'static str,
    ) -> GpuStage {
        metrics.set_float(&GPU_SOURCE_UP, &[("source", source)], 1.0);
        GpuStage {
            samples,
            // Three missed samples in a row make a gap, not an interval.
            accountant: Accountant::new(interval * 3 + Duration::from_millis(500)),
            window,
            window_started: Instant::now(),
            usd_per_gpu_hour,
            gpu_price: None,
            metrics,
            source,
            pending: WindowTotals::default(),
            held: Vec::new(),
            failed_samples: 0,
            gaps: 0,
            released_without_share: 0,
        }
    }

    /// Prices GPU time by GPU model from the catalogue, before the configured fallback.
    pub fn with_gpu_price(mut self, lookup: GpuPriceLookup) -> GpuStage {
        self.gpu_price = Some(lookup);
        self
    }

    /// USD per GPU-hour of a GPU model: the catalogue's, else the configured one.
    pub fn usd_per_gpu_hour(&self, gpu_model: &str) -> f64 {
        self.gpu_price
            .as_ref()
            .and_then(|lookup| lookup(gpu_model))
            .filter(|usd| usd.is_finite() && *usd >= 0.0)
            .unwrap_or(self.usd_per_gpu_hour)
    }

    /// Takes a record; returns those ready to export now. A served call is
    /// held for its share; a client call says where its GPU share stands.
    pub fn admit(&mut self, mut record: CallRecord, pods: Option<&PodCache>) -> Option<CallRecord> {
        if record.side != Side::Server {
            record.gpu_share = client_share(&record, pods);
            return Some(record);
        }
        if self.held.len() >= MAX_HELD {
            self.released_without_share += 1;
            record.gpu_share = Some(GpuShareStatus::NotApportioned);
            return Some(record);
        }
        self.held.push(record);
        None
    }

    /// Reads pending samples and publishes the GPU use they add; when the
    /// window is over, closes it and returns the held calls with their shares.
    pub fn tick(
        &mut self,
        procs: &mut ProcessTable,
        pods: Option<&PodCache>,
        force: bool,
    ) -> Vec<CallRecord> {
        let mut last_ok = None;
        while let Ok(result) = self.samples.try_recv() {
            last_ok = Some(result.is_ok());
            self.accountant.add(result);
        }
        if let Some(ok) = last_ok {
            let up = if ok { 1.0 } else { 0.0 };
            self.metrics
                .set_float(&GPU_SOURCE_UP, &[("source", self.source)], up);
        }
        let delta = self.accountant.take_window();
        self.publish(&delta, procs, pods);
        self.pending.merge(delta);
        if !force && self.window_started.elapsed() < self.window {
            return Vec::new();
        }
        self.window_started = Instant::now();
        let totals = std::mem::take(&mut self.pending);
        self.close_window(&totals)
    }

    /// Adds one tick's GPU use to the per-pod and per-device counters, and
    /// sets the per-device gauges from the newest sample.
    fn publish(&mut self, delta: &WindowTotals, procs: &mut ProcessTable, pods: Option<&PodCache>) {
        self.failed_samples += delta.failed_samples;
        self.gaps += delta.gaps;
        let m = &self.metrics;
        let mut owners: BTreeMap<Owner, Vec<u32>> = BTreeMap::new();
        for pid in delta.pids.keys() {
            owners
                .entry(owner_of(*pid, procs, pods))
                .or_default()
                .push(*pid);
        }
        for (owner, pids) in &owners {
            let attributes = owner.attributes();
            for t in pids.iter().filter_map(|pid| delta.pids.get(pid)) {
                let usd_per_second = self.usd_per_gpu_hour(&t.gpu_model) / 3600.0;
                m.add_float(&GPU_BUSY_SECONDS, &attributes, t.gpu_seconds);
                m.add_float(&GPU_HELD_SECONDS, &attributes, t.held_seconds);
                m.add_float(&GPU_ENERGY, &attributes, t.energy_joules);
                m.add_float(&GPU_MEMORY_GIB_SECONDS, &attributes, t.memory_gib_seconds);
                m.add_float(&GPU_IDLE_HELD_SECONDS, &attributes, t.idle_held_seconds);
                m.add_float(
                    &GPU_IDLE_HELD_COST,
                    &attributes,
                    t.idle_held_seconds * usd_per_second,
                );
                m.add_float(&GPU_BUSY_COST, &attributes, t.gpu_seconds * usd_per_second);
            }
        }
        for (uuid, d) in &delta.devices {
            let name = format!("gpu{}", d.index);
            let attributes = hw_attributes(uuid, &name, &d.name, "");
            m.add_float(&GPU_DEVICE_SECONDS, &attributes, d.wall_seconds);
            m.add_float(&GPU_DEVICE_ENERGY, &attributes, d.energy_joules);
            m.add_float(&GPU_IDLE_SECONDS, &attributes, d.idle_seconds);
            m.add_float(&GPU_IDLE_ENERGY, &attributes, d.idle_energy_joules);
            m.add_float(
                &GPU_MEMORY_SHARE_INTERVALS,
                &attributes,
                d.memory_share_intervals as f64,
            );
        }
        if let Some(sample) = self.accountant.last_sample() {
            for d in &sample.devices {
                let parent = d.mig.as_ref().map_or("", |mig| mig.parent_uuid.as_str());
                let name = match &d.mig {
                    Some(_) => format!("gpu{}/{}", d.index, d.uuid),
                    None => format!("gpu{}", d.index),
                };
                let attributes = hw_attributes(&d.uuid, &name, &d.name, parent);
                if let Some(util) = d.sm_util_pct.filter(|u| u.is_finite()) {
                    // SM activity is the `general` task (encoder and decoder are others).
                    let mut with_task = attributes.to_vec();
                    with_task.push(("hw.gpu.task", "general"));
                    m.set_float(
                        &HW_GPU_UTILIZATION,
                        &with_task,
                        (util / 100.0).clamp(0.0, 1.0),
                    );
                }
                m.set_float(
                    &HW_GPU_MEMORY_USAGE,
                    &attributes,
                    d.memory_used_bytes as f64,
                );
                m.set_float(
                    &HW_GPU_MEMORY_LIMIT,
                    &attributes,
                    d.memory_total_bytes as f64,
                );
            }
        }
    }

    fn close_window(&mut self, totals: &WindowTotals) -> Vec<CallRecord> {
        let held = std::mem::take(&mut self.held);
        let served: Vec<ServedCall> = held
            .iter()
            .map(|r| ServedCall {
                pid: r.attribution.pid,
                tokens: r.call.usage.input_tokens.unwrap_or(0)
                    + r.call.usage.output_tokens.unwrap_or(0),
            })
            .collect();
        let price = |model: &str| self.usd_per_gpu_hour(model);
        let shares = apportion_calls(totals, &served, &price);
        held.into_iter()
            .zip(shares)
            .map(|(mut record, share)| {
                let Some(share) = share else {
                    record.gpu_share = Some(GpuShareStatus::NoGpuUse);
                    return record;
                };
                let by_memory = totals
                    .pids
                    .get(&record.attribution.pid)
                    .is_some_and(|t| t.memory_share_intervals > 0);
                record.gpu_share = Some(if by_memory {
                    GpuShareStatus::ApportionedByMemory
                } else {
                    GpuShareStatus::Apportioned
                });
                // The GPU part adds to any token price the call has.
                record.cost_usd = Some(record.cost_usd.unwrap_or(0.0) + share.cost_usd);
                record.gpu = Some(share);
                record
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{gpu::ReplaySource, record::LlmCall};

    fn served(pid: u32, input: u64, output: u64) -> CallRecord {
        CallRecord {
            call: LlmCall::served_chat(input, output, 0, 0),
            side: Side::Server,
            time_unix_nano: 0,
            duration_s: 0.0,
            ttft_s: None,
            attribution: Attribution {
                pid,
                ..Attribution::default()
            },
            peer: None,
            local: None,
            tls: None,
            cost_usd: None,
            gpu: None,
            gpu_share: None,
        }
    }

    #[test]
    fn served_calls_get_their_servers_gpu_time_split_by_tokens() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/gpu/two_pods.jsonl"
        );
        let mut source = ReplaySource::open(std::path::Path::new(path)).unwrap();
        let (tx, rx) = mpsc::sync_channel(64);
        while let Ok(sample) = source.sample() {
            tx.send(Ok(sample)).unwrap();
        }
        let metrics = Arc::new(Metrics::default());
        let mut stage = GpuStage::new(
            rx,
            Duration::from_secs(5),
            Duration::from_secs(3600),
            3.6,
            Arc::clone(&metrics),
            "replay",
        );
        let client = {
            let mut r = served(1001, 1, 1);
            r.side = Side::Client;
            r
        };
        let passed = stage
            .admit(client, None)
            .expect("client calls pass through");
        assert_eq!(
            passed.gpu_share,
            Some(GpuShareStatus::Remote),
            "no peer known"
        );
        assert!(stage.admit(served(1001, 300, 100), None).is_none());
        assert!(stage.admit(served(1001, 100, 0), None).is_none());
        let mut procs = ProcessTable::new("/nonexistent", 0, 10);
        assert!(
            stage.tick(&mut procs, None, false).is_empty(),
            "window still open"
        );
        let out = stage.tick(&mut procs, None, true);
        assert_eq!(out.len(), 2);
        let a = out[0].gpu.clone().expect("share");
        let b = out[1].gpu.clone().expect("share");
        assert!(a.gpu_seconds > 0.0);
        assert!(
            (a.gpu_seconds - 4.0 * b.gpu_seconds).abs() < 1e-9,
            "400 vs 100 tokens"
        );
        // $3.6 per GPU-hour is $0.001 per GPU-second.
        assert!((a.cost_usd - a.gpu_seconds * 0.001).abs() < 1e-12);
        assert_eq!(out[0].cost_usd, Some(a.cost_usd));
        assert_eq!(out[0].gpu_share, Some(GpuShareStatus::Apportioned));
        // The shares add up to the serving process's own total.
        let server = metrics
            .float_points(&GPU_BUSY_SECONDS)
            .into_iter()
            .find(|(attributes, _)| {
                attributes.contains(&("k8s.pod.name".to_owned(), "pid:1001 ".to_owned()))
            })
            .map(|(_, v)| v)
            .expect("pid 1001 is an owner");
        assert!((server - a.gpu_seconds - b.gpu_seconds).abs() < 1e-9);
        // Every pod's busy time plus device idle is the device time.
        let sum = |family| -> f64 {
            metrics
                .float_points(family)
                .into_iter()
                .map(|(_, v)| v)
                .sum()
        };
        let wall = sum(&GPU_DEVICE_SECONDS);
        assert!(wall > 0.0);
        assert!((sum(&GPU_BUSY_SECONDS) + sum(&GPU_IDLE_SECONDS) - wall).abs() <= 0.01 * wall);
        assert!(!metrics.float_points(&HW_GPU_MEMORY_USAGE).is_empty());
    }

    #[test]
    fn client_calls_say_where_their_gpu_share_is() {
        let call = |peer: &str, local: &str, provider| {
            let mut r = served(7, 1, 1);
            r.side = Side::Client;
            r.call.provider = provider;
            r.peer = Some(peer.to_owned());
            r.local = Some(local.to_owned());
            client_share(&r, None)
        };
        let on_node = Some(GpuShareStatus::OnServerRecord);
        let remote = Some(GpuShareStatus::Remote);
        assert_eq!(
            call("127.0.0.1:8000", "127.0.0.1:5000", Provider::Ollama),
            on_node
        );
        assert_eq!(
            call("[::1]:8000", "[::1]:5000", Provider::OpenaiCompatible),
            on_node
        );
        assert_eq!(
            call("10.0.0.5:8000", "10.0.0.5:5000", Provider::OpenaiCompatible),
            on_node
        );
        assert_eq!(
            call("10.0.7.9:8000", "10.0.0.5:5000", Provider::OpenaiCompatible),
            remote
        );
        assert_eq!(
            call("10.0.7.9:8000", "10.0.0.5:5000", Provider::Ollama),
            remote
        );
        assert_eq!(
            call("162.159.140.245:443", "10.0.0.5:5000", Provider::Openai),
            None,
            "token-priced API"
        );
    }

    #[test]
    fn the_catalogue_price_wins_over_the_fallback() {
        let (_tx, rx) = mpsc::sync_channel(1);
        let stage = GpuStage::new(
            rx,
            Duration::from_secs(1),
            Duration::from_secs(10),
            2.0,
            Arc::new(Metrics::default()),
            "replay",
        )
        .with_gpu_price(Box::new(|model| model.contains("H100").then_some(4.5)));
        assert_eq!(stage.usd_per_gpu_hour("NVIDIA H100 80GB HBM3"), 4.5);
        assert_eq!(stage.usd_per_gpu_hour("NVIDIA L4"), 2.0);
    }
}
