//! `tokenscope report` over a real run: the agent with its probes, the real
//! PyPI `openai` and `anthropic` SDK clients against the local LLM server
//! (TLS and plain, a 429, streams), then the report in table, JSON and CSV
//! over the agent's own events, checked against figures computed here from
//! the records and the catalogue prices. Needs root (loads eBPF).

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;
use tokenscope_tests::*;

/// One SDK call: `SDK BASE MODEL plain|stream`. No retries, so one call is one request.
const CLIENT: &str = r#"
import sys
try:
    import httpx2 as httpx  # the SDKs' own HTTP client in their newer releases
except ImportError:
    import httpx
sdk, base, model, mode = sys.argv[1:5]
messages = [{"role": "user", "content": "Say hi"}]
http = httpx.Client(verify=False)
if sdk == "openai":
    import openai
    client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test-SECRET-openai",
                           http_client=http, max_retries=0)
    try:
        if mode == "stream":
            chunks = client.chat.completions.create(
                model=model, messages=messages, stream=True,
                stream_options={"include_usage": True})
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            text = client.chat.completions.create(
                model=model, messages=messages).choices[0].message.content
    except openai.RateLimitError:
        text = "429"
else:
    import anthropic
    client = anthropic.Anthropic(base_url=base, api_key="sk-ant-test-SECRET",
                                 http_client=http, max_retries=0)
    if mode == "stream":
        with client.messages.stream(model=model, max_tokens=64, messages=messages) as s:
            text = "".join(s.text_stream)
    else:
        text = client.messages.create(model=model, max_tokens=64,
                                      messages=messages).content[0].text
print(text)
"#;

fn sdk_call(sdk: &str, base: &str, model: &str, mode: &str) -> u32 {
    let child = Command::new(python())
        .args(["-c", CLIENT, sdk, base, model, mode])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python SDK client");
    let pid = child.id();
    let out = child.wait_with_output().expect("SDK client output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{sdk} {model} {mode}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = if model == "rate-limited" {
        "429"
    } else {
        "Tokens are counted by the provider."
    };
    assert_eq!(stdout.trim(), want, "{sdk} {model} {mode}");
    pid
}

/// USD per 1M tokens (input, output, cache_read, cache_write) from the built-in
/// catalogue file, read here with a parser of its own.
fn catalogue_price(model: &str) -> Option<[f64; 4]> {
    let text = std::fs::read_to_string(root().join("deploy/prices.toml")).expect("prices.toml");
    let header = format!("[models.\"{model}\"]");
    let mut lines = text.lines().skip_while(|l| l.trim() != header);
    lines.next()?;
    let mut fields = BTreeMap::new();
    for line in lines.take_while(|l| !l.trim_start().starts_with('[')) {
        if let Some((k, v)) = line.split_once('=') {
            if let Ok(v) = v.trim().parse::<f64>() {
                fields.insert(k.trim().to_owned(), v);
            }
        }
    }
    let input = *fields.get("input")?;
    Some([
        input,
        *fields.get("output")?,
        *fields.get("cache_read").unwrap_or(&input),
        *fields.get("cache_write").unwrap_or(&input),
    ])
}

/// The price of a record: the response's model first, a `-YYYY-MM-DD` snapshot cut off.
fn record_price(r: &Value) -> Option<[f64; 4]> {
    ["response_model", "request_model"]
        .iter()
        .filter_map(|k| r[*k].as_str())
        .find_map(|name| {
            catalogue_price(name).or_else(|| {
                let cut = name.len().checked_sub(11)?;
                let (base, date) = name.split_at(cut);
                let dated = date.len() == 11
                    && date.starts_with('-')
                    && date[1..].chars().all(|c| c.is_ascii_digit() || c == '-');
                if dated {
                    catalogue_price(base)
                } else {
                    None
                }
            })
        })
}

#[derive(Debug, Default, PartialEq)]
struct Expected {
    calls: u64,
    errors: u64,
    rate_limited: u64,
    input: u64,
    output: u64,
    cached: u64,
    cost_usd: Option<f64>,
    durations: Vec<f64>,
    ttfts: Vec<f64>,
}

