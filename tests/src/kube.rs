//! A Kubernetes node for the end-to-end tests, without a cluster: a fake API
//! server that the agent's real kube-rs client talks to, and real cgroups
//! named the way kubelet's container runtimes name them.
//!
//! ```no_run
//! use tokenscope_tests::kube::{CgroupDriver, FakeApi, PodCgroup, NODE};
//! let api = FakeApi::start();                          // recorded pods of node-a and the rest
//! let agent = api.start_agent(&[]);                    // `--kubernetes true --node-name node-a`, KUBECONFIG
//! api.wait_watching();                                 // every cache listed: lookups now hit
//! let pod = api.pod("chat-api-7d9f8b6c5d-x2k4p");      // uid, namespace, container name and id
//! let cg = PodCgroup::for_pod(CgroupDriver::ContainerdSystemd, &pod);
//! let child = cg.command("curl").arg("http://127.0.0.1:1/").spawn().unwrap();
//! // child.id() is curl's pid; /proc/<pid>/cgroup showed the pod's path before curl ran.
//! ```
//!
//! # Fake API server
//! [`FakeApi::start`] serves, on 127.0.0.1, list and watch responses for
//! `/api/v1/pods`, `/api/v1/namespaces`, `/apis/apps/v1/replicasets` and
//! `/apis/batch/v1/jobs`, from the recorded API server JSON in
//! `tests/fixtures/k8s/` (`pods.json` plus `pod-crio.json`, `namespaces.json`,
//! `replicasets.json`, `jobs.json`). It applies `fieldSelector=spec.nodeName=…`
//! as the real server does, answers a watch with a BOOKMARK at the current
//! resourceVersion and then streams what [`FakeApi::push`] adds (the lists
//! follow the pushes, so a relist agrees with the watch). Every request is
//! kept ([`FakeApi::requests`]). [`FakeApi::start_with`] serves other objects
//! ([`Fixtures::recorded`] + [`Fixtures::with_pod`]). [`FakeApi::kubeconfig`]
//! is a kubeconfig file for it, and [`FakeApi::start_agent`] starts the
//! agent with `KUBECONFIG` pointing at it.
//!
//! # Cgroups
//! [`PodCgroup`] creates a real cgroup for one container (or one systemd
//! unit) and removes it on drop. It is made in the cgroup v2 tree (whose
//! inode is what `bpf_get_current_cgroup_id` returns) and, on a hybrid host,
//! also in the v1 `name=systemd` hierarchy, so `/proc/<pid>/cgroup` shows the
//! path on its `0::` line and on its `name=systemd` line, as on a node whose
//! kubelet uses the systemd driver. It works on pure v2 hosts (the tree at
//! `/sys/fs/cgroup`) and hybrid ones (`/sys/fs/cgroup/unified`).
//! [`PodCgroup::command`] returns a `Command` whose process enters the cgroup
//! before it execs the program, so the agent sees the exec already inside.
//! Needs root.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{agent_binary, free_port, Agent, Guard, TempDir};

mod kind;
pub use kind::Kind;

/// The node the recorded pods run on (one pod in the fixture is on `node-b`).
pub const NODE: &str = "node-a";

const PODS: &str = include_str!("../fixtures/k8s/pods.json");
const POD_CRIO: &str = include_str!("../fixtures/k8s/pod-crio.json");
const NAMESPACES: &str = include_str!("../fixtures/k8s/namespaces.json");
const REPLICASETS: &str = include_str!("../fixtures/k8s/replicasets.json");
const JOBS: &str = include_str!("../fixtures/k8s/jobs.json");

/// The list objects (`PodList`, ...) the server starts from.
#[derive(Clone, Debug)]
pub struct Fixtures {
    pub lists: BTreeMap<Kind, Value>,
}

impl Fixtures {
    /// The recorded lists: 9 pods (8 on `node-a`; `ranker-6b8c9d7f45-t7v2q`
    /// is CRI-O's and names its team in an annotation), 4 namespaces, 2
    /// ReplicaSets, 2 Jobs.
    pub fn recorded() -> Fixtures {
        let parse = |text: &str| -> Value { serde_json::from_str(text).expect("fixture JSON") };
        let mut lists = BTreeMap::new();
        lists.insert(Kind::Pod, parse(PODS));
        lists.insert(Kind::Namespace, parse(NAMESPACES));
        lists.insert(Kind::ReplicaSet, parse(REPLICASETS));
        lists.insert(Kind::Job, parse(JOBS));
        Fixtures { lists }.with_pod(parse(POD_CRIO))
    }

