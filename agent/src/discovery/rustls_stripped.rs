//! rustls's two plaintext functions in a stripped binary (Codex CLI's release
//! build, Python extensions written in Rust, services shipped with `strip`).
//!
//! Without names, each function is recognised by what its first instructions
//! do, facts that come from rustls's source and the argument layout the kernel
//! side relies on, not from one build's bytes or offsets:
//! - `take_received_plaintext(&mut self, bytes: Payload)` opens with
//!   `temper_counters.received_app_data()`, which stores the constant 32
//!   (`INITIAL_KEY_UPDATE_REQUESTS`) into one byte of `self`, and reads its
//!   `Payload` argument at +8 and +16 (pointer, length);
//! - `send_appdata_encrypt(&mut self, payload: OutboundChunks, limit: Limit)`
//!   opens by testing `limit` (its third argument, `rdx`), reading its
//!   `OutboundChunks` at +0, +16 and +24 (first word, start, end) and testing
//!   the first word against zero (which of `Single`/`Multiple` it is: the enum's
//!   niche).
//!
//! - where the compiler inlined `send_appdata_encrypt` into its caller
//!   (litellm's Rust core), that caller, `buffer_plaintext(&mut self, payload:
//!   OutboundChunks, sendable_plaintext: &mut ChunkVecBuffer) -> usize`, takes
//!   its place: same arguments in the same registers, and its result is the
//!   count of bytes accepted, as `send_appdata_encrypt`'s is. It opens with
//!   `perhaps_write_key_update`, an `Option::take` on a field of `self` (a read,
//!   then an immediate stored over it), keeps the payload pointer in a register
//!   that survives calls, and reads the `OutboundChunks` through it at +0, +16
//!   and +24 with the same niche test. It is looked for only when no function
//!   has `send_appdata_encrypt`'s shape, so the two are never both probed.
//!
//! Candidates are the functions the unwind table (`.eh_frame_hdr`, kept by
//! `strip`: Rust needs it to unwind panics) names, so every probe sits on a real
//! function start. Each shape must be met by exactly one function, or nothing is
//! probed and the file is listed as not probed with the reason. Only rustls 0.23
//! (the `OutboundChunks` shape, and the counter store, which older releases do
//! not have) is looked for.
use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register,
};
use object::{Object, ObjectSection, SectionKind};

use super::pages::Behind;

/// Instructions looked at from a function's start.
const MAX_SCAN: usize = 32;

/// `INITIAL_KEY_UPDATE_REQUESTS` in rustls's `common_state.rs`.
const KEY_UPDATE_REQUESTS: u64 = 32;

/// What a function's opening does, as far as the identification needs: until
/// a call, a return, an unconditional or indirect jump (conditional branches
/// are stepped over), or `MAX_SCAN` instructions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Opening {
    /// Displacements of 64-bit reads through `rsi` (the second argument)
    /// before anything writes `rsi`.
    pub second_arg_reads: Vec<u64>,
    /// `rdx` (the third argument, any width) tested (`test`/`cmp`) before
    /// anything writes it.
    pub tests_third_arg: bool,
    /// The word read at `rsi+0` tested against zero (`test r, r`).
    pub tests_first_word: bool,
    /// That word also compared with a constant: an enum with an explicit tag,
    /// not the niche layout (`0` = `Single`, else `Multiple`'s slice pointer)
    /// the kernel side reads.
    pub first_word_is_tag: bool,
    /// A byte store of [`KEY_UPDATE_REQUESTS`] through `rdi` (into `self`).
    pub stores_key_update_requests: bool,
}

impl Opening {
    pub fn reads(&self, offsets: &[u64]) -> bool {
        offsets.iter().all(|o| self.second_arg_reads.contains(o))
    }

    pub fn is_take_received_plaintext(&self) -> bool {
        self.stores_key_update_requests && self.reads(&[8, 16])
    }

    pub fn is_send_appdata_encrypt(&self) -> bool {
        self.tests_third_arg && self.outbound_chunks_layout() && !self.stores_key_update_requests
    }

    /// Reads an `OutboundChunks` in the niche layout the kernel side expects.
    pub fn outbound_chunks_layout(&self) -> bool {
        self.reads(&[0, 16, 24]) && self.tests_first_word && !self.first_word_is_tag
    }
}

