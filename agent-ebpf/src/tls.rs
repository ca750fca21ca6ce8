//! TLS plaintext from OpenSSL-family `SSL_write`/`SSL_read` and their `_ex`
//! variants, or the internal function both variants call.
//!
//! A probe hit costs a trap, and a return probe a second one. A write's
//! buffer and length are known at entry, so writes are taken there, with
//! one trap. A read learns its byte count only on return: where the
//! library's code allows it, one probe right after the record layer
//! returned inside the read sees buffer and count together
//! (`ssl_read_done`); elsewhere the entry saves the buffer and the return
//! probe copies what was read.
//!
//! A write taken at entry is taken before the library has tried it. Two
//! outcomes send the same bytes through a second call, and the second call
//! is skipped (`ssl_write_repeats`):
//! - the socket was full (EAGAIN): the library returns an error and the
//!   caller must call again with the same length. The socket program sees
//!   the failed write of a TLS record made inside the call and marks the
//!   SSL object's [`WriteGuard`];
//! - a partial write (`SSL_MODE_ENABLE_PARTIAL_WRITE`) returns after one
//!   record, and the caller goes on from inside the same buffer: a write
//!   that ends where the last one ended, from inside it, is skipped.
//!
//! A write that fails for good (a reset) was offered all the same; the
//! connection's end tells user space what became of it.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use tokenscope_common::{
    ssl_cookie, tls_conn_id, Counter, PendingWrite, SslCall, Tuple, WriteGuard, DIR_EGRESS,
    DIR_INGRESS, FLAG_TRUNCATED,
};

use crate::{
    emit::{admit, begin, direct, lost_from, opens_request},
    filter::process_allowed,
    maps::{agent_tgid, count, filters, CONN_STATE, PENDING_WRITE, SSL_ACTIVE, WRITE_GUARD},
};

/// TLS records carry at most 16 KiB of plaintext: only a longer write can
/// be partial.
const MAX_RECORD: u64 = 16 * 1024;

/// Entry of `SSL_read`/`SSL_write`, their `_ex` variants, or the internal
/// function both call; the attach cookie tells which.
#[uprobe]
pub fn ssl_enter(ctx: ProbeContext) -> u32 {
    let cookie = unsafe { aya_ebpf::helpers::generated::bpf_get_attach_cookie(ctx.as_ptr()) };
    enter(&ctx, cookie);
    0
}

/// Return of a read (writes have none).
#[uretprobe]
pub fn ssl_leave(ctx: RetProbeContext) -> u32 {
    leave(&ctx);
    0
}

/// A read with one trap: inside the library's read function, right after
/// its record layer returned (`ssl3_read_bytes` from `ssl3_read`), where the
/// SSL object, the buffer and the `size_t *` byte count still sit in
/// callee-saved registers; the cookie names them ([`ssl_cookie::Site`]).
#[uprobe]
pub fn ssl_read_done(ctx: ProbeContext) -> u32 {
    let cookie = unsafe { aya_ebpf::helpers::generated::bpf_get_attach_cookie(ctx.as_ptr()) };
    read_done(&ctx, cookie);
    0
}

#[inline(always)]
fn enter(ctx: &ProbeContext, cookie: u64) {
    count(Counter::SslCalls, 1);
    let Some(pid_tgid) = traced_thread() else {
        return;
    };
    let (dir, len_arg, source) = ssl_cookie::decode(cookie);
    let ssl = tls_conn_id(ctx.arg(0).unwrap_or(0), (pid_tgid >> 32) as u32);
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    if dir == DIR_EGRESS {
        let num: u64 = ctx.arg(2).unwrap_or(0);
        // `SSL_write` takes an int: the register's upper half is undefined.
        let num = if len_arg == ssl_cookie::LEN_RETURNED {
            let n = num as i32;
            if n <= 0 {
                return;
            }
            n as u64
        } else {
            num
        };
        let sp = unsafe { (*ctx.regs).rsp };
        let ret_addr = unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0);
        write_entered(pid_tgid, ssl, buf, num, sp, ret_addr, source);
        return;
    }
    // Both registers are read before choosing: a load at a computed
    // context offset is refused by the verifier.
    let arg3: u64 = ctx.arg(3).unwrap_or(0);
    let arg4: u64 = ctx.arg(4).unwrap_or(0);
    let len_ptr: u64 = match len_arg {
        3 => arg3,
        4 => arg4,
        _ => 0,
    };
    let call = SslCall {
        ssl,
        buf,
        len_ptr,
        dir,
        source,
        _pad: [0; 6],
    };
    let _ = SSL_ACTIVE.insert(&pid_tgid, &call, 0);
}

/// The calling thread's pid_tgid, unless it is the agent's or its process
/// is filtered out (counted).
#[inline(always)]
pub fn traced_thread() -> Option<u64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == agent_tgid() {
        return None;
    }
    let flags = filters();
    if flags != 0 && !process_allowed(flags) {
        count(Counter::Filtered, 1);
        return None;
    }
    Some(pid_tgid)
}