    /// Adds a pod object (as the API server writes it) to the pod list.
    pub fn with_pod(mut self, pod: Value) -> Fixtures {
        if let Some(items) = self
            .lists
            .get_mut(&Kind::Pod)
            .and_then(|l| l["items"].as_array_mut())
        {
            items.push(pod);
        }
        self
    }
}

/// One pod of the served list, with its first container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixturePod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub ip: Option<String>,
    /// `spec.containers[0].name`.
    pub container: String,
    /// The 64-hex ID from `status.containerStatuses[0].containerID`, without its `containerd://` / `cri-o://` prefix.
    pub container_id: String,
}

impl FixturePod {
    fn from_json(pod: &Value) -> Option<FixturePod> {
        let meta = &pod["metadata"];
        let status = &pod["status"]["containerStatuses"][0];
        Some(FixturePod {
            name: meta["name"].as_str()?.to_string(),
            namespace: meta["namespace"].as_str()?.to_string(),
            uid: meta["uid"].as_str()?.to_string(),
            ip: pod["status"]["podIP"].as_str().map(str::to_string),
            container: status["name"].as_str()?.to_string(),
            container_id: status["containerID"]
                .as_str()?
                .rsplit("://")
                .next()?
                .to_string(),
        })
    }
}

/// One request the fake server answered.
#[derive(Clone, Debug)]
pub struct ApiRequest {
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub accept: String,
}

impl ApiRequest {
    pub fn is_watch(&self) -> bool {
        self.query.get("watch").map(String::as_str) == Some("true")
    }
}

struct Store {
    lists: BTreeMap<Kind, Value>,
    /// Global resourceVersion, as etcd's.
    rv: u64,
    /// (kind, resourceVersion, the watch event object).
    events: Vec<(Kind, u64, Value)>,
    requests: Vec<ApiRequest>,
}

struct Shared {
    store: Mutex<Store>,
    pushed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A fake Kubernetes API server on 127.0.0.1; stops on drop.
pub struct FakeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    kubeconfig: PathBuf,
    accept: Option<JoinHandle<()>>,
    _dir: TempDir,
}

impl FakeApi {
    /// Serves [`Fixtures::recorded`].
    pub fn start() -> FakeApi {
        FakeApi::start_with(Fixtures::recorded())
    }

