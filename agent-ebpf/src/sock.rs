//! Socket payloads from the `sock_send_length` / `sock_recv_length` BTF
//! tracepoints. They fire after each socket call with the byte count; the
//! user buffer is found from the syscall's saved registers.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user, generated, generated::bpf_task_pt_regs,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tokenscope_common::{
    ConnEvent, ConnState, Counter, EventKind, SslCall, TlsLinkEvent, Tuple, WriteGuard, CONN_CLOSE,
    DIR_EGRESS, DIR_INGRESS, FLAG_TRUNCATED, FLAG_UNREADABLE, SOURCE_SOCKET, SOURCE_TLS_GO,
    VERDICT_CIPHER, VERDICT_MUTED,
};

use crate::{
    emit::{admit, begin, direct, iovec, lost_from, opens_request},
    filter::{ports_allowed, process_allowed},
    maps::{
        agent_tgid, count, filters, offsets, CONN_STATE, EVENTS, GO_CALLS, PENDING_WRITE,
        SSL_ACTIVE, TLS_LINKED, WRITE_GUARD,
    },
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u16 = 1;
const TCP_CLOSE: i32 = 7;
const EAGAIN: i32 = 11;

// x86_64 `struct pt_regs` offsets of the syscall number and arguments.
const REG_R14: usize = 8;
const REG_DX: usize = 96;
const REG_SI: usize = 104;
const REG_ORIG_AX: usize = 120;
const REG_SP: usize = 152;

const SYS_READ: u64 = 0;
const SYS_WRITE: u64 = 1;
const SYS_READV: u64 = 19;
const SYS_WRITEV: u64 = 20;
const SYS_SENDTO: u64 = 44;
const SYS_RECVFROM: u64 = 45;
const SYS_SENDMSG: u64 = 46;
const SYS_RECVMSG: u64 = 47;

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    on_sock_call(&ctx, DIR_EGRESS);
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    on_sock_call(&ctx, DIR_INGRESS);
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let new_state: i32 = ctx.arg(2);
    if new_state != TCP_CLOSE {
        return 0;
    }
    let sk: u64 = ctx.arg(0);
    // Only connections user space has seen data on are reported.
    let Some(state) = (unsafe { CONN_STATE.get(&sk) }).copied() else {
        return 0;
    };
    let _ = CONN_STATE.remove(&sk);
    if let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) {
        let event = entry.as_mut_ptr();
        unsafe {
            (*event).kind = EventKind::Conn as u8;
            (*event).what = CONN_CLOSE;
            (*event)._pad = [0; 2];
            (*event).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
            (*event).conn_id = sk;
            (*event).ts_ns = bpf_ktime_get_ns();
            read_tuple(sk, &mut (*event).tuple);
            (*event).sent = state.sent;
            (*event).received = state.received;
        }
        entry.submit(0);
    } else {
        count(Counter::RingbufFull, 1);
    }
    0
}

#[inline(always)]
fn read_kernel<T>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// Fills `tuple` from the socket, reading straight into place.
#[inline(always)]
fn read_tuple(sk: u64, tuple: &mut Tuple) {
    let off = offsets();
    let family: u16 = read_kernel(sk + off.sk_family as u64).unwrap_or(0);
    tuple.family = family;
    tuple.sport = read_kernel::<u16>(sk + off.sk_num as u64).unwrap_or(0);
    tuple.dport = u16::from_be(read_kernel::<u16>(sk + off.sk_dport as u64).unwrap_or(0));
    tuple._pad = 0;
    unsafe {
        if family == AF_INET {
            // IPv4-mapped IPv6: ::ffff:a.b.c.d
            let s = tuple.saddr.as_mut_ptr() as *mut u32;
            let d = tuple.daddr.as_mut_ptr() as *mut u32;
            *s = 0;
            *s.add(1) = 0;
            *s.add(2) = 0x0000_ffffu32.to_be();
            *d = 0;
            *d.add(1) = 0;
            *d.add(2) = 0x0000_ffffu32.to_be();
            let _ = generated::bpf_probe_read_kernel(
                s.add(3) as *mut _,
                4,
                (sk + off.sk_rcv_saddr as u64) as *const _,
            );
            let _ = generated::bpf_probe_read_kernel(
                d.add(3) as *mut _,
                4,
                (sk + off.sk_daddr as u64) as *const _,
            );
        } else {
            let _ = generated::bpf_probe_read_kernel(
                tuple.saddr.as_mut_ptr() as *mut _,
                16,
                (sk + off.sk_v6_rcv_saddr as u64) as *const _,
            );
            let _ = generated::bpf_probe_read_kernel(
                tuple.daddr.as_mut_ptr() as *mut _,
                16,
                (sk + off.sk_v6_daddr as u64) as *const _,
            );
        }
    }
}

