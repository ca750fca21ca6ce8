//! Building data events: a header in per-CPU scratch, then each chunk of
//! user memory copied behind it and sent with `bpf_ringbuf_output`.
//!
//! Chunks are produced inside `bpf_loop` callbacks: the verifier checks a
//! callback once, where an unrolled or bounded loop is checked per iteration
//! and exceeds its instruction budget.

use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    bpf_probe_read_user, generated,
};
use tokenscope_common::{
    ConnState, Counter, DataHeader, EventKind, Tuple, CHUNK, DATA_HEADER_SIZE, MAX_CHUNKS,
    MAX_IOVECS, VERDICT_CAPTURE, VERDICT_CIPHER, VERDICT_MUTED, VERDICT_UNKNOWN,
};

use crate::maps::{call_cap, count, first_window, CONN_STATE, EVENTS, IOV_LEFT, SCRATCH};

/// Starts an event in scratch; `tuple` fills the header's tuple in place.
#[inline(always)]
pub fn begin(
    conn_id: u64,
    dir: u8,
    source: u8,
    call_len: u32,
    tuple: impl FnOnce(&mut Tuple),
) -> bool {
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let header = buf as *mut DataHeader;
    let pid_tgid = bpf_get_current_pid_tgid();
    unsafe {
        (*header).kind = EventKind::Data as u8;
        (*header).dir = dir;
        (*header).source = source;
        (*header).flags = 0;
        (*header).pid = (pid_tgid >> 32) as u32;
        (*header).tid = pid_tgid as u32;
        (*header).len = 0;
        (*header).conn_id = conn_id;
        (*header).ts_ns = bpf_ktime_get_ns();
        (*header).cgroup_id = bpf_get_current_cgroup_id();
        (*header).call_len = call_len;
        (*header).offset = 0;
        (*header).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        tuple(&mut (*header).tuple);
    }
    true
}

/// Sends `n` (≤ CHUNK) bytes read from user address `src` as the payload at `offset`.
#[inline(always)]
fn chunk(src: u64, n: u32, offset: u32, flags: u8) -> bool {
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let buf = buf as *mut u8;
    let mut n = n;
    if n > CHUNK as u32 {
        n = CHUNK as u32;
    }
    let header = buf as *mut DataHeader;
    unsafe {
        let dst = buf.add(DATA_HEADER_SIZE);
        if n > 0 && generated::bpf_probe_read_user(dst as *mut _, n, src as *const _) != 0 {
            count(Counter::ReadFailed, 1);
            return false;
        }
        (*header).len = n;
        (*header).offset = offset;
        (*header).flags = flags;
        let size = DATA_HEADER_SIZE + n as usize;
        let bytes = core::slice::from_raw_parts(buf as *const u8, size);
        if EVENTS.output::<[u8]>(bytes, 0).is_err() {
            count(Counter::RingbufFull, 1);
            return false;
        }
    }
    true
}

/// Tells user space the rest of the call, from `offset`, was not captured.
#[inline(always)]
pub fn lost_from(offset: u32, flags: u8) {
    let _ = chunk(0, 0, offset, flags);
}

// The verifier checks a `bpf_loop` callback until its states converge. So the
// callbacks keep no counter that grows by a known step: the chunk offset comes
// from the loop index (an unknown scalar to the verifier), and in the iovec
// walk the running offset only ever meets a branch, never a size.
#[repr(C)]
struct Walk {
    src: u64,
    iov: u64,
    iovcnt: u64,
    /// Running payload offset (iovec walk).
    offset: u64,
    limit: u64,
    /// Offset at which a chunk failed, or u64::MAX.
    failed_at: u64,
}

extern "C" fn direct_step(index: u64, ctx: *mut c_void) -> i64 {
    let walk = unsafe { &mut *(ctx as *mut Walk) };
    let offset = index * CHUNK as u64;
    if offset >= walk.limit {
        return 1;
    }
    let mut n = walk.limit - offset;
    if n > CHUNK as u64 {
        n = CHUNK as u64;
    }
    if !chunk(walk.src + offset, n as u32, offset as u32, 0) {
        walk.failed_at = offset;
        return 1;
    }
    0
}

