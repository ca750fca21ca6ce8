//! Include/exclude filters by process name, port and cgroup, applied in the
//! kernel: filtered traffic is never copied to user space, and is counted.
//! Needs root.

use std::{process::Command, time::Duration};

use tokenscope_tests::*;

fn curl_plain(port: u16) -> u32 {
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let child = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-H",
            "content-type: application/json",
            "-d",
            body,
            &format!("http://127.0.0.1:{port}/v1/chat/completions"),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("curl");
    let pid = child.id();
    assert!(child.wait_with_output().expect("curl").status.success());
    pid
}

fn filtered(agent: &Agent) -> u64 {
    agent
        .get("/metrics")
        .lines()
        .find(|l| l.starts_with("tokenscope_capture_kernel_total{counter=\"filtered\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

fn agent_with(dir: &TempDir, toml: &str) -> Agent {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, toml).expect("config");
    Agent::start(&["--config", path.to_str().expect("utf-8")])
}

#[test]
fn excluded_ports_and_names_are_never_captured() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let excluded = LlmServer::start(false);
    let kept = LlmServer::start(false);
    let dir = TempDir::new("filters");
    let agent = agent_with(
        &dir,
        &format!(
            "[capture]\nexclude_ports = [{}]\nexclude_comms = [\"wget\"]\n",
            excluded.port
        ),
    );
    let before = filtered(&agent);

    let skipped = curl_plain(excluded.port);
    let seen = curl_plain(kept.port);
    agent.wait_records("curl to the kept port", |r| {
        !by_pid(r, seen, "client").is_empty()
    });
    // The kept port is captured on both sides; the excluded one on neither.
    let records = agent.records();
    assert!(by_pid(&records, skipped, "client").is_empty());
    assert!(
        records.iter().all(|r| r["server_port"] != excluded.port),
        "a call to the excluded port was recorded"
    );
    // The server's own socket and the client's both met the filter.
    // Counters are published once a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while filtered(&agent) < before + 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = filtered(&agent);
    assert!(
        after >= before + 2,
        "filtered counter went from {before} to {after}"
    );

    // wget is excluded by name, whichever port it calls: curl copied under
    // that name (the kernel's comm is the executable's file name).
    let wget_path = dir.path().join("wget");
    std::fs::copy("/usr/bin/curl", &wget_path).expect("copy curl");
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let wget = Command::new(&wget_path)
        .args([
            "-s",
            "--max-time",
            "10",
            "-H",
            "content-type: application/json",
            "-d",
            body,
            &format!("http://127.0.0.1:{}/v1/chat/completions", kept.port),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("curl as wget");
    let wget_pid = wget.id();
    assert!(wget.wait_with_output().expect("wget").status.success());
    // The server side of that call is still captured (its name is not excluded).
    std::thread::sleep(Duration::from_secs(2));
    let records = agent.records();
    assert!(
        by_pid(&records, wget_pid, "client").is_empty(),
        "an excluded process name was captured"
    );
}

#[test]
fn include_lists_keep_only_the_named_processes_and_cgroups() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = LlmServer::start(false);
    // A cgroup of the test's own, in the v2 hierarchy.
    let v2 = if std::path::Path::new("/sys/fs/cgroup/unified").is_dir() {
        "/sys/fs/cgroup/unified"
    } else {
        "/sys/fs/cgroup"
    };
    let cgroup = std::path::PathBuf::from(format!("{v2}/tokenscope-filter-{}", std::process::id()));
    std::fs::create_dir_all(&cgroup).expect("cgroup");
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _cleanup = Cleanup(cgroup.clone());

    let dir = TempDir::new("filters-include");
    let agent = agent_with(
        &dir,
        &format!("[capture]\ninclude_cgroups = [\"{}\"]\n", cgroup.display()),
    );
    // Outside the cgroup: not captured, on either side (the server is outside too).
    let outside = curl_plain(server.port);
    // Inside it: captured.
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec curl -s --max-time 10 -H 'content-type: application/json' -d '{body}' http://127.0.0.1:{}/v1/chat/completions",
        cgroup.display(),
        server.port
    );
    let inside = Command::new("sh")
        .args(["-c", &script])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sh");
    let inside_pid = inside.id();
    assert!(inside.wait_with_output().expect("sh").status.success());
    let records = agent.wait_records("curl inside the included cgroup", |r| {
        !by_pid(r, inside_pid, "client").is_empty()
    });
    assert!(by_pid(&records, outside, "client").is_empty());
    // The server is outside the cgroup: its side is filtered out.
    assert!(
        records.iter().all(|r| r["side"] == "client"),
        "{records:#?}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(filtered(&agent) > 0, "nothing counted as filtered");
}
