//! Types shared by the eBPF programs and the agent.
//!
//! Everything here is `#[repr(C)]` with fixed-width fields, explicit padding
//! and a size assertion, so both sides read the same bytes. Every event
//! starts with a `kind: u8` that user space converts with `TryFrom`.
#![no_std]

/// Ring buffer that carries every event to user space.
pub const EVENTS_MAP: &str = "EVENTS";
/// Per-CPU counters of drops and truncations, indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Per-connection verdicts written by user space (see [`ConnState`]).
pub const CONN_STATE_MAP: &str = "CONN_STATE";
/// SSL calls in flight, keyed by pid_tgid.
pub const SSL_ACTIVE_MAP: &str = "SSL_ACTIVE";
/// SSL objects whose socket is already linked.
pub const TLS_LINKED_MAP: &str = "TLS_LINKED";
/// Per-CPU scratch space used to build data events.
pub const SCRATCH_MAP: &str = "SCRATCH";
/// Go `crypto/tls` calls in flight, keyed by `[tgid, g]` (the goroutine, not
/// the thread: a goroutine blocked in a read resumes on any thread).
pub const GO_CALLS_MAP: &str = "GO_CALLS";

/// Global set before load: the agent's own tgid, never captured.
pub const GLOBAL_AGENT_TGID: &str = "AGENT_TGID";
/// Global set before load: bytes captured per direction of a connection before
/// user space has classified it.
pub const GLOBAL_FIRST_WINDOW: &str = "FIRST_WINDOW";
/// Global set before load: most bytes captured from one socket or SSL call.
pub const GLOBAL_CALL_CAP: &str = "CALL_CAP";
/// Global set before load: struct field offsets read from kernel BTF.
pub const GLOBAL_OFFSETS: &str = "OFFSETS";
/// Global set before load: which capture filters are active ([`filter`] flags).
pub const GLOBAL_FILTERS: &str = "FILTERS";
/// Process names (`comm`, 16 bytes NUL-padded) → [`filter::INCLUDE`] or [`filter::EXCLUDE`].
pub const FILTER_COMM_MAP: &str = "FILTER_COMM";
/// Local or remote TCP port → include or exclude.
pub const FILTER_PORT_MAP: &str = "FILTER_PORT";
/// cgroup v2 id (the directory's inode) → include or exclude, for it and its descendants.
pub const FILTER_CGROUP_MAP: &str = "FILTER_CGROUP";

/// Capture filters pushed into the kernel: a connection or SSL call that
/// fails them is never copied (counted as `filtered`).
pub mod filter {
    pub const INCLUDE: u8 = 1;
    pub const EXCLUDE: u8 = 2;
    /// Only listed process names are captured.
    pub const INCLUDE_COMM: u32 = 1;
    pub const EXCLUDE_COMM: u32 = 2;
    /// Only connections with a listed local or remote port are captured.
    pub const INCLUDE_PORT: u32 = 4;
    pub const EXCLUDE_PORT: u32 = 8;
    /// Only processes in a listed cgroup (or below it) are captured.
    pub const INCLUDE_CGROUP: u32 = 16;
    pub const EXCLUDE_CGROUP: u32 = 32;
    /// How many cgroup levels above a process are compared with the lists.
    pub const CGROUP_DEPTH: i32 = 12;
}

pub mod names {
    //! Program names, as the `#[...]` attributes in agent-ebpf declare them.
    pub const EXEC: &str = "sched_process_exec";
    pub const EXIT: &str = "sched_process_exit";
    pub const SOCK_SEND: &str = "sock_send_length";
    pub const SOCK_RECV: &str = "sock_recv_length";
    pub const SOCK_STATE: &str = "inet_sock_set_state";
    /// Entry of an SSL read/write (or of the library's internal function
    /// both variants call); the attach cookie says which (see [`super::ssl_cookie`]).
    pub const SSL_ENTER: &str = "ssl_enter";
    /// Return of the same function.
    pub const SSL_LEAVE: &str = "ssl_leave";
    /// Inside the library's read, right after its record layer returned the
    /// plaintext: a read with one trap (see [`super::ssl_cookie::Site`]).
    pub const SSL_READ_DONE: &str = "ssl_read_done";
    /// Entry of Go's `crypto/tls.(*Conn).Write` (captures the plaintext).
    pub const GO_TLS_WRITE: &str = "go_tls_write";
    /// Entry of Go's `crypto/tls.(*Conn).Read` (saves the buffer).
    pub const GO_TLS_READ: &str = "go_tls_read";
    /// Each `RET` of Go's `(*Conn).Read` and `(*Conn).Write` (never a
    /// uretprobe: Go moves goroutine stacks).
    pub const GO_TLS_RET: &str = "go_tls_ret";
}

