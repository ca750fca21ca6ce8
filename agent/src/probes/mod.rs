//! Loading and attaching the eBPF programs. The only module that touches aya.

mod btf;
pub mod goconn;
pub mod gosym;
pub mod placement;
pub mod readsite;
pub mod tls;

use std::collections::HashMap as StdHashMap;

use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
        BtfTracePoint, TracePoint, UProbe,
    },
    Btf, Ebpf, EbpfLoader,
};
use tokenscope_common::{
    names, ConnState, SslCall, CONN_STATE_MAP, COUNTERS_MAP, COUNTER_COUNT, COUNTER_NAMES,
    EVENTS_MAP, FILTER_CGROUP_MAP, FILTER_COMM_MAP, FILTER_PORT_MAP, GLOBAL_AGENT_TGID,
    GLOBAL_CALL_CAP, GLOBAL_FILTERS, GLOBAL_FIRST_WINDOW, GLOBAL_OFFSETS, GO_CALLS_MAP,
    TLS_LINKED_MAP, VERDICT_CAPTURE, VERDICT_CIPHER, VERDICT_MUTED,
};

pub use btf::{kernel_offsets, BtfError};

use crate::streams::{ConnRef, Verdict};

/// The eBPF object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tokenscope"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "this agent was built without eBPF programs (TOKENSCOPE_SKIP_EBPF=1); rebuild without it"
    )]
    NoObject,
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("cannot read kernel BTF for BTF tracepoints")]
    KernelBtf(#[source] aya::BtfError),
    #[error("loading the eBPF object failed (needs root or CAP_BPF+CAP_PERFMON+CAP_SYS_ADMIN)")]
    Load(#[source] aya::EbpfError),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("program {name}: {what} failed")]
    Program {
        name: &'static str,
        what: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cgroup {0:?} not found (give a path under the cgroup v2 hierarchy)")]
    Cgroup(String),
    #[error("cannot read {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot place SSL probes in {path}")]
    Placement {
        path: std::path::PathBuf,
        #[source]
        source: placement::PlacementError,
    },
    #[error("cannot place Go TLS probes in {path}")]
    GoPlacement {
        path: std::path::PathBuf,
        #[source]
        source: gosym::GoSymError,
    },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Capture settings the kernel side needs at load.
#[derive(Clone, Debug)]
pub struct LoadSettings {
    pub first_window: u64,
    pub call_cap: u32,
    pub capture_sockets: bool,
    pub capture_tls: bool,
    pub filters: Filters,
}

/// Include/exclude lists pushed into the kernel. An empty include list
/// includes everything.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub include_comms: Vec<String>,
    pub exclude_comms: Vec<String>,
    pub include_ports: Vec<u16>,
    pub exclude_ports: Vec<u16>,
    /// cgroup v2 ids (directory inodes); descendants match too.
    pub include_cgroups: Vec<u64>,
    pub exclude_cgroups: Vec<u64>,
}

impl Filters {
    /// The lists of the `[capture]` config, cgroup paths resolved to ids.
    pub fn from_config(c: &crate::config::CaptureConfig) -> Result<Filters, ProbeError> {
        let ids = |paths: &[String]| -> Result<Vec<u64>, ProbeError> {
            paths.iter().map(|p| cgroup_id(p)).collect()
        };
        Ok(Filters {
            include_comms: c.include_comms.clone(),
            exclude_comms: c.exclude_comms.clone(),
            include_ports: c.include_ports.clone(),
            exclude_ports: c.exclude_ports.clone(),
            include_cgroups: ids(&c.include_cgroups)?,
            exclude_cgroups: ids(&c.exclude_cgroups)?,
        })
    }

    /// The `filter::*` flags of the lists that are set.
    pub fn flags(&self) -> u32 {
        use tokenscope_common::filter::*;
        let mut flags = 0;
        for (set, flag) in [
            (!self.include_comms.is_empty(), INCLUDE_COMM),
            (!self.exclude_comms.is_empty(), EXCLUDE_COMM),
            (!self.include_ports.is_empty(), INCLUDE_PORT),
            (!self.exclude_ports.is_empty(), EXCLUDE_PORT),
            (!self.include_cgroups.is_empty(), INCLUDE_CGROUP),
            (!self.exclude_cgroups.is_empty(), EXCLUDE_CGROUP),
        ] {
            if set {
                flags |= flag;
            }
        }
        flags
    }
}

/// A process name as the kernel stores it: at most 15 bytes, NUL-padded.
pub fn comm_key(name: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    for (slot, byte) in key.iter_mut().zip(name.bytes().take(15)) {
        *slot = byte;
    }
    key
}

/// The cgroup v2 id of a cgroup directory: an absolute path, or one
/// relative to the v2 hierarchy (`/sys/fs/cgroup`, or its `unified` mount
/// on hybrid hosts).
pub fn cgroup_id(path: &str) -> Result<u64, ProbeError> {
    use std::os::unix::fs::MetadataExt;
    let relative = path.trim_start_matches('/');
    let candidates = [
        std::path::PathBuf::from(path),
        std::path::Path::new("/sys/fs/cgroup/unified").join(relative),
        std::path::Path::new("/sys/fs/cgroup").join(relative),
    ];
    candidates
        .iter()
        .filter(|p| p.is_absolute() && p.is_dir())
        .find_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.ino())
        .ok_or_else(|| ProbeError::Cgroup(path.to_string()))
}

/// Loaded and attached programs. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    verdicts: HashMap<MapData, u64, ConnState>,
    /// SSL object → the socket it was linked to.
    tls_linked: HashMap<MapData, u64, u64>,
    /// Go calls in flight by `[tgid, g]`: a process that exits inside a
    /// Read leaves its entry, removed at its exit.
    go_calls: HashMap<MapData, [u64; 2], SslCall>,
    counters: PerCpuArray<MapData, u64>,
    /// Verdicts and removals not applied: the entry was a newer connection's.
    stale_skipped: u64,
    ssl_loaded: bool,
    go_loaded: bool,
}

