//! Reads with one trap: where in OpenSSL's read path the buffer and the
//! byte count are both known.
//!
//! A read's buffer is an argument and its byte count a result, so probing
//! a function's entry and return costs two traps. Inside OpenSSL's
//! `ssl3_read` (1.1 to 3.x), the record layer is called through the method
//! table, `s->method->ssl_read_bytes(s, SSL3_RT_APPLICATION_DATA (23),
//! NULL, buf, len, peek, readbytes)`, and the caller keeps `s`, `buf` and
//! `readbytes` for a retry, in callee-saved registers. A probe on the
//! first emulated instruction after that call (`je` on the result, or the
//! next `call`) sees the result in rax and the rest in those registers:
//! one trap per read, for `SSL_read`, `SSL_read_ex`, `SSL_peek` (told
//! apart by the peek flag) and async reads alike.
//!
//! `ssl3_read` is not exported: `TLS_method()` returns the method table,
//! whose slots (relocated pointers in a shared object, plain ones in an
//! executable) lead to it. A candidate call must load esi with 23 and edx
//! with 0, take rdi, rcx and the 7th argument (pushed last) from
//! callee-saved registers, and r9 from one or a constant zero. Between the
//! call and the probe no instruction may write rax or those registers, and
//! no branch may land. Anything else gives no site, and the read falls
//! back to entry and return probes.

use std::collections::{BTreeSet, HashMap};

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic,
    OpAccess, OpKind, Register,
};
use object::{Object, ObjectSection, ObjectSymbol, RelocationFlags, SectionKind};
use tokenscope_common::ssl_cookie::{Site, NO_REGISTER, SITE_REGISTERS};

use super::placement::file_offset;

/// Bytes decoded from a method-table target (the function, and maybe the
/// start of the next one: more code only adds branch targets, which makes
/// the search stricter, never looser).
const FUNCTION_BYTES: u64 = 768;

/// Method-table words examined. OpenSSL's `SSL_METHOD` has about 40
/// slots; `ssl_read` is the 6th function.
const TABLE_WORDS: u64 = 48;

/// Instructions examined after the call for an emulated one.
const AFTER_CALL: usize = 8;

/// `SSL3_RT_APPLICATION_DATA`.
const APPLICATION_DATA: i64 = 23;

/// A read probe: the virtual address of the instruction, and where the
/// values lie when it is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadSite {
    pub addr: u64,
    pub site: Site,
}

/// The read sites of one library build, or `None` when its code has not
/// the expected shape (BoringSSL, another compiler's choices, no
/// `TLS_method`).
pub fn read_sites(file: &object::File<'_>, data: &[u8]) -> Option<Vec<ReadSite>> {
    if file.architecture() != object::Architecture::X86_64 {
        return None;
    }
    let mut sites: Vec<ReadSite> = method_functions(file, data)?
        .into_iter()
        .flat_map(|f| sites_in(file, data, f))
        .collect();
    sites.sort_by_key(|s| s.addr);
    sites.dedup_by_key(|s| s.addr);
    (!sites.is_empty()).then_some(sites)
}

/// The functions `TLS_method()`'s table points to (a thunk stands for the
/// function it jumps to).
fn method_functions(file: &object::File<'_>, data: &[u8]) -> Option<BTreeSet<u64>> {
    let method = file
        .dynamic_symbols()
        .chain(file.symbols())
        .find(|s| s.is_definition() && s.name() == Ok("TLS_method"))?;
    let table = returned_address(file, data, method.address())?;
    let relocated = relative_relocations(file, table, TABLE_WORDS * 8);
    let mut functions = BTreeSet::new();
    for word in 0..TABLE_WORDS {
        let slot = table.wrapping_add(word * 8);
        let Some(target) = pointer_at(file, data, &relocated, slot) else {
            continue;
        };
        if is_code(file, target) {
            functions.insert(follow_thunk(file, data, target));
        }
    }
    Some(functions)
}

