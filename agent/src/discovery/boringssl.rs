//! BoringSSL linked into a stripped binary: Bun, and every program Bun compiles
//! into one file (Claude Code's native binary), export no SSL symbol at all.
//! This finds `SSL_write` and `SSL_read` from the machine code alone.
//!
//! Why this way: BoringSSL reports errors through `OPENSSL_PUT_ERROR`, which
//! compiles to `ERR_put_error(ERR_LIB_SSL, 0, reason, __FILE__, __LINE__)`, so
//! every error path of `ssl/ssl_lib.cc` loads the address of that file name and
//! a reason code that BoringSSL never renumbers. Each public function has its
//! own set of reasons: `SSL_write` reports UNINITIALIZED and BAD_LENGTH (and may
//! report SHOULD_NOT_HAVE_BEEN_CALLED, SSL_HANDSHAKE_FAILURE), and nothing else;
//! `SSL_peek` reports SHOULD_NOT_HAVE_BEEN_CALLED and reaches UNINITIALIZED
//! through `ssl_read_impl`. `SSL_read` itself reports nothing: it is the function
//! whose first call hands its three arguments unchanged to `SSL_peek`. Line
//! numbers, prologue bytes and offsets change with every release; reason codes
//! and the call structure do not, so no per-release table is needed.
//!
//! Function starts come from direct call targets and from the `int3` padding
//! the linker puts between functions (these binaries carry no `.eh_frame`).
//! Verification before anything is probed: each function must be the only one
//! in the binary with its signature, start right after padding or a return,
//! and (for the two probed ones) be called directly. Anything short of that and
//! the file is refused with the reason: listed in coverage, logged once, never
//! probed. A misplaced uprobe corrupts nothing (the kernel restores the
//! instruction), but it would invent or lose plaintext, which is worse than
//! saying the binary is not covered.
//!
//! Cost: one linear decode of the executable sections (about 1 s for Bun's
//! 80 MB of code), done once per file by the discovery thread and cached per
//! build id and code checksum, so the same binary in many containers is
//! analysed once.
use std::collections::{BTreeSet, HashMap};

use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, Register};
use object::{Object, ObjectSection, SectionKind};

use super::placement::{file_offset, first_call};

/// `ERR_LIB_SSL`.
const LIB_SSL: u32 = 16;
/// Reason codes (BoringSSL's `err.h` / `ssl.h`; assigned once, never reused).
const SHOULD_NOT_HAVE_BEEN_CALLED: u32 = 66;
const BAD_LENGTH: u32 = 111;
const SSL_HANDSHAKE_FAILURE: u32 = 215;
const UNINITIALIZED: u32 = 226;
const BAD_HELLO_REQUEST: u32 = 110;
const NO_RENEGOTIATION: u32 = 182;
/// Reported by `SSL_shutdown` alone.
const APPLICATION_DATA_ON_SHUTDOWN: u32 = 291;

/// The source file whose error sites identify the functions, reversed: the
/// forward string must not sit in this agent's own binary, or the agent (seen
/// by another agent, or by `inspect`) would look like BoringSSL.
const SSL_LIB_REVERSED: &[u8] = b"\0cc.bil_lss/lss";
/// Largest code analysed (bytes of executable sections).
const MAX_CODE: u64 = 1 << 30;

/// File offsets of the probe points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub ssl_write: u64,
    pub ssl_read: u64,
    /// `SSL_shutdown`, where it is singled out: an early end of a connection
    /// (not every connection passes there, so the restart rule stays).
    pub ssl_shutdown: Option<u64>,
}

