//! Where to put the SSL probes in one library build.
//!
//! A uprobe costs a trap, and the kernel either emulates the probed
//! instruction (`push`, `call`, `jmp`, a 5-byte `nop`: ~1 µs here) or
//! single-steps it out of line (~5.7 µs). The first instruction of
//! OpenSSL 3's `SSL_read`/`SSL_write` is a `sub rsp` (single-stepped), and
//! the plain and `_ex` variants are two functions to probe.
//!
//! Both variants call one internal function (`ssl_read_internal`,
//! `ssl_write_internal`), which takes `(ssl, buf, num, size_t *done)` and
//! starts with `push`. Probing its entry and return covers both variants
//! with one emulated entry trap per call. This module finds it by decoding
//! the exported functions with `iced-x86`: the direct call target shared by
//! the plain and the `_ex` function, where the `_ex` function passes its
//! own `size_t *` argument through untouched (so it is argument 3). When
//! the pattern does not hold (another build, BoringSSL, a tail call), the
//! probes go on the exported symbols' entries instead and the fallback is
//! counted.
//!
//! Reads first try [`readsite`]: one probe after the record layer call
//! inside `ssl3_read`, where buffer and byte count are both known (one
//! trap per read instead of an entry and a return).

use std::collections::BTreeSet;

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, Mnemonic, OpAccess,
    Register,
};
use object::{Object, ObjectSection, ObjectSymbol, SectionKind};
use tokenscope_common::{names, ssl_cookie, DIR_EGRESS, DIR_INGRESS};

use super::readsite;

/// Most bytes of an exported wrapper decoded when looking for the call.
const WRAPPER_BYTES: u64 = 512;

/// One probe to attach: a file offset, its program, and its cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub offset: u64,
    pub probe: Probe,
    pub cookie: u64,
    /// The kernel emulates the probed instruction (no single-step).
    pub emulated: bool,
}

/// Which program a probe runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A function's entry (`ssl_enter`).
    Enter,
    /// A read's return (`ssl_leave`, a return probe).
    Leave,
    /// Inside a read, after the record layer returned (`ssl_read_done`).
    ReadDone,
}

impl Probe {
    pub fn program(self) -> &'static str {
        match self {
            Probe::Enter => names::SSL_ENTER,
            Probe::Leave => names::SSL_LEAVE,
            Probe::ReadDone => names::SSL_READ_DONE,
        }
    }
}

/// How one direction (read or write) is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The internal function both variants call.
    Internal = 0,
    /// The exported symbols' entries (the fallback).
    Entry = 1,
    /// Reads: right after the record layer returned ([`readsite`]).
    Record = 2,
}

impl Placement {
    pub const ALL: [Placement; 3] = [Placement::Record, Placement::Internal, Placement::Entry];

    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Internal => "internal",
            Placement::Entry => "entry",
            Placement::Record => "record",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub read: Placement,
    pub write: Placement,
    pub attachments: Vec<Attachment>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("not an ELF file this agent can read: {0}")]
    Parse(#[from] object::Error),
    #[error("exports neither SSL_read nor SSL_write")]
    NoSymbols,
}

/// An exported function: address and size.
#[derive(Clone, Copy, Debug)]
struct Func {
    addr: u64,
    size: u64,
}

