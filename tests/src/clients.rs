//! Chat clients the capture tests run, and the checks on what the agent
//! made of their calls.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{by_pid, python, root, Agent};

/// Runs a client to completion; returns its pid.
pub fn run_client(mut cmd: Command, what: &str) -> u32 {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let pid = child.id();
    let out = child.wait_with_output().expect("client output");
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    pid
}

pub fn stdlib(base: &str, mode: &str, models: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(root().join("tests/clients/stdlib_chat.py"))
        .args([base, mode])
        .args(models);
    cmd
}

/// Waits for exactly `models.len()` client records of `pid` and checks they
/// are those calls, in that order, each with the server's exact usage.
pub fn calls_in_order(agent: &Agent, what: &str, pid: u32, models: &[&str]) -> Vec<Value> {
    agent.wait_records(what, |r| by_pid(r, pid, "client").len() >= models.len());
    // A late duplicate would show up here.
    std::thread::sleep(Duration::from_millis(500));
    let records = agent.records();
    let mine: Vec<Value> = by_pid(&records, pid, "client")
        .into_iter()
        .cloned()
        .collect();
    let seen: Vec<&str> = mine
        .iter()
        .map(|r| r["request_model"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(seen, models, "{what}: one record per call, in order");
    for pair in mine.windows(2) {
        assert!(
            pair[0]["start_time_unix_nano"].as_u64() < pair[1]["start_time_unix_nano"].as_u64(),
            "{what}: records out of order: {pair:#?}"
        );
    }
    for r in &mine {
        assert_eq!(r["input_tokens"], 21, "{what}: {r:#}");
        assert_eq!(r["output_tokens"], 7, "{what}: {r:#}");
        assert_eq!(r["cache_read_input_tokens"], 4, "{what}: {r:#}");
        assert_eq!(r["usage_source"], "reported", "{what}: {r:#}");
        assert_eq!(r["http_status"], 200, "{what}: {r:#}");
        assert_eq!(r["process"]["pid"], pid, "{what}: {r:#}");
    }
    mine
}

pub fn python_comm(r: &Value) -> bool {
    r["process"]["comm"]
        .as_str()
        .is_some_and(|c| c.starts_with("python"))
}
