//! Attribution end to end: the real agent, its real kube-rs client against a
//! fake API server serving recorded pods, and real clients (the openai SDK,
//! curl) run inside real cgroups named as containerd, CRI-O and the cgroupfs
//! driver name them. Off Kubernetes: a client run as a non-root user in a
//! cgroup named like a systemd service. Needs root: it loads eBPF and makes
//! cgroups.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tokenscope_tests::kube::*;
use tokenscope_tests::*;

const CHAT_BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM_BODY: &str = r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;

/// The pid in an exported record.
fn pid_of(r: &Value) -> Option<u64> {
    r["process"]["pid"].as_u64()
}

/// Waits for the one client record of `pid`.
fn client_record(agent: &Agent, what: &str, pid: u32) -> Value {
    let mine = |records: &[Value]| -> Vec<Value> {
        records
            .iter()
            .filter(|r| pid_of(r) == Some(u64::from(pid)) && r["side"] == "client")
            .cloned()
            .collect()
    };
    let records = agent.wait_records(what, |r| !mine(r).is_empty());
    let found = mine(&records);
    assert_eq!(
        found.len(),
        1,
        "{what}: one client record of {pid}: {found:#?}"
    );
    found.into_iter().next().unwrap_or_default()
}

/// Runs a client (`run` returns its pid) until the agent records its call, at
/// most 3 times: this test is about attribution, and on a loaded machine shared
/// with other agents a call is now and then not captured at all.
fn recorded(agent: &Agent, what: &str, run: impl Fn() -> u32) -> Value {
    for _ in 0..2 {
        let pid = run();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let mine: Vec<Value> = agent
                .records()
                .into_iter()
                .filter(|r| pid_of(r) == Some(u64::from(pid)) && r["side"] == "client")
                .collect();
            if !mine.is_empty() {
                assert_eq!(
                    mine.len(),
                    1,
                    "{what}: one client record of {pid}: {mine:#?}"
                );
                return mine.into_iter().next().unwrap_or_default();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("{what}: no record of pid {pid} in 15 s; running it again");
    }
    client_record(agent, what, run())
}

/// curl, run by `cmd` (already inside a cgroup), posting `body`; its pid.
fn curl_in(mut cmd: Command, url: &str, body: &str) -> u32 {
    cmd.args(["-sS", "-H", "content-type: application/json", "-d", body])
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("start curl");
    let pid = child.id();
    let out = child.wait_with_output().expect("curl");
    assert!(
        out.status.success(),
        "curl {pid}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    pid
}

/// What the record says about the pod, checked field by field.
fn assert_pod(r: &Value, pod: &FixturePod, kind: &str, workload: &str, team: &str) {
    let k8s = &r["k8s"];
    assert_eq!(r["container_id"], pod.container_id.as_str(), "{r:#}");
    assert_eq!(k8s["namespace"], pod.namespace.as_str(), "{r:#}");
    assert_eq!(k8s["pod"], pod.name.as_str(), "{r:#}");
    assert_eq!(k8s["pod_uid"], pod.uid.as_str(), "{r:#}");
    assert_eq!(k8s["container"], pod.container.as_str(), "{r:#}");
    assert_eq!(k8s["workload_kind"], kind, "{r:#}");
    assert_eq!(k8s["workload"], workload, "{r:#}");
    assert_eq!(k8s["node"], NODE, "{r:#}");
    assert_eq!(r["team"], team, "{r:#}");
    // A process in a container has its own users: no host user name.
    assert!(r["process"]["user"].is_null(), "{r:#}");
    assert!(r["systemd_unit"].is_null(), "{r:#}");
}

#[test]
fn pods_workloads_and_teams_from_containerd_crio_and_cgroupfs_cgroups() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let api = FakeApi::start();
    let server = LlmServer::start(false);
    let agent = api.start_agent(&[]);
    api.wait_watching();
    let url = format!("{}/v1/chat/completions", server.base());

    // The openai SDK in a containerd container of a Deployment's pod; the
    // team is its namespace's label.
    let chat = api.pod("chat-api-7d9f8b6c5d-x2k4p");
    let chat_cg = PodCgroup::for_pod(CgroupDriver::ContainerdSystemd, &chat);
    let sdk_record = recorded(&agent, "the openai SDK's call", || {
        let sdk = chat_cg
            .command(python())
            .arg(root().join("tests/clients/openai_chat.py"))
            .args([server.base().as_str(), "plain"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the openai client");
        let pid = sdk.id();
        let out = sdk.wait_with_output().expect("openai client");
        assert!(
            out.status.success(),
            "openai client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pid
    });
    assert_eq!(sdk_record["request_model"], "gpt-4o-mini");
    assert_eq!(sdk_record["input_tokens"], 21);
    assert_eq!(sdk_record["output_tokens"], 7);
    assert_pod(&sdk_record, &chat, "Deployment", "chat-api", "ml-platform");
    assert!(
        sdk_record["process"]["comm"]
            .as_str()
            .is_some_and(|c| c.starts_with("python")),
        "{sdk_record:#}"
    );

    // curl in a CRI-O container; the ReplicaSet is not served, so the
    // Deployment is named from the pod-template-hash. The pod's `team`
    // annotation comes before its namespace's label (research-lab).
    let ranker = api.pod("ranker-6b8c9d7f45-t7v2q");
    let ranker_cg = PodCgroup::for_pod(CgroupDriver::CrioSystemd, &ranker);
    let r = recorded(&agent, "curl in a CRI-O container", || {
        curl_in(ranker_cg.command("curl"), &url, CHAT_BODY)
    });
    assert_eq!(r["process"]["comm"], "curl");
    assert_pod(&r, &ranker, "Deployment", "ranker", "search-relevance");

    // cgroupfs driver; a CronJob's pod (through its Job) whose own label names the team.
    let embed = api.pod("embed-nightly-29412360-q8z7m");
    let embed_cg = PodCgroup::for_pod(CgroupDriver::Cgroupfs, &embed);
    let r = recorded(&agent, "curl in a CronJob's pod", || {
        curl_in(embed_cg.command("curl"), &url, CHAT_BODY)
    });
    assert_pod(&r, &embed, "CronJob", "embed-nightly", "nlp");

    // No team label on the pod or on namespace `default`: the namespace name.
    let legacy = api.pod("legacy-worker-7xq2r");
    let legacy_cg = PodCgroup::for_pod(CgroupDriver::ContainerdSystemd, &legacy);
    let r = recorded(&agent, "curl in a pod with no team", || {
        curl_in(legacy_cg.command("curl"), &url, CHAT_BODY)
    });
    assert_pod(&r, &legacy, "ReplicaSet", "legacy-worker", "default");

    // A short-lived client: the test reads curl's first byte of a stream the
    // server sends in 10 ms steps, then closes the pipe, so curl fails its
    // next write and exits before the call ends. Its attribution was taken
    // when it started.
    let vllm = api.pod("vllm-0");
    let vllm_cg = PodCgroup::for_pod(CgroupDriver::CrioSystemd, &vllm);
    let r = recorded(&agent, "the short-lived client's call", || {
        let mut child = vllm_cg
            .command("curl")
            .args([
                "-sN",
                "-H",
                "content-type: application/json",
                "-d",
                STREAM_BODY,
            ])
            .arg(&url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start curl");
        let pid = child.id();
        {
            let mut stdout = child.stdout.take().expect("curl's stdout");
            let mut first = [0u8; 1];
            stdout
                .read_exact(&mut first)
                .expect("the stream's first byte");
        }
        let status = child.wait().expect("curl exits");
        assert!(!status.success(), "curl {pid} stopped early: {status}");
        pid
    });
    // The call ended with the client: cut short, before the server's 7 chunks.
    assert_eq!(r["error_type"], "incomplete", "{r:#}");
    assert!(r["output_chunks"].as_u64().is_some_and(|n| n < 7), "{r:#}");
    assert_pod(&r, &vllm, "StatefulSet", "vllm", "serving");

    // A pod that appears after the agent started, through the watch.
    let added: Value =
        serde_json::from_str(include_str!("../fixtures/k8s/pod-added.json")).expect("pod JSON");
    api.push(Kind::Pod, "ADDED", added);
    let new_pod = api.pod("chat-api-7d9f8b6c5d-p5t6w");
    let new_cg = PodCgroup::for_pod(CgroupDriver::ContainerdSystemd, &new_pod);
    // The watch event reaches the agent asynchronously: call again until the
    // pod is known (each call is a new process, attributed when it starts).
    let deadline = Instant::now() + Duration::from_secs(40);
    let r = loop {
        let pid = curl_in(new_cg.command("curl"), &url, CHAT_BODY);
        let seen = Instant::now() + Duration::from_secs(10);
        let record = loop {
            let found = agent
                .records()
                .into_iter()
                .find(|r| pid_of(r) == Some(u64::from(pid)) && r["side"] == "client");
            if found.is_some() || Instant::now() > seen {
                break found;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        match record {
            Some(r) if !r["k8s"]["pod"].is_null() => break r,
            _ if Instant::now() > deadline => {
                panic!("curl in the added pod: no attributed record in 40 s: {record:#?}")
            }
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    };
    assert_pod(&r, &new_pod, "Deployment", "chat-api", "ml-platform");

    // The pod watch asked only for this node's pods.
    let pod_requests: Vec<ApiRequest> = api
        .requests()
        .into_iter()
        .filter(|r| r.path == Kind::Pod.path())
        .collect();
    assert!(pod_requests.iter().any(ApiRequest::is_watch));
    for request in &pod_requests {
        assert_eq!(
            request.query.get("fieldSelector").map(String::as_str),
            Some("spec.nodeName=node-a"),
            "{request:?}"
        );
    }

    // /api/v1/calls carries the same attribution.
    let calls: Value = serde_json::from_str(&agent.get("/api/v1/calls?limit=1000")).expect("calls");
    let listed = calls["calls"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["container_id"] == embed.container_id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no call of the embed pod in /api/v1/calls: {calls:#}"));
    assert_pod(&listed, &embed, "CronJob", "embed-nightly", "nlp");

    // /metrics: namespace, pod, workload and team labels; never a pod UID.
    let metrics = agent.get("/metrics");
    let series = metrics
        .lines()
        .find(|l| {
            l.starts_with("tokenscope_llm_calls_total{")
                && l.contains(&format!("pod=\"{}\"", ranker.name))
        })
        .unwrap_or_else(|| panic!("no call series of the ranker pod:\n{metrics}"));
    for label in [
        "namespace=\"research\"",
        "workload=\"ranker\"",
        "team=\"search-relevance\"",
        "node=\"node-a\"",
    ] {
        assert!(series.contains(label), "{label} missing: {series}");
    }
    for uid in [&chat.uid, &ranker.uid, &embed.uid, &legacy.uid, &vllm.uid] {
        assert!(!metrics.contains(uid.as_str()), "a pod UID in /metrics");
    }
    assert!(!metrics.contains("pod_uid"), "a pod_uid label in /metrics");
}

/// The agent, off Kubernetes, with team rules for units and users.
fn agent_with_teams(dir: &TempDir) -> Agent {
    let config = dir.path().join("tokenscope.toml");
    std::fs::write(
        &config,
        "[teams]\nunits = { \"demo-client.service\" = \"research\" }\nusers = { \"tokenscope-demo\" = \"nlp\" }\n",
    )
    .expect("write config");
    let config = config.display().to_string();
    Agent::start(&["--config", &config])
}

#[test]
fn off_kubernetes_the_systemd_unit_user_and_configured_team() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (uid, _) = ensure_user("tokenscope-demo");
    let server = LlmServer::start(false);
    let dir = TempDir::new("teams");
    let agent = agent_with_teams(&dir);
    let url = format!("{}/v1/chat/completions", server.base());

    // A service's client, as a non-root user: the unit's team.
    let unit = PodCgroup::at("/system.slice/demo-client.service");
    let r = recorded(&agent, "curl in demo-client.service", || {
        curl_in(unit.command_as("tokenscope-demo", "curl"), &url, CHAT_BODY)
    });
    assert_eq!(r["systemd_unit"], "demo-client.service", "{r:#}");
    assert_eq!(r["process"]["user"], "tokenscope-demo", "{r:#}");
    assert_eq!(r["process"]["uid"], uid, "{r:#}");
    assert_eq!(r["team"], "research", "{r:#}");
    assert!(r["container_id"].is_null(), "{r:#}");
    assert!(
        r["k8s"]["pod"].is_null() && r["k8s"]["namespace"].is_null(),
        "{r:#}"
    );
    assert_eq!(r["input_tokens"], 21);

    // Another unit with no team of its own: the user's team.
    let other = PodCgroup::at("/system.slice/batch-report.service");
    let r = recorded(&agent, "curl in batch-report.service", || {
        curl_in(other.command_as("tokenscope-demo", "curl"), &url, CHAT_BODY)
    });
    assert_eq!(r["systemd_unit"], "batch-report.service", "{r:#}");
    assert_eq!(r["team"], "nlp", "{r:#}");

    // Root in a unit without a rule: unit and user, no team.
    let root_unit = PodCgroup::at("/system.slice/cron.service");
    let r = recorded(&agent, "curl as root in cron.service", || {
        curl_in(root_unit.command("curl"), &url, CHAT_BODY)
    });
    assert_eq!(r["systemd_unit"], "cron.service", "{r:#}");
    assert_eq!(r["process"]["user"], "root", "{r:#}");
    assert_eq!(r["process"]["uid"], 0, "{r:#}");
    assert!(r["team"].is_null(), "{r:#}");

    let metrics = agent.get("/metrics");
    assert!(
        metrics.lines().any(
            |l| l.starts_with("tokenscope_llm_calls_total{") && l.contains("team=\"research\"")
        ),
        "no series of team research:\n{metrics}"
    );
}
