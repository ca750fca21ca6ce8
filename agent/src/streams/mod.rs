//! Per-connection reassembly: orders each call's chunks, turns what capture
//! lost into gaps, decides which peer is the client, and drives the protocol
//! parser and call assembler. Pure: events in, calls and verdicts out.

pub mod tls;

use std::collections::HashMap;

use crate::{
    events::{Data, Endpoints, Flow, Source},
    protocols::{
        detect::PREFACE,
        event::{Direction, HttpEvent},
        sniff, HttpParser, Limits as ParseLimits, Sniff,
    },
    providers::{provider_for_host, CallAssembler, Limits as AssembleLimits},
    record::{LlmCall, Side},
};

/// Bounds of the stream table.
#[derive(Clone, Debug)]
pub struct StreamLimits {
    /// Connections tracked at once; the least recently used one is dropped past it.
    pub max_connections: usize,
    /// A connection with no bytes for this long is closed.
    pub idle_ns: u64,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_connections: 4096,
            idle_ns: 300_000_000_000,
        }
    }
}

/// Counters of what the stream layer dropped or decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub connections: u64,
    pub not_http: u64,
    pub not_llm: u64,
    pub evicted: u64,
    pub idle_closed: u64,
    pub gaps: u64,
    pub gap_bytes: u64,
    pub calls: u64,
}

/// What a connection is known to be.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnMeta {
    pub conn_id: u64,
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub side: Side,
    /// The TLS library the plaintext came from; `None` for plain text.
    pub tls: Option<&'static str>,
    pub endpoints: Option<Endpoints>,
    /// Server name from the HTTP `Host` / `:authority`, when known.
    pub authority: Option<String>,
    /// Served calls: the local process whose socket is this connection's
    /// peer (a client on the same node), when the agent saw it.
    pub caller: Option<LocalPeer>,
}

/// A process on this node, by the socket it owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPeer {
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
}

/// A connection as user space last saw it: its id and the kernel time of
/// its latest event. Ids are addresses the kernel and libraries reuse, so a
/// change to the kernel's entry must not reach a connection born later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRef {
    pub id: u64,
    pub seen_ns: u64,
}

/// What the table asks of the rest of the agent.
#[derive(Debug, Default)]
pub struct Output {
    pub calls: Vec<(ConnMeta, LlmCall)>,
    /// Verdicts to write to the kernel's map, per connection.
    pub verdicts: Vec<(ConnRef, Verdict)>,
    /// TLS connections to AI endpoints whose plaintext was out of reach.
    pub endpoints: Vec<EndpointRecord>,
    /// Connections whose kernel state can be forgotten.
    pub forget: Vec<ConnRef>,
    /// What `tokenscope capture` shows: filled only when the table taps.
    pub tapped: Vec<Tapped>,
}

/// What the kernel does with a connection's next bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// LLM traffic: capture it whole.
    Capture,
    /// Anything else: copy nothing.
    Mute,
    /// TLS ciphertext: copy nothing, count the bytes, link it to its SSL calls.
    Cipher,
}

/// A TLS connection to an AI endpoint that no TLS probe decrypted (Java,
/// rustls, a static binary without symbols): who talked to which endpoint,
/// how much and for how long.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointRecord {
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// The server name from the ClientHello.
    pub server_name: String,
    pub endpoints: Option<Endpoints>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// A copy of what the table reassembled, for debugging (`tokenscope capture`).
#[derive(Clone, Debug)]
pub enum Tapped {
    /// Bytes of a connection, in order, plaintext for TLS.
    Bytes {
        conn_id: u64,
        pid: u32,
        flow: Flow,
        bytes: Vec<u8>,
    },
    /// Bytes the capture lost at this point of the stream.
    Gap {
        conn_id: u64,
        pid: u32,
        flow: Flow,
        lost: u64,
    },
    /// A request or response head, as the parser read it.
    Head {
        meta: ConnMeta,
        event: Box<HttpEvent>,
    },
}

#[derive(Default)]
struct Cursor {
    call_len: u64,
    pos: u64,
    open: bool,
}

