//! Who made each call: process → container → pod → workload → team.

pub mod cgroup;
pub mod k8s;

use std::collections::{HashMap, VecDeque};

use crate::record::Attribution;
use cgroup::{identity_of_pid, CgroupIdentity};

/// One process the agent knows about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cgroup_id: u64,
    pub cgroup_path: Option<String>,
    pub identity: CgroupIdentity,
    pub start_ns: u64,
    pub exited_ns: Option<u64>,
}

/// Processes by pid, from exec/exit events and /proc for those started
/// before the agent. Exited processes stay for a grace period so calls that
/// finish decoding after the exit are still attributed.
pub struct ProcessTable {
    procs: HashMap<u32, ProcessInfo>,
    exited: VecDeque<(u64, u32)>,
    grace_ns: u64,
    max: usize,
    proc_root: String,
}

impl ProcessTable {
    pub fn new(proc_root: &str, grace_ns: u64, max: usize) -> ProcessTable {
        ProcessTable {
            procs: HashMap::new(),
            exited: VecDeque::new(),
            grace_ns,
            max,
            proc_root: proc_root.to_string(),
        }
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn get(&self, pid: u32) -> Option<&ProcessInfo> {
        self.procs.get(&pid)
    }

    pub fn on_exec(
        &mut self,
        pid: u32,
        ppid: u32,
        comm: &str,
        filename: &str,
        cgroup_id: u64,
        ts_ns: u64,
    ) {
        if self.procs.len() >= self.max && !self.procs.contains_key(&pid) {
            return;
        }
        let (cgroup_path, identity) = identity_of_pid(&self.proc_root, pid).unzip();
        let exe = std::fs::read_link(format!("{}/{pid}/exe", self.proc_root))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
            .or_else(|| (!filename.is_empty()).then(|| filename.to_string()));
        self.procs.insert(
            pid,
            ProcessInfo {
                pid,
                ppid,
                comm: comm.to_string(),
                exe,
                cgroup_id,
                cgroup_path,
                identity: identity.unwrap_or_default(),
                start_ns: ts_ns,
                exited_ns: None,
            },
        );
    }

    pub fn on_exit(&mut self, pid: u32, ts_ns: u64) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.exited_ns = Some(ts_ns);
            self.exited.push_back((ts_ns, pid));
        }
    }

    /// Drops processes that exited more than the grace period before `now_ns`.
    pub fn evict(&mut self, now_ns: u64) {
        while let Some(&(ts, pid)) = self.exited.front() {
            if now_ns.saturating_sub(ts) < self.grace_ns {
                break;
            }
            self.exited.pop_front();
            if self.procs.get(&pid).and_then(|p| p.exited_ns) == Some(ts) {
                self.procs.remove(&pid);
            }
        }
    }

    /// The process, read from /proc when it predates the agent.
    pub fn lookup(&mut self, pid: u32, comm: &str, cgroup_id: u64) -> Option<&ProcessInfo> {
        if !self.procs.contains_key(&pid) {
            let stat = std::fs::read_to_string(format!("{}/{pid}/stat", self.proc_root)).ok()?;
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            self.on_exec(pid, ppid, comm, "", cgroup_id, 0);
        }
        self.procs.get(&pid)
    }

    /// Processes now alive, for the startup scan.
    pub fn scan_proc(&mut self) {
        let Ok(dir) = std::fs::read_dir(&self.proc_root) else {
            return;
        };
        for entry in dir.flatten() {
            if let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            {
                let comm = std::fs::read_to_string(format!("{}/{pid}/comm", self.proc_root))
                    .unwrap_or_default();
                self.lookup(pid, comm.trim_end(), 0);
            }
        }
    }
}

/// Fills the record's attribution from what is known of the process.
pub fn attribute(
    info: Option<&ProcessInfo>,
    pid: u32,
    comm: &str,
    node: Option<&str>,
) -> Attribution {
    let mut a = Attribution {
        pid,
        comm: comm.to_string(),
        node: node.map(str::to_string),
        ..Attribution::default()
    };
    if let Some(p) = info {
        a.exe = p.exe.clone();
        a.cgroup_id = p.cgroup_id;
        a.container_id = p.identity.container_id.clone();
        a.pod_uid = p.identity.pod_uid.clone();
        // Outside Kubernetes the systemd unit is the workload.
        a.workload = p.identity.unit.clone();
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_then_exit_leaves_after_the_grace_period() {
        let mut table = ProcessTable::new("/proc", 1_000, 100);
        let me = std::process::id();
        table.on_exec(me, 1, "tokenscope", "/bin/x", 5, 10);
        let p = table.get(me).unwrap();
        assert!(p.exe.is_some());
        assert!(p.cgroup_path.is_some());
        table.on_exit(me, 100);
        table.evict(500);
        assert!(table.get(me).is_some(), "kept during grace");
        table.evict(1_200);
        assert!(table.get(me).is_none());
    }

    #[test]
    fn lookup_reads_proc_for_processes_started_before_the_agent() {
        let mut table = ProcessTable::new("/proc", 1_000, 100);
        let p = table.lookup(1, "init", 0).unwrap();
        assert_eq!(p.pid, 1);
        assert_eq!(p.ppid, 0);
        assert!(table.lookup(u32::MAX - 1, "none", 0).is_none());
    }
}