/// Decides the probes for one library build (`data` is the whole file).
/// `source` is the `SOURCE_TLS_*` kind stored in every cookie.
pub fn plan(data: &[u8], source: u8) -> Result<Plan, PlacementError> {
    let file = object::File::parse(data)?;
    let is_x86_64 = file.architecture() == object::Architecture::X86_64;
    let find = |name: &str| -> Option<Func> {
        file.dynamic_symbols()
            .chain(file.symbols())
            .find(|s| s.is_definition() && s.name() == Ok(name))
            .map(|s| Func {
                addr: s.address(),
                size: s.size(),
            })
    };
    let read = find("SSL_read");
    let read_ex = find("SSL_read_ex");
    let write = find("SSL_write");
    let write_ex = find("SSL_write_ex");
    if read.is_none() && write.is_none() {
        return Err(PlacementError::NoSymbols);
    }

    let mut attachments = Vec::new();
    let record_reads = if read.is_some() || read_ex.is_some() {
        readsite::read_sites(&file, data)
    } else {
        None
    };
    let mut place = |dir: u8, plain: Option<Func>, ex: Option<Func>| -> Placement {
        if dir == DIR_INGRESS {
            if let Some(sites) = &record_reads {
                let before = attachments.len();
                attachments.extend(sites.iter().filter_map(|s| {
                    Some(Attachment {
                        offset: file_offset(&file, s.addr)?,
                        probe: Probe::ReadDone,
                        cookie: ssl_cookie::encode_site(source, s.site),
                        emulated: true,
                    })
                }));
                if attachments.len() > before {
                    return Placement::Record;
                }
            }
        }
        if is_x86_64 {
            if let (Some(plain), Some(ex)) = (plain, ex) {
                if let Some((target, emulated)) = internal_target(&file, data, plain, ex) {
                    if let Some(offset) = file_offset(&file, target) {
                        let cookie = ssl_cookie::encode(dir, 3, source);
                        attachments.extend(probes(dir, offset, cookie, emulated));
                        return Placement::Internal;
                    }
                }
            }
        }
        // A variant that calls the other is covered by the other's probes
        // (a write taken at entry would otherwise be taken twice).
        let (plain, ex) = match (plain, ex) {
            (Some(p), Some(e)) if is_x86_64 && makes_call(&file, data, p, e.addr) => (None, ex),
            (Some(p), Some(e)) if is_x86_64 && makes_call(&file, data, e, p.addr) => (plain, None),
            _ => (plain, ex),
        };
        for (func, len_arg) in [(plain, ssl_cookie::LEN_RETURNED), (ex, 3)] {
            let Some(func) = func else { continue };
            let Some(offset) = file_offset(&file, func.addr) else {
                continue;
            };
            let cookie = ssl_cookie::encode(dir, len_arg, source);
            let emulated = is_x86_64 && first_is_emulated(&file, data, func.addr);
            attachments.extend(probes(dir, offset, cookie, emulated));
        }
        Placement::Entry
    };
    let read_placement = place(DIR_INGRESS, read, read_ex);
    let write_placement = place(DIR_EGRESS, write, write_ex);
    Ok(Plan {
        read: read_placement,
        write: write_placement,
        attachments,
    })
}

/// Entry and return probes for a read; the entry alone for a write, whose
/// buffer and length are known there (see `agent-ebpf/src/tls.rs`).
fn probes(dir: u8, offset: u64, cookie: u64, emulated: bool) -> impl Iterator<Item = Attachment> {
    let kinds: &[Probe] = if dir == DIR_EGRESS {
        &[Probe::Enter]
    } else {
        &[Probe::Enter, Probe::Leave]
    };
    kinds.iter().map(move |&probe| Attachment {
        offset,
        probe,
        cookie,
        emulated,
    })
}

/// Whether `func` calls `target` directly.
fn makes_call(file: &object::File<'_>, data: &[u8], func: Func, target: u64) -> bool {
    calls(file, data, func).is_some_and(|calls| calls.iter().any(|c| c.target == target))
}

/// The internal function that both `plain` and `ex` call, and whether its
/// first instruction is emulated. `ex` must pass its 4th argument (rcx)
/// through untouched, so that the internal function's argument 3 is the
/// `size_t *` the byte count is written to.
fn internal_target(
    file: &object::File<'_>,
    data: &[u8],
    plain: Func,
    ex: Func,
) -> Option<(u64, bool)> {
    let plain_calls = calls(file, data, plain)?;
    let ex_calls = calls(file, data, ex)?;
    let plain_targets: BTreeSet<u64> = plain_calls.iter().map(|c| c.target).collect();
    // The first call in `ex` that `plain` also makes, outside the PLT.
    let shared = ex_calls
        .iter()
        .find(|c| plain_targets.contains(&c.target) && !in_plt(file, c.target))?;
    // `ex` hands its four arguments (ssl, buf, num, size_t *) through
    // untouched, and `plain` at least the first two: otherwise the shared
    // call is some helper, not the function both wrap (an inlined build).
    if shared.args_written & 0b1111 != 0 {
        return None;
    }
    let plain_call = plain_calls.iter().find(|c| c.target == shared.target)?;
    if plain_call.args_written & 0b11 != 0 {
        return None;
    }
    Some((shared.target, first_is_emulated(file, data, shared.target)))
}

struct Call {
    target: u64,
    /// Bit i: argument register i (rdi, rsi, rdx, rcx) was written by an
    /// instruction before this call.
    args_written: u8,
}

const ARG_REGISTERS: [Register; 4] = [Register::RDI, Register::RSI, Register::RDX, Register::RCX];

