//! The float metric families: one OpenTelemetry instrument and one
//! Prometheus family each.

use serde::Serialize;

/// How a float family behaves, on both exposition formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum FloatKind {
    /// Cumulative and monotonic: OTLP Sum (monotonic, cumulative), Prometheus `counter`.
    Counter,
    /// A current reading: OTLP Gauge, Prometheus `gauge`.
    Gauge,
    /// A current amount that adds up across attributes: OTLP Sum (not monotonic), Prometheus `gauge`.
    UpDownCounter,
}

/// A float metric family: one OpenTelemetry instrument and one Prometheus family.
/// Attributes are kept under their OpenTelemetry keys; Prometheus renders them
/// through [`prometheus_label`].
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct FloatFamily {
    pub otel_name: &'static str,
    /// Full Prometheus name, unit and `_total` included.
    pub prometheus_name: &'static str,
    /// UCUM unit, as OTLP carries it.
    pub unit: &'static str,
    pub kind: FloatKind,
    pub help: &'static str,
}

const fn family(
    otel_name: &'static str,
    prometheus_name: &'static str,
    unit: &'static str,
    kind: FloatKind,
    help: &'static str,
) -> FloatFamily {
    FloatFamily {
        otel_name,
        prometheus_name,
        unit,
        kind,
        help,
    }
}