/// The constant address a function like `TLS_method` returns:
/// `lea rax, [rip + x]` or `mov eax, imm32`, then `ret`.
fn returned_address(file: &object::File<'_>, data: &[u8], addr: u64) -> Option<u64> {
    let code = code_at(file, data, addr, 32)?;
    let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let first = decoder.decode();
    let second = decoder.decode();
    if second.flow_control() != FlowControl::Return
        || first.op0_kind() != OpKind::Register
        || first.op0_register().full_register() != Register::RAX
    {
        return None;
    }
    match first.mnemonic() {
        Mnemonic::Lea if first.is_ip_rel_memory_operand() => Some(first.ip_rel_memory_address()),
        Mnemonic::Mov if first.op1_kind() == OpKind::Immediate32 => {
            Some(first.immediate32() as u64)
        }
        Mnemonic::Mov if first.op1_kind() == OpKind::Immediate32to64 => {
            Some(first.immediate32to64() as u64)
        }
        _ => None,
    }
}

/// `R_X86_64_RELATIVE` addends for the words in `[start, start + len)`:
/// a shared object's function pointers are zero in the file and filled in
/// at load time from these.
fn relative_relocations(file: &object::File<'_>, start: u64, len: u64) -> HashMap<u64, u64> {
    let Some(relocations) = file.dynamic_relocations() else {
        return HashMap::new();
    };
    relocations
        .filter(|(offset, _)| (start..start.saturating_add(len)).contains(offset))
        .filter_map(|(offset, r)| match r.flags() {
            RelocationFlags::Elf { r_type } if r_type == object::elf::R_X86_64_RELATIVE => {
                Some((offset, r.addend() as u64))
            }
            _ => None,
        })
        .collect()
}

/// The pointer stored at virtual address `addr`, as the loader leaves it
/// (relative to the load address).
fn pointer_at(
    file: &object::File<'_>,
    data: &[u8],
    relocated: &HashMap<u64, u64>,
    addr: u64,
) -> Option<u64> {
    if let Some(target) = relocated.get(&addr) {
        return Some(*target);
    }
    let offset = usize::try_from(file_offset(file, addr)?).ok()?;
    let bytes = data.get(offset..offset.checked_add(8)?)?;
    let value = u64::from_le_bytes(bytes.try_into().ok()?);
    (value != 0).then_some(value)
}

fn is_code(file: &object::File<'_>, addr: u64) -> bool {
    file.sections().any(|s| {
        s.kind() == SectionKind::Text
            && (s.address()..s.address().saturating_add(s.size())).contains(&addr)
    })
}

/// A function that only moves arguments and jumps on (`ssl3_read` into the
/// body it shares with `ssl3_peek`) stands for its jump target.
fn follow_thunk(file: &object::File<'_>, data: &[u8], addr: u64) -> u64 {
    let Some(code) = code_at(file, data, addr, 32) else {
        return addr;
    };
    let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    for _ in 0..4 {
        let ins = decoder.decode();
        match ins.flow_control() {
            FlowControl::UnconditionalBranch if ins.is_jmp_short_or_near() => {
                return ins.near_branch_target();
            }
            FlowControl::Next => {}
            _ => break,
        }
    }
    addr
}

/// What a register holds, as far as one basic block tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value {
    /// A copy of a callee-saved register (index into [`SITE_REGISTERS`]).
    Saved(u8),
    Const(i64),
}

fn saved_index(reg: Register) -> Option<u8> {
    let full = reg.full_register();
    [
        Register::RBX,
        Register::RBP,
        Register::R12,
        Register::R13,
        Register::R14,
        Register::R15,
    ]
    .iter()
    .position(|r| *r == full)
    .map(|i| i as u8)
}

/// The read sites inside one function.
fn sites_in(file: &object::File<'_>, data: &[u8], addr: u64) -> Vec<ReadSite> {
    match code_at(file, data, addr, FUNCTION_BYTES) {
        Some(code) => sites_in_code(code, addr),
        None => Vec::new(),
    }
}

/// The read sites in `code`, which starts at virtual address `addr`.
fn sites_in_code(code: &[u8], addr: u64) -> Vec<ReadSite> {
    let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut code_list = Vec::new();
    while decoder.can_decode() {
        let ins = decoder.decode();
        if ins.code() == Code::INVALID {
            break;
        }
        code_list.push(ins);
    }
    let targets: BTreeSet<u64> = code_list
        .iter()
        .filter(|i| {
            matches!(
                i.flow_control(),
                FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch
            ) && i.op0_kind() != OpKind::Register
                && i.op0_kind() != OpKind::Memory
        })
        .map(|i| i.near_branch_target())
        .collect();

    let mut info = InstructionInfoFactory::new();
    let mut regs: HashMap<Register, Value> = HashMap::new();
    let mut pushed: Option<u8> = None;
    let mut out = Vec::new();
    for (index, ins) in code_list.iter().enumerate() {
        if targets.contains(&ins.ip()) {
            regs.clear();
            pushed = None;
        }
        if ins.flow_control() == FlowControl::IndirectCall {
            if let Some(site) = record_layer_call(&regs, pushed) {
                if let Some(probe) = probe_after(&code_list[index + 1..], &targets, site) {
                    out.push(ReadSite { addr: probe, site });
                }
            }
        }
        track(ins, &mut info, &mut regs, &mut pushed);
    }
    out
}

