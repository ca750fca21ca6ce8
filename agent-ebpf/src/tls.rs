//! TLS plaintext from OpenSSL-family `SSL_write`/`SSL_read` and their `_ex`
//! variants: the entry saves the buffer, the return probe copies what moved.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tokenscope_common::{
    Counter, SslCall, Tuple, DIR_EGRESS, DIR_INGRESS, FLAG_TRUNCATED, SOURCE_TLS,
};

use crate::{
    emit::{admit, begin, direct, lost_from, starts_with_post},
    maps::{agent_tgid, count, CONN_STATE, SSL_ACTIVE},
};

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, DIR_EGRESS, false);
    0
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, DIR_INGRESS, false);
    0
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, DIR_EGRESS, true);
    0
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, DIR_INGRESS, true);
    0
}

#[uretprobe]
pub fn ssl_write_ret(ctx: RetProbeContext) -> u32 {
    leave(&ctx, false);
    0
}

#[uretprobe]
pub fn ssl_read_ret(ctx: RetProbeContext) -> u32 {
    leave(&ctx, false);
    0
}

#[uretprobe]
pub fn ssl_write_ex_ret(ctx: RetProbeContext) -> u32 {
    leave(&ctx, true);
    0
}

#[uretprobe]
pub fn ssl_read_ex_ret(ctx: RetProbeContext) -> u32 {
    leave(&ctx, true);
    0
}

#[inline(always)]
fn enter(ctx: &ProbeContext, dir: u8, ex: bool) {
    count(Counter::SslCalls, 1);
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == agent_tgid() {
        return;
    }
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    let len_ptr: u64 = if ex { ctx.arg(3).unwrap_or(0) } else { 0 };
    let call = SslCall {
        ssl,
        buf,
        len_ptr,
        dir,
        _pad: [0; 7],
    };
    let _ = SSL_ACTIVE.insert(&pid_tgid, &call, 0);
}

#[inline(always)]
fn leave(ctx: &RetProbeContext, ex: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = (unsafe { SSL_ACTIVE.get(&pid_tgid) }).copied() else {
        if (pid_tgid >> 32) as u32 != agent_tgid() {
            count(Counter::SslNoEntry, 1);
        }
        return;
    };
    let _ = SSL_ACTIVE.remove(&pid_tgid);
    let ret: i64 = ctx.ret();
    let moved: u64 = if ex {
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
    let opens_with_post = state.is_none() && starts_with_post(call.buf);
    let Some(limit) = admit(call.ssl, call_len, state, opens_with_post) else {
        return;
    };
    if !begin(call.ssl, call.dir, SOURCE_TLS, call_len, |t| {
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