enum Phase {
    /// Not enough bytes yet to tell.
    Sniffing(Vec<u8>, Flow),
    Http {
        parser: Box<HttpParser>,
        assembler: Box<CallAssembler>,
        decided: bool,
    },
    /// A TLS connection: its handshake is read for the server name, then
    /// only its size is counted.
    Tls {
        hello: Vec<u8>,
        server_name: Option<String>,
        first_ts: u64,
        seen: [u64; 2],
    },
    Ignored,
}

struct Conn {
    meta: ConnMeta,
    phase: Phase,
    cursors: [Cursor; 2],
    last_ts: u64,
    http_events: Vec<HttpEvent>,
}

impl Conn {
    fn conn_ref(&self) -> ConnRef {
        ConnRef {
            id: self.meta.conn_id,
            seen_ns: self.last_ts,
        }
    }
}

pub struct StreamTable {
    conns: HashMap<u64, Conn>,
    /// TLS: socket → SSL objects riding on it, and each SSL object's endpoints.
    ssl_by_sock: HashMap<u64, Vec<u64>>,
    ssl_endpoints: HashMap<u64, Endpoints>,
    limits: StreamLimits,
    stats: StreamStats,
    tap: bool,
    /// Hosts beyond the shipped list whose TLS connections make endpoint records.
    endpoint_hosts: Vec<String>,
    /// Local socket address → the process that owns it, its connection id,
    /// and when that connection closed: names the caller of a served call.
    sockets: HashMap<std::net::SocketAddr, (LocalPeer, u64, Option<u64>)>,
}

/// How long a closed connection's owner stays known to its peer's calls.
const SOCKET_GRACE_NS: u64 = 5_000_000_000;

const SNIFF_MAX: usize = 64;

impl StreamTable {
    pub fn new(limits: StreamLimits) -> StreamTable {
        StreamTable {
            conns: HashMap::new(),
            ssl_by_sock: HashMap::new(),
            ssl_endpoints: HashMap::new(),
            limits,
            stats: StreamStats::default(),
            tap: false,
            endpoint_hosts: Vec::new(),
            sockets: HashMap::new(),
        }
    }

    /// Remembers who owns a local socket address.
    fn own_socket(&mut self, ep: Endpoints, conn_id: u64, pid: u32, comm: &str, cgroup_id: u64) {
        if self.sockets.len() >= self.limits.max_connections * 2 {
            return;
        }
        let peer = LocalPeer {
            pid,
            comm: comm.to_string(),
            cgroup_id,
        };
        self.sockets.insert(ep.local, (peer, conn_id, None));
    }

    /// Names the local caller of each served call pushed since `from`.
    fn fill_callers(&self, out: &mut Output, from: usize) {
        for (meta, _) in out.calls.iter_mut().skip(from) {
            if meta.side != Side::Server || meta.caller.is_some() {
                continue;
            }
            if let Some(ep) = meta.endpoints {
                meta.caller = self
                    .sockets
                    .get(&ep.remote)
                    .filter(|(peer, _, _)| peer.pid != meta.pid)
                    .map(|(peer, _, _)| peer.clone());
            }
        }
    }

    /// Extra AI endpoint hosts (and their subdomains) for endpoint records.
    pub fn set_endpoint_hosts(&mut self, hosts: Vec<String>) {
        self.endpoint_hosts = hosts;
    }

    /// Copies every reassembled byte and head into [`Output::tapped`].
    pub fn set_tap(&mut self, on: bool) {
        self.tap = on;
    }

    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn on_tls_link(&mut self, ssl: u64, sock: u64, endpoints: Option<Endpoints>) {
        let ssls = self.ssl_by_sock.entry(sock).or_default();
        if !ssls.contains(&ssl) && ssls.len() < 16 {
            ssls.push(ssl);
        }
        if let Some(ep) = endpoints {
            if self.ssl_endpoints.len() < self.limits.max_connections * 2 {
                self.ssl_endpoints.insert(ssl, ep);
            }
            if let Some(conn) = self.conns.get_mut(&ssl) {
                conn.meta.endpoints = Some(ep);
            }
        }
    }