/// The site, if the indirect call about to run is `ssl_read_bytes(s, 23,
/// NULL, buf, len, peek, readbytes)` with `s`, `buf`, `readbytes` (and
/// `peek`, unless zero) in callee-saved registers.
fn record_layer_call(regs: &HashMap<Register, Value>, pushed: Option<u8>) -> Option<Site> {
    let saved = |r: Register| match regs.get(&r) {
        Some(Value::Saved(i)) => Some(*i),
        _ => None,
    };
    if regs.get(&Register::RSI) != Some(&Value::Const(APPLICATION_DATA))
        || regs.get(&Register::RDX) != Some(&Value::Const(0))
    {
        return None;
    }
    let peek = match regs.get(&Register::R9) {
        Some(Value::Const(0)) => NO_REGISTER,
        Some(Value::Saved(i)) => *i,
        // A constant non-zero peek: `SSL_peek`'s own copy of the function.
        _ => return None,
    };
    Some(Site {
        ssl: saved(Register::RDI)?,
        buf: saved(Register::RCX)?,
        done: pushed?,
        peek,
    })
}

/// Follows one instruction's effect on the tracked registers and on the
/// last value pushed (the call's 7th argument when nothing moves the stack
/// after it).
fn track(
    ins: &Instruction,
    info: &mut InstructionInfoFactory,
    regs: &mut HashMap<Register, Value>,
    pushed: &mut Option<u8>,
) {
    if matches!(
        ins.flow_control(),
        FlowControl::Call | FlowControl::IndirectCall
    ) {
        // Caller-saved registers are gone; copies of callee-saved ones hold.
        regs.retain(|r, _| saved_index(*r).is_some());
    }
    let reg_op =
        |i: u32| (ins.op_kind(i) == OpKind::Register).then(|| ins.op_register(i).full_register());
    let assigned = match ins.mnemonic() {
        Mnemonic::Mov if ins.op_count() == 2 => match (reg_op(0), ins.op1_kind()) {
            (Some(dst), OpKind::Register) => {
                saved_index(ins.op1_register()).map(|i| (dst, Value::Saved(i)))
            }
            (Some(dst), OpKind::Immediate32 | OpKind::Immediate32to64 | OpKind::Immediate64) => {
                Some((dst, Value::Const(ins.immediate(1) as i64)))
            }
            _ => None,
        },
        Mnemonic::Xor if reg_op(0).is_some() && reg_op(0) == reg_op(1) => {
            reg_op(0).map(|dst| (dst, Value::Const(0)))
        }
        _ => None,
    };
    if ins.mnemonic() == Mnemonic::Push {
        *pushed = reg_op(0).and_then(saved_index);
    } else if ins.stack_pointer_increment() != 0 || written(ins, info).contains(&Register::RSP) {
        *pushed = None;
    }
    for reg in written(ins, info) {
        regs.remove(&reg);
    }
    if let Some((dst, value)) = assigned {
        regs.insert(dst, value);
    }
}

/// Full registers an instruction writes.
fn written(ins: &Instruction, info: &mut InstructionInfoFactory) -> Vec<Register> {
    info.info(ins)
        .used_registers()
        .iter()
        .filter(|r| {
            matches!(
                r.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            )
        })
        .map(|r| r.register().full_register())
        .collect()
}