/// Why a binary that carries BoringSSL is not probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Arch,
    TooLarge,
    NotFound(&'static str),
    Ambiguous(&'static str),
    Unverified(&'static str),
}

impl Refused {
    /// For coverage and logs: `SSL_read not found`.
    pub fn describe(&self) -> String {
        match self {
            Refused::Arch => "not x86-64".into(),
            Refused::TooLarge => "code too large to analyse".into(),
            Refused::NotFound(what) => format!("{what} not found"),
            Refused::Ambiguous(what) => format!("{what} matched more than one function"),
            Refused::Unverified(what) => format!("{what} failed verification"),
        }
    }
}

/// Does the file carry BoringSSL's `ssl_lib.cc`?
pub fn carries_boringssl(elf: &object::File<'_>) -> bool {
    !ssl_lib_strings(elf).is_empty()
}

/// Addresses of the strings `.../ssl/ssl_lib.cc`. Cheap (one substring search
/// over the read-only data): done for every file before the expensive
/// analysis, which is handed the result.
pub fn ssl_lib_strings(elf: &object::File<'_>) -> Vec<u64> {
    let needle: Vec<u8> = SSL_LIB_REVERSED.iter().rev().copied().collect();
    let mut out = Vec::new();
    for s in elf.sections() {
        if !matches!(s.kind(), SectionKind::ReadOnlyString | SectionKind::ReadOnlyData) {
            continue;
        }
        let Ok(d) = s.data() else { continue };
        for end in super::pages::find_iter(d, &needle) {
            // Whole string: back up to the byte after the previous NUL.
            let start = d[..end].iter().rposition(|&b| b == 0).map_or(0, |p| p + 1);
            let name = &d[start..end];
            if name.is_empty() || name.ends_with(b"/") {
                out.push(s.address() + start as u64);
            }
            if out.len() >= 8 {
                return out;
            }
        }
    }
    out
}

/// One `OPENSSL_PUT_ERROR(SSL, reason)` site.
#[derive(Clone, Copy, Debug)]
struct ErrorSite {
    at: u64,
    reason: u32,
}

/// What one decode of the code yields.
#[derive(Default)]
struct Sweep {
    /// (caller instruction, callee) for every direct call, in address order.
    calls: Vec<(u64, u64)>,
    /// Function starts: call targets and the first instruction after `int3`
    /// padding.
    starts: BTreeSet<u64>,
    /// Instructions right after a `ret`, a `jmp` or padding: where a function
    /// may start (a start anywhere else is not trusted). In address order per
    /// section (sorted after the sweep); a plain vector, as it can hold millions.
    after_end: Vec<u64>,
    errors: Vec<ErrorSite>,
}

pub fn analyse(elf: &object::File<'_>, strings: &[u64]) -> Result<Found, Refused> {
    if elf.architecture() != object::Architecture::X86_64 {
        return Err(Refused::Arch);
    }
    if strings.is_empty() {
        return Err(Refused::NotFound("ssl_lib.cc"));
    }
    let text: Vec<_> = elf.sections().filter(|s| s.kind() == SectionKind::Text).collect();
    if text.iter().map(|s| s.size()).sum::<u64>() > MAX_CODE {
        return Err(Refused::TooLarge);
    }
    let code: Vec<(u64, &[u8])> =
        text.iter().filter_map(|s| Some((s.address(), s.data().ok()?))).filter(|(_, d)| !d.is_empty()).collect();
    let (write, read, shutdown) = identify(&code, strings)?;
    let off = |a: u64, what| file_offset(elf, a).ok_or(Refused::Unverified(what));
    Ok(Found {
        ssl_write: off(write, "SSL_write")?,
        ssl_read: off(read, "SSL_read")?,
        ssl_shutdown: shutdown.and_then(|a| file_offset(elf, a)),
    })
}

/// (`SSL_write`, `SSL_read`, `SSL_shutdown` where singled out).
type Identified = (u64, u64, Option<u64>);

/// `SSL_write`, `SSL_read` and, where singled out, `SSL_shutdown` (virtual
/// addresses) in `code` ((address, bytes) per executable section), `strings`
/// being where `ssl_lib.cc` is named.
fn identify(code: &[(u64, &[u8])], strings: &[u64]) -> Result<Identified, Refused> {
    let mut sweep = Sweep::default();
    for &(addr, bytes) in code {
        decode(bytes, addr, strings, &mut sweep);
    }
    super::pages::release_all();
    sweep.calls.sort_unstable();
    sweep.after_end.sort_unstable();
    let fns = Functions::new(&sweep);
    let reasons = fns.reasons(&sweep.errors);

    // SSL_write: UNINITIALIZED and BAD_LENGTH, nothing outside its own set.
    let write_set = [SHOULD_NOT_HAVE_BEEN_CALLED, SSL_HANDSHAKE_FAILURE, UNINITIALIZED, BAD_LENGTH];
    let write = unique(
        reasons.iter().filter(|(_, r)| has_all(r, &[UNINITIALIZED, BAD_LENGTH]) && only(r, &write_set)),
        "SSL_write",
    )?;
    // ssl_read_impl's reasons; SSL_peek: SHOULD_NOT_HAVE_BEEN_CALLED plus those,
    // directly or through the functions it calls. SSL_read is SSL_peek plus
    // consuming what was copied; where the compiler inlined SSL_peek into it,
    // SSL_read itself has this signature (Bun: SSL_peek is unused and gone).
    let impl_set = [UNINITIALIZED, SSL_HANDSHAKE_FAILURE, NO_RENEGOTIATION, BAD_HELLO_REQUEST];
    let peek_set = [&impl_set[..], &[SHOULD_NOT_HAVE_BEEN_CALLED]].concat();
    let empty = BTreeSet::new();
    let peeks: BTreeSet<u64> = reasons
        .iter()
        .filter(|&(&f, r)| {
            if f == write || !r.contains(&SHOULD_NOT_HAVE_BEEN_CALLED) || !only(r, &peek_set) {
                return false;
            }
            let mut all: BTreeSet<u32> = r.clone();
            for callee in fns.callees(f, &sweep.calls) {
                all.extend(reasons.get(&callee).unwrap_or(&empty));
            }
            all.contains(&UNINITIALIZED) && only(&all, &peek_set)
        })
        .map(|(&f, _)| f)
        .collect();
    // A function whose first call hands (ssl, buf, num) unchanged to one of
    // them is SSL_read calling SSL_peek.
    let kept = [Register::RDI, Register::RSI, Register::RDX];
    let mut readers: BTreeSet<u64> = BTreeSet::new();
    for &(site, callee) in &sweep.calls {
        if !peeks.contains(&callee) {
            continue;
        }
        let Some(f) = fns.containing(site) else { continue };
        let Some(body) = fns.code(code, f) else { continue };
        if !peeks.contains(&f) && first_call(body, f, &kept) == Some(callee) {
            readers.insert(f);
        }
    }
    let read = if readers.is_empty() {
        unique(peeks.iter().map(|f| (f, &empty)), "SSL_read")?
    } else {
        unique(readers.iter().map(|f| (f, &empty)), "SSL_read")?
    };
    // Only functions that are called directly and begin where a function can.
    let verified =
        |f: u64| sweep.calls.iter().any(|&(_, callee)| callee == f) && sweep.after_end.binary_search(&f).is_ok();
    for (f, what) in [(write, "SSL_write"), (read, "SSL_read")] {
        if !verified(f) {
            return Err(Refused::Unverified(what));
        }
    }
    // SSL_shutdown: the one function with an APPLICATION_DATA_ON_SHUTDOWN site.
    // Optional: without it connections end by the restart rule, as before.
    let shutdown = unique(reasons.iter().filter(|(_, r)| r.contains(&APPLICATION_DATA_ON_SHUTDOWN)), "SSL_shutdown")
        .ok()
        .filter(|&f| f != write && f != read && verified(f));
    Ok((write, read, shutdown))
}

fn has_all(set: &BTreeSet<u32>, want: &[u32]) -> bool {
    want.iter().all(|w| set.contains(w))
}

fn only(set: &BTreeSet<u32>, allowed: &[u32]) -> bool {
    set.iter().all(|r| allowed.contains(r))
}

/// The one function in `it`, or why not.
fn unique<'a, V: 'a>(mut it: impl Iterator<Item = (&'a u64, &'a V)>, what: &'static str) -> Result<u64, Refused> {
    let first = it.next().ok_or(Refused::NotFound(what))?.0;
    if it.next().is_some() {
        return Err(Refused::Ambiguous(what));
    }
    Ok(*first)
}

/// Linear sweep: call targets, padding, and `ssl_lib.cc` error sites.
fn decode(code: &[u8], addr: u64, strings: &[u64], out: &mut Sweep) {
    const RING: usize = 32;
    const REACH: usize = 8;
    let mut d = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut ins = Instruction::default();
    // The recent instructions: an error call's arguments are set around the
    // file name, before or after it, in the same basic block.
    let mut recent: Vec<Instruction> = vec![Instruction::default(); RING];
    let mut n = 0usize;
    let mut pending: Vec<usize> = Vec::new();
    let (mut after_int3, mut after_end) = (false, true);
    let section = [(addr, code)];
    let mut behind = super::pages::Behind::new(&section);
    while d.can_decode() {
        d.decode_out(&mut ins);
        let ip = ins.ip();
        behind.passed(&section, ip);
        let int3 = ins.code() == Code::Int3;
        let nop = ins.code().mnemonic() == iced_x86::Mnemonic::Nop;
        if !int3 && !nop {
            if after_int3 {
                out.starts.insert(ip);
            }
            if after_end || after_int3 {
                out.after_end.push(ip);
            }
            after_int3 = false;
            after_end = matches!(
                ins.flow_control(),
                FlowControl::Return | FlowControl::UnconditionalBranch | FlowControl::IndirectBranch
            );
        }
        after_int3 |= int3;
        if ins.code() == Code::Call_rel32_64 {
            out.calls.push((ip, ins.near_branch_target()));
            out.starts.insert(ins.near_branch_target());
        }
        if references(&ins, strings) {
            pending.push(n);
        }
        recent[n % RING] = ins;
        n += 1;
        let ends_block = ins.flow_control() != FlowControl::Next;
        pending.retain(|&k| {
            if !ends_block && n < k + REACH {
                return true;
            }
            let back = (1..REACH.min(k + 1))
                .map(|j| &recent[(k - j) % RING])
                .take_while(|i| i.flow_control() == FlowControl::Next);
            let fwd = (k..n).map(|j| &recent[j % RING]);
            let window: Vec<&Instruction> = back.chain(fwd).collect();
            if let Some(reason) = error_reason(&window) {
                out.errors.push(ErrorSite { at: recent[k % RING].ip(), reason });
            }
            false
        });
    }
}

/// Loads a file-name string: `mov r32, imm32` (non-PIE) or `lea r64, [rip+x]`.
fn references(ins: &Instruction, strings: &[u64]) -> bool {
    match ins.code() {
        Code::Mov_r32_imm32 => strings.contains(&(ins.immediate32() as u64)),
        Code::Lea_r64_m if ins.is_ip_rel_memory_operand() => strings.contains(&ins.ip_rel_memory_address()),
        _ => false,
    }
}

/// `mov edi, ERR_LIB_SSL` and `mov edx, reason` in the file name's block: the
/// reason.
fn error_reason(window: &[&Instruction]) -> Option<u32> {
    let imm = |reg: Register| {
        window.iter().find(|i| i.code() == Code::Mov_r32_imm32 && i.op0_register() == reg).map(|i| i.immediate32())
    };
    (imm(Register::EDI) == Some(LIB_SSL)).then_some(())?;
    imm(Register::EDX)
}

/// Function boundaries from the sweep.
struct Functions<'s> {
    starts: &'s BTreeSet<u64>,
}

impl<'s> Functions<'s> {
    fn new(sweep: &'s Sweep) -> Self {
        Self { starts: &sweep.starts }
    }

    fn containing(&self, at: u64) -> Option<u64> {
        self.starts.range(..=at).next_back().copied()
    }

    fn end(&self, f: u64) -> u64 {
        self.starts.range(f + 1..).next().copied().unwrap_or(u64::MAX)
    }

    /// Reasons reported inside each function.
    fn reasons(&self, sites: &[ErrorSite]) -> HashMap<u64, BTreeSet<u32>> {
        let mut out: HashMap<u64, BTreeSet<u32>> = HashMap::new();
        for s in sites {
            if let Some(f) = self.containing(s.at) {
                out.entry(f).or_default().insert(s.reason);
            }
        }
        out
    }

    /// Functions `f` calls directly.
    fn callees(&self, f: u64, calls: &[(u64, u64)]) -> Vec<u64> {
        let end = self.end(f);
        let lo = calls.partition_point(|&(site, _)| site < f);
        calls[lo..].iter().take_while(|&&(site, _)| site < end).map(|&(_, c)| c).collect()
    }

    fn code<'d>(&self, code: &[(u64, &'d [u8])], f: u64) -> Option<&'d [u8]> {
        let &(addr, bytes) = code.iter().find(|(a, b)| f >= *a && f < a + b.len() as u64)?;
        let off = (f - addr) as usize;
        let len = self.end(f).saturating_sub(f).min(4096) as usize;
        bytes.get(off..off.saturating_add(len).min(bytes.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STR: u32 = 0x0050_0000;
    const BASE: u64 = 0x1000;

    /// A tiny assembler for the shapes that matter.
    #[derive(Default)]
    struct Asm {
        code: Vec<u8>,
        /// (position of a rel32, target label)
        fixups: Vec<(usize, &'static str)>,
        labels: HashMap<&'static str, u64>,
    }

    impl Asm {
        fn at(&self) -> u64 {
            BASE + self.code.len() as u64
        }
        fn label(&mut self, l: &'static str) -> &mut Self {
            // Functions start 16-byte aligned after int3 padding.
            while !self.code.len().is_multiple_of(16) {
                self.code.push(0xcc);
            }
            let at = self.at();
            self.labels.insert(l, at);
            self
        }
        fn prologue(&mut self) -> &mut Self {
            self.code.extend([0x55, 0x48, 0x89, 0xe5]); // push rbp; mov rbp, rsp
            self
        }
        fn ret(&mut self) -> &mut Self {
            self.code.extend([0x5d, 0xc3]); // pop rbp; ret
            self
        }
        fn call(&mut self, l: &'static str) -> &mut Self {
            self.code.push(0xe8);
            self.fixups.push((self.code.len(), l));
            self.code.extend([0; 4]);
            self
        }
        /// OPENSSL_PUT_ERROR(lib, reason) as clang emits it: file name first.
        fn error(&mut self, lib: u32, reason: u32) -> &mut Self {
            self.code.push(0xb9); // mov ecx, file
            self.code.extend(STR.to_le_bytes());
            self.code.push(0xbf); // mov edi, lib
            self.code.extend(lib.to_le_bytes());
            self.code.extend([0x31, 0xf6]); // xor esi, esi
            self.code.push(0xba); // mov edx, reason
            self.code.extend(reason.to_le_bytes());
            self.code.extend([0x41, 0xb8, 7, 0, 0, 0]); // mov r8d, line
            self.call("ERR_put_error")
        }
        fn raw(&mut self, b: &[u8]) -> &mut Self {
            self.code.extend(b);
            self
        }
        fn finish(mut self) -> (Vec<u8>, Labels) {
            for (pos, l) in std::mem::take(&mut self.fixups) {
                let target = self.labels[l];
                let next = BASE + pos as u64 + 4;
                let rel = (target as i64 - next as i64) as i32;
                self.code[pos..pos + 4].copy_from_slice(&rel.to_le_bytes());
            }
            (self.code, self.labels)
        }
    }

    /// A BoringSSL-shaped program; `tweak` changes one thing.
    fn program(tweak: &str) -> (Vec<u8>, Labels) {
        let mut a = Asm::default();
        a.label("ERR_put_error").prologue().ret();
        a.label("SSL_write").prologue().error(LIB_SSL, SHOULD_NOT_HAVE_BEEN_CALLED).error(LIB_SSL, UNINITIALIZED);
        if tweak != "no_bad_length" {
            a.error(LIB_SSL, BAD_LENGTH);
        }
        a.ret();
        if tweak == "two_writes" {
            a.label("SSL_write2").prologue().error(LIB_SSL, UNINITIALIZED).error(LIB_SSL, BAD_LENGTH).ret();
        }
        a.label("ssl_read_impl").prologue().error(LIB_SSL, UNINITIALIZED).error(LIB_SSL, SSL_HANDSHAKE_FAILURE).ret();
        a.label("SSL_peek").prologue().error(LIB_SSL, SHOULD_NOT_HAVE_BEEN_CALLED).call("ssl_read_impl").ret();
        if tweak != "peek_inlined" {
            // mov rbx, rdi (a copy: the arguments stay) ; call SSL_peek
            a.label("SSL_read").prologue().raw(&[0x48, 0x89, 0xfb]).call("SSL_peek").ret();
        }
        a.label("SSL_shutdown").prologue().error(LIB_SSL, UNINITIALIZED).error(LIB_SSL, 291).ret();
        if tweak == "two_shutdowns" {
            a.label("SSL_shutdown2").prologue().error(LIB_SSL, 291).ret();
        }
        a.label("app").prologue();
        if tweak != "write_not_called" {
            a.call("SSL_write");
        }
        if tweak == "two_writes" {
            a.call("SSL_write2");
        }
        if tweak == "peek_inlined" {
            a.call("SSL_peek");
        } else {
            a.call("SSL_read");
        }
        if tweak != "shutdown_not_called" {
            a.call("SSL_shutdown");
        }
        if tweak == "two_shutdowns" {
            a.call("SSL_shutdown2");
        }
        a.ret();
        a.finish()
    }

    type Labels = HashMap<&'static str, u64>;

    fn run(tweak: &str) -> (Result<Identified, Refused>, Labels) {
        let (code, labels) = program(tweak);
        (identify(&[(BASE, &code)], &[STR as u64]), labels)
    }

    #[test]
    fn finds_write_and_read_by_their_error_reasons_and_calls() {
        let (r, l) = run("");
        assert_eq!(r, Ok((l["SSL_write"], l["SSL_read"], Some(l["SSL_shutdown"]))));
        // SSL_peek inlined into SSL_read (Bun): the function with its signature.
        let (r, l) = run("peek_inlined");
        assert_eq!(r, Ok((l["SSL_write"], l["SSL_peek"], Some(l["SSL_shutdown"]))));
    }

    #[test]
    fn shutdown_is_probed_only_where_singled_out_and_its_absence_refuses_nothing() {
        let (r, l) = run("two_shutdowns");
        assert_eq!(r, Ok((l["SSL_write"], l["SSL_read"], None)));
        let (r, l) = run("shutdown_not_called");
        assert_eq!(r, Ok((l["SSL_write"], l["SSL_read"], None)));
    }

    #[test]
    fn refuses_anything_it_is_not_sure_of() {
        assert_eq!(run("no_bad_length").0, Err(Refused::NotFound("SSL_write")));
        assert_eq!(run("two_writes").0, Err(Refused::Ambiguous("SSL_write")));
        assert_eq!(run("write_not_called").0, Err(Refused::Unverified("SSL_write")));
        // Another library's errors (not ERR_LIB_SSL) or no file name: nothing.
        let (code, _) = program("");
        assert_eq!(identify(&[(BASE, &code)], &[0x1234]), Err(Refused::NotFound("SSL_write")));
        assert!(identify(&[], &[STR as u64]).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_are_never_probed() {
        let mut noise = crate::Noise(0x9e37_79b9_7f4a_7c15);
        for len in [0usize, 1, 15, 64, 4096, 65536] {
            let bytes = noise.bytes(len);
            assert!(identify(&[(BASE, &bytes)], &[STR as u64]).is_err());
        }
        // A truncated copy of a good program.
        let (code, _) = program("");
        for cut in [3, code.len() / 2, code.len() - 1] {
            let _ = identify(&[(BASE, &code[..cut])], &[STR as u64]);
        }
    }

    #[test]
    fn the_file_name_string_is_found_whole() {
        // A program without BoringSSL.
        let sh = std::fs::read("/bin/sh").unwrap();
        let elf = object::File::parse(&*sh).unwrap();
        assert!(!carries_boringssl(&elf));
        assert_eq!(analyse(&elf, &ssl_lib_strings(&elf)), Err(Refused::NotFound("ssl_lib.cc")));
        // Nor does the agent itself look like it (its needle is stored reversed).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!carries_boringssl(&object::File::parse(&*me).unwrap()));
    }
}