    pub fn on_data(&mut self, data: Data, out: &mut Output) {
        let from = out.calls.len();
        self.on_data_inner(data, out);
        self.fill_callers(out, from);
    }

    fn on_data_inner(&mut self, data: Data, out: &mut Output) {
        if !self.conns.contains_key(&data.conn_id) {
            if let (Source::Socket, Some(ep)) = (data.source, data.endpoints) {
                self.own_socket(ep, data.conn_id, data.pid, &data.comm, data.cgroup_id);
            }
            if self.conns.len() >= self.limits.max_connections {
                self.evict_oldest(data.ts_ns, out);
            }
            self.stats.connections += 1;
            let endpoints = match data.source {
                Source::Socket => data.endpoints,
                Source::Tls(_) => self.ssl_endpoints.get(&data.conn_id).copied(),
            };
            self.conns.insert(
                data.conn_id,
                Conn {
                    meta: ConnMeta {
                        conn_id: data.conn_id,
                        pid: data.pid,
                        comm: data.comm.clone(),
                        cgroup_id: data.cgroup_id,
                        side: Side::Client,
                        tls: match data.source {
                            Source::Tls(kind) => Some(crate::events::tls_library_name(kind)),
                            Source::Socket => None,
                        },
                        endpoints,
                        authority: None,
                        caller: None,
                    },
                    phase: Phase::Sniffing(Vec::new(), data.flow),
                    cursors: Default::default(),
                    last_ts: data.ts_ns,
                    http_events: Vec::new(),
                },
            );
        }
        let Some(conn) = self.conns.get_mut(&data.conn_id) else {
            return;
        };
        conn.last_ts = data.ts_ns;
        let flow_index = usize::from(data.flow == Flow::Ingress);
        let cursor = &mut conn.cursors[flow_index];

        // Chunks of one call arrive in order; a new call or a jump means lost bytes.
        let mut gap_before = 0u64;
        if data.offset == 0 {
            if cursor.open && cursor.pos < cursor.call_len {
                gap_before = cursor.call_len - cursor.pos;
            }
            *cursor = Cursor {
                call_len: u64::from(data.call_len),
                pos: 0,
                open: true,
            };
        } else if cursor.open && u64::from(data.offset) > cursor.pos {
            gap_before = u64::from(data.offset) - cursor.pos;
            cursor.pos = u64::from(data.offset);
        }
        cursor.pos += data.payload.len() as u64;
        let mut gap_after = 0u64;
        if data.rest_lost {
            gap_after = cursor.call_len.saturating_sub(cursor.pos);
            cursor.open = false;
        } else if cursor.pos >= cursor.call_len {
            cursor.open = false;
        }

        if gap_before > 0 {
            feed_gap(conn, data.flow, data.ts_ns, gap_before, &mut self.stats);
        }
        feed(
            conn,
            data.flow,
            data.ts_ns,
            &data.payload,
            &mut self.stats,
            out,
        );
        if gap_after > 0 {
            feed_gap(conn, data.flow, data.ts_ns, gap_after, &mut self.stats);
        }
        // TLS ciphertext is never shown: its plaintext comes from the TLS probes.
        if self.tap && !matches!(conn.phase, Phase::Tls { .. }) {
            let (conn_id, pid, flow) = (data.conn_id, conn.meta.pid, data.flow);
            if gap_before > 0 {
                out.tapped.push(Tapped::Gap {
                    conn_id,
                    pid,
                    flow,
                    lost: gap_before,
                });
            }
            out.tapped.push(Tapped::Bytes {
                conn_id,
                pid,
                flow,
                bytes: data.payload.to_vec(),
            });
            if gap_after > 0 {
                out.tapped.push(Tapped::Gap {
                    conn_id,
                    pid,
                    flow,
                    lost: gap_after,
                });
            }
        }
        drain(conn, &mut self.stats, self.tap, out);
        if matches!(conn.phase, Phase::Ignored) {
            // Keep a tombstone so later bytes (if any slip through) are not re-sniffed.
            conn.http_events.clear();
        }
    }