/// The first instruction after the call that the kernel emulates, reached
/// only from the call, with rax and the site's registers untouched on the
/// way.
fn probe_after(after: &[Instruction], targets: &BTreeSet<u64>, site: Site) -> Option<u64> {
    let kept: Vec<Register> = [site.ssl, site.buf, site.done, site.peek]
        .iter()
        .filter(|i| **i != NO_REGISTER)
        .map(|i| register_named(*i))
        .chain([Register::RAX])
        .collect();
    let mut info = InstructionInfoFactory::new();
    for ins in after.iter().take(AFTER_CALL) {
        if targets.contains(&ins.ip()) {
            return None;
        }
        if emulated(ins) {
            return Some(ins.ip());
        }
        if ins.flow_control() != FlowControl::Next {
            return None;
        }
        if written(ins, &mut info).iter().any(|r| kept.contains(r)) {
            return None;
        }
    }
    None
}

fn register_named(index: u8) -> Register {
    match SITE_REGISTERS.get(index as usize) {
        Some(&"rbx") => Register::RBX,
        Some(&"rbp") => Register::RBP,
        Some(&"r12") => Register::R12,
        Some(&"r13") => Register::R13,
        Some(&"r14") => Register::R14,
        Some(&"r15") => Register::R15,
        _ => Register::None,
    }
}

/// Whether x86 uprobes emulate this instruction instead of single-stepping
/// it: relative jumps, conditional jumps and calls, `push reg`, 5-byte nop.
pub fn emulated(ins: &Instruction) -> bool {
    match ins.mnemonic() {
        Mnemonic::Push => ins.op0_kind() == OpKind::Register,
        Mnemonic::Nop => ins.len() == 5,
        _ => match ins.flow_control() {
            FlowControl::Call => ins.is_call_near(),
            FlowControl::UnconditionalBranch => ins.is_jmp_short_or_near(),
            FlowControl::ConditionalBranch => ins.is_jcc_short_or_near(),
            _ => false,
        },
    }
}