pub fn opening(code: &[u8], addr: u64) -> Opening {
    let mut out = Opening::default();
    let (mut rsi_live, mut rdx_live, mut rdi_live) = (true, true, true);
    // The register holding the word at rsi+0, while it does.
    let mut first_word = Register::None;
    let mut info = InstructionInfoFactory::new();
    let mut d = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    for _ in 0..MAX_SCAN {
        if !d.can_decode() {
            break;
        }
        let ins = d.decode();
        if ins.code() == Code::INVALID {
            break;
        }
        // Loads only: a store through rsi is not a read of the argument.
        let loads = info.info(&ins).used_memory().iter().any(|m| {
            matches!(m.access(), OpAccess::Read | OpAccess::CondRead)
                && m.base() == Register::RSI
                && m.index() == Register::None
                && m.memory_size().size() == 8
        });
        if rsi_live && loads {
            out.second_arg_reads.push(ins.memory_displacement64());
            if ins.memory_displacement64() == 0 && ins.code() == Code::Mov_r64_rm64 {
                first_word = ins.op0_register();
            }
        }
        let mnemonic = ins.mnemonic();
        if mnemonic == Mnemonic::Test
            && ins.op0_kind() == OpKind::Register
            && ins.op1_kind() == OpKind::Register
            && ins.op0_register() == ins.op1_register()
        {
            let r = ins.op0_register().full_register();
            if r == first_word && first_word != Register::None {
                out.tests_first_word = true;
            }
            if r == Register::RDX && rdx_live {
                out.tests_third_arg = true;
            }
        }
        if mnemonic == Mnemonic::Cmp && ins.op0_kind() == OpKind::Register {
            let r = ins.op0_register().full_register();
            if r == Register::RDX && rdx_live {
                out.tests_third_arg = true;
            }
            let constant = matches!(
                ins.op1_kind(),
                OpKind::Immediate8
                    | OpKind::Immediate8to32
                    | OpKind::Immediate32
                    | OpKind::Immediate8to64
                    | OpKind::Immediate32to64
            );
            if r == first_word && first_word != Register::None && constant {
                out.first_word_is_tag = true;
            }
        }
        if ins.code() == Code::Mov_rm8_imm8
            && ins.op0_kind() == OpKind::Memory
            && ins.memory_base() == Register::RDI
            && rdi_live
            && ins.immediate8() as u64 == KEY_UPDATE_REQUESTS
        {
            out.stores_key_update_requests = true;
        }
        let loaded_first_word = ins.code() == Code::Mov_r64_rm64
            && ins.op1_kind() == OpKind::Memory
            && ins.memory_base() == Register::RSI
            && ins.memory_displacement64() == 0;
        for u in info.info(&ins).used_registers() {
            if matches!(u.access(), OpAccess::Read | OpAccess::CondRead) {
                continue;
            }
            match u.register().full_register() {
                Register::RSI => rsi_live = false,
                Register::RDX => rdx_live = false,
                Register::RDI => rdi_live = false,
                r if r == first_word && !loaded_first_word => first_word = Register::None,
                _ => {}
            }
        }
        if !matches!(ins.flow_control(), FlowControl::Next | FlowControl::ConditionalBranch) {
            break;
        }
    }
    out
}

/// Instructions followed (through direct jumps, over calls) when looking for
/// `buffer_plaintext`'s reads of its payload.
const MAX_FOLLOW: usize = 64;

/// Registers a call may overwrite (System V x86-64).
const CALLER_SAVED: [Register; 9] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
];

