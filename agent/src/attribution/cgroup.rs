//! Container and pod identity from a process's cgroup path. Pure.

/// What a cgroup path says about its process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupIdentity {
    pub container_id: Option<String>,
    /// Kubernetes pod UID with dashes, as the API server spells it.
    pub pod_uid: Option<String>,
    /// systemd unit (`nginx.service`) for processes outside containers.
    pub unit: Option<String>,
}

/// Parses the cgroup v2 path (`0::/...` line of /proc/<pid>/cgroup) or any
/// v1 line. Understands systemd and cgroupfs drivers of kubelet, containerd,
/// CRI-O, Docker and Podman, and containerd's `<slice>:cri-containerd:<id>`
/// form (kind, k3s).
pub fn parse_cgroup_path(path: &str) -> CgroupIdentity {
    let mut id = CgroupIdentity::default();
    let mut unit = None;
    for part in path.split(['/', ':']) {
        if let Some(uid) = pod_uid_of(part) {
            id.pod_uid = Some(uid);
            continue;
        }
        if let Some(cid) = container_id_of(part) {
            id.container_id = Some(cid);
            continue;
        }
        // The innermost unit wins: `user@1000.service/app.slice/foo.service` is foo.
        if part.ends_with(".service") || part.ends_with(".scope") {
            unit = Some(part);
        }
    }
    // A container's scope or its runtime's service is not the process's unit.
    if id.container_id.is_none() && id.pod_uid.is_none() {
        id.unit = unit.map(str::to_string);
    }
    id
}

/// Reads and parses `/proc/<pid>/cgroup`.
pub fn identity_of_pid(proc_root: &str, pid: u32) -> Option<(String, CgroupIdentity)> {
    let text = std::fs::read_to_string(format!("{proc_root}/{pid}/cgroup")).ok()?;
    best_line(&text)
}

/// The line of a `/proc/<pid>/cgroup` text that says the most: one naming a
/// container or pod, else one naming a systemd unit, else the v2 line (`0::`),
/// else the v1 `name=systemd` line, else the first.
pub fn best_line(text: &str) -> Option<(String, CgroupIdentity)> {
    let mut best: Option<(u8, String, CgroupIdentity)> = None;
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(hierarchy), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let id = parse_cgroup_path(path);
        let rank = if id.pod_uid.is_some() || id.container_id.is_some() {
            4
        } else if id.unit.is_some() {
            3
        } else if hierarchy == "0" && controllers.is_empty() {
            2
        } else if controllers == "name=systemd" {
            1
        } else {
            0
        };
        if best.as_ref().is_none_or(|(r, _, _)| rank > *r) {
            best = Some((rank, path.to_string(), id));
        }
    }
    best.map(|(_, path, id)| (path, id))
}

fn pod_uid_of(part: &str) -> Option<String> {
    // systemd: kubepods-burstable-pod<uid with _>.slice; cgroupfs: pod<uid>
    let stem = part.strip_suffix(".slice").unwrap_or(part);
    let idx = stem.rfind("pod")?;
    if idx > 0 && !stem[..idx].ends_with('-') {
        return None;
    }
    let uid = stem[idx + 3..].replace('_', "-");
    let is_uid = uid.len() == 36
        && uid.chars().enumerate().all(|(i, c)| {
            matches!(i, 8 | 13 | 18 | 23) == (c == '-') && (c == '-' || c.is_ascii_hexdigit())
        });
    is_uid.then_some(uid)
}

fn container_id_of(part: &str) -> Option<String> {
    let stem = part.strip_suffix(".scope").unwrap_or(part);
    // cri-containerd-<id>, crio-<id>, docker-<id>, libpod-<id>, or a bare <id> (cgroupfs)
    let id = stem.rsplit('-').next().unwrap_or(stem);
    (id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "4f2b8e61d25b6a0c9e2f3c7a1b0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d";

    #[test]
    fn kubelet_systemd_driver_with_containerd() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d.slice/cri-containerd-{CID}.scope"
        );
        let id = parse_cgroup_path(&path);
        assert_eq!(
            id.pod_uid.as_deref(),
            Some("1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d")
        );
        assert_eq!(id.container_id.as_deref(), Some(CID));
    }

    #[test]
    fn kubelet_cgroupfs_driver_docker_podman_and_units() {
        let id = parse_cgroup_path(&format!(
            "/kubepods/besteffort/pod1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d/{CID}"
        ));
        assert_eq!(
            id.pod_uid.as_deref(),
            Some("1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d")
        );
        assert_eq!(id.container_id.as_deref(), Some(CID));
        let id = parse_cgroup_path(&format!("/system.slice/docker-{CID}.scope"));
        assert_eq!(id.container_id.as_deref(), Some(CID));
        assert_eq!(id.pod_uid, None);
        let id = parse_cgroup_path(&format!("/machine.slice/libpod-{CID}.scope/container"));
        assert_eq!(id.container_id.as_deref(), Some(CID));
        let id = parse_cgroup_path("/system.slice/inference.service");
        assert_eq!(id.unit.as_deref(), Some("inference.service"));
        assert_eq!(
            parse_cgroup_path("/user.slice/podman.slice"),
            CgroupIdentity::default()
        );
    }

    #[test]
    fn kind_style_paths_and_units_inside_containers() {
        let id = parse_cgroup_path(&format!(
            "/system.slice/containerd.service/kubepods-besteffort-pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d.slice:cri-containerd:{CID}"
        ));
        assert_eq!(
            id.pod_uid.as_deref(),
            Some("1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d")
        );
        assert_eq!(id.container_id.as_deref(), Some(CID));
        assert_eq!(id.unit, None, "containerd.service is the runtime's unit");
        let id = parse_cgroup_path(
            "/user.slice/user-1000.slice/user@1000.service/app.slice/jupyter.service",
        );
        assert_eq!(id.unit.as_deref(), Some("jupyter.service"));
        let id = parse_cgroup_path("/user.slice/user-1000.slice/session-4.scope");
        assert_eq!(id.unit.as_deref(), Some("session-4.scope"));
    }

    #[test]
    fn the_line_that_says_most_wins_on_hybrid_and_v1_hosts() {
        // Hybrid host: v1 controllers, then name=systemd, then v2.
        let hybrid = "12:pids:/\n4:memory:/process_api/3a75\n1:name=systemd:/system.slice/demo.service\n0::/system.slice/demo.service\n";
        let (path, id) = best_line(hybrid).unwrap();
        assert_eq!(path, "/system.slice/demo.service");
        assert_eq!(id.unit.as_deref(), Some("demo.service"));
        let pod = format!("11:cpu:/kubepods/besteffort/pod1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d/{CID}\n1:name=systemd:/\n0::/\n");
        let (_, id) = best_line(&pod).unwrap();
        assert_eq!(id.container_id.as_deref(), Some(CID));
        let (path, id) = best_line("3:memory:/sandbox\n0::/\n").unwrap();
        assert_eq!((path.as_str(), id), ("/", CgroupIdentity::default()));
        assert_eq!(best_line("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        let (path, _) = identity_of_pid("/proc", std::process::id()).unwrap();
        assert!(path.starts_with('/'));
    }
}