/// `len` bytes of code at `addr` (less at the end of its section).
fn code_at<'d>(file: &object::File<'_>, data: &'d [u8], addr: u64, len: u64) -> Option<&'d [u8]> {
    super::placement::code_at(file, data, addr, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(path: &str) -> Option<Vec<u8>> {
        let found = std::fs::read(path).ok();
        if found.is_none() {
            assert!(
                std::env::var("CI").is_err(),
                "CI machines have {path} (libssl3, nodejs)"
            );
        }
        found
    }

    fn decode_at(code: &[u8], addr: u64) -> Vec<Instruction> {
        let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
        let mut out = Vec::new();
        while decoder.can_decode() {
            out.push(decoder.decode());
        }
        out
    }

    /// The function holding read sites in Debian's libssl, and its code.
    fn debian_read_body(data: &[u8]) -> (u64, Vec<u8>) {
        let file = object::File::parse(data).unwrap();
        let functions = method_functions(&file, data).unwrap();
        // Decoding from an earlier function runs on into this one: the
        // body is the last function with sites.
        let addr = functions
            .into_iter()
            .rfind(|f| !sites_in(&file, data, *f).is_empty())
            .unwrap();
        (
            addr,
            code_at(&file, data, addr, FUNCTION_BYTES).unwrap().to_vec(),
        )
    }

    #[test]
    fn debian_libssl3_reads_are_probed_after_the_record_layer_call() {
        let Some(data) = load("/usr/lib/x86_64-linux-gnu/libssl.so.3") else {
            return;
        };
        let file = object::File::parse(&*data).unwrap();
        let sites = read_sites(&file, &data).expect("Debian's libssl has read sites");
        // The read and its retry (after a renegotiation), in the body that
        // `ssl3_read` and `ssl3_peek` share: the peek flag is a register.
        assert_eq!(sites.len(), 2, "{sites:x?}");
        let (body, code) = debian_read_body(&data);
        let listing = decode_at(&code, body);
        for s in &sites {
            assert_eq!(s.site, sites[0].site);
            assert_ne!(s.site.peek, NO_REGISTER, "{s:x?}");
            let distinct: BTreeSet<u8> = [s.site.ssl, s.site.buf, s.site.done, s.site.peek].into();
            assert_eq!(distinct.len(), 4, "{s:x?}");
            let at = listing.iter().position(|i| i.ip() == s.addr).unwrap();
            assert!(emulated(&listing[at]), "{:?}", listing[at].code());
            // An indirect call (the record layer) shortly before.
            assert!(
                listing[at.saturating_sub(AFTER_CALL)..at]
                    .iter()
                    .any(|i| i.flow_control() == FlowControl::IndirectCall),
                "{s:x?}"
            );
        }
    }

    #[test]
    fn node_reads_are_probed_in_its_read_not_its_peek() {
        let Some(data) = load("/usr/bin/node") else {
            return;
        };
        let file = object::File::parse(&*data).unwrap();
        let sites = read_sites(&file, &data).expect("Node's OpenSSL has read sites");
        let symbol = |name: &str| {
            let s = file.symbols().find(|s| s.name() == Ok(name)).unwrap();
            s.address()..s.address() + s.size()
        };
        // Node's build inlines the shared body into both: `ssl3_peek`'s copy
        // passes a constant 1 and gets no probe.
        let (read, peek) = (symbol("ssl3_read"), symbol("ssl3_peek"));
        assert!(!sites.is_empty());
        for s in &sites {
            assert!(read.contains(&s.addr), "{s:x?} outside ssl3_read {read:x?}");
            assert!(!peek.contains(&s.addr));
            assert_eq!(s.site.peek, NO_REGISTER, "{s:x?}");
        }
    }

    #[test]
    fn a_site_is_refused_when_its_values_are_not_where_the_pattern_says() {
        let Some(data) = load("/usr/lib/x86_64-linux-gnu/libssl.so.3") else {
            return;
        };
        let (addr, code) = debian_read_body(&data);
        let original = sites_in_code(&code, addr);
        assert_eq!(original.len(), 2);
        let listing = decode_at(&code, addr);
        let first_call = listing
            .iter()
            .position(|i| i.flow_control() == FlowControl::IndirectCall)
            .unwrap();
        let offset = |i: &Instruction| (i.ip() - addr) as usize;

        // The type is not application data: not the read's record layer call.
        let mut patched = code.clone();
        let load_type = listing[..first_call]
            .iter()
            .rev()
            .find(|i| i.mnemonic() == Mnemonic::Mov && i.op0_register() == Register::ESI)
            .unwrap();
        let imm = offset(load_type) + load_type.len() - 4;
        patched[imm] = 22;
        let sites = sites_in_code(&patched, addr);
        assert!(
            sites.iter().all(|s| s.addr > original[0].addr),
            "{sites:x?}"
        );
        assert_eq!(sites.len(), 1);

        // rax overwritten between the call and the probe: that site goes.
        let mut patched = code.clone();
        let compare = listing[first_call..]
            .iter()
            .find(|i| i.mnemonic() == Mnemonic::Cmp)
            .unwrap();
        assert_eq!(compare.len(), 3, "{:?}", compare.code());
        let at = offset(compare);
        patched[at..at + 3].copy_from_slice(&[0x31, 0xc0, 0x90]); // xor eax, eax; nop
        let sites = sites_in_code(&patched, addr);
        assert_eq!(sites, original[1..].to_vec());

        // A branch from later in the function into the stretch between the
        // call and the probe: the probe would fire on that path too.
        let mut patched = code.clone();
        let target = listing[first_call + 1].ip();
        let room = listing
            .iter()
            .find(|i| {
                i.ip() > original[0].addr && i.len() >= 5 && i.flow_control() == FlowControl::Next
            })
            .unwrap();
        let at = offset(room);
        let rel = (target as i64 - (room.ip() + 5) as i64) as i32;
        patched[at] = 0xe9;
        patched[at + 1..at + 5].copy_from_slice(&rel.to_le_bytes());
        for byte in &mut patched[at + 5..at + room.len()] {
            *byte = 0x90;
        }
        let sites = sites_in_code(&patched, addr);
        assert!(
            sites.iter().all(|s| s.addr != original[0].addr),
            "{sites:x?}"
        );
        assert_eq!(sites.len(), 1, "{sites:x?}");
    }

    #[test]
    fn cookies_carry_the_site() {
        let site = Site {
            ssl: 0,
            buf: 1,
            done: 4,
            peek: NO_REGISTER,
        };
        let cookie = tokenscope_common::ssl_cookie::encode_site(7, site);
        assert_eq!(tokenscope_common::ssl_cookie::decode_site(cookie), site);
        assert_eq!(
            tokenscope_common::ssl_cookie::decode(cookie),
            (
                tokenscope_common::DIR_INGRESS,
                tokenscope_common::ssl_cookie::LEN_IN_REGISTERS,
                7
            )
        );
    }
}
