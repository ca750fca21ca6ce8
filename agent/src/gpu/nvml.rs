//! The NVML [`GpuSource`]: loads `libnvidia-ml.so.1` at run time.
//!
//! Untested here (no GPU on the build machine); `tests/gpu/check.sh` runs it on
//! a machine that has one. Metrics a device does not support are `None`;
//! any other NVML error fails the whole round, which the accountant counts.

use std::collections::HashMap;

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

use super::{DeviceSample, GpuError, GpuSample, GpuSource, MigInstance, ProcessSample};

/// MIG is on for a device whose current MIG mode is this (`NVML_DEVICE_MIG_ENABLE`).
const MIG_ENABLED: u32 = 1;

pub struct NvmlSource {
    nvml: Nvml,
    /// Per device UUID, the newest process-utilisation timestamp seen (µs, CPU clock).
    last_seen: HashMap<String, u64>,
}

impl std::fmt::Debug for NvmlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlSource").finish_non_exhaustive()
    }
}

impl NvmlSource {
    /// Loads and initialises NVML; [`GpuError::Unavailable`] when there is no driver.
    pub fn new() -> Result<NvmlSource, GpuError> {
        let nvml = Nvml::init().map_err(|source| GpuError::Unavailable { source })?;
        Ok(NvmlSource {
            nvml,
            last_seen: HashMap::new(),
        })
    }
}

fn required<T>(result: Result<T, NvmlError>, operation: &'static str) -> Result<T, GpuError> {
    result.map_err(|source| GpuError::Nvml { operation, source })
}

/// `None` where the device or driver lacks the metric.
fn optional<T>(
    result: Result<T, NvmlError>,
    operation: &'static str,
) -> Result<Option<T>, GpuError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(
            NvmlError::NotSupported
            | NvmlError::FailedToLoadSymbol(_)
            | NvmlError::FunctionNotFound
            | NvmlError::NoPermission,
        ) => Ok(None),
        Err(source) => Err(GpuError::Nvml { operation, source }),
    }
}

/// Compute share of a MIG profile: `3g.40gb` is 3 of 7 slices (4 on an A30); else by memory.
fn mig_fraction(name: &str, parent_name: &str, memory: u64, parent_memory: u64) -> f64 {
    let slices = name.split_whitespace().find_map(|word| {
        word.split_once("g.")
            .and_then(|(n, _)| n.parse::<u32>().ok())
    });
    let total = if parent_name.contains("A30") { 4 } else { 7 };
    match slices {
        Some(n) if (1..=total).contains(&n) => f64::from(n) / f64::from(total),
        _ if parent_memory > 0 => memory as f64 / parent_memory as f64,
        _ => 0.0,
    }
}

fn processes(
    device: &Device<'_>,
    uuid: &str,
    util: Option<&HashMap<u32, f64>>,
    out: &mut Vec<ProcessSample>,
) -> Result<(), GpuError> {
    let running = optional(
        device.running_compute_processes(),
        "running_compute_processes",
    )?;
    for process in running.unwrap_or_default() {
        let memory_used_bytes = match process.used_gpu_memory {
            UsedGpuMemory::Used(bytes) => Some(bytes),
            UsedGpuMemory::Unavailable => None,
        };
        out.push(ProcessSample {
            pid: process.pid,
            device: uuid.to_owned(),
            // Running but absent from the utilisation samples: it did no work.
            sm_util_pct: util.map(|u| u.get(&process.pid).copied().unwrap_or(0.0)),
            memory_used_bytes,
        });
    }
    Ok(())
}

/// Mean SM utilisation per pid over the samples since the previous call for this
/// device; `None` where the device cannot tell (MIG instances, older GPUs).
fn process_util(
    last_seen: &mut HashMap<String, u64>,
    device: &Device<'_>,
    uuid: &str,
) -> Result<Option<HashMap<u32, f64>>, GpuError> {
    let since = last_seen.get(uuid).copied();
    let samples = match device.process_utilization_stats(since) {
        Ok(samples) => samples,
        // No process was active since `since`: every running process did no work.
        Err(NvmlError::NotFound) => Vec::new(),
        Err(
            NvmlError::NotSupported
            | NvmlError::FailedToLoadSymbol(_)
            | NvmlError::FunctionNotFound
            | NvmlError::NoPermission,
        ) => return Ok(None),
        Err(source) => {
            return Err(GpuError::Nvml {
                operation: "process_utilization_stats",
                source,
            })
        }
    };
    let mut sums: HashMap<u32, (f64, u32)> = HashMap::new();
    for s in &samples {
        let entry = sums.entry(s.pid).or_insert((0.0, 0));
        entry.0 += f64::from(s.sm_util);
        entry.1 += 1;
    }
    if let Some(newest) = samples.iter().map(|s| s.timestamp).max() {
        last_seen.insert(uuid.to_owned(), newest);
    }
    Ok(Some(
        sums.into_iter()
            .map(|(pid, (sum, n))| (pid, sum / f64::from(n.max(1))))
            .collect(),
    ))
}