impl Probes {
    pub fn load(settings: &LoadSettings) -> Result<Probes, ProbeError> {
        if OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        let started = std::time::Instant::now();
        let offsets = kernel_offsets()?;
        tracing::debug!(
            event = "btf_offsets",
            ms = started.elapsed().as_millis() as u64
        );
        let btf = Btf::from_sys_fs().map_err(ProbeError::KernelBtf)?;
        tracing::debug!(
            event = "btf_parsed",
            ms = started.elapsed().as_millis() as u64
        );
        let tgid = std::process::id();
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global(GLOBAL_AGENT_TGID, &tgid, true)
            .override_global(GLOBAL_FIRST_WINDOW, &settings.first_window, true)
            .override_global(GLOBAL_CALL_CAP, &settings.call_cap, true)
            .override_global(GLOBAL_OFFSETS, &offsets, true)
            .override_global(GLOBAL_FILTERS, &settings.filters.flags(), true)
            .load(OBJECT)
            .map_err(ProbeError::Load)?;
        tracing::debug!(
            event = "object_loaded",
            ms = started.elapsed().as_millis() as u64
        );

        // Filters are in place before any program runs: a connection seen
        // with empty lists would be judged by them and muted for good.
        fill_filters(&mut ebpf, &settings.filters)?;
        for name in [names::EXEC, names::EXIT] {
            let prog: &mut TracePoint = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| prog_err(name, "load", source))?;
            prog.attach("sched", name)
                .map_err(|source| prog_err(name, "attach", source))?;
        }
        if settings.capture_sockets || settings.capture_tls {
            // The TLS link (SSL object -> socket) is made in the socket programs.
            // All three are verified first (the slow part, seconds), then the
            // close program is attached before the two that make entries:
            // an entry made while closes went unseen would outlive its socket
            // and land on the next socket allocated at that address.
            let order = [names::SOCK_STATE, names::SOCK_SEND, names::SOCK_RECV];
            for name in order {
                let prog: &mut BtfTracePoint = program(&mut ebpf, name)?;
                prog.load(name, &btf)
                    .map_err(|source| prog_err(name, "load", source))?;
                tracing::debug!(
                    event = "verified",
                    program = name,
                    ms = started.elapsed().as_millis() as u64
                );
            }
            for name in order {
                let prog: &mut BtfTracePoint = program(&mut ebpf, name)?;
                prog.attach()
                    .map_err(|source| prog_err(name, "attach", source))?;
            }
            tracing::debug!(
                event = "attached",
                programs = "sock",
                ms = started.elapsed().as_millis() as u64
            );
        }
        let verdicts = take_map(&mut ebpf, CONN_STATE_MAP, "CONN_STATE")?;
        let counters = take_map(&mut ebpf, COUNTERS_MAP, "COUNTERS")?;
        let tls_linked = take_map(&mut ebpf, TLS_LINKED_MAP, "TLS_LINKED")?;
        let go_calls = take_map(&mut ebpf, GO_CALLS_MAP, "GO_CALLS")?;
        Ok(Probes {
            ebpf,
            verdicts,
            tls_linked,
            go_calls,
            counters,
            stale_skipped: 0,
            ssl_loaded: false,
            go_loaded: false,
        })
    }

    /// The ring buffer all events arrive on; call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        take_map(&mut self.ebpf, EVENTS_MAP, "EVENTS")
    }

    /// Records user space's verdict on a connection (socket or SSL object).
    ///
    /// `conn.seen_ns` is the kernel time of the latest event user space read
    /// on the connection. The entry is changed only if it exists and was born
    /// no later than that: user space lags the kernel, and by the time it
    /// decides, the connection may have closed and a new one taken its
    /// address (sockets come from a slab, SSL objects from malloc). A verdict
    /// written there would mute or mislabel the newcomer. A skipped verdict
    /// costs only captured bytes; the connection is still parsed.
    pub fn set_verdict(&mut self, conn: ConnRef, verdict: Verdict) {
        let Ok(mut state) = self.verdicts.get(&conn.id, 0) else {
            return;
        };
        if state.born_ns > conn.seen_ns {
            self.stale_skipped += 1;
            return;
        }
        state.verdict = match verdict {
            Verdict::Capture => VERDICT_CAPTURE,
            Verdict::Mute => VERDICT_MUTED,
            Verdict::Cipher => VERDICT_CIPHER,
        };
        // BPF_EXIST: never re-create an entry the kernel dropped meanwhile.
        // Between the read above and this write a close and a reuse could
        // still slip in; that window is the map round trip, not user space's lag.
        const BPF_EXIST: u64 = 2;
        let _ = self.verdicts.insert(conn.id, state, BPF_EXIST);
    }

    /// Forgets a connection's kernel state (the id may be reused), under the
    /// same age rule as [`Probes::set_verdict`].
    pub fn forget(&mut self, conn: ConnRef) {
        if let Ok(state) = self.verdicts.get(&conn.id, 0) {
            if state.born_ns > conn.seen_ns {
                self.stale_skipped += 1;
                return;
            }
            let _ = self.verdicts.remove(&conn.id);
        }
        // An SSL object's address is soon reused, often over a socket at a
        // reused address too: without this, the new pair would look linked
        // already and its addresses would never reach user space.
        let _ = self.tls_linked.remove(&conn.id);
    }

    /// Drops the Go calls left in flight by processes that have exited (a
    /// program exiting while a goroutine blocks in `(*Conn).Read`); returns
    /// how many. One pass over the map, meant for a periodic tick.
    pub fn sweep_go_calls(&mut self) -> usize {
        if !self.go_loaded {
            return 0;
        }
        let stale: Vec<[u64; 2]> = self
            .go_calls
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !std::path::Path::new(&format!("/proc/{}", key[0])).exists())
            .collect();
        for key in &stale {
            let _ = self.go_calls.remove(key);
        }
        stale.len()
    }

    /// Verdicts and removals skipped because the entry was a newer connection's.
    pub fn stale_skipped(&self) -> u64 {
        self.stale_skipped
    }

    /// Kernel-side counters summed over CPUs, by name.
    pub fn counters(&self) -> StdHashMap<&'static str, u64> {
        let mut out = StdHashMap::new();
        for index in 0..COUNTER_COUNT {
            let total = self
                .counters
                .get(&index, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0);
            out.insert(COUNTER_NAMES[index as usize], total);
        }
        out
    }

    /// Attaches the SSL probes to one library or executable, where
    /// [`placement::plan`] puts them for this build.
    pub fn attach_ssl(&mut self, target: &std::path::Path) -> Result<SslAttach, ProbeError> {
        if !self.ssl_loaded {
            for name in [names::SSL_ENTER, names::SSL_LEAVE, names::SSL_READ_DONE] {
                let prog: &mut UProbe = program(&mut self.ebpf, name)?;
                prog.load()
                    .map_err(|source| prog_err(name, "load", source))?;
            }
            self.ssl_loaded = true;
        }
        let data = std::fs::read(target).map_err(|source| ProbeError::Read {
            path: target.to_path_buf(),
            source,
        })?;
        let kind = tls::library_kind(target, &data);
        let plan = placement::plan(&data, kind).map_err(|source| ProbeError::Placement {
            path: target.to_path_buf(),
            source,
        })?;
        drop(data);
        let mut attached = 0;
        for a in &plan.attachments {
            let name = a.probe.program();
            let prog: &mut UProbe = program(&mut self.ebpf, name)?;
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(a.offset),
                cookie: Some(a.cookie),
            };
            match prog.attach(point, target, UProbeScope::AllProcesses) {
                Ok(_) => attached += 1,
                Err(source) => tracing::debug!(
                    target_path = %target.display(),
                    offset = a.offset,
                    program = name,
                    error = %source,
                    "uprobe not attached"
                ),
            }
        }
        for p in [plan.read, plan.write] {
            SSL_PLACEMENTS[p as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(SslAttach {
            attached,
            planned: plan.attachments.len(),
            emulated: plan.attachments.iter().filter(|a| a.emulated).count(),
            read: plan.read,
            write: plan.write,
            library: tls::library_name(kind),
            write_offsets: plan
                .attachments
                .iter()
                .filter(|a| {
                    tokenscope_common::ssl_cookie::decode(a.cookie).0
                        == tokenscope_common::DIR_EGRESS
                })
                .map(|a| a.offset)
                .collect(),
        })
    }
}

