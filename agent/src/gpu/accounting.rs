//! GPU accounting from successive samples (pure).
//!
//! Each interval between two good samples is integrated with the later
//! sample's readings (NVML reports utilisation over the period just ended):
//!
//! - GPU-seconds busy per pid: its SM utilisation x the interval x its share of
//!   the device (1 for a whole GPU, the profile fraction for a MIG instance).
//!   A process whose utilisation is unknown gets a share, by memory held, of
//!   what the device's own utilisation leaves; on a MIG instance with no
//!   utilisation at all, the instance is held by its processes (allocation).
//! - Held GPU-seconds per pid: the interval x its share of the device, for
//!   every interval in which the process holds memory on it (it is listed as
//!   a compute process and its memory reading is not 0).
//! - Idle waste per pid: held GPU-seconds of intervals in which the process's
//!   SM use stayed below [`IDLE_SM_PCT`]. Not counted where its utilisation is
//!   unknown and the device's too (a MIG instance: it is split by memory).
//! - Memory held: GiB x seconds.
//! - Energy (Kepler-style): the device's energy over the interval (counter
//!   delta, else power x time) is split by busy share; what no process used,
//!   and MIG slices no instance holds, is idle energy, reported apart.
//!
//! Where a process's utilisation is unknown, its share comes from memory held
//! (the MIG fallback); such intervals are counted as memory-share splits.
//!
//! Shares plus idle add up to the device totals. A failed sample ends the
//! chain (the span across it is not integrated) and an interval longer than
//! `max_interval` is a gap; both are counted.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;

use super::{DeviceSample, GpuError, GpuSample};
use crate::record::GpuShare;

/// Owner name for pids the caller cannot attribute.
pub const UNATTRIBUTED: &str = "(unattributed)";

const GIB: f64 = (1u64 << 30) as f64;
/// SM utilisation (percent) below which a process holding GPU memory is idle.
pub const IDLE_SM_PCT: f64 = 5.0;
const NANOS_PER_S: f64 = 1e9;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PidTotals {
    /// Busy GPU-seconds: integral of SM utilisation.
    pub gpu_seconds: f64,
    /// GPU-seconds the process held memory.
    pub held_seconds: f64,
    /// Held GPU-seconds with SM use below [`IDLE_SM_PCT`] (idle waste).
    pub idle_held_seconds: f64,
    pub memory_gib_seconds: f64,
    pub energy_joules: f64,
    /// Intervals whose busy share came from memory held (no per-process utilisation).
    pub memory_share_intervals: u64,
    /// Name of the physical GPU the process last ran on (for its price per hour).
    pub gpu_model: String,
}