/// Nearest-rank percentile.
fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied()
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Per (team, provider, model), computed from the records themselves.
fn expected(records: &[Value]) -> BTreeMap<(String, String, String), Expected> {
    let mut out: BTreeMap<(String, String, String), Expected> = BTreeMap::new();
    for r in records {
        let team = r["team"].as_str().unwrap_or("(none)").to_owned();
        let provider = r["provider"].as_str().expect("provider").to_owned();
        let model = r["request_model"]
            .as_str()
            .or(r["response_model"].as_str())
            .unwrap_or("(none)")
            .to_owned();
        let e = out.entry((team, provider, model)).or_default();
        let status = r["http_status"].as_u64();
        e.calls += 1;
        e.errors += u64::from(!r["error_type"].is_null() || status.is_some_and(|s| s >= 400));
        e.rate_limited +=
            u64::from(status == Some(429) || r["error_type"].as_str() == Some("rate_limited"));
        let (input, output) = (n(&r["input_tokens"]), n(&r["output_tokens"]));
        let (read, write) = (
            n(&r["cache_read_input_tokens"]),
            n(&r["cache_creation_input_tokens"]),
        );
        e.input += input;
        e.output += output;
        e.cached += read;
        e.durations
            .push(r["duration_s"].as_f64().expect("duration_s"));
        e.ttfts.extend(r["ttft_s"].as_f64());
        if let Some([p_in, p_out, p_read, p_write]) = record_price(r) {
            let uncached = input - read - write;
            let usd = (uncached as f64 * p_in
                + read as f64 * p_read
                + write as f64 * p_write
                + output as f64 * p_out)
                / 1e6;
            *e.cost_usd.get_or_insert(0.0) += usd;
        }
    }
    out
}

fn report(args: &[&str]) -> String {
    run_ok(Command::new(agent_binary()).arg("report").args(args))
}

fn close(got: f64, want: f64, tolerance: f64, what: &str) {
    assert!(
        (got - want).abs() <= tolerance,
        "{what}: got {got}, want {want}"
    );
}

