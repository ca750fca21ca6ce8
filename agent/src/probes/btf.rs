//! Kernel struct offsets read from the running kernel's BTF, so the programs
//! read the right fields on any kernel build.

use btf_rs::{Btf, Type};
use tokenscope_common::Offsets;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF at {path}")]
    Read {
        path: String,
        #[source]
        source: btf_rs::Error,
    },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF struct {strukt} has no field {field}")]
    NoField { strukt: String, field: String },
}

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Reads every offset the eBPF programs need.
pub fn kernel_offsets() -> Result<Offsets, BtfError> {
    let btf = Btf::from_file(VMLINUX).map_err(|source| BtfError::Read {
        path: VMLINUX.to_string(),
        source,
    })?;
    let sock = |field: &str| offset_of(&btf, "sock", field);
    let task = |field: &str| offset_of(&btf, "task_struct", field);
    let file = |field: &str| offset_of(&btf, "file", field);
    let socket = |field: &str| offset_of(&btf, "socket", field);
    Ok(Offsets {
        sk_family: sock("skc_family")?,
        sk_dport: sock("skc_dport")?,
        sk_num: sock("skc_num")?,
        sk_daddr: sock("skc_daddr")?,
        sk_rcv_saddr: sock("skc_rcv_saddr")?,
        sk_v6_daddr: sock("skc_v6_daddr")?,
        sk_v6_rcv_saddr: sock("skc_v6_rcv_saddr")?,
        sk_type: sock("sk_type")?,
        task_real_parent: task("real_parent")?,
        task_tgid: task("tgid")?,
        sk_state: sock("skc_state")?,
        task_files: task("files")?,
        files_fdt: offset_of(&btf, "files_struct", "fdt")?,
        fdt_max_fds: offset_of(&btf, "fdtable", "max_fds")?,
        fdt_fd: offset_of(&btf, "fdtable", "fd")?,
        file_inode: file("f_inode")?,
        inode_mode: offset_of(&btf, "inode", "i_mode")?,
        file_private_data: file("private_data")?,
        socket_file: socket("file")?,
        socket_sk: socket("sk")?,
        // Optional: only a check that tolerates other tools' return probes
        // depends on them.
        task_mm: task("mm").unwrap_or(0),
        mm_xol_area: offset_of(&btf, "mm_struct", "xol_area").unwrap_or(0),
        xol_vaddr: offset_of(&btf, "xol_area", "vaddr").unwrap_or(0),
        _pad: 0,
    })
}

/// Byte offset of `field` in `struct strukt`, searching embedded structs and
/// anonymous unions (as `sock.__sk_common.skc_family`) depth-first.
pub fn offset_of(btf: &Btf, strukt: &str, field: &str) -> Result<u32, BtfError> {
    let types = btf
        .resolve_types_by_name(strukt)
        .map_err(|_| BtfError::NoStruct(strukt.to_string()))?;
    let st = types
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| BtfError::NoStruct(strukt.to_string()))?;
    find_in(btf, &st.members, field, 0, 0).ok_or_else(|| BtfError::NoField {
        strukt: strukt.to_string(),
        field: field.to_string(),
    })
}

fn find_in(
    btf: &Btf,
    members: &[btf_rs::Member],
    field: &str,
    base_bits: u32,
    depth: u32,
) -> Option<u32> {
    if depth > 4 {
        return None;
    }
    // Direct members first, so a field is found at its shallowest place.
    for m in members {
        if btf.resolve_name(m).ok().as_deref() == Some(field) {
            return Some((base_bits + m.bit_offset()) / 8);
        }
    }
    for m in members {
        let Some(inner) = resolved_struct(btf, m) else {
            continue;
        };
        if let Some(off) = find_in(
            btf,
            &inner.members,
            field,
            base_bits + m.bit_offset(),
            depth + 1,
        ) {
            return Some(off);
        }
    }
    None
}

fn resolved_struct(btf: &Btf, member: &btf_rs::Member) -> Option<btf_rs::Struct> {
    let mut ty = btf.resolve_chained_type(member).ok()?;
    for _ in 0..8 {
        match ty {
            Type::Struct(s) | Type::Union(s) => return Some(s),
            Type::Typedef(ref t) => ty = btf.resolve_chained_type(t).ok()?,
            Type::Const(ref t) => ty = btf.resolve_chained_type(t).ok()?,
            Type::Volatile(ref t) => ty = btf.resolve_chained_type(t).ok()?,
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_socket_and_task_offsets_from_this_kernel() {
        let Ok(off) = kernel_offsets() else {
            assert!(
                std::env::var("CI").is_err(),
                "kernel BTF must be readable under CI"
            );
            return;
        };
        // struct sock_common starts with skc_daddr, skc_rcv_saddr (an __addrpair),
        // then the hash, then dport/num (a __portpair), then the family.
        assert_eq!(off.sk_daddr, 0);
        assert_eq!(off.sk_rcv_saddr, 4);
        assert_eq!(off.sk_dport, 12);
        assert_eq!(off.sk_num, 14);
        assert_eq!(off.sk_family, 16);
        assert!(off.sk_type > 16 && off.sk_v6_daddr > 16);
        assert!(off.task_real_parent > 0 && off.task_tgid > 0);
        // struct fdtable { unsigned int max_fds; struct file __rcu **fd; ... }
        assert_eq!(off.fdt_max_fds, 0);
        assert_eq!(off.fdt_fd, 8);
        // struct inode starts with umode_t i_mode.
        assert_eq!(off.inode_mode, 0);
        assert!(off.task_files > 0 && off.file_private_data > 0 && off.file_inode > 0);
        // struct socket: state, type, flags, then file before sk.
        assert!(off.socket_sk > off.socket_file && off.socket_file > 0);
    }
}