impl PidTotals {
    fn merge(&mut self, other: PidTotals) {
        self.gpu_seconds += other.gpu_seconds;
        self.held_seconds += other.held_seconds;
        self.idle_held_seconds += other.idle_held_seconds;
        self.memory_gib_seconds += other.memory_gib_seconds;
        self.energy_joules += other.energy_joules;
        self.memory_share_intervals += other.memory_share_intervals;
        if !other.gpu_model.is_empty() {
            self.gpu_model = other.gpu_model;
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OwnerTotals {
    pub gpu_seconds: f64,
    pub held_seconds: f64,
    pub idle_held_seconds: f64,
    pub memory_gib_seconds: f64,
    pub energy_joules: f64,
    pub pids: Vec<u32>,
}

/// One physical GPU over the window. `busy_seconds + idle_seconds == wall_seconds`
/// and the pids' energy plus `idle_energy_joules == energy_joules`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DeviceTotals {
    pub index: u32,
    pub name: String,
    /// Time integrated (intervals across failures and gaps are not).
    pub wall_seconds: f64,
    pub busy_seconds: f64,
    pub idle_seconds: f64,
    pub energy_joules: f64,
    pub idle_energy_joules: f64,
    /// Intervals whose energy came from power x time (no energy counter).
    pub energy_from_power_intervals: u64,
    /// Intervals with neither energy counter nor power: no energy counted.
    pub energy_unknown_intervals: u64,
    /// Intervals in which some share on this GPU was split by memory held (MIG fallback).
    pub memory_share_intervals: u64,
}

impl DeviceTotals {
    fn merge(&mut self, other: DeviceTotals) {
        self.index = other.index;
        if !other.name.is_empty() {
            self.name = other.name;
        }
        self.wall_seconds += other.wall_seconds;
        self.busy_seconds += other.busy_seconds;
        self.idle_seconds += other.idle_seconds;
        self.energy_joules += other.energy_joules;
        self.idle_energy_joules += other.idle_energy_joules;
        self.energy_from_power_intervals += other.energy_from_power_intervals;
        self.energy_unknown_intervals += other.energy_unknown_intervals;
        self.memory_share_intervals += other.memory_share_intervals;
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WindowTotals {
    /// Time of the first and last sample integrated.
    pub start_unix_nano: Option<u64>,
    pub end_unix_nano: Option<u64>,
    pub pids: BTreeMap<u32, PidTotals>,
    /// Per physical GPU UUID (MIG instances are summed into their parent).
    pub devices: BTreeMap<String, DeviceTotals>,
    pub intervals: u64,
    pub failed_samples: u64,
    /// Intervals longer than the maximum: not integrated.
    pub gaps: u64,
    /// Samples not later than the one before: ignored.
    pub out_of_order: u64,
    /// Process readings naming a device absent from the sample: ignored.
    pub orphan_processes: u64,
}

impl WindowTotals {
    /// Sums pids by owner (pod, team, ...); pids the mapping does not know go to [`UNATTRIBUTED`].
    pub fn by_owner(&self, owner: impl Fn(u32) -> Option<String>) -> BTreeMap<String, OwnerTotals> {
        let mut out: BTreeMap<String, OwnerTotals> = BTreeMap::new();
        for (pid, t) in &self.pids {
            let name = owner(*pid).unwrap_or_else(|| UNATTRIBUTED.to_owned());
            let o = out.entry(name).or_default();
            o.gpu_seconds += t.gpu_seconds;
            o.held_seconds += t.held_seconds;
            o.idle_held_seconds += t.idle_held_seconds;
            o.memory_gib_seconds += t.memory_gib_seconds;
            o.energy_joules += t.energy_joules;
            o.pids.push(*pid);
        }
        out
    }

    /// Adds a later window to this one (the span grows to cover both).
    pub fn merge(&mut self, other: WindowTotals) {
        if self.start_unix_nano.is_none() {
            self.start_unix_nano = other.start_unix_nano;
        }
        if other.end_unix_nano.is_some() {
            self.end_unix_nano = other.end_unix_nano;
        }
        for (pid, t) in other.pids {
            self.pids.entry(pid).or_default().merge(t);
        }
        for (uuid, d) in other.devices {
            self.devices.entry(uuid).or_default().merge(d);
        }
        self.intervals += other.intervals;
        self.failed_samples += other.failed_samples;
        self.gaps += other.gaps;
        self.out_of_order += other.out_of_order;
        self.orphan_processes += other.orphan_processes;
    }
}

#[derive(Debug)]
pub struct Accountant {
    max_interval_ns: u64,
    prev: Option<GpuSample>,
    window: WindowTotals,
}

impl Accountant {
    /// `max_interval`: a longer interval between two samples is a gap (a few sampling periods).
    pub fn new(max_interval: Duration) -> Accountant {
        Accountant {
            max_interval_ns: u64::try_from(max_interval.as_nanos()).unwrap_or(u64::MAX),
            prev: None,
            window: WindowTotals::default(),
        }
    }

    /// Adds one sampling round's result.
    pub fn add(&mut self, result: Result<GpuSample, GpuError>) {
        match result {
            Ok(sample) => self.add_sample(sample),
            Err(error) => {
                tracing::debug!(%error, "gpu.sample_failed");
                self.window.failed_samples += 1;
                self.prev = None;
            }
        }
    }

    pub fn add_sample(&mut self, sample: GpuSample) {
        let Some(prev) = self.prev.take() else {
            self.prev = Some(sample);
            return;
        };
        if sample.timestamp_unix_nano <= prev.timestamp_unix_nano {
            self.window.out_of_order += 1;
            self.prev = Some(prev);
            return;
        }
        let dt_ns = sample.timestamp_unix_nano - prev.timestamp_unix_nano;
        if dt_ns > self.max_interval_ns {
            self.window.gaps += 1;
        } else {
            integrate(&mut self.window, &prev, &sample, dt_ns as f64 / NANOS_PER_S);
            let w = &mut self.window;
            w.intervals += 1;
            w.start_unix_nano.get_or_insert(prev.timestamp_unix_nano);
            w.end_unix_nano = Some(sample.timestamp_unix_nano);
        }
        self.prev = Some(sample);
    }

    /// The totals so far; starts a new window (the last sample carries over).
    pub fn take_window(&mut self) -> WindowTotals {
        std::mem::take(&mut self.window)
    }

    /// The newest good sample (for per-device gauges); `None` after a failure.
    pub fn last_sample(&self) -> Option<&GpuSample> {
        self.prev.as_ref()
    }
}

/// Energy over the interval in joules, and how it was known.
enum Energy {
    Counter(f64),
    Power(f64),
    Unknown,
}

fn interval_energy(prev: Option<&DeviceSample>, cur: &DeviceSample, dt: f64) -> Energy {
    if let (Some(before), Some(after)) = (prev.and_then(|p| p.energy_mj), cur.energy_mj) {
        // A counter that went back (driver reload) says nothing about this interval.
        if after >= before {
            return Energy::Counter((after - before) as f64 / 1000.0);
        }
    }
    let watts = [prev.and_then(|p| p.power_w), cur.power_w];
    let known: Vec<f64> = watts
        .into_iter()
        .flatten()
        .filter(|w| w.is_finite() && *w >= 0.0)
        .collect();
    if known.is_empty() {
        Energy::Unknown
    } else {
        Energy::Power(known.iter().sum::<f64>() / known.len() as f64 * dt)
    }
}

/// A process's readings on one device: SM utilisation % and memory bytes, when known.
#[derive(Clone, Copy, Default)]
struct Reading {
    util: Option<f64>,
    memory: Option<u64>,
}

type ProcessReadings = BTreeMap<u32, Reading>;

/// A share of one physical GPU that processes run on: the GPU itself or a MIG instance.
struct Unit<'s> {
    uuid: &'s str,
    fraction: f64,
    sm_util_pct: Option<f64>,
    mig: bool,
}

fn valid_pct(v: Option<f64>) -> Option<f64> {
    v.filter(|p| p.is_finite()).map(|p| p.clamp(0.0, 100.0))
}

fn integrate(window: &mut WindowTotals, prev: &GpuSample, cur: &GpuSample, dt: f64) {
    let prev_devices: HashMap<&str, &DeviceSample> =
        prev.devices.iter().map(|d| (d.uuid.as_str(), d)).collect();
    // Processes per device, merged by pid.
    let mut on_device: HashMap<&str, ProcessReadings> = HashMap::new();
    for p in &cur.processes {
        let entry = on_device
            .entry(p.device.as_str())
            .or_default()
            .entry(p.pid)
            .or_default();
        if let Some(u) = valid_pct(p.sm_util_pct) {
            entry.util = Some(entry.util.map_or(u, |v: f64| v.max(u)));
        }
        if let Some(m) = p.memory_used_bytes {
            entry.memory = Some(entry.memory.unwrap_or(0).saturating_add(m));
        }
    }
    let known_devices: std::collections::HashSet<&str> =
        cur.devices.iter().map(|d| d.uuid.as_str()).collect();
    window.orphan_processes += on_device
        .iter()
        .filter(|(uuid, _)| !known_devices.contains(*uuid))
        .map(|(_, procs)| procs.len() as u64)
        .sum::<u64>();

    for gpu in cur.devices.iter().filter(|d| d.mig.is_none()) {
        let mut units: Vec<Unit<'_>> = cur
            .devices
            .iter()
            .filter_map(|d| {
                let mig = d.mig.as_ref()?;
                (mig.parent_uuid == gpu.uuid).then(|| Unit {
                    uuid: d.uuid.as_str(),
                    fraction: if mig.fraction.is_finite() {
                        mig.fraction.max(0.0)
                    } else {
                        0.0
                    },
                    sm_util_pct: valid_pct(d.sm_util_pct),
                    mig: true,
                })
            })
            .collect();
        if units.is_empty() {
            units.push(Unit {
                uuid: gpu.uuid.as_str(),
                fraction: 1.0,
                sm_util_pct: valid_pct(gpu.sm_util_pct),
                mig: false,
            });
        }
        let allocated: f64 = units.iter().map(|u| u.fraction).sum();
        if allocated > 1.0 {
            for u in &mut units {
                u.fraction /= allocated;
            }
        }
        let allocated = allocated.min(1.0);

        let totals = window.devices.entry(gpu.uuid.clone()).or_default();
        totals.index = gpu.index;
        totals.name.clone_from(&gpu.name);
        let energy = match interval_energy(prev_devices.get(gpu.uuid.as_str()).copied(), gpu, dt) {
            Energy::Counter(j) => j,
            Energy::Power(j) => {
                totals.energy_from_power_intervals += 1;
                j
            }
            Energy::Unknown => {
                totals.energy_unknown_intervals += 1;
                0.0
            }
        };
        totals.wall_seconds += dt;
        totals.energy_joules += energy;
        // MIG slices no instance holds are idle.
        totals.idle_seconds += (1.0 - allocated) * dt;
        totals.idle_energy_joules += (1.0 - allocated) * energy;

        let mut any_memory_split = false;
        for unit in &units {
            let capacity = unit.fraction * dt;
            let unit_energy = unit.fraction * energy;
            let procs = on_device.get(unit.uuid);
            let busy = unit_busy(unit, capacity, procs);
            let busy_sum: f64 = busy.iter().map(|b| b.seconds).sum();
            let memory_split = busy.iter().any(|b| b.by_memory);
            for b in &busy {
                let t = window.pids.entry(b.pid).or_default();
                t.gpu_seconds += b.seconds;
                if capacity > 0.0 {
                    t.energy_joules += unit_energy * b.seconds / capacity;
                }
                if b.by_memory {
                    t.memory_share_intervals += 1;
                }
            }
            for (pid, reading) in procs.into_iter().flatten() {
                let t = window.pids.entry(*pid).or_default();
                t.gpu_model.clone_from(&gpu.name);
                t.memory_gib_seconds += reading.memory.unwrap_or(0) as f64 / GIB * dt;
                if reading.memory == Some(0) || capacity <= 0.0 {
                    continue;
                }
                t.held_seconds += capacity;
                let Some(b) = busy.iter().find(|b| b.pid == *pid) else {
                    continue;
                };
                // A memory split on an instance with no utilisation says nothing about idleness.
                let idle_known = !b.by_memory || unit.sm_util_pct.is_some();
                if idle_known && b.seconds / capacity * 100.0 < IDLE_SM_PCT {
                    t.idle_held_seconds += capacity;
                }
            }
            any_memory_split |= memory_split;
            let totals = window.devices.entry(gpu.uuid.clone()).or_default();
            totals.busy_seconds += busy_sum;
            totals.idle_seconds += capacity - busy_sum;
            if capacity > 0.0 {
                totals.idle_energy_joules += unit_energy * (1.0 - busy_sum / capacity);
            }
        }
        if any_memory_split {
            let totals = window.devices.entry(gpu.uuid.clone()).or_default();
            totals.memory_share_intervals += 1;
        }
    }
}

/// One process's busy time on a unit, and whether it came from a memory-share split.
struct Busy {
    pid: u32,
    seconds: f64,
    by_memory: bool,
}

/// Busy seconds per pid on one unit; never more than its capacity in total.
fn unit_busy(unit: &Unit<'_>, capacity: f64, procs: Option<&ProcessReadings>) -> Vec<Busy> {
    let Some(procs) = procs else {
        return Vec::new();
    };
    let mut busy: Vec<Busy> = Vec::with_capacity(procs.len());
    let mut known_sum = 0.0;
    let mut unknown: Vec<(u32, u64)> = Vec::new();
    for (pid, reading) in procs {
        match reading.util {
            Some(u) => {
                let seconds = u / 100.0 * capacity;
                known_sum += seconds;
                busy.push(Busy {
                    pid: *pid,
                    seconds,
                    by_memory: false,
                });
            }
            None => unknown.push((*pid, reading.memory.unwrap_or(0))),
        }
    }
    if !unknown.is_empty() {
        let unit_busy = match unit.sm_util_pct {
            Some(u) => u / 100.0 * capacity,
            // A MIG instance is its processes' alone, busy or not.
            None if unit.mig => capacity,
            None => 0.0,
        };
        let residual = (unit_busy - known_sum).max(0.0);
        let memory_sum: u64 = unknown.iter().map(|(_, m)| *m).sum();
        let n = unknown.len() as f64;
        for (pid, memory) in unknown {
            let share = if memory_sum > 0 {
                memory as f64 / memory_sum as f64
            } else {
                1.0 / n
            };
            busy.push(Busy {
                pid,
                seconds: residual * share,
                by_memory: true,
            });
        }
    }
    let total: f64 = busy.iter().map(|b| b.seconds).sum();
    if total > capacity && total > 0.0 {
        // Per-process utilisations can add up past 100%: scale to the device.
        for b in &mut busy {
            b.seconds *= capacity / total;
        }
    }
    busy
}

/// Splits a server process's GPU use across the calls it served in the window,
/// by their tokens (input + output); equally when no call reported tokens.
/// The shares add up to `total`.
pub fn apportion(total: &PidTotals, call_tokens: &[u64], usd_per_gpu_hour: f64) -> Vec<GpuShare> {
    let sum: u128 = call_tokens.iter().map(|t| u128::from(*t)).sum();
    let n = call_tokens.len() as f64;
    call_tokens
        .iter()
        .map(|tokens| {
            let share = if sum > 0 {
                *tokens as f64 / sum as f64
            } else {
                1.0 / n
            };
            let gpu_seconds = total.gpu_seconds * share;
            GpuShare {
                gpu_seconds,
                energy_joules: total.energy_joules * share,
                cost_usd: gpu_seconds / 3600.0 * usd_per_gpu_hour,
            }
        })
        .collect()
}

/// A call that a server process on this node answered in the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServedCall {
    /// The serving process (host pid, as NVML reports it).
    pub pid: u32,
    /// Input plus output tokens.
    pub tokens: u64,
}

/// Each call's GPU share, in `calls` order: its server pid's window totals split by
/// [`apportion`] over that pid's calls, priced with `usd_per_gpu_hour` of the
/// GPU model the pid ran on. `None` for a pid with no GPU use in the window.
pub fn apportion_calls(
    window: &WindowTotals,
    calls: &[ServedCall],
    usd_per_gpu_hour: &dyn Fn(&str) -> f64,
) -> Vec<Option<GpuShare>> {
    let mut by_pid: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, call) in calls.iter().enumerate() {
        by_pid.entry(call.pid).or_default().push(i);
    }
    let mut out: Vec<Option<GpuShare>> = vec![None; calls.len()];
    for (pid, positions) in by_pid {
        let Some(totals) = window.pids.get(&pid) else {
            continue;
        };
        let tokens: Vec<u64> = positions
            .iter()
            .map(|&i| calls.get(i).map_or(0, |c| c.tokens))
            .collect();
        for (i, share) in positions.into_iter().zip(apportion(
            totals,
            &tokens,
            usd_per_gpu_hour(&totals.gpu_model),
        )) {
            if let Some(slot) = out.get_mut(i) {
                *slot = Some(share);
            }
        }
    }
    out
}