/// `buffer_plaintext`'s shape (see the module's header): an `Option::take` on
/// `self` before any call, then, following the code through direct jumps and
/// over calls, the `OutboundChunks` read at +0, +16 and +24 through `rsi` or a
/// copy of it, its first word tested against zero and never compared with a
/// constant.
pub fn is_buffer_plaintext(code: &[u8], addr: u64) -> bool {
    let mut payload = vec![Register::RSI];
    let (mut rdi_live, mut called) = (true, false);
    let mut self_reads = Vec::new();
    let mut takes_option = false;
    let mut reads = Vec::new();
    let (mut first_word, mut tested, mut tagged) = (Register::None, false, false);
    let mut info = InstructionInfoFactory::new();
    let mut d = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    for _ in 0..MAX_FOLLOW {
        if !d.can_decode() {
            break;
        }
        let ins = d.decode();
        if ins.code() == Code::INVALID {
            break;
        }
        let mem = (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Memory) && ins.memory_index() == Register::None;
        let base = ins.memory_base();
        if mem && ins.memory_size().size() == 8 {
            let disp = ins.memory_displacement64();
            if payload.contains(&base) && ins.op0_kind() == OpKind::Register {
                reads.push(disp);
                if disp == 0 && ins.code() == Code::Mov_r64_rm64 {
                    first_word = ins.op0_register();
                }
            }
            if base == Register::RDI && rdi_live && !called {
                if ins.op0_kind() == OpKind::Register {
                    self_reads.push(disp);
                } else if ins.op0_kind() == OpKind::Memory
                    && matches!(ins.op1_kind(), OpKind::Immediate32to64 | OpKind::Immediate8to64)
                    && self_reads.contains(&disp)
                {
                    takes_option = true;
                }
            }
        }
        let same_reg = ins.op0_kind() == OpKind::Register
            && ins.op1_kind() == OpKind::Register
            && ins.op0_register().full_register() == first_word
            && first_word != Register::None;
        match ins.mnemonic() {
            Mnemonic::Test if same_reg && ins.op0_register() == ins.op1_register() => tested = true,
            Mnemonic::Cmp
                if ins.op0_kind() == OpKind::Register
                    && ins.op0_register().full_register() == first_word
                    && first_word != Register::None
                    && ins.op1_kind() != OpKind::Register =>
            {
                tagged = true
            }
            _ => {}
        }
        // A register-to-register copy of the payload pointer is one more name for it.
        let copy = ins.code() == Code::Mov_r64_rm64 || ins.code() == Code::Mov_rm64_r64;
        let copied = copy
            && ins.op0_kind() == OpKind::Register
            && ins.op1_kind() == OpKind::Register
            && payload.contains(&ins.op1_register());
        let loaded_first_word =
            ins.code() == Code::Mov_r64_rm64 && mem && payload.contains(&base) && ins.memory_displacement64() == 0;
        for u in info.info(&ins).used_registers() {
            if matches!(u.access(), OpAccess::Read | OpAccess::CondRead) {
                continue;
            }
            let r = u.register().full_register();
            if copied && r == ins.op0_register() {
                continue;
            }
            payload.retain(|&p| p != r);
            if r == Register::RDI {
                rdi_live = false;
            }
            if r == first_word && !(loaded_first_word && r == ins.op0_register()) {
                first_word = Register::None;
            }
        }
        if copied && !payload.contains(&ins.op0_register()) {
            payload.push(ins.op0_register());
        }
        match ins.flow_control() {
            FlowControl::Next | FlowControl::ConditionalBranch => {}
            FlowControl::Call | FlowControl::IndirectCall => {
                called = true;
                payload.retain(|p| !CALLER_SAVED.contains(p));
                if CALLER_SAVED.contains(&first_word) {
                    first_word = Register::None;
                }
            }
            FlowControl::UnconditionalBranch if ins.op0_kind() == OpKind::NearBranch64 => {
                let Some(at) = ins.near_branch_target().checked_sub(addr).filter(|&o| (o as usize) < code.len()) else {
                    break;
                };
                if d.set_position(at as usize).is_err() {
                    break;
                }
                d.set_ip(ins.near_branch_target());
            }
            _ => break,
        }
        if payload.is_empty() {
            break;
        }
    }
    takes_option && tested && !tagged && [0, 16, 24].iter().all(|o| reads.contains(o))
}

/// Function starts from `.eh_frame_hdr`'s search table (sorted), when it has
/// the usual encoding (data-relative signed 4-byte entries).
pub fn function_starts(elf: &object::File<'_>) -> Option<Vec<u64>> {
    let hdr = elf.section_by_name(".eh_frame_hdr")?;
    let d = hdr.data().ok()?;
    // version 1; eh_frame_ptr: pc-relative sdata4; fde_count: udata4; table: datarel sdata4.
    if d.len() < 12 || d[0] != 1 || d[1] != 0x1b || d[2] != 0x03 || d[3] != 0x3b {
        return None;
    }
    let count = u32::from_le_bytes(d[8..12].try_into().ok()?) as usize;
    let table = d.get(12..12 + count.checked_mul(8)?)?;
    let base = hdr.address() as i64;
    let mut out: Vec<u64> =
        table.chunks_exact(8).map(|e| (base + i32::from_le_bytes(e[..4].try_into().unwrap()) as i64) as u64).collect();
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// Why the functions were not found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotFound {
    NoFunctionTable,
    Missing(&'static str),
    Ambiguous(&'static str),
}

pub const SEND: &str = "CommonState::send_appdata_encrypt";
pub const BUFFER: &str = "CommonState::buffer_plaintext";
pub const RECV: &str = "CommonState::take_received_plaintext";

/// The executable sections' bytes, by address.
pub struct Text<'a>(Vec<(u64, &'a [u8])>);