    /// A socket closed: close it and every SSL object riding on it. `sent`
    /// and `received` are the ciphertext bytes the kernel counted.
    pub fn on_close(
        &mut self,
        conn_id: u64,
        ts_ns: u64,
        sent: u64,
        received: u64,
        out: &mut Output,
    ) {
        let from = out.calls.len();
        self.on_close_inner(conn_id, ts_ns, sent, received, out);
        self.fill_callers(out, from);
    }

    fn on_close_inner(
        &mut self,
        conn_id: u64,
        ts_ns: u64,
        sent: u64,
        received: u64,
        out: &mut Output,
    ) {
        let decrypted = self.ssl_by_sock.contains_key(&conn_id);
        if let Some(conn) = self.conns.get(&conn_id) {
            if let Phase::Tls {
                server_name: Some(name),
                first_ts,
                seen,
                ..
            } = &conn.phase
            {
                if !decrypted
                    && conn.meta.side == Side::Client
                    && tls::is_ai_endpoint(name, &self.endpoint_hosts)
                {
                    out.endpoints.push(EndpointRecord {
                        pid: conn.meta.pid,
                        comm: conn.meta.comm.clone(),
                        cgroup_id: conn.meta.cgroup_id,
                        server_name: name.clone(),
                        endpoints: conn.meta.endpoints,
                        start_ns: *first_ts,
                        end_ns: ts_ns,
                        bytes_sent: seen[0] + sent,
                        bytes_received: seen[1] + received,
                    });
                }
            }
        }
        self.close_one(conn_id, ts_ns, out);
        if let Some(ssls) = self.ssl_by_sock.remove(&conn_id) {
            for ssl in ssls {
                self.ssl_endpoints.remove(&ssl);
                self.close_one(ssl, ts_ns, out);
            }
        }
    }

    /// A process exited: its SSL objects are gone too.
    pub fn on_exit(&mut self, pid: u32, ts_ns: u64, out: &mut Output) {
        let from = out.calls.len();
        self.on_exit_inner(pid, ts_ns, out);
        self.fill_callers(out, from);
    }

    fn on_exit_inner(&mut self, pid: u32, ts_ns: u64, out: &mut Output) {
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.meta.pid == pid && c.meta.tls.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.ssl_endpoints.remove(&id);
            self.close_one(id, ts_ns, out);
        }
    }

    /// Closes connections idle for longer than the limit.
    pub fn sweep(&mut self, now_ns: u64, out: &mut Output) {
        let from = out.calls.len();
        self.sweep_inner(now_ns, out);
        self.fill_callers(out, from);
        // Owners of closed sockets are forgotten after a grace period.
        self.sockets.retain(|_, (_, _, closed)| {
            closed.is_none_or(|t| now_ns.saturating_sub(t) < SOCKET_GRACE_NS)
        });
    }

    fn sweep_inner(&mut self, now_ns: u64, out: &mut Output) {
        let idle = self.limits.idle_ns;
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| now_ns.saturating_sub(c.last_ts) > idle)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.stats.idle_closed += 1;
            self.close_one(id, now_ns, out);
        }
    }

    fn evict_oldest(&mut self, ts_ns: u64, out: &mut Output) {
        let oldest = self
            .conns
            .iter()
            .min_by_key(|(_, c)| c.last_ts)
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.stats.evicted += 1;
            self.close_one(id, ts_ns, out);
        }
    }

    fn close_one(&mut self, conn_id: u64, ts_ns: u64, out: &mut Output) {
        let Some(mut conn) = self.conns.remove(&conn_id) else {
            return;
        };
        if let Some(ep) = conn.meta.endpoints {
            if let Some(entry) = self.sockets.get_mut(&ep.local) {
                if entry.1 == conn_id {
                    entry.2 = Some(ts_ns);
                }
            }
        }
        if let Phase::Http {
            parser, assembler, ..
        } = &mut conn.phase
        {
            let mut events = std::mem::take(&mut conn.http_events);
            parser.close(ts_ns, &mut events);
            let mut calls = Vec::new();
            for ev in events {
                assembler.on_event(ev, &mut calls);
            }
            assembler.close(ts_ns, &mut calls);
            for call in calls {
                self.stats.calls += 1;
                out.calls.push((conn.meta.clone(), call));
            }
        }
        // The kernel forgets a socket itself when it closes; an SSL object has
        // no close it can see, and its address is soon reused by the next one.
        if conn.meta.tls.is_some() {
            out.forget.push(conn.conn_ref());
        }
    }
}

