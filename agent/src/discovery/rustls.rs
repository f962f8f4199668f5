//! rustls, linked into Rust programs (Codex CLI, services using reqwest or
//! hyper-rustls, Python extensions such as litellm's Rust core).
//!
//! Recognition: a Rust binary carries the source paths of its dependencies in
//! panic locations (`.../rustls-0.23.46/src/conn.rs`), stripped or not, so a
//! file linking rustls is known with its version.
//!
//! Capture, where the symbol table is there: the plaintext boundary is two
//! private functions of `CommonState`, `send_appdata_encrypt` and
//! `take_received_plaintext` (why those: the kernel side, agent-ebpf's
//! rustls.rs). They are found by their mangled names, which spell each path
//! segment as `<length><identifier>` in both Rust manglings (legacy `_ZN…` and
//! v0 `_R…`), so the match does not depend on the crate hash or the compiler.
//! The argument shape of the send function changed in 0.23 (`&[u8]` became
//! `OutboundChunks`): the version picks the program, and a file that links
//! rustls versions of both shapes is refused rather than guessed at.
//!
//! The layout of Rust values is the compiler's choice, so before attaching,
//! each function's first instructions must read its argument where the kernel
//! side will: `Payload` at +8 and +16 (pointer, length), `OutboundChunks` at
//! +0, +16 and +24 (its first word, start, end). A function that does not is
//! refused (a new compiler's layout is reported, not copied as garbage).
//!
//! What it falls back to: a stripped file (Codex CLI's release binary) has no
//! names to find; it is listed in coverage as not probed, with the reason.
use std::collections::BTreeSet;

use iced_x86::{Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, OpAccess, OpKind, Register};
use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};

const NEEDLE: &[u8] = b"/rustls-0.";
const SEND: &str = "11CommonState20send_appdata_encrypt";
const RECV: &str = "11CommonState23take_received_plaintext";

/// Where rustls's plaintext passes in one file (file offsets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub version: String,
    /// `send_appdata_encrypt` takes an `OutboundChunks` (0.23 and later).
    pub chunks: bool,
    pub send: Vec<u64>,
    pub recv: Vec<u64>,
}

/// Why a file with rustls is not probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// No symbol table: nothing names the functions.
    Stripped,
    /// Only one of the two functions was found (inlined away, or renamed).
    Missing(&'static str),
    /// Versions with both argument shapes are linked in.
    MixedVersions,
    /// The function does not read its argument where the kernel side would.
    Layout(&'static str),
}

impl Refused {
    /// For coverage and logs: `rustls 0.23.46: stripped (no symbols), not captured`.
    pub fn describe(&self, version: &str) -> String {
        match self {
            Refused::Stripped => format!("rustls {version}: stripped (no symbols), not captured"),
            Refused::Missing(what) => format!("rustls {version}: {what} not found"),
            Refused::MixedVersions => format!("rustls {version}: several rustls versions linked in"),
            Refused::Layout(what) => format!("rustls {version}: {what} reads its argument at unexpected offsets"),
        }
    }
}

/// Every rustls version a file links (`0.23.46`), from its source paths.
pub fn versions(elf: &object::File<'_>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in elf.sections() {
        if !matches!(s.kind(), SectionKind::ReadOnlyString | SectionKind::ReadOnlyData) {
            continue;
        }
        let Ok(d) = s.data() else { continue };
        for at in memchr::memmem::find_iter(d, NEEDLE) {
            // `/rustls-0.MINOR.PATCH/src/`
            let rest = &d[at + 1..d.len().min(at + 40)];
            let Some(end) = rest.iter().position(|&b| b == b'/') else { continue };
            let Ok(v) = std::str::from_utf8(&rest[b"rustls-".len()..end]) else { continue };
            let semver = v.split('.').count() == 3
                && v.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if semver && rest[end..].starts_with(b"/src/") {
                out.insert(v.to_owned());
            }
        }
    }
    out
}

