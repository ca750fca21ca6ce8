//! A Go `*tls.Conn` tied to its socket at call entry, through the conn's own
//! fields: `tls.Conn.conn` (a `net.Conn` holding a `*net.TCPConn`) → the
//! `*netFD` → `poll.FD.Sysfd`, then the descriptor through the task's file
//! table to the `struct sock`. The socket programs' thread/goroutine link
//! stays as the fallback: it needs a socket call made by the goroutine while
//! the TLS call runs, which a streamed Read that parks and resumes can miss.
//!
//! The Go offsets come per probe in the attach cookie ([`go_conn`]), the
//! kernel's from BTF in `OFFSETS`. Every read may fail or find anything (a
//! conn of another concrete type, a stale descriptor): the file must be a
//! socket whose `socket.file` points back at it, and the sock a TCP one,
//! before anything is linked.

use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::bpf_get_attach_cookie,
    },
    programs::ProbeContext,
    EbpfContext,
};
use tokenscope_common::{go_conn, Counter, VERDICT_CIPHER};

use crate::{
    maps::{count, offsets, CONN_STATE, TLS_LINKED},
    sock::link_go_socket,
};

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
/// Descriptors past this are not followed (the verifier wants a bound; Go
/// programs with a million open files are not the case this serves).
const MAX_FD: u64 = 1 << 20;

/// Links the Go conn at `conn` (connection id `id`) to its socket unless it
/// already is to one still open.
#[inline(always)]
pub fn link_by_fd(ctx: &ProbeContext, conn: u64, id: u64) {
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let Some((layout, itab_delta)) = go_conn::decode(cookie) else {
        return;
    };
    // Once per conn: an entry in CONN_STATE means the socket has not closed.
    if let Some(sk) = unsafe { TLS_LINKED.get(&id) } {
        if let Some(state) = unsafe { CONN_STATE.get(sk) } {
            if state.verdict == VERDICT_CIPHER {
                return;
            }
        }
    }
    match socket_of(ctx, conn, layout, itab_delta) {
        Some(sk) if link_go_socket(id, sk) => count(Counter::GoFdLinks, 1),
        _ => count(Counter::GoFdMisses, 1),
    }
}

#[inline(always)]
fn user<T>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

#[inline(always)]
fn kernel<T>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// The `struct sock` behind the conn's descriptor, once the file is known to
/// be a socket; the sock's family and type are checked by the caller.
#[inline(always)]
fn socket_of(
    ctx: &ProbeContext,
    conn: u64,
    layout: go_conn::Layout,
    itab_delta: i32,
) -> Option<u64> {
    let iface = conn + layout.iface as u64;
    if itab_delta != 0 {
        // uprobes run with the instruction pointer at the probed entry, so
        // this is the itab's address whatever the load bias.
        let rip = unsafe { (*ctx.regs).rip };
        let tcp_itab = rip.wrapping_add(itab_delta as i64 as u64);
        if user::<u64>(iface)? != tcp_itab {
            return None;
        }
    }
    let tcp_conn: u64 = user(iface + 8)?;
    let net_fd: u64 = user(tcp_conn + layout.fd as u64)?;
    let fd: u64 = user(net_fd + layout.sysfd as u64)?;
    // Sysfd is a Go int: -1 once closed.
    if fd >= MAX_FD {
        return None;
    }
    let off = offsets();
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = kernel(task + off.task_files as u64)?;
    let fdt: u64 = kernel(files + off.files_fdt as u64)?;
    let max_fds: u32 = kernel(fdt + off.fdt_max_fds as u64)?;
    if fd >= max_fds as u64 {
        return None;
    }
    let fd_array: u64 = kernel(fdt + off.fdt_fd as u64)?;
    let file: u64 = kernel(fd_array + (fd & (MAX_FD - 1)) * 8)?;
    if file == 0 {
        return None;
    }
    let inode: u64 = kernel(file + off.file_inode as u64)?;
    let mode: u16 = kernel(inode + off.inode_mode as u64)?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let socket: u64 = kernel(file + off.file_private_data as u64)?;
    if kernel::<u64>(socket + off.socket_file as u64)? != file {
        return None;
    }
    let sk: u64 = kernel(socket + off.socket_sk as u64)?;
    (sk != 0).then_some(sk)
}
