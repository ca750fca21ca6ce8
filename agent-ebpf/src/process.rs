//! Process exec and exit from the sched tracepoints.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};
use tokenscope_common::{Counter, EventKind, ProcEvent};

use crate::maps::{count, offsets, EVENTS, PENDING_WRITE, SSL_ACTIVE};

/// `sched_process_exec` format: `__data_loc char[] filename` at 8.
const EXEC_FILENAME_LOC: usize = 8;

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    emit(&ctx, EventKind::Exec);
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // A thread that dies inside an SSL call (a Go program exiting while its
    // reader blocks in `(*Conn).Read`) leaves no entry behind.
    let _ = SSL_ACTIVE.remove(&pid_tgid);
    let _ = PENDING_WRITE.remove(&pid_tgid);
    // One exit per process: only the thread-group leader's.
    if (pid_tgid >> 32) as u32 == pid_tgid as u32 {
        emit(&ctx, EventKind::Exit);
    }
    0
}

#[inline(always)]
fn emit(ctx: &TracePointContext, kind: EventKind) {
    let Some(mut entry) = EVENTS.reserve::<ProcEvent>(0) else {
        count(Counter::RingbufFull, 1);
        return;
    };
    let event = entry.as_mut_ptr();
    unsafe {
        (*event).kind = kind as u8;
        (*event)._pad = [0; 3];
        (*event).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*event).ppid = parent_tgid();
        (*event)._pad2 = 0;
        (*event).cgroup_id = bpf_get_current_cgroup_id();
        (*event).ts_ns = bpf_ktime_get_ns();
        (*event).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*event).filename = [0; 128];
        if kind == EventKind::Exec {
            if let Ok(loc) = ctx.read_at::<u32>(EXEC_FILENAME_LOC) {
                let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
                let _ = bpf_probe_read_kernel_str_bytes(src, &mut (*event).filename);
            }
        }
    }
    entry.submit(0);
}

#[inline(always)]
fn parent_tgid() -> u32 {
    let off = offsets();
    if off.task_real_parent == 0 {
        return 0;
    }
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let Ok(parent) =
            bpf_probe_read_kernel(task.add(off.task_real_parent as usize) as *const u64)
        else {
            return 0;
        };
        bpf_probe_read_kernel((parent as *const u8).add(off.task_tgid as usize) as *const u32)
            .unwrap_or(0)
    }
}