/// Direct calls made by a function, in order.
fn calls(file: &object::File<'_>, data: &[u8], func: Func) -> Option<Vec<Call>> {
    let len = if func.size == 0 {
        WRAPPER_BYTES
    } else {
        func.size.min(WRAPPER_BYTES)
    };
    let code = code_at(file, data, func.addr, len)?;
    let mut decoder = Decoder::with_ip(64, code, func.addr, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut args_written = 0u8;
    let mut out = Vec::new();
    while decoder.can_decode() {
        let ins = decoder.decode();
        if ins.code() == Code::INVALID {
            break;
        }
        if ins.flow_control() == FlowControl::Call && ins.is_call_near() {
            out.push(Call {
                target: ins.near_branch_target(),
                args_written,
            });
        }
        let used = info.info(&ins);
        for r in used.used_registers() {
            let written = matches!(
                r.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            );
            if let Some(i) = ARG_REGISTERS
                .iter()
                .position(|a| *a == r.register().full_register())
            {
                if written {
                    args_written |= 1 << i;
                }
            }
        }
        if ins.flow_control() == FlowControl::Return {
            break;
        }
    }
    Some(out)
}

/// Whether the kernel emulates the instruction at `addr` rather than
/// single-stepping it (x86 uprobes emulate push, call, jmp and nop).
fn first_is_emulated(file: &object::File<'_>, data: &[u8], addr: u64) -> bool {
    let Some(code) = code_at(file, data, addr, 16) else {
        return false;
    };
    let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let ins = decoder.decode();
    match ins.mnemonic() {
        Mnemonic::Push => ins.op0_kind() == iced_x86::OpKind::Register,
        Mnemonic::Nop => ins.len() == 5,
        Mnemonic::Call | Mnemonic::Jmp => ins.is_call_near() || ins.is_jmp_near(),
        _ => false,
    }
}

fn in_plt(file: &object::File<'_>, addr: u64) -> bool {
    file.sections().any(|s| {
        s.name().is_ok_and(|n| n.starts_with(".plt"))
            && (s.address()..s.address().saturating_add(s.size())).contains(&addr)
    })
}

/// `len` bytes of code at virtual address `addr`, if it lies in a section
/// with file data.
pub(super) fn code_at<'d>(
    file: &object::File<'_>,
    data: &'d [u8],
    addr: u64,
    len: u64,
) -> Option<&'d [u8]> {
    let offset = file_offset(file, addr)?;
    let section_end = file
        .sections()
        .find(|s| (s.address()..s.address().saturating_add(s.size())).contains(&addr))
        .and_then(|s| s.file_range())
        .and_then(|(start, size)| start.checked_add(size))?;
    let end = offset.checked_add(len)?.min(section_end);
    data.get(usize::try_from(offset).ok()?..usize::try_from(end).ok()?)
}

