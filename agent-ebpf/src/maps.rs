//! Maps and load-time globals shared by all programs.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tokenscope_common::{
    ConnState, Counter, Offsets, PendingWrite, SslCall, WriteGuard, COUNTER_COUNT, SCRATCH_SIZE,
};

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

#[map]
pub static CONN_STATE: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(65536, 0);

/// SSL reads (and Go TLS calls) in flight, by pid_tgid. Per-thread maps are
/// plain hash maps, cheaper than LRU ones: a thread has one entry at most,
/// and its exit removes it (`process.rs`).
#[map]
pub static SSL_ACTIVE: HashMap<u64, SslCall> = HashMap::with_max_entries(32768, 0);

#[map]
pub static TLS_LINKED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// The SSL write each thread entered last, by pid_tgid (see `tls.rs`).
#[map]
pub static PENDING_WRITE: HashMap<u64, PendingWrite> = HashMap::with_max_entries(32768, 0);

/// Per SSL object, what its next write must not take again (see `tls.rs`).
#[map]
pub static WRITE_GUARD: LruHashMap<u64, WriteGuard> = LruHashMap::with_max_entries(16384, 0);

/// Go `crypto/tls` calls in flight by `[tgid, g]`; see `gotls.rs`.
#[map]
pub static GO_CALLS: LruHashMap<[u64; 2], SslCall> = LruHashMap::with_max_entries(16384, 0);

#[map]
pub static SCRATCH: PerCpuArray<[u8; SCRATCH_SIZE]> = PerCpuArray::with_max_entries(1, 0);

/// Bytes an iovec walk may still copy (see `emit::iovec_step`).
#[map]
pub static IOV_LEFT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static FILTER_COMM: HashMap<[u8; 16], u8> = HashMap::with_max_entries(256, 0);

#[map]
pub static FILTER_PORT: HashMap<u16, u8> = HashMap::with_max_entries(256, 0);

#[map]
pub static FILTER_CGROUP: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);

#[unsafe(no_mangle)]
static AGENT_TGID: u32 = 0;
#[unsafe(no_mangle)]
static FILTERS: u32 = 0;
#[unsafe(no_mangle)]
static FIRST_WINDOW: u64 = 1024;
#[unsafe(no_mangle)]
static CALL_CAP: u32 = 65536;
#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets {
    sk_family: 0,
    sk_dport: 0,
    sk_num: 0,
    sk_daddr: 0,
    sk_rcv_saddr: 0,
    sk_v6_daddr: 0,
    sk_v6_rcv_saddr: 0,
    sk_type: 0,
    task_real_parent: 0,
    task_tgid: 0,
    sk_state: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_inode: 0,
    inode_mode: 0,
    file_private_data: 0,
    socket_file: 0,
    socket_sk: 0,
    task_mm: 0,
    mm_xol_area: 0,
    xol_vaddr: 0,
    _pad: 0,
};

// Globals are patched by the loader; volatile reads stop the compiler from
// folding in the defaults above.
#[inline(always)]
pub fn agent_tgid() -> u32 {
    unsafe { core::ptr::read_volatile(&AGENT_TGID) }
}
#[inline(always)]
pub fn filters() -> u32 {
    unsafe { core::ptr::read_volatile(&FILTERS) }
}
#[inline(always)]
pub fn first_window() -> u64 {
    unsafe { core::ptr::read_volatile(&FIRST_WINDOW) }
}
#[inline(always)]
pub fn call_cap() -> u32 {
    unsafe { core::ptr::read_volatile(&CALL_CAP) }
}
#[inline(always)]
pub fn offsets() -> Offsets {
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[inline(always)]
pub fn count(counter: Counter, n: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        unsafe { *slot += n };
    }
}
