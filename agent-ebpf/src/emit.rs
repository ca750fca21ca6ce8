//! Building data events: a header in per-CPU scratch, then each chunk of
//! user memory copied behind it and sent with `bpf_ringbuf_output`.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_ktime_get_ns, bpf_probe_read_user, generated,
};
use tokenscope_common::{
    ConnState, Counter, DataHeader, EventKind, Tuple, CHUNK, DATA_HEADER_SIZE, MAX_CHUNKS,
    MAX_IOVECS, VERDICT_MUTED, VERDICT_UNKNOWN,
};

use crate::maps::{call_cap, count, first_window, CONN_STATE, EVENTS, SCRATCH};

/// Scratch buffer holding a prepared header.
pub struct Event {
    buf: *mut u8,
}

impl Event {
    #[inline(always)]
    pub fn begin(conn_id: u64, dir: u8, source: u8, call_len: u32, tuple: &Tuple) -> Option<Event> {
        let buf = SCRATCH.get_ptr_mut(0)? as *mut u8;
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
            (*header).tuple = *tuple;
        }
        Some(Event { buf })
    }

    /// Sends `n` (≤ CHUNK) bytes read from user address `src` as the payload at `offset`.
    #[inline(always)]
    fn chunk(&self, src: u64, n: u32, offset: u32, flags: u8) -> bool {
        let mut n = n;
        if n > CHUNK as u32 {
            n = CHUNK as u32;
        }
        let header = self.buf as *mut DataHeader;
        unsafe {
            let dst = self.buf.add(DATA_HEADER_SIZE);
            if n > 0 && generated::bpf_probe_read_user(dst as *mut _, n, src as *const _) != 0 {
                count(Counter::ReadFailed, 1);
                return false;
            }
            (*header).len = n;
            (*header).offset = offset;
            (*header).flags = flags;
            let size = DATA_HEADER_SIZE + n as usize;
            let bytes = core::slice::from_raw_parts(self.buf as *const u8, size);
            if EVENTS.output::<[u8]>(bytes, 0).is_err() {
                count(Counter::RingbufFull, 1);
                return false;
            }
        }
        true
    }

    /// Tells user space the rest of the call, from `offset`, was not captured.
    #[inline(always)]
    pub fn lost_from(&self, offset: u32, flags: u8) {
        let _ = self.chunk(0, 0, offset, flags);
    }

    /// Copies up to `limit` bytes from one user buffer; returns bytes sent.
    #[inline(always)]
    pub fn direct(&self, src: u64, limit: u32) -> u32 {
        let mut sent: u32 = 0;
        for _ in 0..MAX_CHUNKS {
            if sent >= limit {
                break;
            }
            let n = limit - sent;
            let n = if n > CHUNK as u32 { CHUNK as u32 } else { n };
            if !self.chunk(src + sent as u64, n, sent, 0) {
                break;
            }
            sent += n;
        }
        sent
    }

    /// Copies up to `limit` bytes from an iovec array; returns bytes sent.
    #[inline(always)]
    pub fn iovec(&self, iov: u64, iovcnt: u64, limit: u32) -> u32 {
        let mut sent: u32 = 0;
        for i in 0..MAX_IOVECS {
            if i as u64 >= iovcnt || sent >= limit {
                break;
            }
            let entry = iov + i as u64 * 16;
            let Ok(base) = (unsafe { bpf_probe_read_user(entry as *const u64) }) else {
                count(Counter::ReadFailed, 1);
                break;
            };
            let Ok(len) = (unsafe { bpf_probe_read_user((entry + 8) as *const u64) }) else {
                count(Counter::ReadFailed, 1);
                break;
            };
            let mut done: u64 = 0;
            for _ in 0..MAX_CHUNKS {
                if done >= len || sent >= limit {
                    break;
                }
                let mut n = len - done;
                if n > CHUNK as u64 {
                    n = CHUNK as u64;
                }
                let room = (limit - sent) as u64;
                if n > room {
                    n = room;
                }
                if !self.chunk(base + done, n as u32, sent, 0) {
                    return sent;
                }
                done += n;
                sent += n as u32;
            }
            if done < len {
                // This entry was cut: later entries would not be contiguous.
                break;
            }
        }
        sent
    }
}

/// Applies the connection's verdict and first window to a call of `call_len`
/// bytes; returns how many bytes to capture, or `None` to capture nothing.
#[inline(always)]
pub fn admit(conn_id: u64, call_len: u32) -> Option<u32> {
    let mut limit = call_len;
    match CONN_STATE.get_ptr_mut(&conn_id) {
        Some(state) => unsafe {
            if (*state).verdict == VERDICT_MUTED {
                count(Counter::Muted, 1);
                return None;
            }
            if (*state).verdict == VERDICT_UNKNOWN {
                let window = first_window();
                let used = (*state).window_used;
                if used >= window {
                    count(Counter::WindowExceeded, 1);
                    return None;
                }
                let room = window - used;
                if (limit as u64) > room {
                    limit = room as u32;
                }
                (*state).window_used = used + limit as u64;
            }
        },
        None => {
            let window = first_window();
            if (limit as u64) > window {
                limit = window as u32;
            }
            let state = ConnState {
                window_used: limit as u64,
                verdict: VERDICT_UNKNOWN,
                _pad: [0; 7],
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
