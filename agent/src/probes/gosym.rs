//! Where to probe Go's `crypto/tls` in one executable: the entries of
//! `(*Conn).Write` and `(*Conn).Read` and every `RET` inside them, as file
//! offsets.
//!
//! Functions are found through `.symtab`, or through `.gopclntab` when the
//! binary is stripped (`-ldflags=-s -w` drops the symbol table but the
//! runtime's own function table stays). The `RET`s come from decoding the
//! function with `iced-x86`: Go never puts data inside amd64 code, so a
//! linear decode from entry to the next function sees every instruction.
//!
//! Only x86-64 binaries from Go 1.17 on are probed: the programs read the
//! register ABI (receiver in rax, the buffer in rbx/rcx, `g` in r14).

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::{Object, ObjectSection, ObjectSymbol};

use super::{
    goconn::{conn_plan, ConnPlan, GoConnError},
    placement::file_offset,
};

pub const WRITE: &str = "crypto/tls.(*Conn).Write";
pub const READ: &str = "crypto/tls.(*Conn).Read";

/// Largest function decoded for its `RET`s (Read is under 1 KiB in Go 1.19).
const MAX_FUNC_BYTES: u64 = 64 * 1024;
/// Most bytes of a function name compared in `.gopclntab`.
const MAX_NAME: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum GoSymError {
    #[error("not an ELF file this agent can read")]
    Parse(#[from] object::Error),
    #[error("not an x86-64 binary")]
    Arch,
    #[error("not a Go binary")]
    NotGo,
    #[error("built by {0}, before the register ABI (Go 1.17)")]
    TooOld(String),
    #[error("does not link crypto/tls")]
    NoTls,
    #[error("the .gopclntab header is not one this agent reads (magic {0:#x})")]
    Pclntab(u32),
    #[error("{0} could not be decoded or has no RET")]
    NoRet(&'static str),
    #[error("{0} lies outside the file's sections")]
    Offset(&'static str),
}

/// How the functions were found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Symtab,
    Pclntab,
}

impl Lookup {
    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Symtab => "symtab",
            Lookup::Pclntab => "gopclntab",
        }
    }
}

/// The probes for one Go binary, as file offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoTlsPlan {
    /// `go1.19.8` and the like, when the build info says.
    pub version: Option<String>,
    pub lookup: Lookup,
    pub write_entry: u64,
    pub write_rets: Vec<u64>,
    pub read_entry: u64,
    pub read_rets: Vec<u64>,
    /// Virtual addresses of the two entries (the cookies' itab deltas are
    /// taken from them).
    pub write_addr: u64,
    pub read_addr: u64,
    /// Where the conn's file descriptor lies; without it the conns are tied
    /// to their sockets by the socket programs alone.
    pub conn: Result<ConnPlan, GoConnError>,
}

impl GoTlsPlan {
    /// The attach cookie of the entry probe at `func_addr`: 0 (no fd path)
    /// when the layout is unknown.
    pub fn entry_cookie(&self, func_addr: u64) -> u64 {
        self.conn.as_ref().map_or(0, |c| c.cookie(func_addr))
    }
}

/// A function's address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Func {
    addr: u64,
    end: u64,
}

/// Whether the ELF file is a Go binary (cheap: section headers only).
pub fn is_go<'data, R: object::ReadRef<'data>>(file: &object::File<'data, R>) -> bool {
    file.section_by_name(".go.buildinfo").is_some() || file.section_by_name(".gopclntab").is_some()
}

/// Plans the probes for one Go executable (`data` is the whole file).
pub fn plan(data: &[u8]) -> Result<GoTlsPlan, GoSymError> {
    let file = object::File::parse(data)?;
    if !is_go(&file) {
        return Err(GoSymError::NotGo);
    }
    if file.architecture() != object::Architecture::X86_64 {
        return Err(GoSymError::Arch);
    }
    let version = go_version(&file);
    if let Some(v) = &version {
        if !has_register_abi(v) {
            return Err(GoSymError::TooOld(v.clone()));
        }
    }
    let (write, read, lookup) = match (symtab_func(&file, WRITE), symtab_func(&file, READ)) {
        (Some(w), Some(r)) => (w, r, Lookup::Symtab),
        _ => {
            let (w, r) = pclntab_funcs(&file)?;
            (w, r, Lookup::Pclntab)
        }
    };
    let offset =
        |addr: u64, what: &'static str| file_offset(&file, addr).ok_or(GoSymError::Offset(what));
    let rets = |func: Func, what: &'static str| -> Result<Vec<u64>, GoSymError> {
        let rets = ret_addresses(&file, func).ok_or(GoSymError::NoRet(what))?;
        rets.into_iter().map(|a| offset(a, what)).collect()
    };
    let conn = conn_plan(&file, version.as_deref());
    Ok(GoTlsPlan {
        version,
        lookup,
        write_entry: offset(write.addr, WRITE)?,
        write_rets: rets(write, WRITE)?,
        read_entry: offset(read.addr, READ)?,
        read_rets: rets(read, READ)?,
        write_addr: write.addr,
        read_addr: read.addr,
        conn,
    })
}

