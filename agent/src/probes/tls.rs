//! Finding the TLS libraries to probe: every mapped `libssl.so*`, and
//! executables that carry OpenSSL themselves and export `SSL_write` (Node).

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSymbol};
use tokenscope_common::{SOURCE_TLS_BORINGSSL, SOURCE_TLS_OPENSSL, SOURCE_TLS_OPENSSL_EMBEDDED};

/// The `SOURCE_TLS_*` kind of a TLS library file.
pub fn library_kind(path: &Path, data: &[u8]) -> u8 {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if memchr::memmem::find(data, b"BoringSSL").is_some() {
        SOURCE_TLS_BORINGSSL
    } else if name.starts_with("libssl.so") {
        SOURCE_TLS_OPENSSL
    } else {
        SOURCE_TLS_OPENSSL_EMBEDDED
    }
}

pub use crate::events::tls_library_name as library_name;

/// Remembers which files were already looked at, by (device, inode), so each
/// library is probed once however many processes map it.
#[derive(Default)]
pub struct TlsScanner {
    seen: HashSet<(u64, u64)>,
    warned_denied: bool,
    /// Go executables found by [`TlsScanner::scan_pid`], for [`TlsScanner::take_go`].
    go: Vec<PathBuf>,
}

impl TlsScanner {
    /// New targets mapped by `pid`, as paths through `/proc/<pid>/root` so
    /// that files inside containers resolve.
    pub fn scan_pid(&mut self, pid: u32) -> Vec<PathBuf> {
        let maps = match fs::read_to_string(format!("/proc/{pid}/maps")) {
            Ok(maps) => maps,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::PermissionDenied && !self.warned_denied {
                    self.warned_denied = true;
                    tracing::warn!(
                        event = "tls_scan_denied",
                        pid,
                        "cannot read /proc/<pid>/maps of other processes (needs CAP_SYS_PTRACE): \
                         TLS libraries they map are not probed"
                    );
                }
                return Vec::new();
            }
        };
        let mut found = Vec::new();
        let mut paths: Vec<&str> = maps
            .lines()
            .filter_map(|line| line.split_whitespace().nth(5))
            .filter(|p| p.starts_with('/'))
            .collect();
        paths.dedup();
        for path in paths {
            let file_name = Path::new(path)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("");
            let is_libssl = file_name.starts_with("libssl.so");
            // Executables (node, bun) and runtime libraries that carry their
            // own OpenSSL or BoringSSL (libnode.so).
            let is_candidate_exe = !file_name.contains(".so")
                || file_name.starts_with("libnode.so")
                || file_name.starts_with("libboringssl");
            if !is_libssl && !is_candidate_exe {
                continue;
            }
            let full = PathBuf::from(format!("/proc/{pid}/root{path}"));
            let Ok(meta) = fs::metadata(&full) else {
                continue;
            };
            // Only regular files: shared anonymous memory maps as
            // `/dev/zero (deleted)`, and reading a device never ends.
            if !meta.is_file() {
                continue;
            }
            if !self.seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            match (is_libssl, inspect_executable(&full)) {
                (true, _) | (false, Some(Executable::Ssl)) => found.push(full),
                (false, Some(Executable::Go)) => self.go.push(full),
                (false, None) => {}
            }
        }
        found
    }

    /// Go executables (Go's own `crypto/tls`) found by the scans since the
    /// last call, each file once.
    pub fn take_go(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.go)
    }

    /// Libraries present on the host (or in the agent's root) whether or not
    /// a process maps them yet, so short-lived clients are covered at start.
    pub fn scan_host(&mut self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        // Runtimes that link OpenSSL into their own executable (Node): probing
        // them at start covers calls made before the exec-time scan finds them.
        for exe in ["/usr/bin/node", "/usr/local/bin/node", "/usr/bin/nodejs"] {
            let path = Path::new(exe);
            if let Ok(meta) = fs::metadata(path) {
                if self.seen.insert((meta.dev(), meta.ino())) && exports_ssl_write(path) {
                    found.push(path.to_path_buf());
                }
            }
        }
        for dir in [
            "/usr/lib/x86_64-linux-gnu",
            "/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
            "/proc/1/root/usr/lib/x86_64-linux-gnu",
            "/proc/1/root/usr/lib64",
        ] {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if !name.starts_with("libssl.so.") {
                    continue;
                }
                let path = entry.path();
                let Ok(meta) = fs::metadata(&path) else {
                    continue;
                };
                if self.seen.insert((meta.dev(), meta.ino())) {
                    found.push(path);
                }
            }
        }
        found
    }
}

