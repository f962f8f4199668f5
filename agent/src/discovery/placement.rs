//! Where to put the OpenSSL I/O probes so that a probe hit is cheap.
//!
//! A uprobe replaces an instruction with `int3`; the kernel then either emulates
//! the displaced instruction (x86: `push reg`, `nop`, jumps and calls) or
//! single-steps a copy of it. Single-stepping raises a debug exception, which a
//! KVM guest takes as a VM exit: measured on our test VM, a hit costs 16.5 µs
//! single-stepped against 0.5 µs emulated (`cargo xtask bench` prints both).
//!
//! Distribution builds of OpenSSL 3 (Debian, Ubuntu) compile `SSL_read`,
//! `SSL_read_ex`, `SSL_write` and `SSL_write_ex` as thin wrappers that start with
//! `sub rsp` or `endbr64` (single-stepped) and call one internal function,
//! `ssl_read_internal(s, buf, num, &n)` / `ssl_write_internal(...)`, which starts
//! with `push` (emulated). When the machine code shows exactly that shape, the
//! `_ex` probes go on the internal function (same arguments, same result) and the
//! plain wrapper, which calls the same function, is not probed at all: one cheap
//! hit per call instead of an expensive one. Anything else keeps the exported
//! entry points, which are always correct.
use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, OpAccess, Register};
use object::{Object, ObjectSection};

/// A function: virtual address and size.
pub type Func = (u64, u64);

/// Instructions looked at before giving up on finding the wrapped call.
const MAX_SCAN: usize = 64;
/// Largest function treated as a thin wrapper.
const MAX_WRAPPER: u64 = 512;

/// File offset of a virtual address, through the section that holds it.
pub fn file_offset(elf: &object::File<'_>, addr: u64) -> Option<u64> {
    elf.sections().find_map(|s| {
        let (off, size) = s.file_range()?;
        (addr >= s.address() && addr < s.address() + size).then(|| off + (addr - s.address()))
    })
}

fn code<'d>(elf: &object::File<'_>, data: &'d [u8], (addr, size): Func) -> Option<&'d [u8]> {
    let off = file_offset(elf, addr)? as usize;
    data.get(off..off.checked_add(size.min(MAX_WRAPPER) as usize)?)
}

/// Does the kernel emulate this instruction when probed (no single-step)? Only
/// kinds measured to be: `push r64`, the one-byte `nop`, conditional jumps.
fn kernel_emulates(ins: &iced_x86::Instruction) -> bool {
    matches!(ins.code(), Code::Push_r64 | Code::Nopd)
        || (ins.flow_control() == FlowControl::ConditionalBranch && ins.is_jcc_short_or_near())
}

/// Does the kernel emulate the first instruction of `code`?
pub fn kernel_emulates_first(code: &[u8]) -> bool {
    let mut d = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    d.can_decode() && kernel_emulates(&d.decode())
}

/// The target of the first direct call in `code` (at `addr`), provided none of
/// `kept` (or a part of it) is written before it: the callee then receives
/// those arguments unchanged. Conditional jumps are stepped over (the error
/// paths they lead to come later); a return, an unconditional or indirect jump
/// or call ends the search.
pub fn first_call(code: &[u8], addr: u64, kept: &[Register]) -> Option<u64> {
    let mut d = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    for _ in 0..MAX_SCAN {
        if !d.can_decode() {
            return None;
        }
        let ins = d.decode();
        if ins.is_invalid() {
            return None;
        }
        match ins.flow_control() {
            FlowControl::Call if ins.code() == Code::Call_rel32_64 => return Some(ins.near_branch_target()),
            FlowControl::Next | FlowControl::ConditionalBranch => {}
            _ => return None,
        }
        if writes_any(&mut info, &ins, kept) {
            return None;
        }
    }
    None
}