/// `go1.17` and later (`devel` builds are taken as recent).
fn has_register_abi(version: &str) -> bool {
    let Some(rest) = version.strip_prefix("go1.") else {
        return true;
    };
    let minor: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    minor.parse::<u32>().map_or(true, |m| m >= 17)
}

fn symtab_func(file: &object::File<'_>, name: &str) -> Option<Func> {
    file.symbols()
        .find(|s| s.is_definition() && s.name() == Ok(name))
        .filter(|s| s.size() > 0)
        .map(|s| Func {
            addr: s.address(),
            end: s.address().saturating_add(s.size()),
        })
}

/// Bytes at a virtual address, up to `len`, from the section holding it.
fn bytes_at<'a>(file: &object::File<'a>, addr: u64, len: u64) -> Option<&'a [u8]> {
    let section = file
        .sections()
        .find(|s| (s.address()..s.address().saturating_add(s.size())).contains(&addr))?;
    let data = section.data().ok()?;
    let start = usize::try_from(addr - section.address()).ok()?;
    let end = start
        .saturating_add(usize::try_from(len).ok()?)
        .min(data.len());
    data.get(start..end)
}

fn ret_addresses(file: &object::File<'_>, func: Func) -> Option<Vec<u64>> {
    let len = func.end.checked_sub(func.addr)?.min(MAX_FUNC_BYTES);
    let code = bytes_at(file, func.addr, len)?;
    let mut decoder = Decoder::with_ip(64, code, func.addr, DecoderOptions::NONE);
    let rets: Vec<u64> = decoder
        .iter()
        .filter(|i| i.mnemonic() == Mnemonic::Ret)
        .map(|i| i.ip())
        .collect();
    (!rets.is_empty()).then_some(rets)
}

/// The Go version from `.go.buildinfo`: inline strings (Go 1.18+) or, before
/// that, a pointer to a string header.
fn go_version(file: &object::File<'_>) -> Option<String> {
    let data = file.section_by_name(".go.buildinfo")?.data().ok()?;
    if data.get(..14)? != b"\xff Go buildinf:" {
        return None;
    }
    let ptr_size = usize::from(*data.get(14)?);
    let flags = *data.get(15)?;
    let text = if flags & 2 != 0 {
        let (len, used) = uvarint(data.get(32..)?)?;
        let start = 32 + used;
        data.get(start..start.checked_add(usize::try_from(len).ok()?)?)?
    } else {
        if ptr_size != 8 {
            return None;
        }
        let header_addr = u64::from_le_bytes(data.get(16..24)?.try_into().ok()?);
        let header = bytes_at(file, header_addr, 16)?;
        let str_addr = u64::from_le_bytes(header.get(..8)?.try_into().ok()?);
        let str_len = u64::from_le_bytes(header.get(8..16)?.try_into().ok()?);
        if str_len > 64 {
            return None;
        }
        bytes_at(file, str_addr, str_len)?
    };
    let version = std::str::from_utf8(text).ok()?;
    (version.starts_with("go") || version.starts_with("devel")).then(|| version.to_string())
}

