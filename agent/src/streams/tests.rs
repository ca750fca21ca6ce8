//! Stream table tests: callers named by their sockets.

use super::*;

fn data(pid: u32, conn_id: u64, local: &str, remote: &str, flow: Flow, bytes: &[u8]) -> Data {
    Data {
        source: Source::Socket,
        flow,
        pid,
        tid: pid,
        conn_id,
        ts_ns: 1_000,
        cgroup_id: 1,
        comm: format!("p{pid}"),
        endpoints: Some(Endpoints {
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
        }),
        call_len: bytes.len() as u32,
        offset: 0,
        rest_lost: false,
        overrun: 0,
        payload: bytes.to_vec(),
    }
}

#[test]
fn a_served_call_names_the_local_process_that_made_it() {
    let request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost:8000\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"model\":\"llama\"}";
    let body =
        r#"{"model":"llama","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#;
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (client, server) = ("127.0.0.1:50000", "127.0.0.1:8000");
    let mut table = StreamTable::new(StreamLimits::default());
    let mut out = Output::default();
    // The client (pid 10) sends; the server (pid 20) receives and answers.
    table.on_data(data(10, 1, client, server, Flow::Egress, request), &mut out);
    table.on_data(
        data(20, 2, server, client, Flow::Ingress, request),
        &mut out,
    );
    table.on_data(
        data(20, 2, server, client, Flow::Egress, response.as_bytes()),
        &mut out,
    );
    table.on_data(
        data(10, 1, client, server, Flow::Ingress, response.as_bytes()),
        &mut out,
    );
    let served: Vec<_> = out
        .calls
        .iter()
        .filter(|(m, _)| m.side == Side::Server)
        .collect();
    assert_eq!(served.len(), 1, "{:?}", out.calls);
    let caller = served[0].0.caller.as_ref().expect("caller named");
    assert_eq!((caller.pid, caller.comm.as_str()), (10, "p10"));
    // The client's own record names no caller.
    assert!(out
        .calls
        .iter()
        .filter(|(m, _)| m.side == Side::Client)
        .all(|(m, _)| m.caller.is_none()));

    // Once the client's socket is closed and the grace period is over, it is forgotten.
    table.on_close(1, 2_000, 0, 0, &mut out);
    table.on_close(2, 2_000, 0, 0, &mut out);
    table.sweep(2_000 + SOCKET_GRACE_NS + 1, &mut out);
    assert!(table.sockets.is_empty());
}

#[test]
fn verdicts_carry_the_time_of_the_latest_event_seen_on_the_connection() {
    // The kernel applies a verdict only to an entry born by then: a socket
    // at a reused address, born later, keeps its own.
    let (client, server) = ("127.0.0.1:50001", "127.0.0.1:8080");
    let mut table = StreamTable::new(StreamLimits::default());
    let mut out = Output::default();
    let mut head = data(
        10,
        7,
        client,
        server,
        Flow::Egress,
        b"GET /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    head.ts_ns = 5_000;
    table.on_data(head, &mut out);
    assert_eq!(
        out.verdicts,
        vec![(
            ConnRef {
                id: 7,
                seen_ns: 5_000
            },
            Verdict::Mute
        )]
    );

    // A TLS connection: the ClientHello arrives in two calls; the verdict
    // comes with the second and carries its time.
    let mut out = Output::default();
    let hello = tls::tests::hello(Some("api.openai.com"));
    let (first, rest) = hello.split_at(20);
    let mut a = data(11, 8, client, server, Flow::Egress, first);
    a.ts_ns = 6_000;
    let mut b = data(11, 8, client, server, Flow::Egress, rest);
    b.ts_ns = 6_500;
    table.on_data(a, &mut out);
    assert!(out.verdicts.is_empty());
    table.on_data(b, &mut out);
    assert_eq!(
        out.verdicts,
        vec![(
            ConnRef {
                id: 8,
                seen_ns: 6_500
            },
            Verdict::Cipher
        )]
    );
}

#[test]
fn a_connection_that_opens_with_a_model_list_stays_captured_for_the_calls_after_it() {
    let (client, server) = ("127.0.0.1:50002", "127.0.0.1:11434");
    for (path, verdict) in [
        ("/v1/models", Verdict::Capture),
        ("/api/tags", Verdict::Capture),
        ("/metrics", Verdict::Mute),
        ("/healthz", Verdict::Mute),
    ] {
        let mut table = StreamTable::new(StreamLimits::default());
        let mut out = Output::default();
        let head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        table.on_data(
            data(10, 9, client, server, Flow::Egress, head.as_bytes()),
            &mut out,
        );
        assert_eq!(
            out.verdicts.iter().map(|v| v.1).collect::<Vec<_>>(),
            vec![verdict],
            "{path}"
        );
    }
}