/// The connection id of a TLS conversation: the address of the library's
/// connection object (an `SSL *`, a Go `*tls.Conn`) mixed with the process
/// id. Addresses alone repeat across processes: workers forked from one
/// process have copies of one heap, and Go heaps start at the same address
/// in every process.
pub const fn tls_conn_id(object: u64, tgid: u32) -> u64 {
    object ^ (tgid as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The attach cookie of the SSL probes: direction, where the byte count is
/// written, and which TLS library the probe sits in.
pub mod ssl_cookie {
    /// The function returns the byte count itself (`SSL_read`, `SSL_write`).
    pub const LEN_RETURNED: u8 = 0xff;

    /// `len_arg`: index of the `size_t *` argument the library writes the
    /// byte count to (the `_ex` variants and the internal functions), or
    /// [`LEN_RETURNED`].
    pub const fn encode(dir: u8, len_arg: u8, source: u8) -> u64 {
        dir as u64 | (len_arg as u64) << 8 | (source as u64) << 16
    }

    /// (dir, len_arg, source)
    pub const fn decode(cookie: u64) -> (u8, u8, u8) {
        (cookie as u8, (cookie >> 8) as u8, (cookie >> 16) as u8)
    }

    /// `len_arg` of a read probed after its record layer returned: the
    /// values live in callee-saved registers, named by a [`Site`].
    pub const LEN_IN_REGISTERS: u8 = 0xfe;

    /// Callee-saved registers a [`Site`] names, by index.
    pub const SITE_REGISTERS: [&str; 6] = ["rbx", "rbp", "r12", "r13", "r14", "r15"];

    /// No register: the peek flag is a constant zero at this site.
    pub const NO_REGISTER: u8 = 0xf;

    /// Where the values of a read lie at a probe placed right after the
    /// library's record layer returned (`ssl3_read_bytes` called from
    /// `ssl3_read`): indexes into [`SITE_REGISTERS`]. The byte count is
    /// at the `size_t *` in `done`, valid when the call returned 1 (in rax).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Site {
        pub ssl: u8,
        pub buf: u8,
        pub done: u8,
        /// Non-zero for `SSL_peek`, whose bytes are read again later.
        pub peek: u8,
    }

    /// Bits 0-23 as [`encode`] with [`LEN_IN_REGISTERS`]; bits 32-47 the
    /// site's four register indexes, 4 bits each.
    pub const fn encode_site(source: u8, site: Site) -> u64 {
        encode(super::DIR_INGRESS, LEN_IN_REGISTERS, source)
            | (site.ssl as u64 & 0xf) << 32
            | (site.buf as u64 & 0xf) << 36
            | (site.done as u64 & 0xf) << 40
            | (site.peek as u64 & 0xf) << 44
    }

    pub const fn decode_site(cookie: u64) -> Site {
        Site {
            ssl: (cookie >> 32) as u8 & 0xf,
            buf: (cookie >> 36) as u8 & 0xf,
            done: (cookie >> 40) as u8 & 0xf,
            peek: (cookie >> 44) as u8 & 0xf,
        }
    }
}

/// The attach cookie of the Go `(*Conn).Write` and `(*Conn).Read` entry
/// probes: where the conn's file descriptor lies in this executable's types,
/// so the entry links the conn to its socket itself.
///
/// `tls.Conn.conn` is a `net.Conn` interface (itab pointer, then data
/// pointer); for a `*net.TCPConn` the data points to `net.conn`, whose `fd`
/// field is the `*netFD`; `netFD.pfd` is a `poll.FD`, whose `Sysfd` is the
/// descriptor. Bits: 0-31 the `*net.TCPConn,net.Conn` itab's address minus
/// the probed function's (0: unknown, the type is not checked); 32-39 the
/// interface's offset in `tls.Conn`; 40-47 `fd`'s offset in `net.TCPConn`;
/// 48-55 `Sysfd`'s offset in `netFD`; 56-63 [`go_conn::FD_PATH`] when the
/// layout is known.
pub mod go_conn {
    /// The layout is known: follow the fields.
    pub const FD_PATH: u8 = 1;

    /// Field offsets of one Go executable (see the module docs).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Layout {
        /// `tls.Conn.conn` (the interface's itab word; its data word follows).
        pub iface: u8,
        /// `net.TCPConn` → `net.conn.fd` (the `*netFD`).
        pub fd: u8,
        /// `netFD` → `pfd.Sysfd`.
        pub sysfd: u8,
    }

    pub const fn encode(layout: Layout, itab_delta: i32) -> u64 {
        itab_delta as u32 as u64
            | (layout.iface as u64) << 32
            | (layout.fd as u64) << 40
            | (layout.sysfd as u64) << 48
            | (FD_PATH as u64) << 56
    }

    /// The layout and the itab delta, or `None` when the probe carries no
    /// layout (the fd path is off for this executable).
    pub const fn decode(cookie: u64) -> Option<(Layout, i32)> {
        if (cookie >> 56) as u8 & FD_PATH == 0 {
            return None;
        }
        Some((
            Layout {
                iface: (cookie >> 32) as u8,
                fd: (cookie >> 40) as u8,
                sysfd: (cookie >> 48) as u8,
            },
            cookie as u32 as i32,
        ))
    }
}