/// The first instruction the kernel emulates among the first few of `code`,
/// if none before it writes one of `kept` (the registers the probe reads) or
/// leaves the straight line. For Go functions, whose prologue is
/// `cmp rsp, [r14+16]` (single-stepped) then `jbe morestack` (emulated): the
/// probe on the jump sees the same arguments. When the jump is taken the
/// function restarts after growing its stack and the probe fires again with the
/// same arguments (the entry program keeps the latest).
pub fn cheap_entry(code: &[u8], addr: u64, kept: &[Register]) -> Option<u64> {
    prologue_point(code, addr, kept, |ins| kernel_emulates(ins).then_some(ins.ip()))
}

/// The stack check's `jbe morestack` in a Go prologue (forward, among the
/// first few instructions, none before it writing one of `kept`): a point
/// the kernel emulates where a probe can tell, from the flags the `cmp` left
/// (CF or ZF set: the jump is taken), whether the call goes on or restarts
/// after growing its stack. A probe that acts only when the jump is not taken
/// acts once per call, so it may copy the call's bytes, not only note them.
pub fn stack_check(code: &[u8], addr: u64, kept: &[Register]) -> Option<u64> {
    prologue_point(code, addr, kept, |ins| {
        let jbe = matches!(ins.code(), Code::Jbe_rel8_64 | Code::Jbe_rel32_64);
        // A backward jbe is a loop, not a stack check: the scan ends on it.
        jbe.then_some(ins.ip()).filter(|_| ins.near_branch_target() > ins.ip())
    })
}

/// The first of the first few instructions of `code` that `pick` takes, if
/// none before it writes one of `kept` or leaves the straight line.
fn prologue_point(
    code: &[u8],
    addr: u64,
    kept: &[Register],
    pick: impl Fn(&iced_x86::Instruction) -> Option<u64>,
) -> Option<u64> {
    let mut d = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    for _ in 0..8 {
        if !d.can_decode() {
            return None;
        }
        let ins = d.decode();
        if let Some(at) = pick(&ins) {
            return Some(at);
        }
        if ins.is_invalid() || ins.flow_control() != FlowControl::Next || writes_any(&mut info, &ins, kept) {
            return None;
        }
    }
    None
}

fn writes_any(info: &mut InstructionInfoFactory, ins: &iced_x86::Instruction, regs: &[Register]) -> bool {
    info.info(ins).used_registers().iter().any(|u| {
        !matches!(u.access(), OpAccess::Read | OpAccess::CondRead | OpAccess::NoMemAccess)
            && regs.iter().any(|k| u.register().full_register() == k.full_register())
    })
}

/// Direct calls in the whole of `code`.
fn calls(code: &[u8], addr: u64) -> usize {
    let mut d = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut n = 0;
    while d.can_decode() {
        if d.decode().flow_control() == FlowControl::Call {
            n += 1;
        }
    }
    n
}

/// Where the probes of one direction (read or write) go.
#[derive(Debug, PartialEq, Eq)]
pub struct Reroute {
    /// File offset of the internal function that takes the `_ex` probes.
    pub ex_at: u64,
    /// The plain wrapper calls it too: leave the wrapper unprobed.
    pub skip_plain: bool,
}

