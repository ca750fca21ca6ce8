//! Where a Go executable keeps a `*tls.Conn`'s file descriptor, so the Go
//! TLS entry probes link each conn to its socket themselves (see
//! `agent-ebpf/src/gofd.rs` and [`tokenscope_common::go_conn`]).
//!
//! The offsets are read from the executable's DWARF when it has some: the
//! members `crypto/tls.Conn.conn`, `runtime.iface.data`, `net.TCPConn.conn`,
//! `net.conn.fd`, `net.netFD.pfd` and `internal/poll.FD.Sysfd`. A stripped
//! executable (`-ldflags=-s -w` drops DWARF) gets them from a table keyed by
//! the Go release in its build info. The `*net.TCPConn,net.Conn` itab, which
//! tells a TCP conn from any other `net.Conn`, is known only through the
//! symbol table.

use std::collections::HashMap;

use object::{Object, ObjectSection, ObjectSymbol};
use tokenscope_common::go_conn::{self, Layout};

/// The itab symbol: `go:itab.` from Go 1.20, `go.itab.` before.
const ITAB_SYMBOLS: [&str; 2] = [
    "go:itab.*net.TCPConn,net.Conn",
    "go.itab.*net.TCPConn,net.Conn",
];

/// Go releases whose layout is known without DWARF (all minors from 1.17,
/// the first with the register ABI the probes read, through the last one
/// checked): `tls.Conn.conn` first, `net.TCPConn` = `net.conn` = one
/// `*netFD` at 0, `netFD.pfd` first, `poll.FD.Sysfd` after the 16-byte
/// `fdMutex`. Go 1.19's DWARF is checked against it by the tests.
const TABLE: &[(u32, u32, Layout)] = &[(
    17,
    24,
    Layout {
        iface: 0,
        fd: 0,
        sysfd: 16,
    },
)];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GoConnError {
    #[error("cannot read the executable's DWARF")]
    Dwarf(#[source] DwarfError),
    #[error("no DWARF, and {0} is not in the layout table")]
    NotInTable(String),
    #[error("no DWARF, and the build info has no Go version")]
    NoVersion,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DwarfError {
    #[error("malformed DWARF")]
    Read(#[from] gimli::Error),
    #[error("section {0} is compressed in a format this agent does not read")]
    Compression(&'static str),
    #[error("section {0} does not inflate")]
    Inflate(&'static str),
    #[error("the DWARF has no type {0}")]
    NoType(&'static str),
    #[error("the DWARF type {strukt} has no member {member}")]
    NoMember {
        strukt: &'static str,
        member: &'static str,
    },
    #[error("the offset of {0} does not fit the attach cookie")]
    TooFar(&'static str),
}

/// Where the layout came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutSource {
    Dwarf,
    VersionTable,
}

impl LayoutSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LayoutSource::Dwarf => "dwarf",
            LayoutSource::VersionTable => "version_table",
        }
    }
}

/// The conn → descriptor path of one executable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnPlan {
    pub layout: Layout,
    pub source: LayoutSource,
    /// Virtual address of the `*net.TCPConn,net.Conn` itab, when the symbol
    /// table names it.
    pub tcp_itab: Option<u64>,
}

impl ConnPlan {
    /// The attach cookie of the entry probe of the function at `func_addr`
    /// (a virtual address of the same executable).
    pub fn cookie(&self, func_addr: u64) -> u64 {
        // The kernel adds the delta to the probed address: right whatever
        // the load bias. An itab beyond ±2 GiB is taken as unknown.
        let delta = self
            .tcp_itab
            .and_then(|itab| i32::try_from(itab.wrapping_sub(func_addr) as i64).ok())
            .unwrap_or(0);
        go_conn::encode(self.layout, delta)
    }
}

/// The descriptor path of a Go executable built by `version`.
pub fn conn_plan(file: &object::File<'_>, version: Option<&str>) -> Result<ConnPlan, GoConnError> {
    let tcp_itab = ITAB_SYMBOLS.iter().find_map(|name| {
        file.symbols()
            .find(|s| s.is_definition() && s.name() == Ok(name))
            .map(|s| s.address())
    });
    let table = || -> Result<Layout, GoConnError> {
        let version = version.ok_or(GoConnError::NoVersion)?;
        table_layout(version).ok_or_else(|| GoConnError::NotInTable(version.to_string()))
    };
    let (layout, source) = match dwarf_layout(file) {
        Ok(Some(layout)) => (layout, LayoutSource::Dwarf),
        Ok(None) => (table()?, LayoutSource::VersionTable),
        // DWARF that cannot be read is no worse than none, if the table knows
        // the release; otherwise its error says more than the table's.
        Err(error) => match table() {
            Ok(layout) => (layout, LayoutSource::VersionTable),
            Err(_) => return Err(GoConnError::Dwarf(error)),
        },
    };
    Ok(ConnPlan {
        layout,
        source,
        tcp_itab,
    })
}

/// The table's layout for a `go1.N[.P]` version string.
fn table_layout(version: &str) -> Option<Layout> {
    let rest = version.strip_prefix("go1.")?;
    let minor: u32 = rest
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    TABLE
        .iter()
        .find(|(first, last, _)| (*first..=*last).contains(&minor))
        .map(|(_, _, layout)| *layout)
}

/// The types and members the path goes through.
const STRUCTS: [&str; 6] = [
    "crypto/tls.Conn",
    "runtime.iface",
    "net.TCPConn",
    "net.conn",
    "net.netFD",
    "internal/poll.FD",
];

/// The layout from DWARF; `None` when the executable has no `.debug_info`.
fn dwarf_layout(file: &object::File<'_>) -> Result<Option<Layout>, DwarfError> {
    if file.section_by_name(".debug_info").is_none() {
        return Ok(None);
    }
    let mut sections: HashMap<&'static str, Vec<u8>> = HashMap::new();
    for name in [".debug_info", ".debug_abbrev", ".debug_str"] {
        sections.insert(name, section_bytes(file, name)?);
    }
    let load = |id: gimli::SectionId| -> Result<gimli::EndianSlice<'_, gimli::LittleEndian>, gimli::Error> {
        let data = sections.get(id.name()).map(Vec::as_slice).unwrap_or(&[]);
        Ok(gimli::EndianSlice::new(data, gimli::LittleEndian))
    };
    let dwarf = gimli::Dwarf::load(load)?;
    let members = struct_members(&dwarf)?;
    let member = |strukt: &'static str, member: &'static str| -> Result<u64, DwarfError> {
        members
            .get(strukt)
            .ok_or(DwarfError::NoType(strukt))?
            .get(member)
            .copied()
            .ok_or(DwarfError::NoMember { strukt, member })
    };
    let fits = |what: &'static str, offset: u64| -> Result<u8, DwarfError> {
        u8::try_from(offset).map_err(|_| DwarfError::TooFar(what))
    };
    // The cookie holds the itab word's offset; the data word must follow it.
    let iface = member("crypto/tls.Conn", "conn")?;
    if member("runtime.iface", "data")? != member("runtime.iface", "tab")? + 8 {
        return Err(DwarfError::NoMember {
            strukt: "runtime.iface",
            member: "data",
        });
    }
    let fd = member("net.TCPConn", "conn")? + member("net.conn", "fd")?;
    let sysfd = member("net.netFD", "pfd")? + member("internal/poll.FD", "Sysfd")?;
    Ok(Some(Layout {
        iface: fits("tls.Conn.conn", iface)?,
        fd: fits("net.conn.fd", fd)?,
        sysfd: fits("poll.FD.Sysfd", sysfd)?,
    }))
}

