#!/usr/bin/env bash
# Reads the GPUs of this machine through Tokenscope's NvmlSource and prints
# what it sees. Needs an NVIDIA driver (libnvidia-ml.so.1); no root.
#
#   tests/gpu/check.sh [SAMPLES] [INTERVAL_MS] > samples.jsonl
#
# stdout: one GpuSample per line, the format `--gpu-replay FILE` reads, so the
#         output doubles as a recorded replay fixture.
# stderr: the accounting over those samples (per pid, per device), then
#         nvidia-smi's own view when it is installed, to compare by eye.
#
# It builds a small standalone crate around agent/src/gpu and agent/src/record.rs
# (no eBPF toolchain needed). Exit status: 0 when sampling worked, 1 when NVML is
# unavailable or every sample failed.
set -euo pipefail

samples="${1:-5}"
interval_ms="${2:-1000}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
work="${TOKENSCOPE_GPU_CHECK_DIR:-${TMPDIR:-/tmp}/tokenscope-gpu-check}"
mkdir -p "$work/src"

cat > "$work/Cargo.toml" <<EOF
[package]
name = "tokenscope-gpu-check"
version = "0.1.0"
edition = "2021"

[dependencies]
nvml-wrapper = "0.13"
serde = { version = "1", features = ["derive"] }
serde_json = "1"
thiserror = "2"
tracing = "0.1"

[workspace]
EOF

cat > "$work/src/main.rs" <<EOF
#![allow(dead_code, unused_imports)]
#[path = "$repo/agent/src/record.rs"]
mod record;
#[path = "$repo/agent/src/gpu/mod.rs"]
mod gpu;

use gpu::GpuSource;

fn main() {
    let samples: u32 = "$samples".parse().unwrap_or(5);
    let interval = std::time::Duration::from_millis("$interval_ms".parse().unwrap_or(1000));
    let mut source = match gpu::NvmlSource::new() {
        Ok(source) => source,
        Err(error) => {
            let mut message = error.to_string();
            let mut cause = std::error::Error::source(&error);
            while let Some(c) = cause {
                message.push_str(&format!(": {c}"));
                cause = c.source();
            }
            eprintln!("NVML unavailable: {message}");
            std::process::exit(1);
        }
    };
    let mut accountant = gpu::Accountant::new(interval * 3);
    let mut good = 0;
    for i in 0..samples {
        if i > 0 {
            std::thread::sleep(interval);
        }
        let result = source.sample();
        match &result {
            Ok(sample) => {
                good += 1;
                println!("{}", serde_json::to_string(sample).unwrap_or_default());
            }
            Err(error) => eprintln!("sample {i} failed: {error} ({error:?})"),
        }
        accountant.add(result);
    }
    let totals = accountant.take_window();
    eprintln!("{}", serde_json::to_string_pretty(&totals).unwrap_or_default());
    if good == 0 {
        std::process::exit(1);
    }
}
EOF

cargo build --quiet --release --manifest-path "$work/Cargo.toml" >&2
status=0
"$work/target/release/tokenscope-gpu-check" || status=$?
if command -v nvidia-smi >/dev/null 2>&1; then
    echo "--- nvidia-smi" >&2
    nvidia-smi --query-gpu=index,uuid,name,utilization.gpu,memory.used,memory.total,power.draw,mig.mode.current \
        --format=csv >&2 || true
    nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv >&2 || true
fi
exit "$status"
