//! The agent's container image, built as `cargo xtask image` builds it and
//! run the way the DaemonSet runs it: `--pid=host`, every capability dropped
//! but the manifest's, the manifest's host mounts read-only, a read-only
//! root, the ConfigMap's mount and a writable state directory. One
//! difference: `--network=host`, so that the test reaches `/readyz` and
//! `/api/v1/calls` on 127.0.0.1 (the DaemonSet uses the pod network, where
//! the kubelet probes the pod IP; that the agent listens on 0.0.0.0 there is
//! checked here).
//!
//! Then it takes each capability away in turn and shows what breaks.
//!
//! Needs root (the agent loads eBPF), podman and runc (or a running Docker),
//! `/usr/bin/python3` with PyYAML (Debian: python3-yaml), `setpriv` and
//! `bpftool`; `kubectl` renders the manifest when present. Under `CI=true`
//! a machine that cannot run it fails it.

#[path = "../../xtask/src/image.rs"]
mod image;

use std::{
    ffi::OsString,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tokenscope_tests::*;

/// The port the agent listens on in a container when nothing says otherwise.
const CONTAINER_PORT: u16 = 9464;

/// What the DaemonSet gives the agent container.
#[derive(Debug)]
struct Manifest {
    capabilities: Vec<String>,
    /// (host path, container path), each read-only.
    host_mounts: Vec<(String, String)>,
    /// Mount paths of writable volumes (emptyDir).
    writable: Vec<String>,
    /// Where the ConfigMap is mounted.
    config_dir: String,
    args: Vec<String>,
    memory_request: u64,
    memory_limit: u64,
}

/// `128Mi`, `1Gi`, `500M` as bytes.
fn quantity_bytes(text: &str) -> u64 {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("K", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<u64>().expect("quantity number") * factor;
        }
    }
    text.parse().expect("plain quantity")
}

/// The DaemonSet as `kubectl kustomize deploy/overlays/plain` renders it,
/// or the base file itself where kubectl is missing (the plain overlay only
/// adds node affinity), read through PyYAML into JSON.
fn manifest() -> Manifest {
    let rendered = Command::new("kubectl")
        .arg("kustomize")
        .arg(root().join("deploy/overlays/plain"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| o.stdout);
    let yaml = rendered.unwrap_or_else(|| {
        eprintln!("kubectl missing: reading deploy/base/daemonset.yaml");
        std::fs::read(root().join("deploy/base/daemonset.yaml")).expect("daemonset.yaml")
    });
    let mut python = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (apt-get install -y python3-yaml)");
    {
        use std::io::Write;
        let mut stdin = python.stdin.take().expect("stdin");
        stdin.write_all(&yaml).expect("write YAML");
    }
    let out = python.wait_with_output().expect("python3 output");
    assert!(out.status.success(), "PyYAML could not read the manifest");
    let documents: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    let daemonset = documents
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let volumes = pod["volumes"].as_array().expect("volumes");
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("volume {name}"))
    };
    let mut host_mounts = Vec::new();
    let mut writable = Vec::new();
    let mut config_dir = None;
    for mount in container["volumeMounts"].as_array().expect("mounts") {
        let name = mount["name"].as_str().expect("mount name");
        let path = mount["mountPath"].as_str().expect("mountPath").to_owned();
        let read_only = mount["readOnly"] == true;
        let volume = volume(name);
        if let Some(host) = volume["hostPath"]["path"].as_str() {
            assert!(read_only, "host path {host} must be read-only");
            host_mounts.push((host.to_owned(), path));
        } else if volume["configMap"].is_object() {
            config_dir = Some(path);
        } else if volume["emptyDir"].is_object() && !read_only {
            writable.push(path);
        }
    }
    let resources = &container["resources"];
    Manifest {
        capabilities: strings(&container["securityContext"]["capabilities"]["add"]),
        host_mounts,
        writable,
        config_dir: config_dir.expect("a ConfigMap mount"),
        args: strings(&container["args"]),
        memory_request: quantity_bytes(resources["requests"]["memory"].as_str().expect("request")),
        memory_limit: quantity_bytes(resources["limits"]["memory"].as_str().expect("limit")),
    }
}

fn can_run() -> bool {
    if !ebpf_available() {
        return false;
    }
    let missing: Vec<&str> = [
        ("/usr/bin/python3", "python3"),
        ("/usr/bin/setpriv", "util-linux"),
    ]
    .into_iter()
    .filter(|(path, _)| !Path::new(path).exists())
    .map(|(_, package)| package)
    .collect();
    let ok = missing.is_empty();
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "missing {missing:?} and CI=true forbids skipping"
        );
        eprintln!("skipping: missing {missing:?}");
    }
    ok
}