#[inline(always)]
fn write_entered(pid_tgid: u64, ssl: u64, buf: u64, num: u64, sp: u64, ret_addr: u64, source: u8) {
    let pending = PendingWrite {
        ssl,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        num,
        sp,
        ret_addr,
        linked: 0,
        _pad: [0; 7],
    };
    // The thread's entry is rewritten in place: an update would take a
    // fresh element and free the old one on every write.
    match PENDING_WRITE.get_ptr_mut(&pid_tgid) {
        Some(slot) => unsafe { *slot = pending },
        None => {
            let _ = PENDING_WRITE.insert(&pid_tgid, &pending, 0);
        }
    }
    if num == 0 {
        return;
    }
    let end = buf.wrapping_add(num);
    if let Some(guard) = WRITE_GUARD.get_ptr_mut(&ssl) {
        let guard = unsafe { &mut *guard };
        if guard.retry != 0 && guard.num == num {
            // The retry of a write that found the socket full (the buffer
            // may have moved: `SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER`).
            guard.retry = 0;
            guard.buf = buf;
            guard.end = end;
            count(Counter::SslWriteRepeats, 1);
            return;
        }
        if buf > guard.buf && buf < guard.end && end == guard.end {
            // The rest of a partial write.
            count(Counter::SslWriteRepeats, 1);
            return;
        }
        if num > MAX_RECORD {
            guard.buf = buf;
            guard.end = end;
            guard.num = num;
            guard.retry = 0;
        } else {
            let _ = WRITE_GUARD.remove(&ssl);
        }
    } else if num > MAX_RECORD {
        let guard = WriteGuard {
            buf,
            end,
            num,
            retry: 0,
            _pad: [0; 7],
        };
        let _ = WRITE_GUARD.insert(&ssl, &guard, 0);
    }
    capture(ssl, buf, num, DIR_EGRESS, source);
}

#[inline(always)]
fn read_done(ctx: &ProbeContext, cookie: u64) {
    count(Counter::SslCalls, 1);
    let regs = unsafe { &*ctx.regs };
    // The record layer returns 1 with the byte count stored, else nothing was read.
    if regs.rax as i32 != 1 {
        return;
    }
    let Some(pid_tgid) = traced_thread() else {
        return;
    };
    let saved = [regs.rbx, regs.rbp, regs.r12, regs.r13, regs.r14, regs.r15];
    let pick = |index: u8| -> u64 {
        match index {
            0..=5 => saved[index as usize],
            _ => 0,
        }
    };
    let site = ssl_cookie::decode_site(cookie);
    // `SSL_peek` shares the function: its bytes come again in a read.
    if site.peek != ssl_cookie::NO_REGISTER && pick(site.peek) as u32 != 0 {
        return;
    }
    let done = pick(site.done);
    if done == 0 {
        return;
    }
    let Ok(moved) = (unsafe { bpf_probe_read_user(done as *const u64) }) else {
        count(Counter::ReadFailed, 1);
        return;
    };
    let (_, _, source) = ssl_cookie::decode(cookie);
    let ssl = tls_conn_id(pick(site.ssl), (pid_tgid >> 32) as u32);
    capture(ssl, pick(site.buf), moved, DIR_INGRESS, source);
}

#[inline(always)]
fn leave(ctx: &RetProbeContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = (unsafe { SSL_ACTIVE.get(&pid_tgid) }).copied() else {
        if (pid_tgid >> 32) as u32 != agent_tgid() {
            count(Counter::SslNoEntry, 1);
        }
        return;
    };
    let _ = SSL_ACTIVE.remove(&pid_tgid);
    let ret: i64 = ctx.ret();
    let moved: u64 = if call.len_ptr != 0 {
        if ret as i32 != 1 {
            return;
        }
        unsafe { bpf_probe_read_user(call.len_ptr as *const u64) }.unwrap_or(0)
    } else {
        let ret = ret as i32;
        if ret <= 0 {
            return;
        }
        ret as u64
    };
    capture(call.ssl, call.buf, moved, call.dir, call.source);
}

#[inline(always)]
fn capture(ssl: u64, buf: u64, len: u64, dir: u8, source: u8) {
    if len == 0 {
        return;
    }
    let call_len = if len > u32::MAX as u64 {
        u32::MAX
    } else {
        len as u32
    };
    let state = CONN_STATE.get_ptr_mut(&ssl);
    let opens_request = state.is_none() && opens_request(buf);
    let Some(limit) = admit(ssl, call_len, state, opens_request) else {
        return;
    };
    if !begin(ssl, dir, source, call_len, |t| *t = Tuple::default()) {
        return;
    }
    let sent = direct(buf, limit);
    if sent < call_len {
        count(Counter::Truncated, 1);
        lost_from(sent, FLAG_TRUNCATED);
    }
}
