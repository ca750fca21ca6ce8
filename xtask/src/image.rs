//! `cargo xtask image`: the agent's container image, built without a registry.
//!
//! The base is assembled from this host: the agent binary's shared libraries
//! as `ldd` lists them (glibc, libm, libgcc_s, the dynamic loader), a minimal
//! `/etc` and the host's CA bundle. It is imported as
//! `localhost/tokenscope-base:<tag>` and passed as `BASE` to
//! `deploy/Containerfile`, which only copies the binary in, so the build
//! needs no network. The binary stays dynamically linked against glibc, so
//! the agent can `dlopen` the `libnvidia-ml.so.1` that the NVIDIA container
//! toolkit injects into `/usr/lib/x86_64-linux-gnu`.
//!
//! Uses only std, so that the end-to-end test (`tests/tests/image.rs`)
//! builds the image with this same code.

use std::{
    ffi::OsStr,
    fs, io,
    path::{Component, Path, PathBuf},
    process::Command,
};

/// Name of the image `build` makes, without its tag.
pub const IMAGE: &str = "localhost/tokenscope";
/// Name of the base image assembled from the host, without its tag.
pub const BASE_IMAGE: &str = "localhost/tokenscope-base";
/// Resource limits every container started by the engine needs on these
/// hosts: runc cannot raise them past the defaults of a nested runtime.
pub const RUN_LIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=32768:32768",
];

/// The container engine and the flags every call to it needs.
#[derive(Clone, Debug)]
pub enum Engine {
    /// Podman with a private store under `target/podman`, runc (crun fails
    /// on hybrid cgroup hierarchies) and the cgroupfs manager (no systemd).
    Podman { root: PathBuf },
    /// A running Docker daemon, when podman is absent.
    Docker,
}