/// The file offset of virtual address `addr` (what uprobes attach to).
pub fn file_offset(file: &object::File<'_>, addr: u64) -> Option<u64> {
    file.sections()
        .filter(|s| s.kind() == SectionKind::Text || s.kind() == SectionKind::Other)
        .chain(file.sections())
        .find(|s| (s.address()..s.address().saturating_add(s.size())).contains(&addr))
        .and_then(|s| {
            let (start, _) = s.file_range()?;
            (addr - s.address()).checked_add(start)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenscope_common::SOURCE_TLS_OPENSSL;

    fn exported(file: &object::File<'_>, name: &str) -> Func {
        let s = file
            .dynamic_symbols()
            .find(|s| s.name() == Ok(name))
            .unwrap();
        Func {
            addr: s.address(),
            size: s.size(),
        }
    }

    fn system_libssl() -> Option<Vec<u8>> {
        let found = std::fs::read("/usr/lib/x86_64-linux-gnu/libssl.so.3").ok();
        if found.is_none() {
            assert!(
                std::env::var("CI").is_err(),
                "CI machines have libssl3 installed"
            );
        }
        found
    }

    #[test]
    fn debian_libssl3_reads_after_the_record_layer_and_writes_on_the_internal_function() {
        let Some(data) = system_libssl() else { return };
        let plan = plan(&data, SOURCE_TLS_OPENSSL).unwrap();
        assert_eq!(plan.read, Placement::Record, "{plan:?}");
        assert_eq!(plan.write, Placement::Internal, "{plan:?}");
        // Two read sites (the read and its retry), one write entry, no
        // return probe: one trap per call either way.
        let count = |p: Probe| plan.attachments.iter().filter(|a| a.probe == p).count();
        assert_eq!(count(Probe::ReadDone), 2, "{plan:?}");
        assert_eq!(count(Probe::Enter), 1, "{plan:?}");
        assert_eq!(count(Probe::Leave), 0, "{plan:?}");
        assert!(plan.attachments.iter().all(|a| a.emulated), "{plan:?}");
        // No probe on an exported symbol's entry.
        let file = object::File::parse(&*data).unwrap();
        let exported: Vec<u64> = file
            .dynamic_symbols()
            .filter(|s| s.name().is_ok_and(|n| n.starts_with("SSL_")))
            .filter_map(|s| file_offset(&file, s.address()))
            .collect();
        for a in &plan.attachments {
            assert!(!exported.contains(&a.offset), "{a:?} is an export");
            let (dir, len_arg, source) = ssl_cookie::decode(a.cookie);
            assert_eq!(source, SOURCE_TLS_OPENSSL);
            match a.probe {
                Probe::ReadDone => {
                    assert_eq!((dir, len_arg), (DIR_INGRESS, ssl_cookie::LEN_IN_REGISTERS))
                }
                _ => assert_eq!((dir, len_arg), (DIR_EGRESS, 3)),
            }
        }
    }

    #[test]
    fn an_inlined_build_gets_the_write_entries_not_a_shared_helper() {
        // Node's OpenSSL inlines the internal functions into both wrappers,
        // which then share only helper calls (with their own arguments).
        // Its reads still have record-layer sites.
        let Ok(data) = std::fs::read("/usr/bin/node") else {
            return;
        };
        let plan = plan(&data, tokenscope_common::SOURCE_TLS_OPENSSL_EMBEDDED).unwrap();
        assert_eq!(plan.read, Placement::Record, "{plan:?}");
        assert_eq!(plan.write, Placement::Entry, "{plan:?}");
        // The writes' two entries (`push rbp`), two read sites.
        assert_eq!(plan.attachments.len(), 4, "{plan:?}");
        assert!(plan.attachments.iter().all(|a| a.emulated), "{plan:?}");
        assert!(plan.attachments.iter().all(|a| a.probe != Probe::Leave));
        let writes: Vec<_> = plan
            .attachments
            .iter()
            .filter(|a| a.probe == Probe::Enter)
            .map(|a| ssl_cookie::decode(a.cookie))
            .collect();
        let mut len_args: Vec<u8> = writes.iter().map(|c| c.1).collect();
        len_args.sort();
        assert_eq!(len_args, [3, ssl_cookie::LEN_RETURNED]);
        assert!(writes.iter().all(|c| c.0 == DIR_EGRESS));
    }

    #[test]
    fn without_record_layer_sites_reads_take_the_internal_function() {
        // A build whose read path has not the record-layer shape falls back
        // to the internal function's entry and return.
        let Some(data) = system_libssl() else { return };
        let file = object::File::parse(&*data).unwrap();
        let func = |name: &str| exported(&file, name);
        let (target, emulated) =
            internal_target(&file, &data, func("SSL_read"), func("SSL_read_ex")).unwrap();
        assert!(emulated);
        let attachments: Vec<_> = probes(DIR_INGRESS, target, 0, emulated).collect();
        let kinds: Vec<_> = attachments.iter().map(|a| a.probe).collect();
        assert_eq!(kinds, [Probe::Enter, Probe::Leave]);
    }

    #[test]
    fn functions_that_share_no_internal_call_are_not_paired() {
        let Some(data) = system_libssl() else { return };
        let file = object::File::parse(&*data).unwrap();
        let func = |name: &str| exported(&file, name);
        // Read and write wrappers call different internals: no pairing, so
        // a build shaped like that gets the entry probes.
        assert!(internal_target(&file, &data, func("SSL_read"), func("SSL_write_ex")).is_none());
        let (target, emulated) =
            internal_target(&file, &data, func("SSL_read"), func("SSL_read_ex")).unwrap();
        assert!(emulated);
        assert!(!in_plt(&file, target));
        // The wrappers' own first instruction (`sub rsp`) is single-stepped.
        assert!(!first_is_emulated(&file, &data, func("SSL_read").addr));
    }

    #[test]
    fn files_without_ssl_functions_are_refused_not_guessed() {
        if let Ok(data) = std::fs::read("/bin/sh") {
            assert!(matches!(
                plan(&data, SOURCE_TLS_OPENSSL),
                Err(PlacementError::NoSymbols)
            ));
        }
        assert!(plan(b"not an elf", SOURCE_TLS_OPENSSL).is_err());
    }
}