/// A section's bytes, inflated when compressed (Go compresses its DWARF:
/// `SHF_COMPRESSED` sections, or `.zdebug_*` before Go 1.21 on some builds).
fn section_bytes(file: &object::File<'_>, name: &'static str) -> Result<Vec<u8>, DwarfError> {
    let Some(section) = file.section_by_name(name) else {
        return Ok(Vec::new());
    };
    let compressed = section
        .compressed_data()
        .map_err(|_| DwarfError::Compression(name))?;
    match compressed.format {
        object::CompressionFormat::None => Ok(compressed.data.to_vec()),
        object::CompressionFormat::Zlib => {
            let size = usize::try_from(compressed.uncompressed_size)
                .map_err(|_| DwarfError::Inflate(name))?;
            let mut out = Vec::with_capacity(size);
            std::io::Read::read_to_end(
                &mut flate2::read::ZlibDecoder::new(compressed.data),
                &mut out,
            )
            .map_err(|_| DwarfError::Inflate(name))?;
            if out.len() != size {
                return Err(DwarfError::Inflate(name));
            }
            Ok(out)
        }
        _ => Err(DwarfError::Compression(name)),
    }
}

/// Member offsets of the [`STRUCTS`] types, by type name then member name.
fn struct_members<R: gimli::Reader>(
    dwarf: &gimli::Dwarf<R>,
) -> Result<HashMap<&'static str, HashMap<String, u64>>, DwarfError> {
    let mut found: HashMap<&'static str, HashMap<String, u64>> = HashMap::new();
    // Not `Dwarf::unit`: that parses each unit's line program, which is
    // neither loaded nor needed.
    let name_of = |value: gimli::AttributeValue<R>| -> Result<Option<String>, DwarfError> {
        let bytes = match value {
            gimli::AttributeValue::String(bytes) => bytes,
            gimli::AttributeValue::DebugStrRef(offset) => dwarf.debug_str.get_str(offset)?,
            _ => return Ok(None),
        };
        Ok(Some(bytes.to_string_lossy()?.into_owned()))
    };
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let abbreviations = dwarf.abbreviations(&header)?;
        let mut entries = header.entries(&abbreviations);
        // The struct whose members are being read, and its depth.
        let mut current: Option<(&'static str, isize)> = None;
        let mut depth = 0isize;
        while let Some((delta, entry)) = entries.next_dfs()? {
            depth += delta;
            if current.is_some_and(|(_, d)| depth <= d) {
                current = None;
            }
            match entry.tag() {
                gimli::DW_TAG_structure_type if current.is_none() => {
                    let Some(name) = entry.attr_value(gimli::DW_AT_name)? else {
                        continue;
                    };
                    let Some(name) = name_of(name)? else {
                        continue;
                    };
                    current = STRUCTS
                        .iter()
                        .find(|s| **s == name && !found.contains_key(*s))
                        .map(|s| (*s, depth));
                    if let Some((s, _)) = current {
                        found.insert(s, HashMap::new());
                    }
                }
                gimli::DW_TAG_member => {
                    let Some((strukt, struct_depth)) = current else {
                        continue;
                    };
                    if depth != struct_depth + 1 {
                        continue;
                    }
                    let (Some(name), Some(offset)) = (
                        entry.attr_value(gimli::DW_AT_name)?,
                        entry
                            .attr_value(gimli::DW_AT_data_member_location)?
                            .and_then(|v| v.udata_value()),
                    ) else {
                        continue;
                    };
                    let Some(name) = name_of(name)? else {
                        continue;
                    };
                    if let Some(members) = found.get_mut(strukt) {
                        members.insert(name, offset);
                    }
                }
                _ => {}
            }
        }
        if found.len() == STRUCTS.len() {
            break;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_covers_register_abi_releases_only() {
        let go119 = Layout {
            iface: 0,
            fd: 0,
            sysfd: 16,
        };
        assert_eq!(table_layout("go1.19.8"), Some(go119));
        assert_eq!(table_layout("go1.17"), Some(go119));
        assert_eq!(table_layout("go1.24.2"), Some(go119));
        assert_eq!(table_layout("go1.16.15"), None);
        assert_eq!(
            table_layout("go1.99"),
            None,
            "a later release is not guessed"
        );
        assert_eq!(table_layout("devel go1.23-abc"), None);
        assert_eq!(table_layout("go1.22rc1"), Some(go119));
    }

    #[test]
    fn the_cookie_carries_the_layout_and_the_itab_delta() {
        let layout = Layout {
            iface: 0,
            fd: 0,
            sysfd: 16,
        };
        let plan = ConnPlan {
            layout,
            source: LayoutSource::Dwarf,
            tcp_itab: Some(0x6f_ca88),
        };
        let (back, delta) = go_conn::decode(plan.cookie(0x5c_0000)).unwrap();
        assert_eq!(back, layout);
        assert_eq!(delta, 0x6f_ca88 - 0x5c_0000);
        // An itab before the function.
        let (_, delta) = go_conn::decode(plan.cookie(0x70_0000)).unwrap();
        assert_eq!(i64::from(delta), 0x6f_ca88 - 0x70_0000);
        // Unknown itab: the layout still goes, unchecked.
        let plan = ConnPlan {
            tcp_itab: None,
            ..plan
        };
        assert_eq!(go_conn::decode(plan.cookie(0x5c_0000)), Some((layout, 0)));
        // No layout, no fd path (the RET probes' cookie).
        assert_eq!(go_conn::decode(0), None);
    }
}