impl Probes {
    /// Attaches the Go `crypto/tls` probes to one Go executable: the entries
    /// of `(*Conn).Write` and `(*Conn).Read` and every `RET` of both (see
    /// [`gosym`]; never uretprobes on Go).
    pub fn attach_go(&mut self, target: &std::path::Path) -> Result<GoAttach, ProbeError> {
        self.load_go()?;
        let data = std::fs::read(target).map_err(|source| ProbeError::Read {
            path: target.to_path_buf(),
            source,
        })?;
        let plan = gosym::plan(&data).map_err(|source| ProbeError::GoPlacement {
            path: target.to_path_buf(),
            source,
        })?;
        drop(data);
        // The entries' cookies tell them where the conn's descriptor lies.
        let write_cookie = plan.entry_cookie(plan.write_addr);
        let read_cookie = plan.entry_cookie(plan.read_addr);
        let points = [
            (
                names::GO_TLS_WRITE,
                std::slice::from_ref(&plan.write_entry),
                write_cookie,
            ),
            (
                names::GO_TLS_READ,
                std::slice::from_ref(&plan.read_entry),
                read_cookie,
            ),
            (names::GO_TLS_RET, plan.write_rets.as_slice(), 0),
            (names::GO_TLS_RET, plan.read_rets.as_slice(), 0),
        ];
        let mut attached = 0;
        let mut planned = 0;
        for (name, offsets, cookie) in points {
            let prog: &mut UProbe = program(&mut self.ebpf, name)?;
            for &offset in offsets {
                planned += 1;
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(offset),
                    cookie: (cookie != 0).then_some(cookie),
                };
                match prog.attach(point, target, UProbeScope::AllProcesses) {
                    Ok(_) => attached += 1,
                    Err(source) => tracing::debug!(
                        target_path = %target.display(),
                        program = name,
                        offset,
                        error = %source,
                        "uprobe not attached"
                    ),
                }
            }
        }
        Ok(GoAttach {
            attached,
            planned,
            version: plan.version,
            lookup: plan.lookup.as_str(),
            conn_layout: plan.conn.as_ref().map(|c| c.source.as_str()).ok(),
            tcp_itab: plan.conn.as_ref().is_ok_and(|c| c.tcp_itab.is_some()),
            conn_error: plan.conn.err(),
        })
    }
}

