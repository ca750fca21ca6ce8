//! TLS plaintext from Go's `crypto/tls`, register ABI (Go 1.17+, amd64):
//! the receiver `*Conn` is in rax, the `[]byte` in rbx (pointer) and rcx
//! (length), the goroutine `g` in r14; results come back in rax (n) and
//! rbx/rcx (error).
//!
//! `(*Conn).Write` returns only once all of `b` is written or an error
//! occurred, so its plaintext is captured at entry: one probe gives the
//! buffer, the length and the request's start time (a failed write is
//! captured anyway; the connection's close tells user space what happened).
//! `(*Conn).Read` learns its byte count only on return, so the entry saves
//! the buffer under `[tgid, g]` and probes on each `RET` instruction copy
//! what was read. Never a uretprobe: it rewrites the return address on the
//! goroutine stack, which Go copies elsewhere when it grows.
//!
//! Both entries link the conn to its socket through the conn's fields when
//! the executable's layout is known (`gofd.rs`). They also put the call in
//! `SSL_ACTIVE` under the thread, with the goroutine, so the socket programs
//! mute the ciphertext and link the conn when the fields could not (they
//! check the goroutine: a blocked Read parks, and the thread runs other
//! goroutines meanwhile). The `RET` probes take it out.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::uprobe, programs::ProbeContext};
use tokenscope_common::{
    tls_conn_id, Counter, SslCall, Tuple, DIR_EGRESS, DIR_INGRESS, FLAG_TRUNCATED, SOURCE_TLS_GO,
};

use crate::{
    emit::{admit, begin, direct, lost_from, opens_request},
    gofd::link_by_fd,
    maps::{agent_tgid, count, CONN_STATE, GO_CALLS, SSL_ACTIVE},
    tls::traced_thread,
};

struct GoArgs {
    conn: u64,
    buf: u64,
    len: u64,
    g: u64,
}

#[inline(always)]
fn go_args(ctx: &ProbeContext) -> GoArgs {
    let regs = ctx.regs;
    unsafe {
        GoArgs {
            conn: (*regs).rax,
            buf: (*regs).rbx,
            len: (*regs).rcx,
            g: (*regs).r14,
        }
    }
}

#[uprobe]
pub fn go_tls_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, DIR_EGRESS);
    0
}

#[uprobe]
pub fn go_tls_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, DIR_INGRESS);
    0
}

#[uprobe]
pub fn go_tls_ret(ctx: ProbeContext) -> u32 {
    leave(&ctx);
    0
}

#[inline(always)]
fn enter(ctx: &ProbeContext, dir: u8) {
    count(Counter::SslCalls, 1);
    let Some(pid_tgid) = traced_thread() else {
        return;
    };
    let tgid = pid_tgid >> 32;
    let args = go_args(ctx);
    let conn = tls_conn_id(args.conn, tgid as u32);
    link_by_fd(ctx, args.conn, conn);
    let active = SslCall {
        ssl: conn,
        buf: args.buf,
        len_ptr: args.g,
        dir,
        source: SOURCE_TLS_GO,
        _pad: [0; 6],
    };
    let _ = SSL_ACTIVE.insert(&pid_tgid, &active, 0);
    let saved = SslCall {
        len_ptr: pid_tgid,
        ..active
    };
    let _ = GO_CALLS.insert(&[tgid, args.g], &saved, 0);
    if dir == DIR_EGRESS {
        capture(conn, args.buf, args.len, dir);
    }
}

#[inline(always)]
fn leave(ctx: &ProbeContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = pid_tgid >> 32;
    let regs = ctx.regs;
    let (g, n) = unsafe { ((*regs).r14, (*regs).rax) };
    let key = [tgid, g];
    let Some(call) = (unsafe { GO_CALLS.get(&key) }).copied() else {
        if tgid as u32 != agent_tgid() {
            count(Counter::SslNoEntry, 1);
        }
        return;
    };
    let _ = GO_CALLS.remove(&key);
    // The thread the call started on; only our own entry is taken out.
    let entry_thread = call.len_ptr;
    if let Some(active) = unsafe { SSL_ACTIVE.get(&entry_thread) } {
        if active.ssl == call.ssl && active.len_ptr == g {
            let _ = SSL_ACTIVE.remove(&entry_thread);
        }
    }
    if call.dir == DIR_INGRESS {
        capture(call.ssl, call.buf, n, call.dir);
    }
}

#[inline(always)]
fn capture(conn: u64, buf: u64, len: u64, dir: u8) {
    // n is a Go int: negative never happens, zero moves nothing.
    if len == 0 || len > i64::MAX as u64 {
        return;
    }
    let call_len = if len > u32::MAX as u64 {
        u32::MAX
    } else {
        len as u32
    };
    let state = CONN_STATE.get_ptr_mut(&conn);
    let opens_request = state.is_none() && opens_request(buf);
    let Some(limit) = admit(conn, call_len, state, opens_request) else {
        return;
    };
    if !begin(conn, dir, SOURCE_TLS_GO, call_len, |t| {
        *t = Tuple::default()
    }) {
        return;
    }
    let sent = direct(buf, limit);
    if sent < call_len {
        count(Counter::Truncated, 1);
        lost_from(sent, FLAG_TRUNCATED);
    }
}