    pub fn start_with(fixtures: Fixtures) -> FakeApi {
        let rv = fixtures
            .lists
            .values()
            .filter_map(|l| l["metadata"]["resourceVersion"].as_str()?.parse().ok())
            .max()
            .unwrap_or(1);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                lists: fixtures.lists,
                rv,
                events: Vec::new(),
                requests: Vec::new(),
            }),
            pushed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake API server");
        let addr = listener.local_addr().expect("fake API address");
        let accept = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if shared.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let shared = Arc::clone(&shared);
                    std::thread::spawn(move || serve_connection(stream, &shared));
                }
            })
        };
        let dir = TempDir::new("kube");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
                 current-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
            ),
        )
        .expect("write kubeconfig");
        FakeApi {
            addr,
            shared,
            kubeconfig,
            accept: Some(accept),
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig whose current context is this server (no credentials).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<ApiRequest> {
        self.shared.lock().requests.clone()
    }

    /// The served pod called `name`, on any node.
    pub fn pod(&self, name: &str) -> FixturePod {
        let store = self.shared.lock();
        store.lists[&Kind::Pod]["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["name"] == name)
            .find_map(FixturePod::from_json)
            .unwrap_or_else(|| panic!("no pod {name} with a container status in the fixtures"))
    }

    /// Sends a watch event (`ADDED`, `MODIFIED`, `DELETED`) to every watcher
    /// of `kind` and updates the list to match. Returns its resourceVersion.
    pub fn push(&self, kind: Kind, event_type: &str, mut object: Value) -> u64 {
        let mut store = self.shared.lock();
        store.rv += 1;
        let rv = store.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = |o: &Value| {
            (
                o["metadata"]["namespace"].clone(),
                o["metadata"]["name"].clone(),
            )
        };
        let id = key(&object);
        if let Some(items) = store
            .lists
            .get_mut(&kind)
            .and_then(|l| l["items"].as_array_mut())
        {
            items.retain(|o| key(o) != id);
            if event_type != "DELETED" {
                items.push(object.clone());
            }
        }
        store
            .events
            .push((kind, rv, json!({"type": event_type, "object": object})));
        drop(store);
        self.shared.pushed.notify_all();
        rv
    }

    /// Waits until the agent watches every resource. The agent's watcher asks
    /// for the watch only after it has applied the whole list, so from then on
    /// its cache holds every listed object.
    pub fn wait_watching(&self) {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let requests = self.requests();
            let missing: Vec<Kind> = Kind::ALL
                .into_iter()
                .filter(|k| !requests.iter().any(|r| r.is_watch() && r.path == k.path()))
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not watch {missing:?} in 40 s; requests: {requests:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the agent with Kubernetes attribution on for [`NODE`], its
    /// client configured by `KUBECONFIG` = [`FakeApi::kubeconfig`].
    pub fn start_agent(&self, extra: &[&str]) -> Agent {
        let mut args = vec!["--kubernetes", "true", "--node-name", NODE];
        args.extend_from_slice(extra);
        start_agent_with_env(&args, &[("KUBECONFIG", self.kubeconfig.as_os_str())])
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.pushed.notify_all();
        // Wakes the accept loop so it sees the stop flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Starts the agent as `Agent::start` does, with extra environment.
pub fn start_agent_with_env(extra: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Agent {
    let dir = TempDir::new("agent");
    let events = dir.path().join("events.jsonl");
    let log = dir.path().join("agent.log");
    let port = free_port();
    let log_file = std::fs::File::create(&log).expect("log file");
    let mut cmd = Command::new(agent_binary());
    cmd.args(["run", "--log-level", "debug", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--events")
        .arg(&events)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log_file);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let child = cmd.spawn().expect("start tokenscope");
    let agent = Agent {
        guard: Guard(child),
        port,
        events,
        log,
        _dir: dir,
    };
    agent.wait_ready();
    agent
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(hi), Some(lo)) if hex(hi).is_some() && hex(lo).is_some() => {
                out.push((hex(hi).unwrap_or(0) * 16 + hex(lo).unwrap_or(0)) as u8);
                i += 2;
            }
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve_connection(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut out = write_half;
    // One request per connection (`Connection: close`); kube's client reconnects.
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut accept = String::new();
    let mut header_bytes = 0usize;
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).unwrap_or(0);
        header_bytes += n;
        if n == 0 || line == "\r\n" || line == "\n" || header_bytes > 64 * 1024 {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("accept") {
                accept = value.trim().to_string();
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (path, query_text) = target.split_once('?').unwrap_or((target, ""));
    let query: BTreeMap<String, String> = query_text
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let request = ApiRequest {
        path: path.to_string(),
        query,
        accept,
    };
    shared.lock().requests.push(request.clone());
    let Some(kind) = Kind::of_path(path) else {
        let body =
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("the server could not find the requested resource ({path})"),
            "reason": "NotFound", "code": 404})
            .to_string();
        let _ = write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    };
    let node = request
        .query
        .get("fieldSelector")
        .and_then(|f| f.split(',').find_map(|s| s.strip_prefix("spec.nodeName=")))
        .map(str::to_string);
    let selected = |object: &Value| match &node {
        Some(n) => object["spec"]["nodeName"].as_str() == Some(n.as_str()),
        None => true,
    };
    if !request.is_watch() {
        let body = {
            let store = shared.lock();
            let mut list = store.lists[&kind].clone();
            if let Some(items) = list["items"].as_array_mut() {
                items.retain(selected);
            }
            list["metadata"]["resourceVersion"] = json!(store.rv.to_string());
            list.to_string()
        };
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    // A watch: chunked JSON lines until the client goes, the timeout the client
    // asked for passes, or the server stops.
    let from: u64 = request
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = request
        .query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(290u64)
        .min(290);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    if write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return;
    }
    let send = |out: &mut TcpStream, event: &Value| -> bool {
        let line = event.to_string() + "\n";
        write!(out, "{:x}\r\n{line}\r\n", line.len()).is_ok() && out.flush().is_ok()
    };
    let mut sent_rv = from;
    let bookmark_rv = shared.lock().rv;
    let bookmark = json!({"type": "BOOKMARK", "object": {"kind": kind.name(), "apiVersion": kind.api_version(),
        "metadata": {"resourceVersion": bookmark_rv.to_string(),
                     "annotations": {"k8s.io/initial-events-end": "true"}}}});
    if !send(&mut out, &bookmark) {
        return;
    }
    let mut store = shared.lock();
    while !shared.stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let due: Vec<(u64, Value)> = store
            .events
            .iter()
            .filter(|(k, rv, e)| *k == kind && *rv > sent_rv && selected(&e["object"]))
            .map(|(_, rv, e)| (*rv, e.clone()))
            .collect();
        drop(store);
        for (rv, event) in due {
            if !send(&mut out, &event) {
                return;
            }
            sent_rv = rv;
        }
        store = shared.lock();
        store = shared
            .pushed
            .wait_timeout(store, Duration::from_millis(200))
            .map(|(guard, _)| guard)
            .unwrap_or_else(|e| e.into_inner().0);
    }
    drop(store);
    let _ = write!(out, "0\r\n\r\n");
}

/// How kubelet and the container runtime name a container's cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupDriver {
    /// systemd driver, containerd: `…-pod<uid_>.slice/cri-containerd-<id>.scope`.
    ContainerdSystemd,
    /// systemd driver, CRI-O: `…-pod<uid_>.slice/crio-<id>.scope`.
    CrioSystemd,
    /// cgroupfs driver: `kubepods/besteffort/pod<uid>/<id>`.
    Cgroupfs,
}

impl CgroupDriver {
    /// The cgroup path of a BestEffort pod's container, as `/proc/<pid>/cgroup` shows it.
    pub fn path(self, pod_uid: &str, container_id: &str) -> String {
        let underscored = pod_uid.replace('-', "_");
        let slice = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{underscored}.slice"
        );
        match self {
            CgroupDriver::ContainerdSystemd => {
                format!("{slice}/cri-containerd-{container_id}.scope")
            }
            CgroupDriver::CrioSystemd => format!("{slice}/crio-{container_id}.scope"),
            CgroupDriver::Cgroupfs => format!("/kubepods/besteffort/pod{pod_uid}/{container_id}"),
        }
    }
}

/// The cgroup hierarchies a test cgroup is made in: (mount point, is v2).
fn hierarchies() -> Vec<(PathBuf, bool)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        // <id> <parent> <maj:min> <root> <mount point> <opts> ... - <fstype> <source> <super opts>
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split_whitespace().nth(4).unwrap_or_default();
        let mut right = right.split_whitespace();
        let fstype = right.next().unwrap_or_default();
        let super_opts = right.nth(1).unwrap_or_default();
        if fstype == "cgroup2" {
            found.push((PathBuf::from(mount_point), true));
        } else if fstype == "cgroup" && super_opts.split(',').any(|o| o == "name=systemd") {
            found.push((PathBuf::from(mount_point), false));
        }
    }
    assert!(
        found.iter().any(|(_, v2)| *v2),
        "no cgroup v2 hierarchy is mounted"
    );
    found
}

/// A real cgroup (one container of a pod, or a systemd unit), removed on drop.
pub struct PodCgroup {
    path: String,
    /// The cgroup's directory in each hierarchy; the v2 one first.
    leaves: Vec<PathBuf>,
    /// Directories this cgroup made, parents first.
    created: Vec<PathBuf>,
    roots: Vec<PathBuf>,
}

impl PodCgroup {
    /// The cgroup of the pod's first container, named as `driver` names it.
    pub fn for_pod(driver: CgroupDriver, pod: &FixturePod) -> PodCgroup {
        PodCgroup::at(&driver.path(&pod.uid, &pod.container_id))
    }

    /// Any cgroup path, e.g. `/system.slice/demo-client.service`.
    pub fn at(path: &str) -> PodCgroup {
        let path = format!("/{}", path.trim_start_matches('/'));
        assert!(
            !path.contains("..") && path.len() > 1,
            "bad cgroup path {path}"
        );
        let mut hierarchies = hierarchies();
        hierarchies.sort_by_key(|(_, v2)| !v2);
        let mut cgroup = PodCgroup {
            path: path.clone(),
            leaves: Vec::new(),
            created: Vec::new(),
            roots: Vec::new(),
        };
        for (root, _) in hierarchies {
            let mut dir = root.clone();
            for part in path.split('/').filter(|p| !p.is_empty()) {
                dir.push(part);
                // Another test may remove a shared parent between our steps: retry.
                let mut tries = 0;
                while !dir.is_dir() {
                    match std::fs::create_dir(&dir) {
                        Ok(()) => cgroup.created.push(dir.clone()),
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                        Err(e) => {
                            tries += 1;
                            assert!(tries < 20, "mkdir {}: {e}", dir.display());
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            }
            cgroup.leaves.push(dir);
            cgroup.roots.push(root);
        }
        cgroup
    }

    /// The path as `/proc/<pid>/cgroup` shows it.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The v2 cgroup ID (the directory's inode), what `bpf_get_current_cgroup_id` returns.
    pub fn cgroup_id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.leaves[0])
            .map(|m| m.ino())
            .expect("stat the v2 cgroup")
    }

    /// Moves a running process (all its threads) into the cgroup.
    pub fn enter(&self, pid: u32) {
        for leaf in &self.leaves {
            std::fs::write(leaf.join("cgroup.procs"), pid.to_string())
                .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", leaf.display()));
        }
    }

    /// `program`, run so that it execs already inside the cgroup: a shell
    /// moves itself in, then execs the program (same pid). Add its arguments
    /// with `.arg(...)`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.wrapped(None, program.as_ref())
    }

    /// As [`PodCgroup::command`], run as `user` (real and effective uid and
    /// gid, with the user's groups) through `setpriv`, which execs in place.
    pub fn command_as(&self, user: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.wrapped(Some(user), program.as_ref())
    }

    fn wrapped(&self, user: Option<&str>, program: &std::ffi::OsStr) -> Command {
        let procs: Vec<String> = self
            .leaves
            .iter()
            .map(|l| l.join("cgroup.procs").display().to_string())
            .collect();
        let mut script = String::from(
            "for f in $TOKENSCOPE_CGROUP_PROCS; do echo $$ > \"$f\" || exit 97; done; ",
        );
        let mut cmd = Command::new("sh");
        match user {
            Some(user) => {
                let (uid, gid) =
                    passwd_ids(user).unwrap_or_else(|| panic!("no user {user} in /etc/passwd"));
                script.push_str(&format!(
                    "exec setpriv --reuid={uid} --regid={gid} --init-groups -- \"$@\""
                ));
                cmd.env("HOME", "/tmp");
            }
            None => script.push_str("exec \"$@\""),
        }
        cmd.arg("-c")
            .arg(script)
            .arg("tokenscope-cgroup")
            .arg(program)
            .env("TOKENSCOPE_CGROUP_PROCS", procs.join(" "));
        cmd
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // Processes still inside go back to the root; then the directories go,
        // deepest first. A parent another test still uses stays (EBUSY).
        for (leaf, root) in self.leaves.iter().zip(&self.roots) {
            let procs = std::fs::read_to_string(leaf.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let _ = std::fs::write(root.join("cgroup.procs"), pid);
            }
        }
        for dir in self.created.iter().rev() {
            for _ in 0..50 {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    // A child (ours, still emptying, or another test's) is still there.
                    Err(_) if !is_leaf(dir) => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

fn is_leaf(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().all(|e| !e.path().is_dir()))
        .unwrap_or(true)
}

/// (uid, gid) of `user` from /etc/passwd.
pub fn passwd_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&user) && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

/// A user for tests that need a process that is not root: created with
/// `useradd --system` when missing (and left in place, like `nobody`).
pub fn ensure_user(name: &str) -> (u32, u32) {
    if let Some(ids) = passwd_ids(name) {
        return ids;
    }
    let status = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .status()
        .expect("run useradd");
    // Another test may have created it at the same time.
    passwd_ids(name).unwrap_or_else(|| panic!("useradd {name} failed: {status}"))
}
