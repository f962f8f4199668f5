//! Go executables: where `crypto/tls.(*Conn).Write`, `.Read` and `.Close` are, and
//! the points inside the first two where their bytes can be copied: Write's
//! stack check, Read's one call of `runtime.memmove`, or else every return
//! instruction.
//!
//! Go binaries are static and often stripped of `.symtab` (`-ldflags=-s -w`), but
//! always carry `.gopclntab`, the runtime's own function table: names and entry
//! points come from there when the symbol table is absent. Return instructions
//! are found by decoding the function's machine code (x86-64); uretprobes are
//! not usable on Go, whose goroutine stacks move.
use iced_x86::{Code, Decoder, DecoderOptions, Register};
use object::{Object, ObjectSection, ObjectSymbol};

use super::placement::{self, file_offset};

/// File offsets of the probe points in one Go executable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GoTls {
    pub write: u64,
    /// `write` is the prologue's stack check, where the bytes are copied when
    /// the call goes on (see `placement::stack_check`); `write_rets` is empty.
    pub write_once: bool,
    pub write_rets: Vec<u64>,
    pub read: u64,
    /// `Read`'s one call of `runtime.memmove`, where the record's plaintext is
    /// copied into the caller's buffer (see `read_copy`); `read_rets` is then
    /// empty.
    pub read_copy: Option<u64>,
    pub read_rets: Vec<u64>,
    pub close: Option<u64>,
}

const WRITE: &str = "crypto/tls.(*Conn).Write";
const READ: &str = "crypto/tls.(*Conn).Read";
const CLOSE: &str = "crypto/tls.(*Conn).Close";
const MEMMOVE: &str = "runtime.memmove";
/// Return sites probed per function; more means the decode went wrong.
const MAX_RETS: usize = 64;

/// A function: virtual address and length.
type Func = (u64, u64);

#[derive(Default)]
struct Found {
    write: Option<Func>,
    read: Option<Func>,
    close: Option<Func>,
    memmove: Option<Func>,
}

/// Why a Go binary is not probed (logged once per file).
#[derive(Debug, PartialEq, Eq)]
pub enum NotProbed {
    /// No `.gopclntab`: not Go.
    NotGo,
    /// Go, without crypto/tls.
    NoTls,
    /// Go before 1.18: stack-based calling convention, not supported.
    OldGo,
    /// Not x86-64 (return sites are found by an x86-64 decoder).
    Arch,
    Malformed(&'static str),
}

pub fn inspect(elf: &object::File<'_>, data: &[u8]) -> Result<GoTls, NotProbed> {
    let pcln = elf
        .section_by_name(".gopclntab")
        .or_else(|| elf.section_by_name(".data.rel.ro.gopclntab"))
        .ok_or(NotProbed::NotGo)?;
    let table = pcln.data().map_err(|_| NotProbed::Malformed("unreadable .gopclntab"))?;
    let magic = table.get(..4).map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]])).unwrap_or(0);
    if magic != 0xffff_fff0 && magic != 0xffff_fff1 {
        return Err(NotProbed::OldGo);
    }
    if elf.architecture() != object::Architecture::X86_64 {
        return Err(NotProbed::Arch);
    }
    let mut found = Found::default();
    for (i, sym) in elf.symbols().enumerate() {
        super::pages::release_all_every(i);
        let slot = match sym.name() {
            Ok(WRITE) => &mut found.write,
            Ok(READ) => &mut found.read,
            Ok(CLOSE) => &mut found.close,
            Ok(MEMMOVE) => &mut found.memmove,
            _ => continue,
        };
        if sym.size() > 0 {
            *slot = Some((sym.address(), sym.size()));
        }
    }
    if found.write.is_none() || found.read.is_none() {
        found = from_pclntab(table)?;
    }
    let (Some(write), Some(read)) = (found.write, found.read) else {
        return Err(NotProbed::NoTls);
    };
    let (write, write_once, write_rets) = write_points(elf, data, write)?;
    let read_copy = found.memmove.and_then(|m| read_copy(elf, data, read, m.0));
    let (read, mut read_rets) = probe_points(elf, data, read)?;
    if read_copy.is_some() {
        read_rets.clear();
    }
    let close = found.close.and_then(|f| file_offset(elf, f.0));
    Ok(GoTls { write, write_once, write_rets, read, read_copy, read_rets, close })
}

