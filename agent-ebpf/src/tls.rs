//! TLS plaintext from OpenSSL-family `SSL_write`/`SSL_read` and their `_ex`
//! variants: the entry saves the buffer, the return probe copies what moved.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use tokenscope_common::{
    ssl_cookie, Counter, PendingWrite, SslCall, Tuple, DIR_EGRESS, FLAG_TRUNCATED,
};

use crate::{
    emit::{admit, begin, direct, lost_from, opens_request},
    filter::process_allowed,
    maps::{agent_tgid, count, filters, CONN_STATE, PENDING_WRITE, SSL_ACTIVE},
};

/// Entry of `SSL_read`/`SSL_write`, their `_ex` variants, or the internal
/// function both call; the attach cookie tells which.
#[uprobe]
pub fn ssl_enter(ctx: ProbeContext) -> u32 {
    let cookie = unsafe { aya_ebpf::helpers::generated::bpf_get_attach_cookie(ctx.as_ptr()) };
    enter(&ctx, cookie);
    0
}

#[uretprobe]
pub fn ssl_leave(ctx: RetProbeContext) -> u32 {
    leave(&ctx);
    0
}

#[inline(always)]
fn enter(ctx: &ProbeContext, cookie: u64) {
    count(Counter::SslCalls, 1);
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == agent_tgid() {
        return;
    }
    let flags = filters();
    if flags != 0 && !process_allowed(flags) {
        count(Counter::Filtered, 1);
        return;
    }
    let (dir, len_arg, source) = ssl_cookie::decode(cookie);
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let buf: u64 = ctx.arg(1).unwrap_or(0);
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
        used_socket: 0,
        _pad: [0; 5],
    };
    let _ = SSL_ACTIVE.insert(&pid_tgid, &call, 0);
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
    if call.used_socket == 0 && call.dir == DIR_EGRESS {
        // A memory BIO: the library's caller writes the ciphertext to the
        // socket once the call returns, on this thread. That write links them.
        let pending = PendingWrite {
            ssl: call.ssl,
            ts_ns: unsafe { bpf_ktime_get_ns() },
        };
        let _ = PENDING_WRITE.insert(&pid_tgid, &pending, 0);
    }
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
    if moved == 0 {
        return;
    }
    let call_len = if moved > u32::MAX as u64 {
        u32::MAX
    } else {
        moved as u32
    };
    let state = CONN_STATE.get_ptr_mut(&call.ssl);
    let opens_request = state.is_none() && opens_request(call.buf);
    let Some(limit) = admit(call.ssl, call_len, state, opens_request) else {
        return;
    };
    if !begin(call.ssl, call.dir, call.source, call_len, |t| {
        *t = Tuple::default()
    }) {
        return;
    }
    let sent = direct(call.buf, limit);
    if sent < call_len {
        count(Counter::Truncated, 1);
        lost_from(sent, FLAG_TRUNCATED);
    }
}