/// A container removed on drop.
struct Container<'a> {
    engine: &'a image::Engine,
    name: String,
    state: TempDir,
    _config: TempDir,
}

impl Container<'_> {
    fn command(&self) -> Command {
        self.engine.command()
    }

    /// `(running, exit code)`.
    fn status(&self) -> (bool, i64) {
        let text = image::output(
            self.command().args([
                "inspect",
                "-f",
                "{{.State.Running}} {{.State.ExitCode}}",
                &self.name,
            ]),
            "inspect",
        )
        .expect("container inspect");
        let mut words = text.split_whitespace();
        let running = words.next() == Some("true");
        let code = words.next().and_then(|c| c.parse().ok()).unwrap_or(-1);
        (running, code)
    }

    /// stdout and stderr of the container.
    fn logs(&self) -> String {
        let out = self
            .command()
            .args(["logs", &self.name])
            .output()
            .expect("logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The agent's pid on the host.
    fn host_pid(&self) -> u32 {
        image::output(
            self.command()
                .args(["inspect", "-f", "{{.State.Pid}}", &self.name]),
            "inspect pid",
        )
        .expect("pid")
        .trim()
        .parse()
        .expect("numeric pid")
    }

    fn events(&self) -> Vec<Value> {
        let text =
            std::fs::read_to_string(self.state.path().join("events.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for a record of `pid` on `side`, or panics with the logs.
    fn wait_record(&self, what: &str, pid: u32, side: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let events = self.events();
            if let Some(found) = by_pid(&events, pid, side).first() {
                return (*found).clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {side} record of {what} (pid {pid}); {} records; logs:\n{}",
                events.len(),
                tail(&self.logs(), 40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the container has exited; its exit code and logs.
    fn wait_exit(&self, within: Duration) -> (i64, String) {
        let deadline = Instant::now() + within;
        loop {
            let (running, code) = self.status();
            if !running {
                return (code, self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {within:?}; logs:\n{}",
                self.name,
                tail(&self.logs(), 40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if http_get(CONTAINER_PORT, "/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            let (running, code) = self.status();
            assert!(
                running,
                "agent exited ({code}) before ready; logs:\n{}",
                tail(&self.logs(), 40)
            );
            assert!(
                Instant::now() < deadline,
                "agent not ready in 60 s; logs:\n{}",
                tail(&self.logs(), 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .command()
            .args(["rm", "-f", "-t", "5", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The config the test's "ConfigMap" carries: the events log on the
/// writable volume, no Kubernetes API (there is none here), no collector.
/// `listen` is left to the agent's container default.
fn config_toml(state_dir: &str) -> String {
    format!(
        "[kubernetes]\nenabled = false\n\n[export]\nevents_path = \"{state_dir}/events.jsonl\"\n"
    )
}

/// Starts the image as the DaemonSet would, with `capabilities` added after
/// `--cap-drop=all`.
fn start<'a>(
    engine: &'a image::Engine,
    reference: &str,
    manifest: &Manifest,
    capabilities: &[&str],
    tag: &str,
) -> Container<'a> {
    let state = TempDir::new(&format!("image-{tag}"));
    let config = TempDir::new(&format!("image-config-{tag}"));
    let state_dir = manifest.writable.first().expect("a writable volume");
    std::fs::write(config.path().join("config.toml"), config_toml(state_dir)).expect("config");
    let name = format!("tokenscope-e2e-{tag}-{}", std::process::id());
    let mut args: Vec<OsString> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        name.clone().into(),
        "--pid=host".into(),
        "--network=host".into(),
        "--read-only".into(),
        "--cap-drop=all".into(),
    ];
    for capability in capabilities {
        args.push(format!("--cap-add={capability}").into());
    }
    for (host, inside) in &manifest.host_mounts {
        args.push("-v".into());
        args.push(format!("{host}:{inside}:ro").into());
    }
    let mut volume = OsString::from(state.path());
    volume.push(format!(":{state_dir}"));
    args.extend(["-v".into(), volume]);
    let mut volume = OsString::from(config.path());
    volume.push(format!(":{}:ro", manifest.config_dir));
    args.extend(["-v".into(), volume]);
    args.extend(image::RUN_LIMITS.iter().map(OsString::from));
    args.extend(["-e".into(), "NODE_NAME=e2e-node".into()]);
    args.extend(["-e".into(), "TOKENSCOPE_NODE_NAME=e2e-node".into()]);
    args.push(reference.into());
    args.extend(manifest.args.iter().map(OsString::from));
    let _ = engine
        .command()
        .args(["rm", "-f", &name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    image::output(engine.command().args(&args), "starting the container")
        .unwrap_or_else(|e| panic!("{e}"));
    Container {
        engine,
        name,
        state,
        _config: config,
    }
}

fn without<'a>(capabilities: &'a [String], removed: &[&str]) -> Vec<&'a str> {
    for capability in removed {
        assert!(
            capabilities.iter().any(|c| c == capability),
            "the manifest does not grant {capability}"
        );
    }
    capabilities
        .iter()
        .map(String::as_str)
        .filter(|c| !removed.contains(c))
        .collect()
}

/// BPF program and link ids the process holds open (its fdinfo says).
fn bpf_objects(pid: u32) -> (Vec<u64>, Vec<u64>) {
    let mut programs = Vec::new();
    let mut links = Vec::new();
    let dir = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo");
    for entry in dir.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(link) = field("link_id:") {
            links.push(link);
        } else if let Some(program) = field("prog_id:") {
            programs.push(program);
        }
    }
    (programs, links)
}

/// Ids `bpftool <object> show` lists.
fn bpftool_ids(object: &str) -> Vec<u64> {
    let out = image::output(
        Command::new("bpftool").args([object, "show", "-j"]),
        "bpftool",
    )
    .expect("bpftool (apt-get install -y bpftool)");
    let items: Vec<Value> = serde_json::from_str(&out).expect("bpftool JSON");
    items.iter().filter_map(|i| i["id"].as_u64()).collect()
}

/// Process status field in kB, as bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Runs the openai SDK client (root, the system libssl); its pid, and the
/// comm and executable the kernel gives it (the name it was started by, the
/// file that name resolves to).
fn openai_call(base: &str) -> (u32, String, PathBuf) {
    let program = python();
    let child = Command::new(&program)
        .arg(root().join("tests/clients/openai_chat.py"))
        .args([base, "plain"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    let pid = child.id();
    let out = child.wait_with_output().expect("python output");
    assert!(out.status.success(), "openai SDK call failed");
    let comm: String = program
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(15).collect())
        .unwrap_or_default();
    let exe = std::fs::canonicalize(&program).expect("python path");
    (pid, comm, exe)
}

/// A TLS client as user `nobody` whose libssl lives in a directory only
/// `nobody` may enter, as a non-root container's bundled libssl does.
struct PrivateTlsClient {
    dir: TempDir,
}

const NOBODY_CLIENT: &str = "import json, ssl, sys, time, urllib.request\n\
time.sleep(2)\n\
body = json.dumps({'model': 'gpt-4o-mini', 'messages': [{'role': 'user', 'content': 'hi'}]}).encode()\n\
request = urllib.request.Request(sys.argv[1] + '/v1/chat/completions', data=body, headers={'content-type': 'application/json'})\n\
print(urllib.request.urlopen(request, context=ssl._create_unverified_context()).read().decode())\n";

impl PrivateTlsClient {
    fn new() -> PrivateTlsClient {
        let dir = TempDir::new("private-libssl");
        let ldd = run_ok(Command::new("ldd").arg("/usr/bin/curl"));
        for name in ["libssl.so.3", "libcrypto.so.3"] {
            let path = ldd
                .lines()
                .find_map(|l| l.split_once("=>").filter(|(n, _)| n.trim() == name))
                .and_then(|(_, r)| r.split_whitespace().next())
                .unwrap_or_else(|| panic!("curl does not link {name}"));
            std::fs::copy(path, dir.path().join(name)).expect("copy libssl");
        }
        run_ok(
            Command::new("chown")
                .arg("-R")
                .arg("65534:65534")
                .arg(dir.path()),
        );
        run_ok(Command::new("chmod").arg("700").arg(dir.path()));
        PrivateTlsClient { dir }
    }

    /// Makes one call as nobody; its pid.
    fn call(&self, base: &str) -> u32 {
        let mut library_path = OsString::from("LD_LIBRARY_PATH=");
        library_path.push(self.dir.path());
        let child = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "env"])
            .arg(library_path)
            .args(["/usr/bin/python3", "-c", NOBODY_CLIENT, base])
            .stdout(Stdio::piped())
            .spawn()
            .expect("setpriv");
        let pid = child.id();
        let out = child.wait_with_output().expect("nobody client");
        assert!(out.status.success(), "the nobody client failed");
        pid
    }
}

fn plain_call(server: &LlmServer) -> u32 {
    let child = Command::new("curl")
        .args(["-s", "-H", "content-type: application/json", "-d"])
        .arg(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#)
        .arg(format!("{}/v1/chat/completions", server.base()))
        .stdout(Stdio::null())
        .spawn()
        .expect("curl");
    let pid = child.id();
    assert!(child.wait_with_output().expect("curl").status.success());
    pid
}

/// Waits `grace` and asserts no client record of `pid` appeared.
fn assert_not_captured(container: &Container, pid: u32, grace: Duration, why: &str) {
    std::thread::sleep(grace);
    let events = container.events();
    assert!(
        by_pid(&events, pid, "client").is_empty(),
        "{why}: yet pid {pid} was captured"
    );
}

#[test]
fn the_image_runs_as_the_daemonset_with_exactly_its_capabilities() {
    if !can_run() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let engine = image::Engine::detect(&root().join("target/podman")).unwrap_or_else(|e| {
        assert!(std::env::var("CI").is_err(), "{e} (CI=true)");
        panic!("{e}")
    });
    let built = image::build(
        &engine,
        &root().join("deploy/Containerfile"),
        &agent_binary(),
        "e2e",
        &root().join("target/image-e2e"),
        &root().join("target/tokenscope-image-e2e.tar"),
    )
    .unwrap_or_else(|e| panic!("building the image: {e}"));
    eprintln!(
        "image {} built in {:.1} s: OCI archive {} of {:.1} MB",
        built.reference,
        started.elapsed().as_secs_f64(),
        built.archive.display(),
        built.archive_bytes as f64 / 1e6
    );
    let manifest = manifest();
    eprintln!("manifest: {manifest:?}");
    assert!(
        manifest
            .host_mounts
            .iter()
            .any(|(h, _)| h == "/sys/kernel/tracing"),
        "the tracepoints need tracefs"
    );
    assert!(
        TcpListener::bind(("0.0.0.0", CONTAINER_PORT)).is_ok(),
        "port {CONTAINER_PORT} is taken: the container's default listen address needs it"
    );

    // Without SYS_ADMIN (and with BPF and PERFMON), and without all three,
    // `run` fails at load and says which capability is missing.
    for (removed, named) in [
        (&["SYS_ADMIN"][..], "CAP_SYS_ADMIN"),
        (&["BPF", "PERFMON", "SYS_ADMIN"][..], "CAP_BPF"),
    ] {
        let caps = without(&manifest.capabilities, removed);
        let container = start(&engine, &built.reference, &manifest, &caps, "nocap");
        let (code, logs) = container.wait_exit(Duration::from_secs(60));
        assert_ne!(code, 0, "runs without {removed:?}:\n{logs}");
        assert!(
            logs.contains("loading eBPF programs") && logs.contains(named),
            "without {removed:?} the error must name {named}:\n{logs}"
        );
        eprintln!("without {removed:?}: exit {code}, names {named}");
    }

    let tls = LlmServer::start(true);
    let plain = LlmServer::start(false);
    let private = PrivateTlsClient::new();

    // Every manifest capability: real TLS calls from host processes are
    // captured with their tokens and their process.
    let full: Vec<&str> = manifest.capabilities.iter().map(String::as_str).collect();
    let container = start(&engine, &built.reference, &manifest, &full, "full");
    container.wait_ready();
    let logs = container.logs();
    let listening = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["event"] == "listening")
        .unwrap_or_else(|| panic!("no JSON `listening` log line:\n{logs}"));
    assert_eq!(
        listening["addr"],
        format!("0.0.0.0:{CONTAINER_PORT}"),
        "{listening}"
    );
    assert_eq!(listening["level"], "INFO");

    let (pid, comm, exe) = openai_call(&tls.base());
    let record = container.wait_record("openai SDK over TLS", pid, "client");
    assert_eq!(record["input_tokens"], 21, "{record:#}");
    assert_eq!(record["output_tokens"], 7, "{record:#}");
    assert_eq!(record["usage_source"], "reported", "{record:#}");
    assert_eq!(record["request_model"], "gpt-4o-mini", "{record:#}");
    assert_eq!(record["process"]["pid"], pid, "{record:#}");
    assert_eq!(record["process"]["comm"], comm.as_str(), "{record:#}");
    assert_eq!(
        record["process"]["exe"],
        exe.to_string_lossy().as_ref(),
        "{record:#}"
    );
    assert_eq!(
        record["k8s"]["node"], "e2e-node",
        "NODE_NAME reaches the record"
    );
    assert!(!record["tls"].is_null(), "{record:#}");
    let (_, calls) = http_get(CONTAINER_PORT, "/api/v1/calls?limit=1000").expect("/api/v1/calls");
    assert!(
        calls.contains(&format!("\"pid\":{pid}")),
        "the call is not in /api/v1/calls"
    );
    let nobody = private.call(&tls.base());
    let record = container.wait_record("nobody's private libssl", nobody, "client");
    assert!(record["input_tokens"].as_u64().is_some_and(|t| t > 0));

    // Memory under a load of calls: the manifest's request covers the peak.
    let agent_pid = container.host_pid();
    let mut pids = Vec::new();
    for _ in 0..40 {
        pids.push(plain_call(&plain));
    }
    let last = *pids.last().expect("calls");
    container.wait_record("the last of 40 calls", last, "client");
    let peak = status_bytes(agent_pid, "VmHWM:");
    let resident = status_bytes(agent_pid, "VmRSS:");
    eprintln!(
        "agent memory after {} calls: RSS {:.1} MiB, peak {:.1} MiB (manifest: request {} MiB, limit {} MiB)",
        pids.len() + 2,
        resident as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        manifest.memory_request >> 20,
        manifest.memory_limit >> 20
    );
    // The request covers the resident set under load; the limit covers the
    // peak while the probes load (parsing the kernel's BTF), with headroom.
    assert!(
        resident <= manifest.memory_request,
        "resident set over the request"
    );
    assert!(
        manifest.memory_limit >= peak + peak / 2,
        "less than 1.5x the peak under the limit"
    );

    // SIGTERM (what the kubelet sends): exit 0, promptly, every program and
    // link the agent held gone from the kernel.
    let (programs, links) = bpf_objects(agent_pid);
    assert!(!programs.is_empty() && !links.is_empty(), "no probes held");
    let stopping = Instant::now();
    image::output(
        container
            .command()
            .args(["stop", "-t", "30", &container.name]),
        "stop",
    )
    .expect("stop");
    let stop_time = stopping.elapsed();
    let (code, logs) = container.wait_exit(Duration::from_secs(5));
    assert_eq!(code, 0, "SIGTERM exit code; logs:\n{}", tail(&logs, 20));
    assert!(
        stop_time < Duration::from_secs(10),
        "stop took {stop_time:?}"
    );
    let live_programs = bpftool_ids("prog");
    let live_links = bpftool_ids("link");
    assert!(
        programs.iter().all(|p| !live_programs.contains(p)),
        "programs {programs:?} outlive the agent"
    );
    assert!(
        links.iter().all(|l| !live_links.contains(l)),
        "links {links:?} outlive the agent"
    );
    eprintln!(
        "SIGTERM: exit 0 in {:.1} s, {} programs and {} links detached",
        stop_time.as_secs_f64(),
        programs.len(),
        links.len()
    );
    drop(container);

    // Without SYS_PTRACE the agent runs and captures plain HTTP, but cannot
    // read other processes' maps: no TLS library is found.
    let caps = without(&manifest.capabilities, &["SYS_PTRACE"]);
    let container = start(&engine, &built.reference, &manifest, &caps, "noptrace");
    container.wait_ready();
    let (tls_pid, _, _) = openai_call(&tls.base());
    let plain_pid = plain_call(&plain);
    container.wait_record("plain HTTP without SYS_PTRACE", plain_pid, "client");
    assert_not_captured(
        &container,
        tls_pid,
        Duration::from_secs(3),
        "TLS capture without SYS_PTRACE",
    );
    drop(container);

    // Without DAC_READ_SEARCH root's calls are captured, but not those of a
    // process whose libssl is in a directory root may not search.
    let caps = without(&manifest.capabilities, &["DAC_READ_SEARCH"]);
    let container = start(&engine, &built.reference, &manifest, &caps, "nodac");
    container.wait_ready();
    let nobody = private.call(&tls.base());
    let (root_pid, _, _) = openai_call(&tls.base());
    container.wait_record(
        "root's TLS call without DAC_READ_SEARCH",
        root_pid,
        "client",
    );
    assert_not_captured(
        &container,
        nobody,
        Duration::from_secs(3),
        "a private libssl without DAC_READ_SEARCH",
    );
    drop(container);
    eprintln!(
        "image test done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