/// Largest payload carried by one data event; bigger calls are split.
pub const CHUNK: usize = 16 * 1024;
/// Most chunks emitted for one plain-buffer call (so at most `CHUNK * MAX_CHUNKS` bytes).
pub const MAX_CHUNKS: u32 = 16;
/// Most iovec entries read from one vectored call (one chunk each).
pub const MAX_IOVECS: u32 = 8;
/// Size of the per-CPU scratch buffer: header plus one chunk.
pub const SCRATCH_SIZE: usize = DATA_HEADER_SIZE + CHUNK;

/// Event kinds, the first byte of every ring buffer record.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Exec = 1,
    Exit = 2,
    Data = 3,
    Conn = 4,
    TlsLink = 5,
}

impl TryFrom<u8> for EventKind {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        Ok(match v {
            1 => EventKind::Exec,
            2 => EventKind::Exit,
            3 => EventKind::Data,
            4 => EventKind::Conn,
            5 => EventKind::TlsLink,
            other => return Err(other),
        })
    }
}

/// Process exec or exit.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcEvent {
    pub kind: u8,
    pub _pad: [u8; 3],
    pub pid: u32,
    pub ppid: u32,
    pub _pad2: u32,
    pub cgroup_id: u64,
    pub ts_ns: u64,
    pub comm: [u8; 16],
    /// Exec only: the path passed to exec, NUL-terminated.
    pub filename: [u8; 128],
}
pub const PROC_EVENT_SIZE: usize = 176;
const _: () = assert!(core::mem::size_of::<ProcEvent>() == PROC_EVENT_SIZE);

/// Direction of a data event, seen from the traced process.
pub const DIR_EGRESS: u8 = 0;
pub const DIR_INGRESS: u8 = 1;

/// Where the bytes were read: the socket, or the TLS library they came from.
pub const SOURCE_SOCKET: u8 = 0;
/// OpenSSL's shared `libssl.so`.
pub const SOURCE_TLS_OPENSSL: u8 = 1;
/// OpenSSL linked into an executable or another library (Node, libnode).
pub const SOURCE_TLS_OPENSSL_EMBEDDED: u8 = 2;
/// BoringSSL linked into an executable (Bun, Chromium-based runtimes).
pub const SOURCE_TLS_BORINGSSL: u8 = 3;
/// Go's `crypto/tls`.
pub const SOURCE_TLS_GO: u8 = 4;

/// Data flags.
/// The call carried more bytes than were captured; the rest is a gap.
pub const FLAG_TRUNCATED: u8 = 1;
/// The call could not be read (unknown syscall, io_uring, sendfile): all of it is a gap.
pub const FLAG_UNREADABLE: u8 = 2;

/// Connection 4-tuple. Addresses are IPv4-mapped in 16 bytes for AF_INET.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    pub family: u16,
    /// Local port, host order.
    pub sport: u16,
    /// Remote port, host order.
    pub dport: u16,
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<Tuple>() == 40);