impl GpuSource for NvmlSource {
    fn sample(&mut self) -> Result<GpuSample, GpuError> {
        let timestamp_unix_nano = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let mut devices = Vec::new();
        let mut processes_out = Vec::new();
        let count = required(self.nvml.device_count(), "device_count")?;
        for i in 0..count {
            // Borrow NVML apart from `last_seen` so both can be used below.
            let nvml = &self.nvml;
            let device = required(nvml.device_by_index(i), "device_by_index")?;
            let uuid = required(device.uuid(), "uuid")?;
            let name = required(device.name(), "name")?;
            let memory = required(device.memory_info(), "memory_info")?;
            let mig_on =
                optional(device.mig_mode(), "mig_mode")?.is_some_and(|m| m.current == MIG_ENABLED);
            devices.push(DeviceSample {
                index: i,
                uuid: uuid.clone(),
                name: name.clone(),
                mig: None,
                sm_util_pct: if mig_on {
                    None
                } else {
                    optional(device.utilization_rates(), "utilization_rates")?
                        .map(|u| f64::from(u.gpu))
                },
                memory_used_bytes: memory.used,
                memory_total_bytes: memory.total,
                power_w: optional(device.power_usage(), "power_usage")?
                    .map(|mw| f64::from(mw) / 1000.0),
                energy_mj: optional(
                    device.total_energy_consumption(),
                    "total_energy_consumption",
                )?,
            });
            if !mig_on {
                let util = process_util(&mut self.last_seen, &device, &uuid)?;
                processes(&device, &uuid, util.as_ref(), &mut processes_out)?;
                continue;
            }
            let slots = required(device.mig_device_count(), "mig_device_count")?;
            for slot in 0..slots {
                // Unused slots answer NotFound.
                let mig = match device.mig_device_by_index(slot) {
                    Ok(mig) => mig,
                    Err(NvmlError::NotFound | NvmlError::InvalidArg) => continue,
                    Err(source) => {
                        return Err(GpuError::Nvml {
                            operation: "mig_device_by_index",
                            source,
                        })
                    }
                };
                let mig_uuid = required(mig.uuid(), "uuid")?;
                let mig_name = required(mig.name(), "name")?;
                let mig_memory = required(mig.memory_info(), "memory_info")?;
                let util = process_util(&mut self.last_seen, &mig, &mig_uuid)?;
                processes(&mig, &mig_uuid, util.as_ref(), &mut processes_out)?;
                devices.push(DeviceSample {
                    index: i,
                    uuid: mig_uuid,
                    mig: Some(MigInstance {
                        parent_uuid: uuid.clone(),
                        fraction: mig_fraction(&mig_name, &name, mig_memory.total, memory.total),
                    }),
                    name: mig_name,
                    sm_util_pct: optional(mig.utilization_rates(), "utilization_rates")?
                        .map(|u| f64::from(u.gpu)),
                    memory_used_bytes: mig_memory.used,
                    memory_total_bytes: mig_memory.total,
                    power_w: None,
                    energy_mj: None,
                });
            }
        }
        Ok(GpuSample {
            timestamp_unix_nano,
            devices,
            processes: processes_out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mig_profiles() {
        let h100 = "NVIDIA H100 80GB HBM3";
        assert_eq!(
            mig_fraction("NVIDIA H100 80GB HBM3 MIG 3g.40gb", h100, 0, 0),
            3.0 / 7.0
        );
        assert_eq!(
            mig_fraction("NVIDIA A30 MIG 1g.6gb", "NVIDIA A30", 0, 0),
            0.25
        );
        assert_eq!(mig_fraction("odd name", h100, 20, 80), 0.25);
        assert_eq!(mig_fraction("odd name", h100, 20, 0), 0.0);
    }

    #[test]
    fn no_driver_is_unavailable() {
        // The build machine has no NVIDIA driver; with one, this checks nothing useful.
        if std::path::Path::new("/proc/driver/nvidia").exists() {
            return;
        }
        let err = NvmlSource::new().map(|_| ()).err();
        assert!(matches!(err, Some(GpuError::Unavailable { .. })), "{err:?}");
    }
}