#[inline(always)]
fn on_sock_call(ctx: &BtfTracePointContext, dir: u8) {
    count(Counter::SocketCalls, 1);
    let ret: i32 = ctx.arg(1);
    if ret <= 0 {
        if ret == -EAGAIN && dir == DIR_EGRESS {
            write_blocked(bpf_get_current_pid_tgid());
        }
        return;
    }
    let sk: u64 = ctx.arg(0);
    // Muted connections first: after the verdict they cost this one lookup.
    let state = CONN_STATE.get_ptr_mut(&sk);
    if let Some(state) = state {
        let verdict = unsafe { (*state).verdict };
        if verdict == VERDICT_MUTED {
            count(Counter::Muted, 1);
            return;
        }
        if verdict == VERDICT_CIPHER {
            // TLS ciphertext: count it, and link it to the SSL call it serves.
            unsafe {
                if dir == DIR_EGRESS {
                    (*state).sent += ret as u64;
                } else {
                    (*state).received += ret as u64;
                }
            }
            count(Counter::Muted, 1);
            let pid_tgid = bpf_get_current_pid_tgid();
            if unsafe { (*state).linked } != 0 {
                // The link is made; a write's ciphertext still consumes the
                // thread's pending write, so that it is never taken for
                // another socket's record later.
                if dir == DIR_EGRESS {
                    if let Some(pending) = PENDING_WRITE.get_ptr_mut(&pid_tgid) {
                        unsafe { (*pending).linked = 1 };
                    }
                }
                return;
            }
            if link_active_call(pid_tgid, sk) {
                return;
            }
            if dir == DIR_EGRESS {
                if let Some(ssl) = take_pending_write(pid_tgid) {
                    link_tls(ssl, sk);
                    return;
                }
            }
            // A goroutine that blocked inside Go's (*Conn).Read or Write
            // resumes on any thread: find its call by (tgid, g) instead.
            if let Some(call) = unsafe { GO_CALLS.get(&[pid_tgid >> 32, current_goroutine()]) } {
                link_tls(call.ssl, sk);
            }
            return;
        }
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == agent_tgid() {
        return;
    }
    let off = offsets();
    let family: u16 = read_kernel(sk + off.sk_family as u64).unwrap_or(0);
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    let sk_type: u16 = read_kernel(sk + off.sk_type as u64).unwrap_or(0);
    if sk_type != SOCK_STREAM {
        return;
    }
    // A call that returns after the connection closed (a TLS close_notify
    // answered by a reset) would make an entry no close removes: it would
    // outlive the socket and land on the next one at that address.
    if state.is_none() && closed(sk) {
        return;
    }

    // A socket call inside an SSL call carries ciphertext: link the two, skip the bytes.
    if link_active_call(pid_tgid, sk) {
        return;
    }

    // A new connection meets the include/exclude filters once; one that
    // fails them is muted, so later calls cost the one lookup above.
    let flags = filters();
    if state.is_none() && flags != 0 {
        let local: u16 = read_kernel(sk + off.sk_num as u64).unwrap_or(0);
        let remote = u16::from_be(read_kernel::<u16>(sk + off.sk_dport as u64).unwrap_or(0));
        if !process_allowed(flags) || !ports_allowed(flags, local, remote) {
            let muted = ConnState {
                window_used: 0,
                sent: 0,
                received: 0,
                born_ns: unsafe { bpf_ktime_get_ns() },
                verdict: VERDICT_MUTED,
                linked: 0,
                _pad: [0; 6],
            };
            let _ = CONN_STATE.insert(&sk, &muted, 0);
            count(Counter::Filtered, 1);
            return;
        }
    }

    let call_len = ret as u32;
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    let nr: u64 = read_kernel(regs + REG_ORIG_AX as u64).unwrap_or(u64::MAX);
    let arg1: u64 = read_kernel(regs + REG_SI as u64).unwrap_or(0);
    let arg2: u64 = read_kernel(regs + REG_DX as u64).unwrap_or(0);

    // The ciphertext of the SSL write this thread entered last (written
    // inside the call through a socket BIO, right after it through a memory
    // BIO), on a socket not yet known as TLS: the bytes must be a TLS
    // application-data record, so a plain socket written meanwhile is never
    // taken for it.
    if dir == DIR_EGRESS && unsafe { PENDING_WRITE.get(&pid_tgid) }.is_some() {
        let head = first_buffer(nr, arg1);
        if head != 0
            && unsafe { bpf_probe_read_user(head as *const [u8; 3]) } == Ok([0x17, 0x03, 0x03])
        {
            if let Some(ssl) = take_pending_write(pid_tgid) {
                link_tls(ssl, sk);
                return;
            }
        }
    }
    // A new connection's first user buffer, to spot a request line.
    let opens_request = state.is_none() && opens_request(first_buffer(nr, arg1));
    let Some(limit) = admit(sk, call_len, state, opens_request) else {
        return;
    };

    if !begin(sk, dir, SOURCE_SOCKET, call_len, |t| read_tuple(sk, t)) {
        return;
    }

    let sent = match nr {
        SYS_READ | SYS_WRITE | SYS_SENDTO | SYS_RECVFROM => direct(arg1, limit),
        SYS_READV | SYS_WRITEV | SYS_SENDMSG | SYS_RECVMSG => {
            // One call site: the verifier checks the walk once per site.
            let (iov, iovlen) = if nr == SYS_READV || nr == SYS_WRITEV {
                (arg1, arg2)
            } else {
                // struct user_msghdr: msg_iov at 16, msg_iovlen at 24.
                (
                    unsafe { bpf_probe_read_user((arg1 + 16) as *const u64) }.unwrap_or(0),
                    unsafe { bpf_probe_read_user((arg1 + 24) as *const u64) }.unwrap_or(0),
                )
            };
            iovec(iov, iovlen, limit)
        }
        _ => {
            count(Counter::Unreadable, 1);
            lost_from(0, FLAG_UNREADABLE);
            return;
        }
    };
    if sent < call_len {
        count(Counter::Truncated, 1);
        lost_from(sent, FLAG_TRUNCATED);
    }
}

/// The address of the task's uretprobe trampoline (its `[uprobes]` page),
/// or 1 (never a return address) if unknown.
#[inline(always)]
fn uretprobe_trampoline(task: u64) -> u64 {
    let off = offsets();
    if off.task_mm == 0 || off.mm_xol_area == 0 || off.xol_vaddr == 0 {
        return 1;
    }
    let Some(mm) = read_kernel::<u64>(task + off.task_mm as u64) else {
        return 1;
    };
    let Some(area) = read_kernel::<u64>(mm + off.mm_xol_area as u64) else {
        return 1;
    };
    if area == 0 {
        return 1;
    }
    read_kernel::<u64>(area + off.xol_vaddr as u64).unwrap_or(1)
}

/// Whether the socket's TCP state is CLOSE (its close has been seen already).
#[inline(always)]
fn closed(sk: u64) -> bool {
    read_kernel::<u8>(sk + offsets().sk_state as u64).unwrap_or(0) == TCP_CLOSE as u8
}

/// The first user buffer of the socket call `nr` whose first argument after
/// the descriptor is `arg1`; 0 if unknown.
#[inline(always)]
fn first_buffer(nr: u64, arg1: u64) -> u64 {
    match nr {
        SYS_READ | SYS_WRITE | SYS_SENDTO | SYS_RECVFROM => arg1,
        SYS_READV | SYS_WRITEV => unsafe { bpf_probe_read_user(arg1 as *const u64) }.unwrap_or(0),
        SYS_SENDMSG | SYS_RECVMSG => {
            let iov = unsafe { bpf_probe_read_user((arg1 + 16) as *const u64) }.unwrap_or(0);
            unsafe { bpf_probe_read_user(iov as *const u64) }.unwrap_or(0)
        }
        _ => 0,
    }
}

/// Links the socket to the SSL call in progress on this thread, if the call
/// is this socket call's (its ciphertext); marks the call as using a socket.
#[inline(always)]
fn link_active_call(pid_tgid: u64, sk: u64) -> bool {
    let Some(call) = SSL_ACTIVE.get_ptr_mut(&pid_tgid) else {
        return false;
    };
    if !in_tls_call(unsafe { &*call }) {
        return false;
    }
    link_tls(unsafe { (*call).ssl }, sk);
    true
}

/// The SSL object of the write this thread entered in the last 10 ms, once:
/// its ciphertext is this thread's next TLS record.
#[inline(always)]
fn take_pending_write(pid_tgid: u64) -> Option<u64> {
    let pending = PENDING_WRITE.get_ptr_mut(&pid_tgid)?;
    let pending = unsafe { &mut *pending };
    if pending.linked != 0 {
        return None;
    }
    pending.linked = 1;
    let age = unsafe { bpf_ktime_get_ns() }.wrapping_sub(pending.ts_ns);
    if age > 10_000_000 {
        return None;
    }
    Some(pending.ssl)
}

/// A socket write that found the socket full, made inside the SSL write
/// this thread entered last (its entry's stack slot still holds the return
/// address, and the stack is below it): the library returns an error and
/// the caller calls again with the same bytes, which were taken at the
/// first entry. Marks the SSL object so that the repeat is skipped. A
/// memory BIO's ciphertext, written after the call returned, never marks it.
#[inline(always)]
fn write_blocked(pid_tgid: u64) {
    let Some(pending) = (unsafe { PENDING_WRITE.get(&pid_tgid) }).copied() else {
        return;
    };
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    let regs = unsafe { bpf_task_pt_regs(task as *mut _) } as u64;
    let sp: u64 = read_kernel(regs + REG_SP as u64).unwrap_or(u64::MAX);
    if sp >= pending.sp {
        return;
    }
    let Ok(slot) = (unsafe { bpf_probe_read_user(pending.sp as *const u64) }) else {
        return;
    };
    // Another tool's return probe on the same function swaps the return
    // address for its trampoline once the entry handlers have run.
    if slot != pending.ret_addr && slot != uretprobe_trampoline(task) {
        return;
    }
    match WRITE_GUARD.get_ptr_mut(&pending.ssl) {
        Some(guard) => unsafe {
            (*guard).retry = 1;
            (*guard).num = pending.num;
        },
        None => {
            let guard = WriteGuard {
                buf: 0,
                end: 0,
                num: pending.num,
                retry: 1,
                _pad: [0; 7],
            };
            let _ = WRITE_GUARD.insert(&pending.ssl, &guard, 0);
        }
    }
}

/// Whether this socket call is made by the SSL call saved for the thread.
/// A Go call holds the thread only while its goroutine runs: when it blocks,
/// the thread runs other goroutines, so the goroutine (`g`, r14 under the
/// register ABI, saved at the syscall) must be the one that made the call.
#[inline(always)]
fn in_tls_call(call: &SslCall) -> bool {
    if call.source != SOURCE_TLS_GO {
        return true;
    }
    current_goroutine() == call.len_ptr
}

/// Go's `g` (r14 under the register ABI) as saved at the syscall; 0 if unreadable.
#[inline(always)]
fn current_goroutine() -> u64 {
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    read_kernel::<u64>(regs + REG_R14 as u64).unwrap_or(0)
}

#[inline(always)]
fn link_tls(ssl: u64, sk: u64) {
    if let Some(linked) = unsafe { TLS_LINKED.get(&ssl) } {
        if *linked == sk {
            return;
        }
    }
    let _ = TLS_LINKED.insert(&ssl, &sk, 0);
    // The ciphertext socket itself is never captured.
    let state = ConnState {
        window_used: 0,
        sent: 0,
        received: 0,
        born_ns: unsafe { bpf_ktime_get_ns() },
        verdict: VERDICT_CIPHER,
        linked: 1,
        _pad: [0; 6],
    };
    match CONN_STATE.get_ptr_mut(&sk) {
        Some(existing) => unsafe {
            (*existing).verdict = VERDICT_CIPHER;
            (*existing).linked = 1;
        },
        None if !closed(sk) => {
            let _ = CONN_STATE.insert(&sk, &state, 0);
        }
        None => {}
    }
    if let Some(mut entry) = EVENTS.reserve::<TlsLinkEvent>(0) {
        let event = entry.as_mut_ptr();
        unsafe {
            (*event).kind = EventKind::TlsLink as u8;
            (*event)._pad = [0; 3];
            (*event).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
            (*event).ssl = ssl;
            (*event).sock = sk;
            (*event).ts_ns = bpf_ktime_get_ns();
            read_tuple(sk, &mut (*event).tuple);
        }
        entry.submit(0);
    } else {
        count(Counter::RingbufFull, 1);
    }
}

/// Links a Go conn to the sock its file descriptor led to (see `gofd.rs`),
/// if that is an open TCP socket; whether it was.
#[inline(always)]
pub(crate) fn link_go_socket(conn: u64, sk: u64) -> bool {
    let off = offsets();
    let family: u16 = read_kernel(sk + off.sk_family as u64).unwrap_or(0);
    if family != AF_INET && family != AF_INET6 {
        return false;
    }
    if read_kernel::<u16>(sk + off.sk_type as u64).unwrap_or(0) != SOCK_STREAM || closed(sk) {
        return false;
    }
    link_tls(conn, sk);
    true
}