enum Executable {
    /// Exports `SSL_write` (OpenSSL or BoringSSL inside).
    Ssl,
    /// Built by Go: its `crypto/tls` is probed instead.
    Go,
}

/// What TLS an executable or library carries, reading the file once.
fn inspect_executable(path: &Path) -> Option<Executable> {
    // Only the headers, section table and dynamic symbols are read, not the
    // whole file: the start-up scan meets every executable on the node,
    // some of them hundreds of megabytes.
    let cache = object::ReadCache::new(fs::File::open(path).ok()?);
    let file = object::File::parse(&cache).ok()?;
    if file
        .dynamic_symbols()
        .any(|s| s.is_definition() && s.name() == Ok("SSL_write"))
    {
        Some(Executable::Ssl)
    } else if super::gosym::is_go(&file) {
        Some(Executable::Go)
    } else {
        None
    }
}

/// Whether an ELF file exports `SSL_write` in its dynamic symbols.
pub fn exports_ssl_write(path: &Path) -> bool {
    // Executables without OpenSSL are the common case; skip huge reads of
    // obviously unrelated files by checking the ELF magic first.
    if !fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let Ok(data) = fs::read(path) else {
        return false;
    };
    if data.get(..4) != Some(b"\x7fELF") {
        return false;
    }
    let Ok(file) = object::File::parse(&*data) else {
        return false;
    };
    file.dynamic_symbols()
        .any(|s| s.is_definition() && s.name() == Ok("SSL_write"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_system_libssl_and_not_twice() {
        let mut scanner = TlsScanner::default();
        let first = scanner.scan_host();
        if first.is_empty() {
            assert!(
                std::env::var("CI").is_err(),
                "CI machines have libssl3 installed"
            );
            return;
        }
        assert!(first
            .iter()
            .any(|p| p.to_string_lossy().contains("libssl.so.3")));
        // Each target resolves to a file once, whatever path reached it.
        assert!(first.iter().all(|p| exports_ssl_write(p)));
        assert!(
            scanner.scan_host().is_empty(),
            "same inode is reported once"
        );
    }

    #[test]
    fn go_executables_are_told_apart() {
        let Ok(go) = fs::canonicalize("/usr/lib/go/bin/go") else {
            assert!(
                std::env::var("CI").is_err(),
                "`go` is missing: install golang-go"
            );
            return;
        };
        // `go` itself is built by Go.
        assert!(matches!(inspect_executable(&go), Some(Executable::Go)));
        assert!(inspect_executable(Path::new("/bin/sh")).is_none());
        assert!(inspect_executable(Path::new("/etc/hostname")).is_none());
        assert!(inspect_executable(Path::new("/nonexistent")).is_none());
    }

    #[test]
    fn a_plain_executable_does_not_export_ssl_write() {
        assert!(!exports_ssl_write(Path::new("/bin/sh")));
        assert!(!exports_ssl_write(Path::new("/nonexistent")));
        assert!(
            !exports_ssl_write(Path::new("/dev/zero")),
            "devices are never read"
        );
    }

    #[test]
    fn shared_anonymous_memory_does_not_stall_the_scan() {
        // nginx and postgres map shared memory, seen as `/dev/zero (deleted)`.
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import mmap,sys,time; m=mmap.mmap(-1,4096,flags=mmap.MAP_SHARED); print(1,flush=True); time.sleep(30)",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("child ready");
        let pid = child.id();
        let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(TlsScanner::default().scan_pid(pid).len());
        });
        let done = rx.recv_timeout(std::time::Duration::from_secs(20));
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            maps.contains("/dev/zero"),
            "the child maps shared memory: {maps}"
        );
        assert!(
            done.is_ok(),
            "scanning a process with shared memory never ended"
        );
    }
}