impl<'a> Text<'a> {
    pub fn of(elf: &object::File<'a>) -> Self {
        Self(
            elf.sections()
                .filter(|s| s.kind() == SectionKind::Text)
                .filter_map(|s| Some((s.address(), s.data().ok()?)))
                .collect(),
        )
    }

    /// Up to `len` bytes of code from `addr` (empty outside the text).
    pub fn at(&self, addr: u64, len: usize) -> &'a [u8] {
        self.0
            .iter()
            .find_map(|&(a, d)| {
                let off = addr.checked_sub(a)? as usize;
                (off < d.len()).then(|| &d[off..d.len().min(off.saturating_add(len))])
            })
            .unwrap_or(&[])
    }
}

/// Code looked at from a function start: enough for [`MAX_FOLLOW`] instructions.
pub const WINDOW: usize = 16 * MAX_FOLLOW;

/// Where the two functions are (addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    pub send: u64,
    /// [`SEND`], or [`BUFFER`] where `send_appdata_encrypt` was inlined.
    pub send_function: &'static str,
    pub recv: u64,
}

pub fn find(elf: &object::File<'_>) -> Result<Located, NotFound> {
    let starts = function_starts(elf).ok_or(NotFound::NoFunctionTable)?;
    let text = Text::of(elf);
    let (mut send, mut recv) = (Vec::new(), Vec::new());
    let mut behind = Behind::new(&text.0);
    for &at in &starts {
        behind.passed(&text.0, at);
        let o = opening(text.at(at, 16 * MAX_SCAN), at);
        if o.is_take_received_plaintext() {
            recv.push(at);
        } else if o.is_send_appdata_encrypt() {
            send.push(at);
        }
    }
    let one = |v: Vec<u64>, what| match v.len() {
        0 => Err(NotFound::Missing(what)),
        1 => Ok(v[0]),
        _ => Err(NotFound::Ambiguous(what)),
    };
    let (send, send_function) = if send.is_empty() {
        let mut behind = Behind::new(&text.0);
        let buffer = starts
            .iter()
            .copied()
            .filter(|&at| {
                behind.passed(&text.0, at);
                is_buffer_plaintext(text.at(at, WINDOW), at)
            })
            .collect();
        let found = one(buffer, BUFFER).map_err(|e| match e {
            NotFound::Missing(_) => NotFound::Missing(SEND),
            e => e,
        })?;
        (found, BUFFER)
    } else {
        (one(send, SEND)?, SEND)
    };
    Ok(Located { send, send_function, recv: one(recv, RECV)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// Openings recorded from real builds of rustls 0.23.46: a reqwest client
    /// (rustc 1.9x, fat LTO) and Codex CLI 0.171.0 (stripped, musl).
    const SEND_LTO: &str = "554157415641554154534881ec380100004189cb4889fb85d2894c240874234c8b064d85c00f84e70000004c8b6e10488b7e184989fe4d29ee4883c608e9340200004c8b064c8b6e";
    const RECV_LTO: &str = "4157415641554154534989ffc6872e030000204c8b2e488b5e084c89e848f7d84c8b7610710a4d85f6791de8206ceeff4d85f60f8491000000498b4f60498b47784839c8743beb4a";
    const SEND_CODEX: &str =
        "554157415641554154534881ece8000000894c24244989fe85d274234c8b1e4d85db0f84e50000004c8b6e10488b7e18";
    const RECV_CODEX: &str = "415741564155415453c6872e030000204c8b3e4c8b7608488b5e10";

    #[test]
    fn both_functions_are_recognised_in_builds_of_different_compilers() {
        for (send, recv) in [(SEND_LTO, RECV_LTO), (SEND_CODEX, RECV_CODEX)] {
            let o = opening(&hex(send), 0x1000);
            assert!(o.is_send_appdata_encrypt() && !o.is_take_received_plaintext(), "{o:?}");
            let o = opening(&hex(recv), 0x1000);
            assert!(o.is_take_received_plaintext() && !o.is_send_appdata_encrypt(), "{o:?}");
        }
    }

    #[test]
    fn near_misses_are_not_recognised() {
        let recv = hex(RECV_LTO);
        // Another constant stored: not the counter.
        let mut other = recv.clone();
        let at = other.windows(7).position(|w| w == hex("c6872e03000020")).unwrap();
        other[at + 6] = 0x21;
        assert!(!opening(&other, 0).is_take_received_plaintext());
        // `rdi` overwritten first: the store is not into `self`.
        let moved = [hex("4889f7"), recv.clone()].concat();
        assert!(!opening(&moved, 0).is_take_received_plaintext());
        // A store through rsi is not a read of the argument.
        assert!(opening(&hex("48890e"), 0).second_arg_reads.is_empty());
        // `rsi` overwritten first: the reads are of something else.
        let clobbered = [hex("4889fe"), recv.clone()].concat();
        assert!(!opening(&clobbered, 0).is_take_received_plaintext());
        // A call before the reads ends the look.
        let called = [hex("e800000000"), hex(SEND_LTO)].concat();
        assert!(!opening(&called, 0).is_send_appdata_encrypt());
        // `rdx` written before it is read: not a third argument.
        let rdx = [hex("31d2"), hex(SEND_LTO)].concat();
        assert!(!opening(&rdx, 0).is_send_appdata_encrypt());
        // The first word compared with 1 as well: a tagged enum, not the
        // niche layout (recorded from a rustls function of another build).
        let tagged =
            hex("554157415641554154534881ecf80200004889fb488b066641bdffff4885c00f847101000089d583f8017526488b5610");
        let o = opening(&tagged, 0);
        assert!(o.first_word_is_tag && !o.outbound_chunks_layout(), "{o:?}");
        assert!(!opening(&hex(SEND_LTO), 0).first_word_is_tag);
        assert_eq!(opening(&[], 0), Opening::default());
        assert_eq!(opening(&[0xff; 8], 0), Opening::default());
    }

    /// `buffer_plaintext` with `send_appdata_encrypt` inlined, from litellm's
    /// Rust core (litellm-core 1.106.4, rustls 0.23.42, rustc 1.98, stripped):
    /// the `Option::take` of the queued key update, a jump, then the payload
    /// read through the copy of `rsi` kept in r14.
    const BUFFER_LITELLM: &str = "554157415641554154534883ec784989d74989f64989fc488baf080300004c8baf10030000488b9f1803000048c78708030000ffffffff4883fdff0f84810000004885db746e498b8c2498000000498b8424b00000004839c8751d498dbc2498000000e8489dfaff498b8c2498000000498b8424b0000000488d500149899424b000000049038424a800000031d24839c8480f43d14829d0498b8c24a0000000488d044048892cc14c896cc10848895cc110eb0e4885ed74094c89efff15662054004d8b164180bc2436030000010f85ee0000004c89f04d8b7610488b70184889f34c29f34d85d2490f44de4885db0f8490010000";

    #[test]
    fn buffer_plaintext_is_recognised_where_send_appdata_encrypt_was_inlined() {
        let code = hex(BUFFER_LITELLM);
        assert!(is_buffer_plaintext(&code, 0x1eb8db0));
        // Its opening alone is not one of the other two.
        let o = opening(&code, 0x1eb8db0);
        assert!(!o.is_send_appdata_encrypt() && !o.is_take_received_plaintext(), "{o:?}");
        // Nor are they this.
        for other in [SEND_LTO, RECV_LTO, SEND_CODEX, RECV_CODEX] {
            assert!(!is_buffer_plaintext(&hex(other), 0x1000), "{other}");
        }
        // No `Option::take` on self (the None stored elsewhere): not it.
        let mut untaken = code.clone();
        let at = untaken.windows(7).position(|w| w == hex("48c78708030000")).unwrap();
        untaken[at + 3] = 0x40;
        assert!(!is_buffer_plaintext(&untaken, 0x1eb8db0));
        // The first word compared with a constant (a tag), not tested against zero.
        let mut tagged = code.clone();
        let at = tagged.windows(3).position(|w| w == hex("4d85d2")).unwrap();
        tagged.splice(at..at + 3, hex("4983fa01"));
        assert!(!is_buffer_plaintext(&tagged, 0x1eb8db0));
        // The payload pointer overwritten before the reads: they are of something else.
        let mut lost = code.clone();
        let at = lost.windows(3).position(|w| w == hex("4989f6")).unwrap();
        lost[at + 2] = 0xfe; // mov r14, rdi
        assert!(!is_buffer_plaintext(&lost, 0x1eb8db0));
        // Cut short: the reads are never reached.
        assert!(!is_buffer_plaintext(&code[..0xc0], 0x1eb8db0));
    }

    #[test]
    fn function_starts_come_from_the_unwind_table() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let elf = object::File::parse(&*me).unwrap();
        let starts = function_starts(&elf).expect("a Rust binary has .eh_frame_hdr");
        assert!(starts.len() > 1000);
        assert!(starts.windows(2).all(|w| w[0] < w[1]));
        let text = elf.section_by_name(".text").unwrap();
        assert!(starts.iter().any(|&s| s >= text.address() && s < text.address() + text.size()));
    }
}