extern "C" fn iovec_step(index: u64, ctx: *mut c_void) -> i64 {
    let walk = unsafe { &mut *(ctx as *mut Walk) };
    if index >= walk.iovcnt || walk.offset >= walk.limit {
        return 1;
    }
    let entry = walk.iov + index * 16;
    let (Ok(base), Ok(len)) = (
        unsafe { bpf_probe_read_user(entry as *const u64) },
        unsafe { bpf_probe_read_user((entry + 8) as *const u64) },
    ) else {
        count(Counter::ReadFailed, 1);
        walk.failed_at = walk.offset;
        return 1;
    };
    // Never past what the call moved: a recvmsg fills its buffers only
    // partly. The bytes left live in a map, not in `walk`: a size computed
    // from the running offset would make the offset precise to the verifier,
    // and the callback's states would never converge (E2BIG). A value loaded
    // from a map is an unknown scalar, so the bound stops there.
    let Some(left) = IOV_LEFT.get_ptr_mut(0) else {
        return 1;
    };
    let remaining = unsafe { *left };
    // One chunk per entry; a longer entry is cut and the walk ends there.
    let mut n = len;
    if n > remaining {
        n = remaining;
    }
    if n > CHUNK as u64 {
        n = CHUNK as u64;
    }
    if n > 0 && !chunk(base, n as u32, walk.offset as u32, 0) {
        walk.failed_at = walk.offset;
        return 1;
    }
    unsafe { *left = remaining - n };
    walk.offset += n;
    if n < len {
        return 1;
    }
    0
}

/// Copies up to `limit` bytes from one user buffer; returns bytes sent.
#[inline(always)]
pub fn direct(src: u64, limit: u32) -> u32 {
    let mut walk = Walk {
        src,
        iov: 0,
        iovcnt: 0,
        offset: 0,
        limit: limit as u64,
        failed_at: u64::MAX,
    };
    unsafe {
        generated::bpf_loop(
            MAX_CHUNKS,
            direct_step as *mut c_void,
            &mut walk as *mut Walk as *mut c_void,
            0,
        );
    }
    let most = MAX_CHUNKS as u64 * CHUNK as u64;
    let sent = if walk.failed_at != u64::MAX {
        walk.failed_at
    } else if walk.limit > most {
        most
    } else {
        walk.limit
    };
    sent as u32
}

/// Copies from an iovec array, one chunk per entry, up to `limit` bytes;
/// returns bytes sent.
#[inline(always)]
pub fn iovec(iov: u64, iovcnt: u64, limit: u32) -> u32 {
    let mut walk = Walk {
        src: 0,
        iov,
        iovcnt: if iovcnt > MAX_IOVECS as u64 {
            MAX_IOVECS as u64
        } else {
            iovcnt
        },
        offset: 0,
        limit: limit as u64,
        failed_at: u64::MAX,
    };
    match IOV_LEFT.get_ptr_mut(0) {
        Some(left) => unsafe { *left = limit as u64 },
        None => return 0,
    }
    unsafe {
        generated::bpf_loop(
            MAX_IOVECS,
            iovec_step as *mut c_void,
            &mut walk as *mut Walk as *mut c_void,
            0,
        );
    }
    let sent = if walk.failed_at != u64::MAX {
        walk.failed_at
    } else {
        walk.offset
    };
    sent as u32
}

/// Whether the user buffer at `src` starts with `POST ` or the HTTP/2
/// preface (`PRI *`). A connection whose first call does is taken in full
/// from the start: LLM requests are POSTs, often bigger than the first window,
/// and an HTTP/2 connection's header compression cannot be joined midway.
/// User space mutes the ones that turn out not to carry LLM calls.
#[inline(always)]
pub fn opens_request(src: u64) -> bool {
    if src == 0 {
        return false;
    }
    match unsafe { bpf_probe_read_user(src as *const [u8; 5]) } {
        Ok(head) => head == *b"POST " || head == *b"PRI *",
        Err(_) => false,
    }
}

/// Applies the connection's verdict and first window to a call of `call_len`
/// bytes; returns how many bytes to capture, or `None` to capture nothing.
/// An unclassified connection costs at most its window plus one call.
/// `state` is the connection's entry as the caller looked it up (one lookup
/// per call); `opens_request` is only looked at for a new connection.
#[inline(always)]
pub fn admit(
    conn_id: u64,
    call_len: u32,
    state: Option<*mut ConnState>,
    opens_request: bool,
) -> Option<u32> {
    let mut limit = call_len;
    match state {
        Some(state) => unsafe {
            if (*state).verdict == VERDICT_MUTED || (*state).verdict == VERDICT_CIPHER {
                count(Counter::Muted, 1);
                return None;
            }
            if (*state).verdict == VERDICT_UNKNOWN {
                // A call that starts inside the window is taken whole (up to the
                // call cap): a request larger than the window must not lose its
                // body before user space has seen its head.
                let used = (*state).window_used;
                if used >= first_window() {
                    count(Counter::WindowExceeded, 1);
                    return None;
                }
                (*state).window_used = used + limit as u64;
            }
        },
        None => {
            let state = ConnState {
                window_used: limit as u64,
                verdict: if opens_request {
                    VERDICT_CAPTURE
                } else {
                    VERDICT_UNKNOWN
                },
                sent: 0,
                received: 0,
                born_ns: unsafe { bpf_ktime_get_ns() },
                linked: 0,
                _pad: [0; 6],
            };
            let _ = CONN_STATE.insert(&conn_id, &state, 0);
        }
    }
    let cap = call_cap();
    if limit > cap {
        limit = cap;
    }
    Some(limit)
}
