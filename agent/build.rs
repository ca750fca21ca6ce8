//! Builds the eBPF programs (agent-ebpf) for the BPF target with aya-build and
//! puts the object in OUT_DIR, where `probes` embeds it.
//!
//! `TOKENSCOPE_SKIP_EBPF=1` embeds an empty object instead, for machines that
//! only run the pure tests (the agent then refuses to start capture).

use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=TOKENSCOPE_SKIP_EBPF");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let object = out_dir.join("tokenscope");
    if env::var("TOKENSCOPE_SKIP_EBPF").is_ok_and(|v| v == "1") {
        fs::write(&object, [])?;
        return Ok(());
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest.join("../agent-ebpf");
    let common_dir = manifest.join("../common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let root = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tokenscope-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("nightly"),
    )
}