/// GPU time a pod's processes kept the SMs busy (integral of SM utilisation).
pub static GPU_BUSY_SECONDS: FloatFamily = family(
    "tokenscope.gpu.busy_seconds",
    "tokenscope_gpu_busy_seconds_total",
    "s",
    FloatKind::Counter,
    "GPU-seconds the pod's processes kept the SMs busy (integral of SM utilisation).",
);
/// GPU time a pod's processes held memory on a GPU (busy or not).
pub static GPU_HELD_SECONDS: FloatFamily = family(
    "tokenscope.gpu.held_seconds",
    "tokenscope_gpu_held_seconds_total",
    "s",
    FloatKind::Counter,
    "GPU-seconds the pod's processes held GPU memory (a MIG slice counts its fraction).",
);
/// GPU energy charged to a pod by its SM share of the device's active energy.
pub static GPU_ENERGY: FloatFamily = family(
    "tokenscope.gpu.energy",
    "tokenscope_gpu_energy_joules_total",
    "J",
    FloatKind::Counter,
    "GPU energy charged to the pod by its share of SM use (Kepler-style split; idle apart).",
);
/// GiB of GPU memory held, times seconds.
pub static GPU_MEMORY_GIB_SECONDS: FloatFamily = family(
    "tokenscope.gpu.memory_gib_seconds",
    "tokenscope_gpu_memory_gib_seconds_total",
    "GiBy.s",
    FloatKind::Counter,
    "GPU memory the pod held, GiB x seconds.",
);
/// Idle waste: GPU-seconds held while the pod's SM use stayed below the idle threshold.
pub static GPU_IDLE_HELD_SECONDS: FloatFamily = family(
    "tokenscope.gpu.idle_held_seconds",
    "tokenscope_gpu_idle_held_seconds_total",
    "s",
    FloatKind::Counter,
    "Idle waste: GPU-seconds the pod held memory while its SM use stayed below 5 %.",
);
/// Idle waste priced at the GPU's hourly rate.
pub static GPU_IDLE_HELD_COST: FloatFamily = family(
    "tokenscope.gpu.idle_held_cost",
    "tokenscope_gpu_idle_held_cost_usd_total",
    "USD",
    FloatKind::Counter,
    "Idle waste in USD: held-but-idle GPU-seconds at the GPU's price per hour.",
);
/// Busy GPU-seconds priced at the GPU's hourly rate.
pub static GPU_BUSY_COST: FloatFamily = family(
    "tokenscope.gpu.busy_cost",
    "tokenscope_gpu_busy_cost_usd_total",
    "USD",
    FloatKind::Counter,
    "Busy GPU-seconds of the pod in USD at the GPU's price per hour.",
);
/// Time integrated per physical GPU (busy + idle).
pub static GPU_DEVICE_SECONDS: FloatFamily = family(
    "tokenscope.gpu.device.seconds",
    "tokenscope_gpu_device_seconds_total",
    "s",
    FloatKind::Counter,
    "Seconds of sampling integrated per physical GPU (intervals across failures and gaps are not).",
);
/// Energy per physical GPU over the integrated time.
pub static GPU_DEVICE_ENERGY: FloatFamily = family(
    "tokenscope.gpu.device.energy",
    "tokenscope_gpu_device_energy_joules_total",
    "J",
    FloatKind::Counter,
    "Energy of the physical GPU over the integrated time.",
);
/// GPU-seconds of a device no process kept busy.
pub static GPU_IDLE_SECONDS: FloatFamily = family(
    "tokenscope.gpu.idle_seconds",
    "tokenscope_gpu_idle_seconds_total",
    "s",
    FloatKind::Counter,
    "GPU-seconds of the device that no process kept busy (unallocated MIG slices included).",
);
/// Energy of a device not charged to any process.
pub static GPU_IDLE_ENERGY: FloatFamily = family(
    "tokenscope.gpu.idle_energy",
    "tokenscope_gpu_idle_energy_joules_total",
    "J",
    FloatKind::Counter,
    "Device energy not charged to any process (idle share), never inside a pod's figure.",
);
/// Intervals a MIG instance was split by memory share (no per-process utilisation).
pub static GPU_MEMORY_SHARE_INTERVALS: FloatFamily = family(
    "tokenscope.gpu.memory_share_splits",
    "tokenscope_gpu_memory_share_splits_total",
    "{interval}",
    FloatKind::Counter,
    "Sampling intervals in which a MIG instance's time was split by memory share (flagged fallback).",
);
/// `hw.gpu.utilization` (OpenTelemetry hardware semantic conventions).
pub static HW_GPU_UTILIZATION: FloatFamily = family(
    "hw.gpu.utilization",
    "hw_gpu_utilization_ratio",
    "1",
    FloatKind::Gauge,
    "Fraction of the last sample period in which a kernel ran on the GPU.",
);
/// `hw.gpu.memory.usage` (OpenTelemetry hardware semantic conventions).
pub static HW_GPU_MEMORY_USAGE: FloatFamily = family(
    "hw.gpu.memory.usage",
    "hw_gpu_memory_usage_bytes",
    "By",
    FloatKind::UpDownCounter,
    "GPU memory used.",
);
/// `hw.gpu.memory.limit` (OpenTelemetry hardware semantic conventions).
pub static HW_GPU_MEMORY_LIMIT: FloatFamily = family(
    "hw.gpu.memory.limit",
    "hw_gpu_memory_limit_bytes",
    "By",
    FloatKind::UpDownCounter,
    "GPU memory size.",
);
/// 1 while the configured GPU source delivers samples, 0 with a `reason`.
pub static GPU_SOURCE_UP: FloatFamily = family(
    "tokenscope.gpu.source.up",
    "tokenscope_gpu_source_up",
    "1",
    FloatKind::Gauge,
    "1 while the configured GPU source works; 0 (with a reason) when it is unavailable.",
);

/// Every float family, for exporters that register instruments up front.
pub static FLOAT_FAMILIES: [&FloatFamily; 16] = [
    &GPU_BUSY_SECONDS,
    &GPU_HELD_SECONDS,
    &GPU_ENERGY,
    &GPU_MEMORY_GIB_SECONDS,
    &GPU_IDLE_HELD_SECONDS,
    &GPU_IDLE_HELD_COST,
    &GPU_BUSY_COST,
    &GPU_DEVICE_SECONDS,
    &GPU_DEVICE_ENERGY,
    &GPU_IDLE_SECONDS,
    &GPU_IDLE_ENERGY,
    &GPU_MEMORY_SHARE_INTERVALS,
    &HW_GPU_UTILIZATION,
    &HW_GPU_MEMORY_USAGE,
    &HW_GPU_MEMORY_LIMIT,
    &GPU_SOURCE_UP,
];
