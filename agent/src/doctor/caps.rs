//! Credentials from `/proc/self/status` text and the kernel release string.
//! Pure: the caller reads the files.

/// A Linux capability the agent asks for, with what it is needed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    /// Bit number in `CapEff` (`include/uapi/linux/capability.h`).
    pub bit: u32,
    pub needed_for: &'static str,
}

/// The capabilities the deploy manifests grant the agent.
pub const NEEDED: [Capability; 5] = [
    Capability {
        name: "CAP_BPF",
        bit: 39,
        needed_for: "creating maps and loading programs",
    },
    Capability {
        name: "CAP_PERFMON",
        bit: 38,
        needed_for: "tracepoints, uprobes and reading kernel memory",
    },
    Capability {
        name: "CAP_SYS_ADMIN",
        bit: 21,
        needed_for:
            "creating the agent's BPF maps (EPERM on 6.18 without it) and kernels before 5.8",
    },
    Capability {
        name: "CAP_SYS_PTRACE",
        bit: 19,
        needed_for:
            "reading other processes' /proc/<pid>/root and maps (TLS libraries in containers)",
    },
    Capability {
        name: "CAP_DAC_READ_SEARCH",
        bit: 2,
        needed_for:
            "opening TLS libraries in directories root may not search (non-root containers)",
    },
];

/// What `/proc/self/status` says about who we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub effective_uid: u32,
    /// The `CapEff` bit set.
    pub effective_caps: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatusError {
    #[error("/proc/self/status has no {0} line")]
    Missing(&'static str),
    #[error("/proc/self/status {field} value {value:?} does not parse")]
    Invalid { field: &'static str, value: String },
}

/// Reads the effective uid (`Uid:` real, effective, saved, fs) and `CapEff` (hex).
pub fn parse_status(text: &str) -> Result<Credentials, StatusError> {
    let field = |name: &'static str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .ok_or(StatusError::Missing(name))
    };
    let uids = field("Uid")?;
    let effective_uid = uids
        .split_whitespace()
        .nth(1)
        .and_then(|uid| uid.parse().ok())
        .ok_or_else(|| StatusError::Invalid {
            field: "Uid",
            value: uids.to_string(),
        })?;
    let caps = field("CapEff")?;
    let effective_caps = u64::from_str_radix(caps, 16).map_err(|_| StatusError::Invalid {
        field: "CapEff",
        value: caps.to_string(),
    })?;
    Ok(Credentials {
        effective_uid,
        effective_caps,
    })
}

/// The needed capabilities absent from `effective_caps`, in [`NEEDED`] order.
pub fn missing(effective_caps: u64) -> Vec<Capability> {
    NEEDED
        .into_iter()
        .filter(|cap| effective_caps & (1u64 << cap.bit) == 0)
        .collect()
}

/// One line naming the needed capabilities absent from `/proc/self/status`
/// text and what each is for, for an error that `tokenscope run` prints when
/// loading fails; `None` when none is missing or the text does not parse.
pub fn missing_summary(status: &str) -> Option<String> {
    let creds = parse_status(status).ok()?;
    let absent = missing(creds.effective_caps);
    if absent.is_empty() {
        return None;
    }
    let named: Vec<String> = absent
        .iter()
        .map(|c| format!("{} ({})", c.name, c.needed_for))
        .collect();
    Some(format!(
        "missing effective capabilities: {}",
        named.join(", ")
    ))
}

/// `(major, minor)` of a release such as `6.8.0-45-generic` or `5.15.0+`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let leading_number = |part: &str| -> Option<u32> {
        let end = part
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(part.len());
        part[..end].parse().ok()
    };
    let mut parts = release.trim().split('.');
    let major = leading_number(parts.next()?)?;
    let minor = leading_number(parts.next()?)?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT_STATUS: &str = "Name:\tcat\nUmask:\t0022\nState:\tR (running)\n\
        Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapInh:\t0000000000000000\n\
        CapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";

    #[test]
    fn root_with_every_capability_misses_none() {
        let creds = parse_status(ROOT_STATUS).unwrap();
        assert_eq!(creds.effective_uid, 0);
        assert_eq!(creds.effective_caps, 0x1ff_ffff_ffff);
        assert!(missing(creds.effective_caps).is_empty());
    }

    #[test]
    fn the_effective_uid_is_the_second_column() {
        let text = "Uid:\t1000\t0\t1000\t0\nCapEff:\t0000000000000000\n";
        let creds = parse_status(text).unwrap();
        assert_eq!(creds.effective_uid, 0);
        let names: Vec<&str> = missing(creds.effective_caps)
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(
            names,
            [
                "CAP_BPF",
                "CAP_PERFMON",
                "CAP_SYS_ADMIN",
                "CAP_SYS_PTRACE",
                "CAP_DAC_READ_SEARCH"
            ]
        );
    }

    #[test]
    fn names_exactly_the_missing_bits() {
        // A typical container grant: BPF + PERFMON + SYS_PTRACE, nothing else.
        let caps = (1u64 << 39) | (1 << 38) | (1 << 19);
        let names: Vec<&str> = missing(caps).iter().map(|c| c.name).collect();
        assert_eq!(names, ["CAP_SYS_ADMIN", "CAP_DAC_READ_SEARCH"]);
        // Docker's default set (no BPF, PERFMON, SYS_ADMIN, SYS_PTRACE, DAC_READ_SEARCH).
        assert_eq!(missing(0x0000_0000_a804_25fb).len(), 5);
    }

    #[test]
    fn malformed_status_is_an_error_naming_the_field() {
        assert_eq!(
            parse_status("Uid:\t0\t0\t0\t0\n"),
            Err(StatusError::Missing("CapEff"))
        );
        assert_eq!(
            parse_status("CapEff:\t0\n"),
            Err(StatusError::Missing("Uid"))
        );
        assert!(matches!(
            parse_status("Uid:\t0\t0\t0\t0\nCapEff:\tzz\n"),
            Err(StatusError::Invalid {
                field: "CapEff",
                ..
            })
        ));
        assert!(matches!(
            parse_status("Uid:\t0\nCapEff:\t0\n"),
            Err(StatusError::Invalid { field: "Uid", .. })
        ));
        // `CapEffX:` is not `CapEff:`.
        assert_eq!(
            parse_status("Uid:\t0\t0\t0\t0\nCapEffX:\t0\n"),
            Err(StatusError::Missing("CapEff"))
        );
    }

    #[test]
    fn the_summary_names_only_what_is_missing() {
        assert_eq!(missing_summary(ROOT_STATUS), None);
        // The manifest's grant without SYS_ADMIN.
        let status = "Uid:\t0\t0\t0\t0\nCapEff:\t000000c000080004\n";
        let summary = missing_summary(status).unwrap();
        assert!(summary.starts_with("missing effective capabilities: CAP_SYS_ADMIN ("));
        assert!(!summary.contains("CAP_BPF"), "{summary}");
        assert_eq!(missing_summary("garbage"), None);
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.8.0-45-generic"), Some((6, 8)));
        assert_eq!(kernel_version("5.15.0+\n"), Some((5, 15)));
        assert_eq!(kernel_version("6.18.44-fc-v782"), Some((6, 18)));
        assert_eq!(kernel_version("4.19"), Some((4, 19)));
        assert_eq!(kernel_version("6.10rc1"), Some((6, 10)));
        assert_eq!(kernel_version("garbage"), None);
        assert_eq!(kernel_version(""), None);
    }
}