#[test]
fn report_over_real_sdk_calls_matches_the_records_and_the_catalogue() {
    if !ebpf_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let plain = LlmServer::start(false);
    let tls = LlmServer::start(true);
    let agent = Agent::start(&[]);
    let (p, t) = (plain.base(), tls.base());

    let pids = [
        sdk_call("openai", &t, "gpt-4o-mini", "plain"),
        sdk_call("openai", &t, "gpt-4o-mini", "stream"),
        sdk_call("openai", &p, "gpt-4o-mini", "stream"),
        sdk_call("openai", &p, "gpt-4o", "plain"),
        sdk_call("openai", &p, "rate-limited", "plain"),
        sdk_call("anthropic", &t, "claude-sonnet-4-5", "stream"),
        sdk_call("anthropic", &p, "claude-sonnet-4-5", "plain"),
        sdk_call("anthropic", &t, "claude-haiku-4-5", "plain"),
    ];
    let calls = [
        "openai TLS gpt-4o-mini plain",
        "openai TLS gpt-4o-mini stream",
        "openai gpt-4o-mini stream",
        "openai gpt-4o plain",
        "openai rate-limited (429)",
        "anthropic TLS claude-sonnet-4-5 stream",
        "anthropic claude-sonnet-4-5 plain",
        "anthropic TLS claude-haiku-4-5 plain",
    ];
    let missing = |r: &[Value]| -> Vec<String> {
        pids.iter()
            .zip(calls)
            .filter(|(pid, _)| by_pid(r, **pid, "client").len() != 1)
            .map(|(pid, what)| {
                let seen = by_pid(r, *pid, "client").len();
                format!("{what} (pid {pid}, {seen} client records)")
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let all = loop {
        let records = agent.records();
        let left = missing(&records);
        if left.is_empty() {
            break records;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no single client record for {left:?} after 40 s; the servers' own records \
             (plain, TLS): {:?}; capture counters:\n{}",
            [&plain, &tls].map(|server| by_pid(&records, server.guard.0.id(), "server")
                .iter()
                .map(|r| r["request_model"].as_str().unwrap_or("?").to_owned())
                .collect::<Vec<_>>()),
            agent
                .get("/metrics")
                .lines()
                .filter(|l| !l.starts_with('#') && l.contains("capture"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    // The probes are node-wide: keep this test's calls only, in file order.
    let mine: Vec<Value> = all
        .iter()
        .filter(|r| r["side"] == "client" && pids.iter().any(|p| r["process"]["pid"] == *p))
        .cloned()
        .collect();
    assert_eq!(mine.len(), pids.len(), "{mine:#?}");
    let text: String = mine.iter().map(|r| format!("{r}\n")).collect();
    for secret in ["SECRET", "sk-test", "sk-ant", "authorization", "x-api-key"] {
        assert!(!text.contains(secret), "{secret} in the events: {text}");
    }
    let dir = TempDir::new("report-sdk");
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, &text).expect("write events");
    // Kept for review: the fixture tests/fixtures/report/sdk_events.jsonl is such a file.
    let _ = std::fs::write(root().join("target/report_sdk_events.jsonl"), &text);
    let events = events.to_str().expect("utf-8 path");

    let want = expected(&mine);
    assert_eq!(want.len(), 5, "{want:#?}");
    let rate_limited = want
        .iter()
        .find(|(k, _)| k.2 == "rate-limited")
        .map(|(_, e)| e)
        .expect("the 429 group");
    assert_eq!(
        (
            rate_limited.calls,
            rate_limited.errors,
            rate_limited.rate_limited
        ),
        (1, 1, 1)
    );
    assert_eq!(rate_limited.cost_usd, None);
    let total_cost: f64 = want.values().filter_map(|e| e.cost_usd).sum();
    assert!(total_cost > 0.0);

    // JSON.
    let json: Value = serde_json::from_str(&report(&["--events", events, "--format", "json"]))
        .expect("report JSON");
    assert_eq!(json["records"], pids.len());
    let groups = json["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), want.len(), "{json:#}");
    for g in groups {
        let key = (
            g["group"]["team"].as_str().expect("team").to_owned(),
            g["group"]["provider"]
                .as_str()
                .expect("provider")
                .to_owned(),
            g["group"]["model"].as_str().expect("model").to_owned(),
        );
        let e = want
            .get(&key)
            .unwrap_or_else(|| panic!("{key:?} not expected"));
        let got = Expected {
            calls: n(&g["calls"]),
            errors: n(&g["errors"]),
            rate_limited: n(&g["rate_limited"]),
            input: n(&g["input_tokens"]),
            output: n(&g["output_tokens"]),
            cached: n(&g["cached_tokens"]),
            cost_usd: g["cost_usd"].as_f64(),
            ..Expected::default()
        };
        assert_eq!(
            (
                got.calls,
                got.errors,
                got.rate_limited,
                got.input,
                got.output,
                got.cached
            ),
            (
                e.calls,
                e.errors,
                e.rate_limited,
                e.input,
                e.output,
                e.cached
            ),
            "{key:?}"
        );
        match (got.cost_usd, e.cost_usd) {
            (Some(g), Some(w)) => close(g, w, 1e-9, &format!("{key:?} cost")),
            (g, w) => assert_eq!(g, w, "{key:?} cost"),
        }
        assert_eq!(
            g["latency_p50_s"].as_f64(),
            percentile(&e.durations, 0.5),
            "{g:#}"
        );
        assert_eq!(
            g["latency_p95_s"].as_f64(),
            percentile(&e.durations, 0.95),
            "{g:#}"
        );
        assert_eq!(
            g["ttft_p95_s"].as_f64(),
            percentile(&e.ttfts, 0.95),
            "{g:#}"
        );
    }
    assert_eq!(n(&json["total"]["rate_limited"]), 1);
    assert_eq!(n(&json["total"]["unpriced_calls"]), 1);
    close(
        json["total"]["cost_usd"].as_f64().expect("total cost"),
        total_cost,
        1e-9,
        "total cost",
    );

    // Table: columns after team, provider, model.
    let table = report(&["--events", events]);
    for ((team, provider, model), e) in &want {
        let row: Vec<&str> = table
            .lines()
            .find(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.get(..3) == Some(&[team.as_str(), provider.as_str(), model.as_str()][..])
            })
            .unwrap_or_else(|| panic!("no row for {model}:\n{table}"))
            .split_whitespace()
            .collect();
        let num = |i: usize| -> u64 { row[i].parse().unwrap_or_else(|_| panic!("{row:?}")) };
        assert_eq!(
            (num(3), num(4), num(5), num(6), num(7), num(8)),
            (
                e.calls,
                e.errors,
                e.rate_limited,
                e.input,
                e.output,
                e.cached
            ),
            "{table}"
        );
        match e.cost_usd {
            Some(usd) => close(row[9].parse().expect("cost"), usd, 5e-7, "table cost"),
            None => assert_eq!(row[9], "-", "{table}"),
        }
    }
    assert!(
        table.starts_with(&format!("{} calls from 1 file(s)", pids.len())),
        "{table}"
    );

    // CSV, by column name.
    let csv = report(&["--events", events, "--format", "csv"]);
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let mut seen = 0;
    for line in lines.take_while(|l| !l.is_empty()) {
        let cells: Vec<&str> = line.split(',').collect();
        if cells[0] == "total" {
            close(
                cells[col("cost_usd")].parse().expect("total"),
                total_cost,
                1e-9,
                "csv total",
            );
            continue;
        }
        let key = (
            cells[0].to_owned(),
            cells[1].to_owned(),
            cells[2].to_owned(),
        );
        let e = want.get(&key).unwrap_or_else(|| panic!("{key:?}"));
        let num = |name: &str| -> u64 { cells[col(name)].parse().expect(name) };
        assert_eq!(
            (
                num("calls"),
                num("errors"),
                num("rate_limited"),
                num("input_tokens"),
                num("output_tokens"),
                num("cached_tokens")
            ),
            (
                e.calls,
                e.errors,
                e.rate_limited,
                e.input,
                e.output,
                e.cached
            ),
            "{csv}"
        );
        match e.cost_usd {
            Some(usd) => close(
                cells[col("cost_usd")].parse().expect("cost"),
                usd,
                1e-9,
                "csv",
            ),
            None => assert_eq!(cells[col("cost_usd")], "", "{csv}"),
        }
        seen += 1;
    }
    assert_eq!(seen, want.len(), "{csv}");

    // What-if: the gpt-4o call repriced at gpt-4o-mini's catalogue prices.
    let json: Value = serde_json::from_str(&report(&[
        "--events",
        events,
        "--format",
        "json",
        "--what-if",
        "gpt-4o=gpt-4o-mini",
    ]))
    .expect("what-if JSON");
    let [m_in, m_out, m_read, m_write] = catalogue_price("gpt-4o-mini").expect("mini price");
    let mut now = 0.0;
    let mut after = 0.0;
    for r in mine.iter().filter(|r| r["request_model"] == "gpt-4o") {
        let (input, output) = (n(&r["input_tokens"]), n(&r["output_tokens"]));
        let (read, write) = (
            n(&r["cache_read_input_tokens"]),
            n(&r["cache_creation_input_tokens"]),
        );
        let [p_in, p_out, p_read, p_write] = record_price(r).expect("gpt-4o price");
        let at = |i: f64, o: f64, cr: f64, cw: f64| {
            ((input - read - write) as f64 * i
                + read as f64 * cr
                + write as f64 * cw
                + output as f64 * o)
                / 1e6
        };
        now += at(p_in, p_out, p_read, p_write);
        after += at(m_in, m_out, m_read, m_write);
    }
    let total = &json["what_if"][0]["total"];
    assert_eq!(n(&total["calls"]), 1, "{json:#}");
    close(
        total["cost_now_usd"].as_f64().expect("now"),
        now,
        1e-12,
        "what-if now",
    );
    close(
        total["cost_after_usd"].as_f64().expect("after"),
        after,
        1e-12,
        "what-if after",
    );
    close(
        total["saving_usd"].as_f64().expect("saving"),
        now - after,
        1e-12,
        "saving",
    );

    // The live agent: its recent calls hold this test's calls (and maybe others').
    let url = format!("http://127.0.0.1:{}", agent.port);
    let live: Value = serde_json::from_str(&report(&[
        "--agent", &url, "--format", "json", "--by", "model",
    ]))
    .expect("live report JSON");
    assert_eq!(live["input"]["agent"], url.as_str());
    assert!(n(&live["records"]) >= pids.len() as u64, "{live:#}");
    for model in ["gpt-4o-mini", "gpt-4o", "rate-limited", "claude-sonnet-4-5"] {
        let mine_calls = want
            .iter()
            .filter(|(k, _)| k.2 == model)
            .map(|(_, e)| e.calls)
            .sum::<u64>();
        let group = live["groups"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["group"]["model"] == model))
            .unwrap_or_else(|| panic!("{model} not in the live report: {live:#}"));
        assert!(n(&group["calls"]) >= mine_calls, "{group:#}");
    }
}