/// `ex` (`SSL_read_ex`/`SSL_write_ex`) and `plain` (`SSL_read`/`SSL_write`) as
/// found in the symbol table; `Some` when the cheaper placement applies.
pub fn reroute(elf: &object::File<'_>, data: &[u8], plain: Option<Func>, ex: Option<Func>) -> Option<Reroute> {
    if elf.architecture() != object::Architecture::X86_64 {
        return None;
    }
    let ex = ex?;
    let ex_code = code(elf, data, ex)?;
    if ex.1 > MAX_WRAPPER || kernel_emulates_first(ex_code) {
        return None;
    }
    // A thin wrapper: its only call passes all four arguments on unchanged.
    let args = [Register::RDI, Register::RSI, Register::RDX, Register::RCX];
    let callee = first_call(ex_code, ex.0, &args)?;
    if calls(ex_code, ex.0) != 1 {
        return None;
    }
    let callee_at = file_offset(elf, callee)?;
    let head = data.get(callee_at as usize..)?;
    if !kernel_emulates_first(&head[..head.len().min(16)]) {
        return None;
    }
    // The plain wrapper converts `num` and points at its own result slot, but
    // passes the connection and the buffer as they came.
    let skip_plain = plain
        .and_then(|p| code(elf, data, p).map(|c| (p, c)))
        .and_then(|(p, c)| first_call(c, p.0, &[Register::RDI, Register::RSI]))
        == Some(callee);
    Some(Reroute { ex_at: callee_at, skip_plain })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // Machine code read from any file on the host: no panic, and an answer
        // always points inside the scanned code.
        #[test]
        fn arbitrary_code_never_panics(code in proptest::collection::vec(any::<u8>(), 0..96)) {
            let kept = [Register::RAX, Register::RDI];
            let _ = kernel_emulates_first(&code);
            let _ = first_call(&code, 0x1000, &kept);
            let _ = calls(&code, 0x1000);
            if let Some(at) = cheap_entry(&code, 0x1000, &kept) {
                prop_assert!(at >= 0x1000 && at < 0x1000 + code.len() as u64);
            }
            if let Some(at) = stack_check(&code, 0x1000, &kept) {
                prop_assert!(at >= 0x1000 && at < 0x1000 + code.len() as u64);
            }
        }
    }

    #[test]
    fn emulated_first_instructions() {
        assert!(kernel_emulates_first(&[0x55])); // push rbp
        assert!(kernel_emulates_first(&[0x41, 0x55])); // push r13
        assert!(kernel_emulates_first(&[0x90]));
        assert!(!kernel_emulates_first(&[0x48, 0x83, 0xec, 0x18])); // sub rsp, 0x18
        assert!(!kernel_emulates_first(&[0xf3, 0x0f, 0x1e, 0xfa])); // endbr64
        assert!(!kernel_emulates_first(&[]));
    }

    #[test]
    fn first_call_keeps_arguments() {
        // sub rsp,8 ; call +0x100 ; add rsp,8 ; ret
        let thin = [0x48, 0x83, 0xec, 0x08, 0xe8, 0x00, 0x01, 0x00, 0x00, 0x48, 0x83, 0xc4, 0x08, 0xc3];
        let all = [Register::RDI, Register::RSI, Register::RDX, Register::RCX];
        assert_eq!(first_call(&thin, 0x1000, &all), Some(0x1009 + 0x100));
        assert_eq!(calls(&thin, 0x1000), 1);
        // mov rcx, rsp ; movsxd rdx, edx ; call: rdx/rcx change, rdi/rsi do not.
        let plain = [0x48, 0x89, 0xe1, 0x48, 0x63, 0xd2, 0xe8, 0x00, 0x01, 0x00, 0x00, 0xc3];
        assert_eq!(first_call(&plain, 0x2000, &all), None);
        assert_eq!(first_call(&plain, 0x2000, &[Register::RDI, Register::RSI]), Some(0x200b + 0x100));
        // xor edi, edi (a 32-bit write clears rdi) ; call
        assert_eq!(first_call(&[0x31, 0xff, 0xe8, 0, 0, 0, 0], 0, &all), None);
        // test edx,edx ; js +0x10 ; call: a conditional jump is stepped over.
        assert_eq!(first_call(&[0x85, 0xd2, 0x78, 0x10, 0xe8, 0, 0, 0, 0], 0, &all), Some(9));
        // ret, jmp, indirect call, garbage, nothing: no call found.
        for code in [&[0xc3][..], &[0xeb, 0x00], &[0xff, 0xd0], &[0x0f, 0x0b], &[0x06], &[]] {
            assert_eq!(first_call(code, 0, &all), None, "{code:x?}");
        }
    }

    #[test]
    fn go_prologues_are_probed_on_their_stack_check_jump() {
        let kept = [Register::RAX, Register::RBX, Register::RCX, Register::R14];
        // cmp rsp, [r14+0x10] ; jbe +0x2a
        assert_eq!(cheap_entry(&[0x49, 0x3b, 0x66, 0x10, 0x76, 0x2a], 0x1000, &kept), Some(0x1004));
        // lea r12, [rsp-8] ; cmp r12, [r14+0x10] ; jbe near
        let big = [0x4c, 0x8d, 0x64, 0x24, 0xf8, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 1, 0, 0, 0];
        assert_eq!(cheap_entry(&big, 0x1000, &kept), Some(0x1009));
        // push rbp first: the entry itself.
        assert_eq!(cheap_entry(&[0x55, 0xc3], 0x1000, &kept), Some(0x1000));
        // mov rax, rbx before the jump: the argument is gone.
        assert_eq!(cheap_entry(&[0x48, 0x89, 0xd8, 0x76, 0x00], 0x1000, &kept), None);
        // ret, no jump at all, garbage.
        assert_eq!(cheap_entry(&[0xc3], 0x1000, &kept), None);
        assert_eq!(cheap_entry(&[0x48, 0x83, 0xec, 0x18], 0x1000, &kept), None);
        assert_eq!(cheap_entry(&[0x06, 0x76, 0x00], 0x1000, &kept), None);
    }

    #[test]
    fn go_stack_checks_are_found_forward_and_with_the_arguments_intact() {
        let kept = [Register::RAX, Register::RBX, Register::RCX, Register::R14];
        // cmp rsp, [r14+0x10] ; jbe +0x2a
        assert_eq!(stack_check(&[0x49, 0x3b, 0x66, 0x10, 0x76, 0x2a, 0x55], 0x1000, &kept), Some(0x1004));
        // The large-frame check: lea r12, [rsp-8] ; cmp r12, [r14+0x10] ; jbe near
        let big = [0x4c, 0x8d, 0x64, 0x24, 0xf8, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 1, 0, 0, 0];
        assert_eq!(stack_check(&big, 0x1000, &kept), Some(0x1009));
        // A backward jbe (a loop), another condition, an argument written first, no jump.
        assert_eq!(stack_check(&[0x49, 0x3b, 0x66, 0x10, 0x76, 0xf0], 0x1000, &kept), None);
        assert_eq!(stack_check(&[0x49, 0x3b, 0x66, 0x10, 0x72, 0x2a], 0x1000, &kept), None);
        assert_eq!(stack_check(&[0x48, 0x89, 0xd8, 0x76, 0x2a], 0x1000, &kept), None);
        assert_eq!(stack_check(&[0x55, 0xc3], 0x1000, &kept), None);
    }

    #[test]
    fn distribution_libssl_gets_the_cheap_placement() {
        let dirs: Vec<std::path::PathBuf> = super::super::DEFAULT_LIB_DIRS.iter().map(Into::into).collect();
        let lib = super::super::Discovery::new("/proc")
            .scan_dirs(&dirs)
            .into_iter()
            .find(|t| t.symbols.is_tls_library())
            .expect("a system libssl (install libssl3)");
        let data = std::fs::read(&lib.path).unwrap();
        let elf = object::File::parse(&*data).unwrap();
        let s = &lib.symbols;
        let exported = |name: &str| {
            use object::ObjectSymbol;
            let sym = elf.dynamic_symbols().find(|y| y.name() == Ok(name)).unwrap();
            file_offset(&elf, sym.address()).unwrap() as usize
        };
        // Debian's OpenSSL 3 (this project's CI image): SSL_read_ex starts with
        // `sub rsp, 8` and calls ssl_read_internal, which starts with `push`.
        assert_eq!(elf.architecture(), object::Architecture::X86_64);
        assert!(!kernel_emulates_first(&data[exported("SSL_read_ex")..][..16]), "SSL_read_ex is single-stepped");
        assert!(s.rerouted, "the cheap placement applies to this libssl");
        for (name, plain, ex) in [("SSL_read", s.ssl_read, s.ssl_read_ex), ("SSL_write", s.ssl_write, s.ssl_write_ex)] {
            let ex = ex.expect("an _ex probe point") as usize;
            assert_ne!(ex, exported(&format!("{name}_ex")), "{name}_ex moved to the internal function");
            assert!(kernel_emulates_first(&data[ex..][..16]), "{name}: probe on an emulated instruction");
            assert_eq!(plain, None, "{name} itself is not probed as well");
        }
    }
}