/// Header of a data event; `len` payload bytes follow it in the same record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataHeader {
    pub kind: u8,
    pub dir: u8,
    pub source: u8,
    pub flags: u8,
    pub pid: u32,
    pub tid: u32,
    /// Bytes in this record's payload.
    pub len: u32,
    /// Connection id: the `struct sock` address (socket) or the `SSL` address (TLS).
    pub conn_id: u64,
    pub ts_ns: u64,
    pub cgroup_id: u64,
    /// Bytes the call moved in all.
    pub call_len: u32,
    /// Offset of this payload inside the call.
    pub offset: u32,
    pub comm: [u8; 16],
    /// Socket events only; zeroed for TLS.
    pub tuple: Tuple,
}
pub const DATA_HEADER_SIZE: usize = 104;
const _: () = assert!(core::mem::size_of::<DataHeader>() == DATA_HEADER_SIZE);

/// TCP state change of an observed socket.
pub const CONN_OPEN_CLIENT: u8 = 1;
pub const CONN_OPEN_SERVER: u8 = 2;
pub const CONN_CLOSE: u8 = 3;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnEvent {
    pub kind: u8,
    pub what: u8,
    pub _pad: [u8; 2],
    pub pid: u32,
    pub conn_id: u64,
    pub ts_ns: u64,
    pub tuple: Tuple,
    /// Ciphertext sockets: bytes the kernel counted after the verdict.
    pub sent: u64,
    pub received: u64,
}
pub const CONN_EVENT_SIZE: usize = 80;
const _: () = assert!(core::mem::size_of::<ConnEvent>() == CONN_EVENT_SIZE);

/// An SSL object was seen moving bytes over a socket on the same thread.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TlsLinkEvent {
    pub kind: u8,
    pub _pad: [u8; 3],
    pub pid: u32,
    pub ssl: u64,
    pub sock: u64,
    pub ts_ns: u64,
    pub tuple: Tuple,
}
pub const TLS_LINK_EVENT_SIZE: usize = 72;
const _: () = assert!(core::mem::size_of::<TlsLinkEvent>() == TLS_LINK_EVENT_SIZE);

/// Verdict kept per connection id in [`CONN_STATE_MAP`].
pub const VERDICT_UNKNOWN: u8 = 0;
/// Not LLM traffic: capture nothing more.
pub const VERDICT_MUTED: u8 = 1;
/// LLM traffic: capture everything, up to the per-call cap.
pub const VERDICT_CAPTURE: u8 = 2;
/// TLS ciphertext: nothing is copied; the socket is linked to the SSL object
/// whose calls use it, and the bytes it moves are counted.
pub const VERDICT_CIPHER: u8 = 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnState {
    /// Bytes captured so far while the verdict was unknown.
    pub window_used: u64,
    /// Ciphertext sockets: bytes sent and received since the verdict.
    pub sent: u64,
    pub received: u64,
    /// Kernel time the entry was made. User space applies a verdict or a
    /// removal only to an entry born no later than the last event it saw on
    /// the connection: a younger entry is a new connection at a reused address.
    pub born_ns: u64,
    pub verdict: u8,
    /// Ciphertext sockets: linked to their TLS conversation already (the
    /// socket programs then only count its bytes).
    pub linked: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<ConnState>() == 40);

/// An SSL read (or a Go TLS call) in flight, saved at entry for the return probe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SslCall {
    pub ssl: u64,
    pub buf: u64,
    /// Where the library writes the byte count; 0 when the call returns it.
    /// Go (`source == SOURCE_TLS_GO`): in [`SSL_ACTIVE_MAP`] the goroutine
    /// (`g`) that made the call; in [`GO_CALLS_MAP`] the pid_tgid of the entry.
    pub len_ptr: u64,
    pub dir: u8,
    /// The `SOURCE_TLS_*` library kind.
    pub source: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<SslCall>() == 32);

/// The SSL write a thread entered last: its ciphertext goes out on the
/// thread's next TLS-record socket write, inside the call (a socket BIO) or
/// right after it returns (a memory BIO, Node's and asyncio's TLS).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingWrite {
    pub ssl: u64,
    /// When the write was entered.
    pub ts_ns: u64,
    /// The bytes it was asked to write.
    pub num: u64,
    /// The stack pointer at entry and the return address it pointed to:
    /// while the call runs, that slot still holds that address and the
    /// stack is below it. This tells a socket write made inside the call
    /// from one made after it returned, with no return probe.
    pub sp: u64,
    pub ret_addr: u64,
    /// A socket has been linked to it (taken once).
    pub linked: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<PendingWrite>() == 48);

