//! Who made each call: process → container → pod → workload → team.

pub mod cgroup;
mod cgroup_ids;
pub mod k8s;
mod users;

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::record::Attribution;
use cgroup::{identity_of_pid, parse_cgroup_path, CgroupIdentity};
pub use cgroup_ids::CgroupIds;
pub use users::Users;

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
    /// Real user ID, from /proc/<pid>/status.
    pub uid: Option<u32>,
    /// The name of `uid` on this host; None inside containers, whose users are their own.
    pub user: Option<String>,
    /// The team [`HostTeams`] gives the process's systemd unit or user.
    pub team: Option<String>,
}

/// Teams of processes in no pod: by systemd unit, then by user name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostTeams {
    pub by_unit: BTreeMap<String, String>,
    pub by_user: BTreeMap<String, String>,
}

impl HostTeams {
    pub fn is_empty(&self) -> bool {
        self.by_unit.is_empty() && self.by_user.is_empty()
    }

    pub fn team_of(&self, unit: Option<&str>, user: Option<&str>) -> Option<String> {
        unit.and_then(|u| self.by_unit.get(u))
            .or_else(|| user.and_then(|u| self.by_user.get(u)))
            .cloned()
    }
}

impl From<&crate::config::TeamsConfig> for HostTeams {
    fn from(config: &crate::config::TeamsConfig) -> HostTeams {
        HostTeams {
            by_unit: config.units.clone(),
            by_user: config.users.clone(),
        }
    }
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
    users: Users,
    teams: HostTeams,
    cgroup_ids: CgroupIds,
}

impl ProcessTable {
    pub fn new(proc_root: &str, grace_ns: u64, max: usize) -> ProcessTable {
        ProcessTable {
            procs: HashMap::new(),
            exited: VecDeque::new(),
            grace_ns,
            max,
            proc_root: proc_root.to_string(),
            users: Users::new("/etc/passwd"),
            teams: HostTeams::default(),
            cgroup_ids: CgroupIds::from_mountinfo(std::path::Path::new(&format!(
                "{proc_root}/self/mountinfo"
            ))),
        }
    }

    /// Gives processes in no pod a team from their systemd unit or user.
    pub fn with_host_teams(mut self, teams: HostTeams) -> ProcessTable {
        self.teams = teams;
        self
    }

    /// Reads user names from `path` instead of /etc/passwd.
    pub fn with_passwd(mut self, path: &str) -> ProcessTable {
        self.users = Users::new(path);
        self
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
        // A process that is already gone is found by the cgroup ID its event carried.
        let (cgroup_path, identity) = match identity_of_pid(&self.proc_root, pid) {
            Some((path, identity)) => (Some(path), identity),
            None => match self.cgroup_ids.path_of(cgroup_id) {
                Some(path) => {
                    let identity = parse_cgroup_path(&path);
                    (Some(path), identity)
                }
                None => (None, CgroupIdentity::default()),
            },
        };
        let uid = uid_of_pid(&self.proc_root, pid);
        let in_container = identity.container_id.is_some() || identity.pod_uid.is_some();
        let user = uid
            .filter(|_| !in_container)
            .and_then(|uid| self.users.name(uid));
        let team = (!in_container)
            .then(|| {
                self.teams
                    .team_of(identity.unit.as_deref(), user.as_deref())
            })
            .flatten();
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
                identity,
                start_ns: ts_ns,
                exited_ns: None,
                uid,
                user,
                team,
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
            match std::fs::read_to_string(format!("{}/{pid}/stat", self.proc_root)) {
                Ok(stat) => {
                    let ppid = stat
                        .rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    self.on_exec(pid, ppid, comm, "", cgroup_id, 0);
                }
                // Gone, and its exec was never seen: what its cgroup ID says, kept
                // for the grace period only.
                Err(_) if cgroup_id != 0 => {
                    self.on_exec(pid, 0, comm, "", cgroup_id, 0);
                    self.on_exit(pid, now_ns());
                }
                Err(_) => return None,
            }
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

/// CLOCK_MONOTONIC nanoseconds, the clock of event timestamps.
fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The real uid from the `Uid:` line of /proc/<pid>/status.
fn uid_of_pid(proc_root: &str, pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("{proc_root}/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
}

/// Fills the record's attribution from what is known of the process: its
/// container and pod UID from the cgroup, or off Kubernetes its systemd unit,
/// user and the team those map to. The pod's names come later, from the API
/// server (`pipeline::apply_pod`).
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
        a.systemd_unit = p.identity.unit.clone();
        a.uid = p.uid;
        a.user = p.user.clone();
        a.team = p.team.clone();
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
    fn processes_outside_containers_get_their_user_and_host_team() {
        let dir = std::env::temp_dir().join(format!("tokenscope-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let passwd = dir.join("passwd");
        let me = std::process::id();
        let uid = uid_of_pid("/proc", me).unwrap();
        std::fs::write(&passwd, format!("# builder is this test's uid\nbuilder:x:{uid}:{uid}::/:/bin/sh\nother:x:{}:0::/:/bin/sh\n", uid + 1)).unwrap();
        let mut teams = HostTeams::default();
        teams.by_user.insert("builder".into(), "platform".into());
        let mut table = ProcessTable::new("/proc", 1_000, 100)
            .with_passwd(passwd.to_str().unwrap())
            .with_host_teams(teams.clone());
        table.on_exec(me, 1, "cargo", "", 0, 1);
        let p = table.get(me).unwrap();
        assert_eq!((p.uid, p.user.as_deref()), (Some(uid), Some("builder")));
        let a = attribute(Some(p), me, "cargo", Some("node-a"));
        assert_eq!(a.user.as_deref(), Some("builder"));
        if p.identity.unit.is_none() && p.identity.container_id.is_none() {
            assert_eq!(a.team.as_deref(), Some("platform"));
        }
        // A unit's team comes before its user's.
        teams
            .by_unit
            .insert("demo.service".into(), "research".into());
        assert_eq!(
            teams
                .team_of(Some("demo.service"), Some("builder"))
                .as_deref(),
            Some("research")
        );
        assert_eq!(
            teams
                .team_of(Some("other.service"), Some("builder"))
                .as_deref(),
            Some("platform")
        );
        assert_eq!(teams.team_of(None, None), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_process_gone_before_its_exec_is_read_keeps_its_cgroup_from_the_id() {
        use std::os::unix::fs::MetadataExt;
        let root = std::env::temp_dir().join(format!("tokenscope-gone-{}", std::process::id()));
        let leaf = root.join(format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d.slice/crio-{}.scope",
            "ab".repeat(32)
        ));
        std::fs::create_dir_all(&leaf).unwrap();
        let id = std::fs::metadata(&leaf).unwrap().ino();
        let mut table = ProcessTable::new("/proc", 1_000, 100);
        table.cgroup_ids = CgroupIds::at(Some(root.clone()));
        let gone = u32::MAX - 7;
        table.on_exec(gone, 1, "curl", "/usr/bin/curl", id, 5);
        let p = table.get(gone).unwrap();
        assert_eq!(
            p.identity.pod_uid.as_deref(),
            Some("1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d")
        );
        assert_eq!(p.identity.container_id, Some("ab".repeat(32)));
        // Never seen at all: the data event's cgroup ID, kept only for the grace period.
        let unseen = u32::MAX - 8;
        let p = table.lookup(unseen, "curl", id).unwrap();
        assert_eq!(p.identity.container_id, Some("ab".repeat(32)));
        assert!(p.exited_ns.is_some());
        assert!(table.lookup(u32::MAX - 9, "curl", 0).is_none());
        std::fs::remove_dir_all(&root).unwrap();
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
