//! Project tasks: `cargo xtask setup | run | test | bench | fuzz | image`.
//!
//! Each task first brings in what it needs (and skips what is present), and
//! fails with a message that says what to do.

mod image;
mod setup;

use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces, system packages and test clients.
    Setup {
        /// Also install the Python and Node SDKs the end-to-end tests drive.
        #[arg(long)]
        test_env: bool,
    },
    /// Build the agent in release mode and run it (as root).
    Run {
        /// Arguments passed to `tokenscope run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: unit tests, and the eBPF end-to-end tests as root.
    Test {
        /// Extra arguments passed to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the criterion benchmarks.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run each fuzz target for a while (cargo fuzz, nightly).
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Build the agent's container image offline (podman, or docker) and
    /// save it as an OCI archive.
    Image {
        /// Cargo profile the agent is built with.
        #[arg(long, default_value = "release")]
        profile: String,
        /// Image tag; the crate version by default.
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        tag: String,
        /// Where the OCI archive is written.
        #[arg(long, default_value = "target/tokenscope-image.tar")]
        out: std::path::PathBuf,
    },
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| ".".into())
}

pub fn run_cmd(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.task {
        Task::Setup { test_env } => {
            setup::toolchain()?;
            if test_env {
                setup::test_env()?;
            }
        }
        Task::Run { args } => {
            setup::toolchain()?;
            run_cmd(
                Command::new("cargo").current_dir(&root).args([
                    "build",
                    "--release",
                    "-p",
                    "tokenscope",
                ]),
                "building the agent",
            )?;
            let bin = root.join("target/release/tokenscope");
            let mut cmd = if setup::is_root() {
                Command::new(&bin)
            } else {
                let mut c = Command::new("sudo");
                c.arg("-E").arg(&bin);
                c
            };
            cmd.arg("run").args(&args);
            run_cmd(&mut cmd, "tokenscope run")?;
        }
        Task::Test { args } => {
            setup::toolchain()?;
            setup::test_env()?;
            if !setup::is_root() {
                bail!("the eBPF tests load probes: run `sudo -E cargo xtask test` (or as root)");
            }
            // The end-to-end tests run the agent binary: build it first.
            run_cmd(
                Command::new("cargo").current_dir(&root).args([
                    "build",
                    "-p",
                    "tokenscope",
                    "--bins",
                ]),
                "building the agent",
            )?;
            run_cmd(
                Command::new("cargo")
                    .current_dir(&root)
                    .args([
                        "test",
                        "--workspace",
                        "--no-fail-fast",
                        "--lib",
                        "--bins",
                        "--tests",
                    ])
                    .args(&args),
                "cargo test",
            )?;
        }
        Task::Bench { args } => {
            setup::toolchain()?;
            setup::test_env()?;
            // The capture bench runs the agent binary.
            run_cmd(
                Command::new("cargo").current_dir(&root).args([
                    "build",
                    "-p",
                    "tokenscope",
                    "--bins",
                ]),
                "building the agent",
            )?;
            run_cmd(
                Command::new("cargo")
                    .current_dir(&root)
                    .args(["bench", "--workspace"])
                    .args(&args),
                "cargo bench",
            )?;
        }
        Task::Image { profile, tag, out } => {
            setup::toolchain()?;
            run_cmd(
                Command::new("cargo").current_dir(&root).args([
                    "build",
                    "--profile",
                    &profile,
                    "-p",
                    "tokenscope",
                    "--bins",
                ]),
                "building the agent",
            )?;
            let dir = if profile == "dev" { "debug" } else { &profile };
            let binary = root.join("target").join(dir).join("tokenscope");
            let engine = image::Engine::detect(&root.join("target/podman"))?;
            let built = image::build(
                &engine,
                &root.join("deploy/Containerfile"),
                &binary,
                &tag,
                &root.join("target/image"),
                &root.join(out),
            )?;
            eprintln!(
                "xtask: {} saved to {} ({} MB); load it with `podman load -i` or \
                 `ctr -n k8s.io images import`; here it runs with `podman --runtime runc \
                 --cgroup-manager cgroupfs run {}`",
                built.reference,
                built.archive.display(),
                built.archive_bytes / 1_000_000,
                image::RUN_LIMITS.join(" ")
            );
        }
        Task::Fuzz { seconds } => {
            setup::toolchain()?;
            setup::fuzz(&root, seconds)?;
        }
    }
    Ok(())
}