/// What an SSL object's last write left for its next one to check, so that
/// plaintext taken at a write's entry is taken once: a write that failed
/// for want of socket space is called again with the same length, and a
/// partial write (`SSL_MODE_ENABLE_PARTIAL_WRITE`) is continued from inside
/// the same buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteGuard {
    /// The last write's buffer and its end.
    pub buf: u64,
    pub end: u64,
    pub num: u64,
    /// Set when a socket write of its ciphertext failed (EAGAIN): the
    /// library returned an error and the caller will retry.
    pub retry: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<WriteGuard>() == 32);

/// Kernel struct offsets the programs need, read from BTF by user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Offsets {
    pub sk_family: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_type: u32,
    pub task_real_parent: u32,
    pub task_tgid: u32,
    /// `sock.__sk_common.skc_state` (a u8).
    pub sk_state: u32,
    /// The path from the current task to the `struct sock` behind a file
    /// descriptor (Go's conn → fd link, see [`go_conn`]): `task_struct.files`,
    /// `files_struct.fdt`, `fdtable.max_fds` (a u32), `fdtable.fd`,
    /// `file.f_inode`, `inode.i_mode` (a u16), `file.private_data`,
    /// `socket.file`, `socket.sk`.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub inode_mode: u32,
    pub file_private_data: u32,
    pub socket_file: u32,
    pub socket_sk: u32,
    /// The path from the current task to the address of its uretprobe
    /// trampoline: `task_struct.mm`, `mm_struct.uprobes_state.xol_area`,
    /// `xol_area.vaddr`; 0 where the kernel has none of them. A return probe
    /// (another tool's) puts that address in place of the return address.
    pub task_mm: u32,
    pub mm_xol_area: u32,
    pub xol_vaddr: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Offsets>() == 96);

/// Drop and truncation counters, one slot each in [`COUNTERS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A ring buffer record could not be reserved or written.
    RingbufFull = 0,
    /// A call's bytes past the per-call cap.
    Truncated = 1,
    /// A call whose buffer could not be located (io_uring, sendfile, unknown syscall).
    Unreadable = 2,
    /// Reading user memory failed.
    ReadFailed = 3,
    /// Bytes of unclassified connections past the first window.
    WindowExceeded = 4,
    /// Socket calls skipped because the connection is muted.
    Muted = 5,
    /// SSL return probes with no saved entry.
    SslNoEntry = 6,
    /// Socket calls seen (all, before filtering).
    SocketCalls = 7,
    /// SSL calls seen.
    SslCalls = 8,
    /// Connections and SSL calls left out by the include/exclude filters.
    Filtered = 9,
    /// SSL writes whose plaintext was taken already: a retry after the
    /// socket was full, or the rest of a partial write.
    SslWriteRepeats = 10,
    /// Go conns linked to their socket through their file descriptor.
    GoFdLinks = 11,
    /// Go calls whose conn did not lead to a TCP socket (another concrete
    /// type, an unreadable field, a descriptor that is not one); the thread
    /// link is left to the socket programs.
    GoFdMisses = 12,
}

pub const COUNTER_COUNT: u32 = 13;
pub const COUNTER_NAMES: [&str; COUNTER_COUNT as usize] = [
    "ringbuf_full",
    "truncated",
    "unreadable",
    "read_failed",
    "window_exceeded",
    "muted",
    "ssl_no_entry",
    "socket_calls",
    "ssl_calls",
    "filtered",
    "ssl_write_repeats",
    "go_fd_links",
    "go_fd_misses",
];

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all types are repr(C), made of integers and byte arrays, with padding written out.
    unsafe impl aya::Pod for ConnState {}
    unsafe impl aya::Pod for SslCall {}
    unsafe impl aya::Pod for Offsets {}
    unsafe impl bytemuck::Zeroable for ProcEvent {}
    unsafe impl bytemuck::Pod for ProcEvent {}
    unsafe impl bytemuck::Zeroable for DataHeader {}
    unsafe impl bytemuck::Pod for DataHeader {}
    unsafe impl bytemuck::Zeroable for ConnEvent {}
    unsafe impl bytemuck::Pod for ConnEvent {}
    unsafe impl bytemuck::Zeroable for TlsLinkEvent {}
    unsafe impl bytemuck::Pod for TlsLinkEvent {}
    unsafe impl bytemuck::Zeroable for Tuple {}
    unsafe impl bytemuck::Pod for Tuple {}
}
