//! The GPU stage: samples from a [`GpuSource`] on a thread of its own, window
//! totals per process (and so per pod and team), and each self-hosted call's
//! share of its server's GPU time.
//!
//! Calls served on this node are held until the window they fall in closes,
//! then get their share by tokens and are exported. Calls made to remote APIs
//! pass straight through.

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
    attribution::{attribute, ProcessTable},
    gpu::{apportion_calls, Accountant, GpuError, GpuSample, GpuSource, ServedCall, WindowTotals},
    record::{Attribution, CallRecord, Side},
};

/// Most calls held for one window; past it they go out without a share (counted).
const MAX_HELD: usize = 100_000;

/// Sampling results as they arrive from the sampler thread.
pub type Samples = mpsc::Receiver<Result<GpuSample, GpuError>>;

/// Starts sampling `source` every `interval` on a thread; samples arrive on the receiver.
pub fn spawn_sampler(
    mut source: Box<dyn GpuSource + Send>,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> std::io::Result<(Samples, thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::sync_channel(64);
    let handle = thread::Builder::new()
        .name("gpu-sampler".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let result = source.sample();
                if matches!(result, Err(GpuError::Exhausted)) {
                    tracing::info!(event = "gpu_replay_done");
                    return;
                }
                if tx.try_send(result).is_err() {
                    tracing::debug!(event = "gpu_sample_dropped");
                }
                thread::sleep(interval);
            }
        })?;
    Ok((rx, handle))
}

/// Cumulative GPU use of one owner (pod, or process outside Kubernetes).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OwnerUse {
    pub gpu_seconds: f64,
    pub memory_gib_seconds: f64,
    pub energy_joules: f64,
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
}

pub struct GpuStage {
    samples: Samples,
    accountant: Accountant,
    window: Duration,
    window_started: Instant,
    usd_per_gpu_hour: f64,
    held: Vec<CallRecord>,
    /// Cumulative use per owner, and device idle time/energy, since start.
    pub owners: BTreeMap<Owner, OwnerUse>,
    pub idle_seconds: f64,
    pub idle_energy_joules: f64,
    pub failed_samples: u64,
    pub gaps: u64,
    pub released_without_share: u64,
}

impl GpuStage {
    pub fn new(
        samples: Samples,
        interval: Duration,
        window: Duration,
        usd_per_gpu_hour: f64,
    ) -> GpuStage {
        GpuStage {
            samples,
            // Three missed samples in a row make a gap, not an interval.
            accountant: Accountant::new(interval * 3 + Duration::from_millis(500)),
            window,
            window_started: Instant::now(),
            usd_per_gpu_hour,
            held: Vec::new(),
            owners: BTreeMap::new(),
            idle_seconds: 0.0,
            idle_energy_joules: 0.0,
            failed_samples: 0,
            gaps: 0,
            released_without_share: 0,
        }
    }

    /// Takes a record; returns those ready to export now.
    pub fn admit(&mut self, record: CallRecord) -> Option<CallRecord> {
        if record.side != Side::Server {
            return Some(record);
        }
        if self.held.len() >= MAX_HELD {
            self.released_without_share += 1;
            return Some(record);
        }
        self.held.push(record);
        None
    }

    /// Reads pending samples; when the window is over, closes it and returns
    /// the held calls with their shares.
    pub fn tick(&mut self, procs: &mut ProcessTable, force: bool) -> Vec<CallRecord> {
        while let Ok(result) = self.samples.try_recv() {
            self.accountant.add(result);
        }
        if !force && self.window_started.elapsed() < self.window {
            return Vec::new();
        }
        self.window_started = Instant::now();
        let totals = self.accountant.take_window();
        self.close_window(&totals, procs)
    }

    fn close_window(&mut self, totals: &WindowTotals, procs: &mut ProcessTable) -> Vec<CallRecord> {
        self.failed_samples += totals.failed_samples;
        self.gaps += totals.gaps;
        for device in totals.devices.values() {
            self.idle_seconds += device.idle_seconds;
            self.idle_energy_joules += device.idle_energy_joules;
        }
        for (pid, t) in &totals.pids {
            let comm = procs.get(*pid).map(|p| p.comm.clone()).unwrap_or_default();
            let info = procs.lookup(*pid, &comm, 0);
            let owner = Owner::of(&attribute(info, *pid, &comm, None));
            let slot = self.owners.entry(owner).or_default();
            slot.gpu_seconds += t.gpu_seconds;
            slot.memory_gib_seconds += t.memory_gib_seconds;
            slot.energy_joules += t.energy_joules;
        }
        let held = std::mem::take(&mut self.held);
        let served: Vec<ServedCall> = held
            .iter()
            .map(|r| ServedCall {
                pid: r.attribution.pid,
                tokens: r.call.usage.input_tokens.unwrap_or(0)
                    + r.call.usage.output_tokens.unwrap_or(0),
            })
            .collect();
        let shares = apportion_calls(totals, &served, self.usd_per_gpu_hour);
        held.into_iter()
            .zip(shares)
            .map(|(mut record, share)| {
                if let Some(share) = share {
                    record.cost_usd = Some(share.cost_usd);
                    record.gpu = Some(share);
                }
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
        let mut stage = GpuStage::new(rx, Duration::from_secs(5), Duration::from_secs(3600), 3.6);
        let client = {
            let mut r = served(1001, 1, 1);
            r.side = Side::Client;
            r
        };
        assert!(stage.admit(client).is_some(), "client calls pass through");
        assert!(stage.admit(served(1001, 300, 100)).is_none());
        assert!(stage.admit(served(1001, 100, 0)).is_none());
        let mut procs = ProcessTable::new("/nonexistent", 0, 10);
        assert!(
            stage.tick(&mut procs, false).is_empty(),
            "window still open"
        );
        let out = stage.tick(&mut procs, true);
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
        // The shares add up to the serving process's own total.
        let server = stage
            .owners
            .iter()
            .find(|(o, _)| o.pod == "pid:1001 ")
            .map(|(_, u)| u.gpu_seconds)
            .expect("pid 1001 is an owner");
        assert!((server - a.gpu_seconds - b.gpu_seconds).abs() < 1e-9);
    }
}