impl Probes {
    /// Loads the Go `crypto/tls` programs (the verifier checks them here);
    /// [`Probes::attach_go`] does it on first use.
    pub fn load_go(&mut self) -> Result<(), ProbeError> {
        if !self.go_loaded {
            for name in [names::GO_TLS_WRITE, names::GO_TLS_READ, names::GO_TLS_RET] {
                let prog: &mut UProbe = program(&mut self.ebpf, name)?;
                prog.load()
                    .map_err(|source| prog_err(name, "load", source))?;
            }
            self.go_loaded = true;
        }
        Ok(())
    }
}

/// What [`Probes::attach_go`] did to one executable.
#[derive(Clone, Debug)]
pub struct GoAttach {
    pub attached: usize,
    pub planned: usize,
    /// The Go release that built it, from its build info.
    pub version: Option<String>,
    /// `symtab`, or `gopclntab` for a stripped binary.
    pub lookup: &'static str,
    /// Where the conn → descriptor offsets came from (`dwarf`,
    /// `version_table`); `None` when unknown, and the conns are tied to
    /// their sockets by the socket programs alone.
    pub conn_layout: Option<&'static str>,
    /// Whether the entries check the conn is a `*net.TCPConn` (the itab is
    /// known from the symbol table).
    pub tcp_itab: bool,
    /// Why the offsets are unknown.
    pub conn_error: Option<goconn::GoConnError>,
}

