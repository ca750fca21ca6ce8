//! cgroup v2 ID → path, for processes gone before the agent read their
//! `/proc/<pid>/cgroup`. The kernel's cgroup ID (`bpf_get_current_cgroup_id`,
//! carried by every exec and data event) is the inode number of the cgroup's
//! directory in the v2 hierarchy, so a walk of that tree maps one to the other.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The most cgroups indexed, and how deep the walk goes.
const MAX_CGROUPS: usize = 200_000;
const MAX_DEPTH: usize = 32;
/// An unknown ID is looked for again after this long (cgroups come and go).
const REWALK_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct CgroupIds {
    /// Mount point of the v2 hierarchy; None when there is none.
    root: Option<PathBuf>,
    paths: HashMap<u64, String>,
    walked_at: Option<Instant>,
}

impl CgroupIds {
    /// The v2 hierarchy as `mountinfo` (`/proc/self/mountinfo`) shows it.
    pub fn from_mountinfo(mountinfo: &Path) -> CgroupIds {
        let root = std::fs::read_to_string(mountinfo)
            .ok()
            .and_then(|text| v2_mount_point(&text));
        CgroupIds::at(root)
    }

    pub fn at(root: Option<PathBuf>) -> CgroupIds {
        CgroupIds {
            root,
            paths: HashMap::new(),
            walked_at: None,
        }
    }

    /// The cgroup path (`/kubepods.slice/...`) of `id`, walking the tree
    /// again at most once a second on a miss.
    pub fn path_of(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if let Some(path) = self.paths.get(&id) {
            return Some(path.clone());
        }
        if self.walked_at.is_none_or(|t| t.elapsed() >= REWALK_AFTER) {
            self.walk();
        }
        self.paths.get(&id).cloned()
    }

    fn walk(&mut self) {
        self.walked_at = Some(Instant::now());
        let Some(root) = self.root.clone() else {
            return;
        };
        self.paths.clear();
        let mut stack = vec![(root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            if self.paths.len() >= MAX_CGROUPS {
                tracing::debug!(event = "cgroup_walk_truncated", cgroups = self.paths.len());
                break;
            }
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let relative = dir.strip_prefix(&root).unwrap_or(Path::new(""));
            self.paths
                .insert(meta.ino(), format!("/{}", relative.display()));
            if depth >= MAX_DEPTH {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((entry.path(), depth + 1));
                }
            }
        }
    }
}

/// The mount point of the cgroup2 file system in a mountinfo text.
pub fn v2_mount_point(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // <id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> ...
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v2_mount_on_hybrid_and_pure_hosts() {
        let hybrid = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            v2_mount_point(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure =
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(v2_mount_point(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(v2_mount_point("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"), None);
    }

    #[test]
    fn maps_directory_inodes_to_paths() {
        // Any directory tree stands in for the cgroup file system.
        let root = std::env::temp_dir().join(format!("tokenscope-cgids-{}", std::process::id()));
        let leaf = root.join("kubepods.slice/cri-containerd-ab.scope");
        std::fs::create_dir_all(&leaf).unwrap();
        let id = std::fs::metadata(&leaf).unwrap().ino();
        let mut ids = CgroupIds::at(Some(root.clone()));
        assert_eq!(
            ids.path_of(id).as_deref(),
            Some("/kubepods.slice/cri-containerd-ab.scope")
        );
        assert_eq!(ids.path_of(0), None);
        // A cgroup made after the walk is found on the next miss, a second later.
        let late = root.join("system.slice/late.service");
        std::fs::create_dir_all(&late).unwrap();
        let late_id = std::fs::metadata(&late).unwrap().ino();
        ids.walked_at = Instant::now().checked_sub(REWALK_AFTER);
        assert_eq!(
            ids.path_of(late_id).as_deref(),
            Some("/system.slice/late.service")
        );
        assert_eq!(CgroupIds::at(None).path_of(id), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
