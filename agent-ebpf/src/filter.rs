//! Include/exclude filters by process name, cgroup and port, set by user
//! space before load. They run once per new connection (sockets) or per SSL
//! call, and only when the corresponding list is not empty.

use aya_ebpf::helpers::{
    bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
};
use tokenscope_common::filter::{
    CGROUP_DEPTH, EXCLUDE, EXCLUDE_CGROUP, EXCLUDE_COMM, EXCLUDE_PORT, INCLUDE, INCLUDE_CGROUP,
    INCLUDE_COMM, INCLUDE_PORT,
};

use crate::maps::{FILTER_CGROUP, FILTER_COMM, FILTER_PORT};

/// Whether the current process passes the name and cgroup filters.
#[inline(always)]
pub fn process_allowed(flags: u32) -> bool {
    if flags & (INCLUDE_COMM | EXCLUDE_COMM) != 0 {
        let comm = bpf_get_current_comm().unwrap_or([0; 16]);
        let listed = unsafe { FILTER_COMM.get(&comm) }.copied().unwrap_or(0);
        if flags & EXCLUDE_COMM != 0 && listed == EXCLUDE {
            return false;
        }
        if flags & INCLUDE_COMM != 0 && listed != INCLUDE {
            return false;
        }
    }
    if flags & (INCLUDE_CGROUP | EXCLUDE_CGROUP) != 0 {
        // The process's own cgroup, then its ancestors up to the root.
        let mut listed = unsafe { FILTER_CGROUP.get(&bpf_get_current_cgroup_id()) }
            .copied()
            .unwrap_or(0);
        let mut level = 0;
        while listed == 0 && level < CGROUP_DEPTH {
            let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
            if id != 0 {
                listed = unsafe { FILTER_CGROUP.get(&id) }.copied().unwrap_or(0);
            }
            level += 1;
        }
        if flags & EXCLUDE_CGROUP != 0 && listed == EXCLUDE {
            return false;
        }
        if flags & INCLUDE_CGROUP != 0 && listed != INCLUDE {
            return false;
        }
    }
    true
}

/// Whether a connection with these ports passes the port filters.
#[inline(always)]
pub fn ports_allowed(flags: u32, local: u16, remote: u16) -> bool {
    if flags & (INCLUDE_PORT | EXCLUDE_PORT) == 0 {
        return true;
    }
    let a = unsafe { FILTER_PORT.get(&local) }.copied().unwrap_or(0);
    let b = unsafe { FILTER_PORT.get(&remote) }.copied().unwrap_or(0);
    if flags & EXCLUDE_PORT != 0 && (a == EXCLUDE || b == EXCLUDE) {
        return false;
    }
    if flags & INCLUDE_PORT != 0 && a != INCLUDE && b != INCLUDE {
        return false;
    }
    true
}