/// How often each library function (read or write) was probed after the
/// record layer (reads), on the internal function, and on the symbols'
/// entries (the fallback).
static SSL_PLACEMENTS: [std::sync::atomic::AtomicU64; 3] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];

/// (placement, count) for every placement kind, for the metrics.
pub fn ssl_placements() -> [(&'static str, u64); 3] {
    placement::Placement::ALL.map(|p| {
        (
            p.as_str(),
            SSL_PLACEMENTS[p as usize].load(std::sync::atomic::Ordering::Relaxed),
        )
    })
}

/// What [`Probes::attach_ssl`] did to one file.
#[derive(Clone, Debug)]
pub struct SslAttach {
    pub attached: usize,
    pub planned: usize,
    /// Probes on instructions the kernel emulates (no single-step).
    pub emulated: usize,
    pub read: placement::Placement,
    pub write: placement::Placement,
    pub library: &'static str,
    /// File offsets of the write probes.
    pub write_offsets: Vec<u64>,
}

/// Writes the include/exclude lists into the kernel's filter maps.
fn fill_filters(ebpf: &mut Ebpf, f: &Filters) -> Result<(), ProbeError> {
    use tokenscope_common::filter::{EXCLUDE, INCLUDE};
    let map_err = |name: &'static str| move |source| ProbeError::Map { name, source };
    {
        let mut comms: HashMap<_, [u8; 16], u8> = HashMap::try_from(
            ebpf.map_mut(FILTER_COMM_MAP)
                .ok_or(ProbeError::MissingMap("FILTER_COMM"))?,
        )
        .map_err(map_err("FILTER_COMM"))?;
        for (names, value) in [(&f.include_comms, INCLUDE), (&f.exclude_comms, EXCLUDE)] {
            for name in names {
                comms
                    .insert(comm_key(name), value, 0)
                    .map_err(map_err("FILTER_COMM"))?;
            }
        }
    }
    {
        let mut ports: HashMap<_, u16, u8> = HashMap::try_from(
            ebpf.map_mut(FILTER_PORT_MAP)
                .ok_or(ProbeError::MissingMap("FILTER_PORT"))?,
        )
        .map_err(map_err("FILTER_PORT"))?;
        for (list, value) in [(&f.include_ports, INCLUDE), (&f.exclude_ports, EXCLUDE)] {
            for port in list {
                ports
                    .insert(*port, value, 0)
                    .map_err(map_err("FILTER_PORT"))?;
            }
        }
    }
    let mut cgroups: HashMap<_, u64, u8> = HashMap::try_from(
        ebpf.map_mut(FILTER_CGROUP_MAP)
            .ok_or(ProbeError::MissingMap("FILTER_CGROUP"))?,
    )
    .map_err(map_err("FILTER_CGROUP"))?;
    for (list, value) in [(&f.include_cgroups, INCLUDE), (&f.exclude_cgroups, EXCLUDE)] {
        for id in list {
            cgroups
                .insert(*id, value, 0)
                .map_err(map_err("FILTER_CGROUP"))?;
        }
    }
    Ok(())
}

fn prog_err(
    name: &'static str,
    what: &'static str,
    source: aya::programs::ProgramError,
) -> ProbeError {
    ProbeError::Program { name, what, source }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))?;
    prog.try_into()
        .map_err(|source| prog_err(name, "type check", source))
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str, label: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::MissingMap(label))?;
    T::try_from(map).map_err(|source| ProbeError::Map {
        name: label,
        source,
    })
}
