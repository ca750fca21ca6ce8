//! GPU usage: samples from NVML (or a replay file) and pure accounting of
//! GPU-seconds, memory and energy per process, owner and served call.
//!
//! A side module: the agent polls a [`GpuSource`], feeds the samples to an
//! [`Accountant`], and asks it for the window's totals; nothing here calls back
//! into the pipeline.

mod accounting;
mod nvml;
mod replay;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use accounting::{
    apportion, apportion_calls, Accountant, DeviceTotals, OwnerTotals, PidTotals, ServedCall,
    WindowTotals, IDLE_SM_PCT, UNATTRIBUTED,
};
pub use nvml::NvmlSource;
pub use replay::ReplaySource;

/// Where GPU samples come from.
pub trait GpuSource {
    /// One reading of every device and its processes. An error is one failed
    /// round: the accountant counts it and does not integrate across it.
    fn sample(&mut self) -> Result<GpuSample, GpuError>;
}

/// One reading of all devices at one time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSample {
    /// Wall-clock time of the reading, nanoseconds since the Unix epoch.
    pub timestamp_unix_nano: u64,
    pub devices: Vec<DeviceSample>,
    #[serde(default)]
    pub processes: Vec<ProcessSample>,
}

/// A physical GPU, or a MIG instance of one (then `mig` is set).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSample {
    /// NVML index of the physical GPU (of the parent for a MIG instance).
    pub index: u32,
    /// `GPU-…` for a physical GPU, `MIG-…` for a MIG instance; processes name their device by it.
    pub uuid: String,
    pub name: String,
    #[serde(default)]
    pub mig: Option<MigInstance>,
    /// Percent of the last sample period in which a kernel ran (`None`: not supported, as on MIG).
    #[serde(default)]
    pub sm_util_pct: Option<f64>,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    #[serde(default)]
    pub power_w: Option<f64>,
    /// Energy counter since driver load, millijoules (Volta and newer; physical GPUs only).
    #[serde(default)]
    pub energy_mj: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigInstance {
    /// UUID of the physical GPU the instance is carved from.
    pub parent_uuid: String,
    /// Share of the parent's compute this instance holds (e.g. 3/7 for a `3g` profile).
    pub fraction: f64,
}

/// One process using a device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSample {
    /// Host pid.
    pub pid: u32,
    /// UUID of the device (or MIG instance) the process runs on.
    pub device: String,
    /// The process's SM utilisation over the interval since the previous sample, when known.
    #[serde(default)]
    pub sm_util_pct: Option<f64>,
    #[serde(default)]
    pub memory_used_bytes: Option<u64>,
}

/// The error and its causes on one line, for the log.
pub fn describe(error: &GpuError) -> String {
    let mut out = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// NVML could not be loaded or initialised: no NVIDIA driver on this node.
    #[error("NVIDIA management library (libnvidia-ml.so.1) is not available")]
    Unavailable {
        #[source]
        source: ::nvml_wrapper::error::NvmlError,
    },
    #[error("NVML {operation} failed")]
    Nvml {
        operation: &'static str,
        #[source]
        source: ::nvml_wrapper::error::NvmlError,
    },
    #[error("cannot read GPU replay file {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("GPU replay line {line} is not a sample")]
    BadReplayLine {
        line: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("GPU replay line {line} is longer than {max} bytes")]
    ReplayLineTooLong { line: u64, max: usize },
    /// A failed sampling round recorded in a replay file.
    #[error("GPU replay line {line}: recorded failed sample ({reason})")]
    RecordedFailure { line: u64, reason: String },
    #[error("GPU replay file has no more samples")]
    Exhausted,
}
