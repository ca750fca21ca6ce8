//! Bringing in what the build and the tests need, skipping what is present.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::{run_cmd, workspace_root};

/// The LLVM major the eBPF linker must be built for: the nightly's.
const NIGHTLY: &str = "nightly";

/// Debian packages: LLVM for bpf-linker, and the tools the tests drive.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "clang-22",
    "bpftool",
    "curl",
    "iproute2",
    "python3-venv",
    "prometheus",
    "podman",
    "runc",
    "python3-yaml",
    // A TLS stack the probes cannot decrypt (endpoint-level records) and a Go
    // toolchain for the crypto/tls e2e.
    "openjdk-17-jdk-headless",
    "golang-go",
    // Loopback load for the capture benchmarks.
    "nginx",
    "wrk",
];

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn step(msg: &str) {
    eprintln!("xtask: {msg}");
}

/// Everything needed to build the agent with its eBPF programs.
pub fn toolchain() -> Result<()> {
    apt_packages()?;
    nightly()?;
    bpf_linker()?;
    tracefs()?;
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}: run as root, or `sudo apt-get install -y {}`",
            missing.join(" ")
        );
    }
    step(&format!("installing {}", missing.join(" ")));
    run_cmd(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    run_cmd(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
        "apt-get install (check the network and /etc/apt/sources.list)",
    )
}

fn llvm_major_of_nightly() -> Result<u32> {
    let text = output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "-vV"])).context(
        "the nightly toolchain is not installed: run `rustup toolchain install nightly`",
    )?;
    text.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .context("cannot read the nightly's LLVM version from `rustc +nightly -vV`")
}

fn nightly() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))
    .context(
        "rustup cannot list the nightly's components: run `rustup toolchain install nightly`",
    )?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        step("adding rust-src to the nightly toolchain");
        run_cmd(
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]),
            "rustup component add rust-src",
        )?;
    }
    Ok(())
}

/// The LLVM major bpf-linker was built against, read from its dynamic libraries.
fn bpf_linker_llvm_major() -> Option<u32> {
    let path = output(Command::new("sh").args(["-c", "command -v bpf-linker"]))?;
    let libs = output(Command::new("ldd").arg(path.trim()))?;
    libs.lines()
        .find_map(|l| l.trim().strip_prefix("libLLVM"))
        .and_then(|rest| {
            let digits: String = rest
                .trim_start_matches(['-', '.', 's', 'o'])
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            digits.parse().ok()
        })
}

fn bpf_linker() -> Result<()> {
    let want = llvm_major_of_nightly()?;
    if want >= 23 {
        bail!(
            "the nightly uses LLVM {want}; bpf-linker supports LLVM up to 22 here \
             (LLVM 23 fails with \"Invalid record\"): install a nightly on LLVM 22, \
             e.g. `rustup toolchain install nightly-2026-05-20` and make it `nightly`"
        );
    }
    match bpf_linker_llvm_major() {
        Some(have) if have == want => return Ok(()),
        Some(have) => step(&format!(
            "bpf-linker is built for LLVM {have} but the nightly uses LLVM {want}: rebuilding"
        )),
        None => step(&format!("installing bpf-linker for LLVM {want}")),
    }
    let llvm_bin = format!("/usr/lib/llvm-{want}/bin");
    if !Path::new(&llvm_bin).exists() {
        bail!("{llvm_bin} is missing: install llvm-{want}-dev (apt-get install -y llvm-{want}-dev libpolly-{want}-dev)");
    }
    let path = format!("{llvm_bin}:{}", std::env::var("PATH").unwrap_or_default());
    run_cmd(
        Command::new("cargo").env("PATH", path).args([
            "install",
            "bpf-linker",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{want}"),
        ]),
        "cargo install bpf-linker",
    )
}

fn tracefs() -> Result<()> {
    let tracing = Path::new("/sys/kernel/tracing");
    if tracing.join("events").exists() || !is_root() {
        return Ok(());
    }
    step("mounting tracefs at /sys/kernel/tracing");
    run_cmd(
        Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]),
        "mounting tracefs",
    )
}

/// The Python and Node SDKs the end-to-end tests drive.
pub fn test_env() -> Result<()> {
    let root = workspace_root();
    let venv = root.join("target/testenv/venv");
    let requirements = root.join("tests/requirements.txt");
    let stamp = venv.join(".installed");
    let wanted = std::fs::read_to_string(&requirements).unwrap_or_default();
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        step("creating the Python test environment (SDKs from tests/requirements.txt)");
        run_cmd(
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
            "python3 -m venv",
        )?;
        run_cmd(
            Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "-r"])
                .arg(&requirements),
            "pip install -r tests/requirements.txt",
        )?;
        std::fs::write(&stamp, wanted)?;
    }
    let node_dir = root.join("tests/node");
    if node_dir.join("package.json").exists() && !node_dir.join("node_modules").exists() {
        step("installing the Node test clients (npm ci)");
        run_cmd(
            Command::new("npm")
                .current_dir(&node_dir)
                .args(["ci", "--no-audit", "--no-fund"]),
            "npm ci in tests/node",
        )?;
    }
    Ok(())
}

pub fn fuzz(root: &Path, seconds: u64) -> Result<()> {
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_none() {
        step("installing cargo-fuzz");
        run_cmd(
            Command::new("cargo").args(["install", "cargo-fuzz"]),
            "cargo install cargo-fuzz",
        )?;
    }
    let fuzz_dir = root.join("agent");
    let list = output(Command::new("cargo").current_dir(&fuzz_dir).args([
        &format!("+{NIGHTLY}"),
        "fuzz",
        "list",
    ]))
    .context("cargo fuzz list failed")?;
    for target in list.lines().map(str::trim).filter(|t| !t.is_empty()) {
        step(&format!("fuzzing {target} for {seconds} s"));
        run_cmd(
            Command::new("cargo").current_dir(&fuzz_dir).args([
                &format!("+{NIGHTLY}"),
                "fuzz",
                "run",
                target,
                "--",
                &format!("-max_total_time={seconds}"),
            ]),
            &format!("fuzz target {target}"),
        )?;
    }
    Ok(())
}