fn direction(side: Side, flow: Flow) -> Direction {
    match (side, flow) {
        (Side::Client, Flow::Egress) | (Side::Server, Flow::Ingress) => Direction::FromClient,
        _ => Direction::FromServer,
    }
}

fn start_http(conn: &mut Conn, side: Side) {
    conn.meta.side = side;
    conn.phase = Phase::Http {
        parser: Box::new(HttpParser::new(ParseLimits::default())),
        assembler: Box::new(CallAssembler::new(AssembleLimits::default())),
        decided: false,
    };
}

fn feed(
    conn: &mut Conn,
    flow: Flow,
    ts_ns: u64,
    bytes: &[u8],
    stats: &mut StreamStats,
    out: &mut Output,
) {
    if let Phase::Sniffing(buf, first_flow) = &mut conn.phase {
        if *first_flow != flow {
            // The other peer spoke first with too few bytes to tell: start over from this side.
            buf.clear();
            *first_flow = flow;
        }
        // Only a handful of bytes are ever held: sniffing decides within SNIFF_MAX.
        buf.extend_from_slice(bytes);
        if tls::looks_tls(&buf[..buf.len().min(3)]) {
            let hello = std::mem::take(buf);
            let seen = if flow == Flow::Egress {
                [hello.len() as u64, 0]
            } else {
                [0, hello.len() as u64]
            };
            conn.meta.side = if flow == Flow::Egress {
                Side::Client
            } else {
                Side::Server
            };
            conn.phase = Phase::Tls {
                hello,
                server_name: None,
                first_ts: ts_ns,
                seen,
            };
            read_hello(conn, out);
            return;
        }
        let side = match sniff(buf) {
            Sniff::NeedMore if buf.len() < SNIFF_MAX => return,
            Sniff::LooksHttp2 if !buf.starts_with(PREFACE) => {
                // Frames without the preface: capture began mid-connection and
                // either peer may have spoken first. Ephemeral ports are clients'.
                match conn.meta.endpoints {
                    Some(ep) if ep.local.port() >= 32768 && ep.remote.port() < 32768 => {
                        Side::Client
                    }
                    Some(ep) if ep.remote.port() >= 32768 && ep.local.port() < 32768 => {
                        Side::Server
                    }
                    _ => {
                        stats.not_http += 1;
                        conn.phase = Phase::Ignored;
                        out.verdicts.push((conn.conn_ref(), Verdict::Mute));
                        return;
                    }
                }
            }
            Sniff::LooksHttp1Request | Sniff::LooksHttp2 => {
                if flow == Flow::Egress {
                    Side::Client
                } else {
                    Side::Server
                }
            }
            Sniff::LooksHttp1Response => {
                if flow == Flow::Egress {
                    Side::Server
                } else {
                    Side::Client
                }
            }
            _ => {
                stats.not_http += 1;
                conn.phase = Phase::Ignored;
                out.verdicts.push((conn.conn_ref(), Verdict::Mute));
                return;
            }
        };
        let buffered = std::mem::take(buf);
        start_http(conn, side);
        if let Phase::Http { parser, .. } = &mut conn.phase {
            parser.feed(
                direction(side, flow),
                ts_ns,
                &buffered,
                &mut conn.http_events,
            );
        }
        return;
    }
    if let Phase::Tls { hello, seen, .. } = &mut conn.phase {
        seen[usize::from(flow == Flow::Ingress)] += bytes.len() as u64;
        if !hello.is_empty() && hello.len() < tls::HELLO_MAX {
            let room = tls::HELLO_MAX - hello.len();
            hello.extend_from_slice(&bytes[..bytes.len().min(room)]);
            read_hello(conn, out);
        }
        return;
    }
    let side = conn.meta.side;
    if let Phase::Http { parser, .. } = &mut conn.phase {
        parser.feed(direction(side, flow), ts_ns, bytes, &mut conn.http_events);
    }
}