/// Names and extents from the runtime's function table (Go 1.18+ layout).
fn from_pclntab(t: &[u8]) -> Result<Found, NotProbed> {
    let bad = NotProbed::Malformed("bad .gopclntab");
    let ptr = *t.get(7).ok_or(NotProbed::Malformed("short .gopclntab"))? as usize;
    if ptr != 8 {
        return Err(NotProbed::Arch);
    }
    let word = |i: usize| -> Option<u64> {
        t.get(8 + i * ptr..8 + (i + 1) * ptr).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    let u32_at = |off: usize| -> Option<u32> {
        t.get(off..off.checked_add(4)?).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let nfunc = word(0).ok_or(NotProbed::Malformed("short header"))? as usize;
    let text_start = word(2).ok_or(NotProbed::Malformed("short header"))?;
    let funcname = word(3).ok_or(NotProbed::Malformed("short header"))? as usize;
    let pcln = word(7).ok_or(NotProbed::Malformed("short header"))? as usize;
    if nfunc > t.len() / 8 {
        return Err(bad);
    }
    let mut found = Found::default();
    for i in 0..nfunc {
        super::pages::release_all_every(i);
        let ft = pcln + i * 8;
        let (Some(entry), Some(funcoff), Some(next)) = (u32_at(ft), u32_at(ft + 4), u32_at(ft + 8)) else {
            return Err(NotProbed::Malformed("functab out of range"));
        };
        let Some(name_off) = u32_at(pcln + funcoff as usize + 4) else {
            continue;
        };
        let start = funcname + name_off as usize;
        let Some(name) = t.get(start..).and_then(|s| s.split(|&b| b == 0).next()) else {
            continue;
        };
        let slot = match name {
            b"crypto/tls.(*Conn).Write" => &mut found.write,
            b"crypto/tls.(*Conn).Read" => &mut found.read,
            b"crypto/tls.(*Conn).Close" => &mut found.close,
            b"runtime.memmove" => &mut found.memmove,
            _ => continue,
        };
        if next > entry {
            *slot = Some((text_start + entry as u64, (next - entry) as u64));
        }
    }
    Ok(found)
}

/// `(*Conn).Write` writes all of its buffer or fails the connection, so its
/// bytes can be copied on the way in, at the stack check when the call goes
/// on: no probe on its `RET`s, which the kernel single-steps (~16 µs each in a
/// VM). Without a stack check found, entry and returns as for `Read`.
fn write_points(elf: &object::File<'_>, data: &[u8], (addr, len): Func) -> Result<(u64, bool, Vec<u64>), NotProbed> {
    let (off, code) = function_code(elf, data, (addr, len))?;
    if let Some(once) = placement::stack_check(code, addr, &KEPT) {
        return Ok((off + (once - addr), true, Vec::new()));
    }
    let (entry, rets) = probe_points(elf, data, (addr, len))?;
    Ok((entry, false, rets))
}

/// `Read` hands its caller the plaintext of the current record with
/// `copy(b, c.input[i:])` (the inlined `bytes.Reader.Read`), compiled to one
/// call of `runtime.memmove(to, from, n)`: RAX, RBX, RCX by the register ABI.
/// At that call (a `call rel32`, which the kernel emulates) the bytes Read
/// returns are in `from`, `n` of them: one cheap probe hit per call instead of
/// a single-stepped one at each `RET`. Found only when Read makes exactly one
/// such call; any other shape keeps the `RET` probes.
fn read_copy(elf: &object::File<'_>, data: &[u8], read: Func, memmove: u64) -> Option<u64> {
    let (off, code) = function_code(elf, data, read).ok()?;
    only_call_to(code, read.0, memmove).map(|at| off + (at - read.0))
}

/// The address of the one direct call to `target` in `code` (at `addr`); none
/// when there are none or several.
fn only_call_to(code: &[u8], addr: u64, target: u64) -> Option<u64> {
    let mut d = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut at = None;
    while d.can_decode() {
        let ins = d.decode();
        if ins.code() == Code::Call_rel32_64 && ins.near_branch_target() == target {
            if at.is_some() {
                return None;
            }
            at = Some(ins.ip());
        }
    }
    at
}

/// A function's file offset and machine code.
fn function_code<'d>(elf: &object::File<'_>, data: &'d [u8], (addr, len): Func) -> Result<(u64, &'d [u8]), NotProbed> {
    let off = file_offset(elf, addr).ok_or(NotProbed::Malformed("function outside any section"))?;
    let code = data
        .get(off as usize..off.saturating_add(len) as usize)
        .ok_or(NotProbed::Malformed("function beyond the end of the file"))?;
    Ok((off, code))
}

/// What the entry program reads: the receiver, buffer and length (RAX, RBX,
/// RCX) and the goroutine (R14).
const KEPT: [Register; 4] = [Register::RAX, Register::RBX, Register::RCX, Register::R14];

/// Where the entry probe goes (the entry, or a cheaper point in the prologue) and
/// each `RET`, as file offsets.
fn probe_points(elf: &object::File<'_>, data: &[u8], (addr, len): Func) -> Result<(u64, Vec<u64>), NotProbed> {
    let (off, code) = function_code(elf, data, (addr, len))?;
    let rets = return_sites(code, addr);
    if rets.is_empty() || rets.len() > MAX_RETS {
        return Err(NotProbed::Malformed("no plausible return instructions"));
    }
    // Any instruction before which none of KEPT changed will do, and one the
    // kernel emulates costs a fraction of the entry's (placement.rs).
    let entry = placement::cheap_entry(code, addr, &KEPT).unwrap_or(addr);
    Ok((off + (entry - addr), rets.into_iter().map(|r| off + (r - addr)).collect()))
}

/// Addresses of the `RET` instructions in `code` (starting at `addr`). Decoding
/// runs from the entry in order, so data bytes that look like `C3` are not taken.
pub fn return_sites(code: &[u8], addr: u64) -> Vec<u64> {
    let mut d = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        let ins = d.decode();
        if matches!(ins.code(), Code::Retnq | Code::Retnq_imm16) {
            out.push(ins.ip());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_returns_not_c3_bytes_inside_instructions() {
        // mov eax, 0xc3c3c3c3 ; ret ; int3 ; add rsp, 0x18 ; ret
        let code = [0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3, 0xcc, 0x48, 0x83, 0xc4, 0x18, 0xc3];
        assert_eq!(return_sites(&code, 0x1000), vec![0x1005, 0x100b]);
    }

    #[test]
    fn reads_copy_at_the_one_call_of_memmove() {
        // call +0x10 (0x1015) ; test rcx, rcx ; call +0 (0x100d) ; ret
        let one = [0xe8, 0x10, 0, 0, 0, 0x48, 0x85, 0xc9, 0xe8, 0, 0, 0, 0, 0xc3];
        assert_eq!(only_call_to(&one, 0x1000, 0x1015), Some(0x1000));
        assert_eq!(only_call_to(&one, 0x1000, 0x100d), Some(0x1008));
        assert_eq!(only_call_to(&one, 0x1000, 0x2000), None);
        // Two calls of memmove: which one is Read's copy is not known.
        let two = [0xe8, 0x0b, 0, 0, 0, 0xe8, 0x06, 0, 0, 0, 0xc3];
        assert_eq!(only_call_to(&two, 0x1000, 0x1010), None);
    }

    #[test]
    fn non_go_files_are_not_go() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let elf = object::File::parse(&*me).unwrap();
        assert_eq!(inspect(&elf, &me), Err(NotProbed::NotGo));
    }

    #[test]
    fn garbage_pclntab_is_an_error_not_a_panic() {
        let mut t = vec![0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        t.extend(std::iter::repeat_n(0xff, 64));
        assert!(from_pclntab(&t).is_err());
        assert!(from_pclntab(&[0xf1, 0xff, 0xff, 0xff]).is_err());
        let mut t = vec![0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        t.extend(2u64.to_le_bytes()); // nfunc
        t.extend([0u8; 48]);
        t.extend(0u64.to_le_bytes()); // pcln offset 0: functab reads the header itself
        let _ = from_pclntab(&t);
    }
}