fn error(what: impl std::fmt::Display) -> io::Error {
    io::Error::other(what.to_string())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Engine {
    /// Podman if installed (its store under `state`), else Docker if its
    /// daemon answers.
    pub fn detect(state: &Path) -> io::Result<Engine> {
        if succeeds(Command::new("podman").arg("--version")) {
            if !succeeds(Command::new("runc").arg("--version")) {
                return Err(error(
                    "podman needs runc here (crun fails on hybrid cgroups): apt-get install -y runc",
                ));
            }
            return Ok(Engine::Podman {
                root: state.to_path_buf(),
            });
        }
        if succeeds(Command::new("docker").arg("info")) {
            return Ok(Engine::Docker);
        }
        Err(error(
            "no container engine: apt-get install -y podman runc (or start a Docker daemon)",
        ))
    }

    /// The engine's command with its global flags.
    pub fn command(&self) -> Command {
        match self {
            Engine::Podman { root } => {
                let mut cmd = Command::new("podman");
                cmd.arg("--root")
                    .arg(root.join("root"))
                    .arg("--runroot")
                    .arg(root.join("runroot"))
                    .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
                    .args(["--events-backend", "file"]);
                cmd
            }
            Engine::Docker => Command::new("docker"),
        }
    }
}

/// Runs `cmd`; its stdout on success, an error with its stderr otherwise.
pub fn output(cmd: &mut Command, what: &str) -> io::Result<String> {
    let out = cmd
        .output()
        .map_err(|e| error(format!("{what}: cannot start {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(error(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The shared objects `ldd` says `binary` loads, the dynamic loader included.
pub fn shared_libraries(binary: &Path) -> io::Result<Vec<PathBuf>> {
    let text = output(Command::new("ldd").arg(binary), "ldd")?;
    let mut libraries = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            return Err(error(format!("ldd {}: {}", binary.display(), line.trim())));
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or
        // `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libraries.push(PathBuf::from(path));
        }
    }
    if libraries.is_empty() {
        return Err(error(format!(
            "ldd lists no libraries for {}: a static binary cannot dlopen libnvidia-ml",
            binary.display()
        )));
    }
    Ok(libraries)
}

/// `path` without `.` and with each `..` taking its parent away.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Copies the host file `path` into `rootfs` at the same path, recreating
/// every symlink on the way (`/lib -> usr/lib`, `/lib64/ld-linux… -> /lib/…`)
/// so that the image resolves the loader and library paths as the host does.
pub fn mirror(rootfs: &Path, path: &Path) -> io::Result<()> {
    let mut pending = normalize(path);
    for _ in 0..32 {
        let parts: Vec<&OsStr> = pending
            .components()
            .filter_map(|c| match c {
                Component::Normal(part) => Some(part),
                _ => None,
            })
            .collect();
        let mut host = PathBuf::from("/");
        let mut next = None;
        for (index, part) in parts.iter().enumerate() {
            host.push(part);
            let inside = rootfs.join(host.strip_prefix("/").map_err(error)?);
            let meta = fs::symlink_metadata(&host)?;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&host)?;
                if fs::symlink_metadata(&inside).is_err() {
                    std::os::unix::fs::symlink(&target, &inside)?;
                }
                let base = host.parent().unwrap_or(Path::new("/"));
                let mut resolved = base.join(&target);
                resolved.extend(parts.iter().skip(index + 1));
                next = Some(normalize(&resolved));
                break;
            } else if meta.is_dir() {
                if !inside.is_dir() {
                    fs::create_dir(&inside)?;
                }
            } else {
                fs::copy(&host, &inside)?;
            }
        }
        match next {
            Some(path) => pending = path,
            None => return Ok(()),
        }
    }
    Err(error(format!("{}: too many symlinks", path.display())))
}

/// A minimal root filesystem for `binary` in `rootfs` (which must be empty).
pub fn assemble_rootfs(rootfs: &Path, binary: &Path) -> io::Result<()> {
    for library in shared_libraries(binary)? {
        mirror(rootfs, &library)?;
    }
    let etc = rootfs.join("etc");
    fs::create_dir_all(&etc)?;
    fs::write(etc.join("passwd"), "root:x:0:0:root:/:/usr/sbin/nologin\n")?;
    fs::write(etc.join("group"), "root:x:0:\n")?;
    // glibc 2.34+ has files and dns built into libc: no libnss_* to copy.
    fs::write(
        etc.join("nsswitch.conf"),
        "passwd: files\ngroup: files\nhosts: files dns\n",
    )?;
    let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if bundle.is_file() {
        mirror(rootfs, bundle)?;
    }
    for dir in ["tmp", "var/lib/tokenscope", "etc/tokenscope"] {
        fs::create_dir_all(rootfs.join(dir))?;
    }
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    Ok(())
}

/// What [`build`] made.
#[derive(Clone, Debug)]
pub struct Built {
    /// `localhost/tokenscope:<tag>`.
    pub reference: String,
    /// The OCI archive (`podman save --format oci-archive`).
    pub archive: PathBuf,
    /// Bytes of the archive.
    pub archive_bytes: u64,
}

/// Builds `localhost/tokenscope:<tag>` from `binary` with `Containerfile`,
/// on a base assembled from the host, and saves it to `archive`. `work` is a
/// scratch directory (emptied first).
pub fn build(
    engine: &Engine,
    containerfile: &Path,
    binary: &Path,
    tag: &str,
    work: &Path,
    archive: &Path,
) -> io::Result<Built> {
    if work.exists() {
        fs::remove_dir_all(work)?;
    }
    let rootfs = work.join("rootfs");
    let context = work.join("context");
    fs::create_dir_all(&rootfs)?;
    fs::create_dir_all(&context)?;
    assemble_rootfs(&rootfs, binary)?;

    let base_tar = work.join("base.tar");
    output(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["--numeric-owner", "--owner=0", "--group=0", "-cf"])
            .arg(&base_tar)
            .arg("."),
        "packing the base rootfs",
    )?;
    let base = format!("{BASE_IMAGE}:{tag}");
    output(
        engine.command().arg("import").arg(&base_tar).arg(&base),
        "importing the base",
    )?;

    // Without debug info: the image carries what runs, not what debugs.
    let copied = context.join("tokenscope");
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(&copied)
        .arg(binary)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        fs::copy(binary, &copied)?;
    }

    let reference = format!("{IMAGE}:{tag}");
    let mut cmd = engine.command();
    cmd.arg("build");
    if matches!(engine, Engine::Podman { .. }) {
        cmd.arg("--pull=never");
    }
    cmd.arg("--build-arg")
        .arg(format!("BASE={base}"))
        .arg("-f")
        .arg(containerfile)
        .arg("-t")
        .arg(&reference)
        .arg(&context);
    output(&mut cmd, "building the image")?;

    if archive.exists() {
        fs::remove_file(archive)?;
    }
    let mut cmd = engine.command();
    cmd.arg("save");
    if matches!(engine, Engine::Podman { .. }) {
        cmd.args(["--format", "oci-archive"]);
    }
    cmd.arg("-o").arg(archive).arg(&reference);
    output(&mut cmd, "saving the image")?;
    let archive_bytes = fs::metadata(archive)?.len();
    fs::remove_dir_all(work)?;
    Ok(Built {
        reference,
        archive: archive.to_path_buf(),
        archive_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_drops_dots_and_climbs_parents() {
        assert_eq!(
            normalize(Path::new("/usr/lib64/../lib/./x.so")),
            PathBuf::from("/usr/lib/x.so")
        );
        assert_eq!(normalize(Path::new("/../a")), PathBuf::from("/a"));
    }
}