/// Reads the server name once the ClientHello is whole, then hands the
/// socket to the kernel as ciphertext (counted, linked, never copied).
fn read_hello(conn: &mut Conn, out: &mut Output) {
    let Phase::Tls {
        hello, server_name, ..
    } = &mut conn.phase
    else {
        return;
    };
    let name = match tls::client_hello(hello) {
        tls::Hello::NeedMore if hello.len() < tls::HELLO_MAX => return,
        tls::Hello::Client(name) => name,
        _ => None,
    };
    *server_name = name;
    *hello = Vec::new();
    out.verdicts.push((conn.conn_ref(), Verdict::Cipher));
}

fn feed_gap(conn: &mut Conn, flow: Flow, ts_ns: u64, lost: u64, stats: &mut StreamStats) {
    stats.gaps += 1;
    stats.gap_bytes += lost;
    let side = conn.meta.side;
    match &mut conn.phase {
        Phase::Http { parser, .. } => {
            parser.gap(direction(side, flow), ts_ns, lost, &mut conn.http_events)
        }
        Phase::Sniffing(..) => conn.phase = Phase::Ignored,
        Phase::Tls { .. } | Phase::Ignored => {}
    }
}

fn is_llm_path(path: &str) -> bool {
    const MARKERS: [&str; 12] = [
        "/chat/completions",
        "/completions",
        "/embeddings",
        "/responses",
        "/messages",
        ":generateContent",
        ":streamGenerateContent",
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/openai/deployments/",
        "/generate",
    ];
    MARKERS.iter().any(|m| path.contains(m))
}

/// Paths of the LLM APIs that are not calls themselves: OpenAI-style `/v1/`
/// (models, files, batches), Gemini's `/v1beta/`, Azure's `/openai/`, and
/// Ollama's model management.
fn is_api_path(path: &str) -> bool {
    const PREFIXES: [&str; 7] = [
        "/v1/",
        "/v1beta/",
        "/openai/",
        "/api/tags",
        "/api/show",
        "/api/ps",
        "/api/version",
    ];
    PREFIXES.iter().any(|p| path.starts_with(p))
}

fn drain(conn: &mut Conn, stats: &mut StreamStats, tap: bool, out: &mut Output) {
    let conn_ref = conn.conn_ref();
    let Phase::Http {
        assembler, decided, ..
    } = &mut conn.phase
    else {
        return;
    };
    let mut calls = Vec::new();
    for ev in conn.http_events.drain(..) {
        if tap && matches!(ev, HttpEvent::Request { .. } | HttpEvent::Response { .. }) {
            out.tapped.push(Tapped::Head {
                meta: conn.meta.clone(),
                event: Box::new(ev.clone()),
            });
        }
        if let HttpEvent::Request { head, .. } = &ev {
            if conn.meta.authority.is_none() {
                conn.meta.authority = head.authority.clone();
            }
            if !*decided {
                *decided = true;
                let host = head.authority.as_deref().unwrap_or("");
                // An API path that is not itself a call (a model list, a
                // health check on an inference server) keeps the connection
                // captured: a client's pool sends its next calls on it.
                let llm = is_llm_path(&head.path)
                    || is_api_path(&head.path)
                    || provider_for_host(host).is_some();
                out.verdicts
                    .push((conn_ref, if llm { Verdict::Capture } else { Verdict::Mute }));
                if !llm {
                    stats.not_llm += 1;
                }
            }
        }
        assembler.on_event(ev, &mut calls);
    }
    for call in calls {
        stats.calls += 1;
        out.calls.push((conn.meta.clone(), call));
    }
}

#[cfg(test)]
mod tests;