fn uvarint(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in data.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        data.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn read_u64(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        data.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Write and Read from the runtime's function table. Layouts (64-bit):
/// Go 1.18+ (magic `0xfffffff0`, `0xfffffff1` from 1.20): header words
/// nfunc, nfiles, textStart, funcnameOffset, cuOffset, filetabOffset,
/// pctabOffset, pclnOffset; the function table holds `{entryoff u32,
/// funcoff u32}` pairs with entries relative to textStart. Go 1.16-1.17
/// (`0xfffffffa`): no textStart, and `{entry u64, funcoff u64}` pairs.
/// Each `_func` starts with its entry, then the name's offset (i32) into
/// the name table. A function ends where the next one starts.
fn pclntab_funcs(file: &object::File<'_>) -> Result<(Func, Func), GoSymError> {
    let data = file
        .section_by_name(".gopclntab")
        .and_then(|s| s.data().ok())
        .ok_or(GoSymError::NoTls)?;
    let magic = read_u32(data, 0).ok_or(GoSymError::Pclntab(0))?;
    let bad = || GoSymError::Pclntab(magic);
    if data.get(7) != Some(&8) {
        return Err(bad());
    }
    let word = |i: usize| -> Result<usize, GoSymError> {
        read_u64(data, 8 + 8 * i)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(bad)
    };
    let (nfunc, text_start, funcname_off, pcln_off, wide) = match magic {
        0xffff_fff0 | 0xffff_fff1 => {
            let text = read_u64(data, 24).ok_or_else(bad)?;
            let text = if text == 0 {
                // A position-independent build relocates it at load.
                file.section_by_name(".text")
                    .map(|s| s.address())
                    .ok_or_else(bad)?
            } else {
                text
            };
            (word(0)?, text, word(3)?, word(7)?, false)
        }
        0xffff_fffa => (word(0)?, 0, word(2)?, word(6)?, true),
        _ => return Err(bad()),
    };
    let functab = data.get(pcln_off..).ok_or_else(bad)?;
    let names = data.get(funcname_off..).ok_or_else(bad)?;
    let entry_size = if wide { 16 } else { 8 };
    // (entry address, funcoff) of function i.
    let entry = |i: usize| -> Option<(u64, usize)> {
        let at = i.checked_mul(entry_size)?;
        if wide {
            Some((
                read_u64(functab, at)?,
                usize::try_from(read_u64(functab, at + 8)?).ok()?,
            ))
        } else {
            Some((
                text_start.checked_add(u64::from(read_u32(functab, at)?))?,
                usize::try_from(read_u32(functab, at + 4)?).ok()?,
            ))
        }
    };
    let name_of = |funcoff: usize| -> Option<&[u8]> {
        let name_field = funcoff.checked_add(if wide { 8 } else { 4 })?;
        let name_off = usize::try_from(read_u32(functab, name_field)?).ok()?;
        let rest = names.get(name_off..)?;
        let rest = rest.get(..rest.len().min(MAX_NAME))?;
        let end = memchr::memchr(0, rest)?;
        rest.get(..end)
    };
    let mut write = None;
    let mut read = None;
    for i in 0..nfunc {
        let Some((addr, funcoff)) = entry(i) else {
            return Err(bad());
        };
        let name = name_of(funcoff);
        let slot = match name {
            Some(n) if n == WRITE.as_bytes() => &mut write,
            Some(n) if n == READ.as_bytes() => &mut read,
            _ => continue,
        };
        let end = entry(i + 1).map(|(next, _)| next).ok_or_else(bad)?;
        *slot = Some(Func { addr, end });
        if write.is_some() && read.is_some() {
            break;
        }
    }
    match (write, read) {
        (Some(w), Some(r)) => Ok((w, r)),
        _ => Err(GoSymError::NoTls),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{path::Path, process::Command};

    /// The e2e test's Go client, built here with and without symbols.
    const CLIENT: &str = include_str!("../../../tests/go/tlsclient/main.go");

    fn build(dir: &Path, stripped: bool) -> Option<Vec<u8>> {
        let source = dir.join("main.go");
        std::fs::write(&source, CLIENT).unwrap();
        let out = dir.join(if stripped { "stripped" } else { "full" });
        let mut cmd = Command::new("go");
        cmd.arg("build").arg("-o").arg(&out);
        if stripped {
            cmd.arg("-ldflags=-s -w");
        }
        let status = match cmd.arg(&source).current_dir(dir).status() {
            Ok(s) => s,
            Err(_) => {
                assert!(
                    std::env::var("CI").is_err(),
                    "`go` is missing: install golang-go (apt-get install -y golang-go)"
                );
                return None;
            }
        };
        assert!(status.success(), "go build failed");
        Some(std::fs::read(out).unwrap())
    }

    /// The test client built with and without symbols in a fresh directory
    /// (removed with the guard); `None` where `go` is missing (see `build`).
    fn full_and_stripped(tag: &str) -> Option<(RemoveOnDrop, Vec<u8>, Vec<u8>)> {
        let dir = std::env::temp_dir().join(format!("tokenscope-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cleanup = RemoveOnDrop(dir.clone());
        let full = build(&dir, false)?;
        let stripped = build(&dir, true)?;
        Some((cleanup, full, stripped))
    }

    struct RemoveOnDrop(std::path::PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// RET lines in `go tool objdump`'s listing of one function.
    fn objdump_rets(binary: &Path, func: &str) -> usize {
        let pattern = format!("^{}$", regex_escape(func));
        let out = Command::new("go")
            .args(["tool", "objdump", "-s", &pattern])
            .arg(binary)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.split('\t').any(|field| field.trim() == "RET"))
            .count()
    }

    fn regex_escape(s: &str) -> String {
        s.chars()
            .flat_map(|c| {
                let escape = "().*[]".contains(c);
                escape.then_some('\\').into_iter().chain(std::iter::once(c))
            })
            .collect()
    }

    #[test]
    fn symtab_and_gopclntab_agree_and_every_ret_is_found() {
        let Some((dir, full, stripped)) = full_and_stripped("gosym") else {
            return;
        };
        let from_symtab = plan(&full).unwrap();
        let from_pclntab = plan(&stripped).unwrap();
        assert_eq!(from_symtab.lookup, Lookup::Symtab);
        assert_eq!(from_pclntab.lookup, Lookup::Pclntab);
        assert!(from_symtab.version.as_deref().unwrap().starts_with("go1."));
        assert_eq!(from_symtab.version, from_pclntab.version);
        // -s -w drops symbols, not code: the same offsets both ways.
        let positions = |p: &GoTlsPlan| {
            (
                p.write_entry,
                p.write_rets.clone(),
                p.read_entry,
                p.read_rets.clone(),
            )
        };
        assert_eq!(positions(&from_symtab), positions(&from_pclntab));
        for ret in from_pclntab
            .write_rets
            .iter()
            .chain(&from_pclntab.read_rets)
        {
            assert_eq!(stripped.get(*ret as usize), Some(&0xc3), "RET at {ret:#x}");
        }
        // Go's own disassembler counts the same RETs.
        let binary = dir.0.join("full");
        assert_eq!(from_symtab.read_rets.len(), objdump_rets(&binary, READ));
        assert_eq!(from_symtab.write_rets.len(), objdump_rets(&binary, WRITE));
        // The entries are the functions' first bytes (symtab addresses).
        let file = object::File::parse(&*full).unwrap();
        let read = symtab_func(&file, READ).unwrap();
        assert_eq!(file_offset(&file, read.addr), Some(from_symtab.read_entry));
    }

    /// The `*net.TCPConn,net.Conn` itab's address as `go tool nm` lists it.
    fn nm_tcp_itab(binary: &Path) -> u64 {
        let out = Command::new("go")
            .args(["tool", "nm"])
            .arg(binary)
            .output()
            .unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = listing
            .lines()
            .find(|l| l.ends_with("itab.*net.TCPConn,net.Conn"))
            .expect("go tool nm lists the TCPConn itab");
        u64::from_str_radix(line.split_whitespace().next().unwrap(), 16).unwrap()
    }

    #[test]
    fn conn_layout_from_dwarf_and_from_the_version_table_agree() {
        use super::super::goconn::LayoutSource;
        use tokenscope_common::go_conn;

        let Some((dir, full, stripped)) = full_and_stripped("goconn") else {
            return;
        };
        let full = plan(&full).unwrap();
        let stripped = plan(&stripped).unwrap();
        let from_dwarf = full.conn.clone().expect("layout of the full binary");
        let from_table = stripped
            .conn
            .clone()
            .expect("layout of the stripped binary");
        assert_eq!(from_dwarf.source, LayoutSource::Dwarf);
        assert_eq!(from_table.source, LayoutSource::VersionTable);
        // The table holds what this release's DWARF says.
        assert_eq!(from_dwarf.layout, from_table.layout);
        assert_eq!(
            from_dwarf.layout,
            go_conn::Layout {
                iface: 0,
                fd: 0,
                sysfd: 16
            }
        );
        // The itab comes from the symbol table: gone when stripped.
        assert_eq!(from_dwarf.tcp_itab, Some(nm_tcp_itab(&dir.0.join("full"))));
        assert_eq!(from_table.tcp_itab, None);
        // Each entry's cookie points the kernel at the itab from its own address.
        for addr in [full.write_addr, full.read_addr] {
            let (layout, delta) = go_conn::decode(full.entry_cookie(addr)).unwrap();
            assert_eq!(layout, from_dwarf.layout);
            assert_eq!(
                addr.wrapping_add(i64::from(delta) as u64),
                from_dwarf.tcp_itab.unwrap()
            );
        }
        assert_eq!(
            go_conn::decode(stripped.entry_cookie(stripped.write_addr)),
            Some((from_table.layout, 0))
        );
    }

    #[test]
    fn non_go_binaries_are_refused() {
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(matches!(plan(&sh), Err(GoSymError::NotGo)));
        assert!(plan(b"not an elf").is_err());
    }

    #[test]
    fn register_abi_versions() {
        assert!(has_register_abi("go1.17"));
        assert!(has_register_abi("go1.19.8"));
        assert!(has_register_abi("go1.22.1"));
        assert!(!has_register_abi("go1.16.15"));
        assert!(!has_register_abi("go1.9"));
    }
}
