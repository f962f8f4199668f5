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
    let (mut rsi_live, mut rdx_live) = (true, true);
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
        for op in 0..ins.op_count() {
            if ins.op_kind(op) != OpKind::Memory || ins.memory_index() != Register::None {
                continue;
            }
            if rsi_live && ins.memory_base() == Register::RSI && ins.memory_size().size() == 8 {
                out.second_arg_reads.push(ins.memory_displacement64());
                if ins.memory_displacement64() == 0 && ins.code() == Code::Mov_r64_rm64 {
                    first_word = ins.op0_register();
                }
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
pub const RECV: &str = "CommonState::take_received_plaintext";

/// (send, receive) function addresses.
pub fn find(elf: &object::File<'_>) -> Result<(u64, u64), NotFound> {
    let starts = function_starts(elf).ok_or(NotFound::NoFunctionTable)?;
    let text: Vec<(u64, &[u8])> = elf
        .sections()
        .filter(|s| s.kind() == SectionKind::Text)
        .filter_map(|s| Some((s.address(), s.data().ok()?)))
        .collect();
    let (mut send, mut recv) = (Vec::new(), Vec::new());
    for &at in &starts {
        let Some(code) = text.iter().find_map(|&(a, d)| {
            let off = at.checked_sub(a)? as usize;
            (off < d.len()).then(|| &d[off..d.len().min(off + 16 * MAX_SCAN)])
        }) else {
            continue;
        };
        let o = opening(code, at);
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
    Ok((one(send, SEND)?, one(recv, RECV)?))
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