/// The (highest) rustls version a file links.
pub fn version(elf: &object::File<'_>) -> Option<String> {
    latest(&versions(elf))
}

pub fn latest(versions: &BTreeSet<String>) -> Option<String> {
    versions.iter().max_by_key(|v| minor(v)).cloned()
}

fn minor(v: &str) -> u32 {
    v.split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0)
}

/// Find the two functions in a file known (by [`versions`]) to link rustls.
pub fn find(elf: &object::File<'_>, versions: &BTreeSet<String>) -> Result<Found, Refused> {
    // (address, file offset)
    let (mut send, mut recv) = (BTreeSet::new(), BTreeSet::new());
    let mut any = false;
    for sym in elf.symbols() {
        any = true;
        if sym.kind() != SymbolKind::Text || !sym.is_definition() || sym.address() == 0 {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        // LLVM's outlined cold parts are not the function.
        if !name.contains("6rustls") || name.contains(".cold") {
            continue;
        }
        let slot = if name.contains(SEND) {
            &mut send
        } else if name.contains(RECV) {
            &mut recv
        } else {
            continue;
        };
        if let Some(off) = super::placement::file_offset(elf, sym.address()) {
            slot.insert((sym.address(), off));
        }
    }
    if !any {
        return Err(Refused::Stripped);
    }
    let shapes: BTreeSet<bool> = versions.iter().map(|v| minor(v) >= 23).collect();
    if shapes.len() > 1 {
        return Err(Refused::MixedVersions);
    }
    let chunks = shapes.into_iter().next().unwrap_or(true);
    if send.is_empty() {
        return Err(Refused::Missing("CommonState::send_appdata_encrypt"));
    }
    if recv.is_empty() {
        return Err(Refused::Missing("CommonState::take_received_plaintext"));
    }
    let code = |addr: u64| -> &[u8] {
        elf.sections()
            .filter(|s| s.kind() == SectionKind::Text)
            .find(|s| addr >= s.address() && addr < s.address() + s.size())
            .and_then(|s| Some(&s.data().ok()?[(addr - s.address()) as usize..]))
            .unwrap_or(&[])
    };
    const SEND_NAME: &str = "CommonState::send_appdata_encrypt";
    const RECV_NAME: &str = "CommonState::take_received_plaintext";
    for &(addr, _) in &send {
        if chunks && !reads_argument_at(code(addr), addr, &[0, 16, 24]) {
            return Err(Refused::Layout(SEND_NAME));
        }
    }
    for &(addr, _) in &recv {
        if !reads_argument_at(code(addr), addr, &[8, 16]) {
            return Err(Refused::Layout(RECV_NAME));
        }
    }
    let version = latest(versions).unwrap_or_default();
    let offsets = |set: BTreeSet<(u64, u64)>| set.into_iter().map(|(_, off)| off).collect();
    Ok(Found { version, chunks, send: offsets(send), recv: offsets(recv) })
}

/// Instructions looked at for the argument reads.
const MAX_SCAN: usize = 48;

/// Does the code at `addr` read 64-bit words at each of `offsets` from its
/// second argument (`rsi`), before anything overwrites `rsi` and before any
/// call, return or jump away (conditional branches are stepped over)?
pub fn reads_argument_at(code: &[u8], addr: u64, offsets: &[u64]) -> bool {
    let mut seen = Vec::new();
    let mut info = InstructionInfoFactory::new();
    let mut d = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    for _ in 0..MAX_SCAN {
        if !d.can_decode() {
            break;
        }
        let ins = d.decode();
        for op in 0..ins.op_count() {
            if ins.op_kind(op) == OpKind::Memory
                && ins.memory_base() == Register::RSI
                && ins.memory_index() == Register::None
                && ins.memory_size().size() == 8
            {
                seen.push(ins.memory_displacement64());
            }
        }
        if offsets.iter().all(|o| seen.contains(o)) {
            return true;
        }
        let writes_rsi = info
            .info(&ins)
            .used_registers()
            .iter()
            .any(|u| u.register().full_register() == Register::RSI && u.access() != OpAccess::Read);
        let flow = ins.flow_control();
        if writes_rsi || !matches!(flow, FlowControl::Next | FlowControl::ConditionalBranch) {
            break;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_version_from_source_paths() {
        // This test binary links rustls (through ureq).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let v = version(&object::File::parse(&*me).unwrap()).expect("rustls in this binary");
        assert!(v.starts_with("0.2"), "{v}");
        let sh = std::fs::read("/bin/sh").unwrap();
        assert_eq!(version(&object::File::parse(&*sh).unwrap()), None);
    }

    #[test]
    fn mangled_names_of_both_schemes_match() {
        let legacy = "_ZN6rustls12common_state11CommonState20send_appdata_encrypt17h0123456789abcdefE";
        let v0 = "_RNvMs0_NtCs1a2b3c_6rustls12common_stateNtB5_11CommonState23take_received_plaintext";
        assert!(legacy.contains(SEND) && legacy.contains("6rustls"));
        assert!(v0.contains(RECV) && v0.contains("6rustls"));
        // The server-side early-data function of 0.21/0.22 is another type's.
        let early = "_ZN6rustls6server11server_conn20ServerConnectionData23take_received_plaintext17hE";
        assert!(!early.contains(RECV));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// The first bytes of both functions in a reqwest + rustls 0.23.46 client
    /// built with rustc 1.9x, `--release`, fat LTO (tests/clients/rust_client).
    const SEND_LTO: &str = "554157415641554154534881ec380100004189cb4889fb85d2894c240874234c8b064d85c00f84e70000004c8b6e10488b7e184989fe4d29ee4883c608e9340200004c8b064c8b6e";
    const RECV_LTO: &str = "4157415641554154534989ffc6872e030000204c8b2e488b5e084c89e848f7d84c8b7610710a4d85f6791de8206ceeff4d85f60f8491000000498b4f60498b47784839c8743beb4a";

    #[test]
    fn the_argument_layout_is_checked_in_the_code() {
        let (send, recv) = (hex(SEND_LTO), hex(RECV_LTO));
        assert!(reads_argument_at(&send, 0x1000, &[0, 16, 24]));
        assert!(reads_argument_at(&recv, 0x1000, &[8, 16]));
        // The other function's layout is not this one's.
        assert!(!reads_argument_at(&send, 0x1000, &[8, 16, 32]));
        assert!(!reads_argument_at(&recv, 0x1000, &[0, 16, 24]));
        // `mov rsi, rdi` first: what follows reads something else.
        let clobbered = [&[0x48, 0x89, 0xfe][..], &recv].concat();
        assert!(!reads_argument_at(&clobbered, 0x1000, &[8, 16]));
        // A call before the reads ends the look.
        let called = [&[0xe8, 0, 0, 0, 0][..], &recv].concat();
        assert!(!reads_argument_at(&called, 0x1000, &[8, 16]));
        assert!(!reads_argument_at(&[], 0x1000, &[8]));
    }

    #[test]
    fn this_binary_s_rustls_is_located_by_symbol() {
        // The unit-test binary keeps its symbol table and links rustls 0.23,
        // unoptimised: the functions are found, and the layout check decides.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let elf = object::File::parse(&*me).unwrap();
        let vs = versions(&elf);
        match find(&elf, &vs) {
            Ok(found) => {
                assert!(found.chunks);
                assert!(!found.send.is_empty() && !found.recv.is_empty());
                assert!(found.send.iter().chain(&found.recv).all(|&o| (o as usize) < me.len()));
            }
            Err(why) => assert!(matches!(why, Refused::Layout(_)), "{why:?}"),
        }
        let mixed: BTreeSet<String> = ["0.22.4".to_string(), "0.23.46".to_string()].into();
        assert_eq!(find(&elf, &mixed), Err(Refused::MixedVersions));
        assert_eq!(Refused::Stripped.describe("0.23.46"), "rustls 0.23.46: stripped (no symbols), not captured");
    }
}
