//! Loading and attaching the eBPF programs. The only module that touches aya.

mod btf;
pub mod placement;
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
    names, ConnState, CONN_STATE_MAP, COUNTERS_MAP, COUNTER_COUNT, COUNTER_NAMES, EVENTS_MAP,
    GLOBAL_AGENT_TGID, GLOBAL_CALL_CAP, GLOBAL_FIRST_WINDOW, GLOBAL_OFFSETS, VERDICT_CAPTURE,
    VERDICT_CIPHER, VERDICT_MUTED,
};

pub use btf::{kernel_offsets, BtfError};

use crate::streams::Verdict;

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
}

/// Loaded and attached programs. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    verdicts: HashMap<MapData, u64, ConnState>,
    counters: PerCpuArray<MapData, u64>,
    ssl_loaded: bool,
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
            .load(OBJECT)
            .map_err(ProbeError::Load)?;
        tracing::debug!(
            event = "object_loaded",
            ms = started.elapsed().as_millis() as u64
        );

        for name in [names::EXEC, names::EXIT] {
            let prog: &mut TracePoint = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| prog_err(name, "load", source))?;
            prog.attach("sched", name)
                .map_err(|source| prog_err(name, "attach", source))?;
        }
        if settings.capture_sockets || settings.capture_tls {
            // The TLS link (SSL object -> socket) is made in the socket programs.
            for name in [names::SOCK_SEND, names::SOCK_RECV, names::SOCK_STATE] {
                let prog: &mut BtfTracePoint = program(&mut ebpf, name)?;
                prog.load(name, &btf)
                    .map_err(|source| prog_err(name, "load", source))?;
                prog.attach()
                    .map_err(|source| prog_err(name, "attach", source))?;
                tracing::debug!(
                    event = "attached",
                    program = name,
                    ms = started.elapsed().as_millis() as u64
                );
            }
        }
        let verdicts = take_map(&mut ebpf, CONN_STATE_MAP, "CONN_STATE")?;
        let counters = take_map(&mut ebpf, COUNTERS_MAP, "COUNTERS")?;
        Ok(Probes {
            ebpf,
            verdicts,
            counters,
            ssl_loaded: false,
        })
    }

    /// The ring buffer all events arrive on; call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        take_map(&mut self.ebpf, EVENTS_MAP, "EVENTS")
    }

    /// Records user space's verdict on a connection (socket or SSL object).
    pub fn set_verdict(&mut self, conn_id: u64, verdict: Verdict) {
        let state = ConnState {
            window_used: 0,
            sent: 0,
            received: 0,
            verdict: match verdict {
                Verdict::Capture => VERDICT_CAPTURE,
                Verdict::Mute => VERDICT_MUTED,
                Verdict::Cipher => VERDICT_CIPHER,
            },
            _pad: [0; 7],
        };
        // Only while the kernel still tracks the connection (BPF_EXIST): a
        // verdict landing after the close would otherwise stick to the next
        // socket allocated at the same address. A failed update only costs
        // captured bytes; the connection is still parsed.
        const BPF_EXIST: u64 = 2;
        let _ = self.verdicts.insert(conn_id, state, BPF_EXIST);
    }

    /// Forgets a connection's verdict (the id may be reused).
    pub fn forget(&mut self, conn_id: u64) {
        let _ = self.verdicts.remove(&conn_id);
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
            for name in [names::SSL_ENTER, names::SSL_LEAVE] {
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
            let name = if a.ret {
                names::SSL_LEAVE
            } else {
                names::SSL_ENTER
            };
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
                    ret = a.ret,
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
        })
    }
}

/// How often each library function (read or write) was probed on the
/// internal function, and how often on the symbols' entries (the fallback).
static SSL_PLACEMENTS: [std::sync::atomic::AtomicU64; 2] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];

/// (placement, count) for every placement kind, for the metrics.
pub fn ssl_placements() -> [(&'static str, u64); 2] {
    use placement::Placement;
    [Placement::Internal, Placement::Entry].map(|p| {
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
