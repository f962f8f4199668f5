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
//! Where the compiler inlined `send_appdata_encrypt` into its one caller,
//! `buffer_plaintext` (same arguments, same result: bytes accepted) is probed
//! in its place, by name or by code.
//!
//! Without names (a stripped file: Codex CLI's release binary, Python
//! extensions), or where the names are not found, rustls 0.23's functions are
//! recognised by their code ([`super::rustls_stripped`]). A stripped file that
//! links an older rustls beside 0.23 (litellm's Rust core) has its 0.23 calls
//! captured and the older version listed as not probed. What it falls back
//! to: a file where that fails too (a stripped rustls before 0.23, a shape met
//! by no function or by several) is listed in coverage as not probed, with the
//! reason.
use std::collections::BTreeSet;

use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};

use super::rustls_stripped::{self, opening, NotFound};

const NEEDLE: &[u8] = b"/rustls-0.";
const SEND: &str = "11CommonState20send_appdata_encrypt";
const RECV: &str = "11CommonState23take_received_plaintext";
const BUFFER: &str = "11CommonState16buffer_plaintext";

/// Where rustls's plaintext passes in one file (file offsets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub version: String,
    /// `send_appdata_encrypt` takes an `OutboundChunks` (0.23 and later).
    pub chunks: bool,
    pub send: Vec<u64>,
    /// Which function `send` is: `send_appdata_encrypt`, or `buffer_plaintext`
    /// where the former was inlined.
    pub send_function: &'static str,
    pub recv: Vec<u64>,
    /// Found by symbol name (else by code, in a stripped file).
    pub by_name: bool,
    /// Older rustls versions linked beside it, whose calls are not captured.
    pub not_probed: Vec<String>,
}

impl Found {
    /// For coverage: what of this file is not captured.
    pub fn not_probed_reason(&self) -> Option<String> {
        (!self.not_probed.is_empty()).then(|| {
            format!(
                "rustls {}: also linked beside {}, stripped and older than 0.23: its calls are not captured",
                self.not_probed.join(", "),
                self.version
            )
        })
    }
}

/// Why a file with rustls is not probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// No symbol table, and a rustls too old for the code search.
    Stripped,
    /// Stripped, and no unwind table to list the functions.
    NoFunctionTable,
    /// The code search found a shape in more than one function.
    Ambiguous(&'static str),
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
            Refused::Stripped => format!("rustls {version}: stripped (no symbols), not captured before 0.23"),
            Refused::NoFunctionTable => format!("rustls {version}: stripped and no unwind table"),
            Refused::Ambiguous(what) => format!("rustls {version}: {what} matched more than one function"),
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
        for at in super::pages::find_iter(d, NEEDLE) {
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

/// The highest of them.
pub fn latest(versions: &BTreeSet<String>) -> Option<String> {
    versions.iter().max_by_key(|v| minor(v)).cloned()
}

fn minor(v: &str) -> u32 {
    v.split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0)
}

/// Find the two functions in a file known (by [`versions`]) to link rustls:
/// by name, else by code through `by_code` ([`find_by_code`], or the caller's
/// cache of it).
pub fn find(
    elf: &object::File<'_>,
    versions: &BTreeSet<String>,
    by_code: impl FnOnce(&object::File<'_>, &BTreeSet<String>) -> Result<Found, Refused>,
) -> Result<Found, Refused> {
    find_by_name(elf, versions)?.map_or_else(|| by_code(elf, versions), Ok)
}

/// The argument shape of the versions a file links: `OutboundChunks` (0.23).
fn chunks(versions: &BTreeSet<String>) -> Result<bool, Refused> {
    let shapes: BTreeSet<bool> = versions.iter().map(|v| minor(v) >= 23).collect();
    if shapes.len() > 1 {
        return Err(Refused::MixedVersions);
    }
    Ok(shapes.into_iter().next().unwrap_or(true))
}

/// By symbol name; `None` when the names are not there and the code search
/// ([`find_by_code`]) applies.
pub fn find_by_name(elf: &object::File<'_>, versions: &BTreeSet<String>) -> Result<Option<Found>, Refused> {
    // (address, file offset)
    let (mut send, mut buffer, mut recv) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut any = false;
    for (i, sym) in elf.symbols().enumerate() {
        super::pages::release_all_every(i);
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
        } else if name.contains(BUFFER) {
            &mut buffer
        } else {
            continue;
        };
        if let Some(off) = super::placement::file_offset(elf, sym.address()) {
            slot.insert((sym.address(), off));
        }
    }
    let has_chunks = versions.iter().any(|v| minor(v) >= 23);
    if send.is_empty() && recv.is_empty() && has_chunks {
        // Stripped (or renamed): the code search.
        return Ok(None);
    }
    let chunks = chunks(versions)?;
    let version = latest(versions).unwrap_or_default();
    // `send_appdata_encrypt` inlined into `buffer_plaintext` (0.23 only).
    let send_function = if send.is_empty() && chunks && !buffer.is_empty() {
        send = buffer;
        BUFFER_NAME
    } else {
        SEND_NAME
    };
    if send.is_empty() || recv.is_empty() {
        return match (chunks, any) {
            (true, _) => Ok(None),
            (false, true) => Err(Refused::Missing(if send.is_empty() { SEND_NAME } else { RECV_NAME })),
            (false, false) => Err(Refused::Stripped),
        };
    }
    let text = rustls_stripped::Text::of(elf);
    for &(addr, _) in &send {
        let layout_ok = match send_function {
            BUFFER_NAME => rustls_stripped::is_buffer_plaintext(text.at(addr, rustls_stripped::WINDOW), addr),
            _ => !chunks || opening(text.at(addr, rustls_stripped::WINDOW), addr).outbound_chunks_layout(),
        };
        if !layout_ok {
            return Err(Refused::Layout(send_function));
        }
    }
    for &(addr, _) in &recv {
        if !opening(text.at(addr, rustls_stripped::WINDOW), addr).reads(&[8, 16]) {
            return Err(Refused::Layout(RECV_NAME));
        }
    }
    let offsets = |set: BTreeSet<(u64, u64)>| set.into_iter().map(|(_, off)| off).collect();
    Ok(Some(Found {
        version,
        chunks,
        send: offsets(send),
        send_function,
        recv: offsets(recv),
        by_name: true,
        not_probed: Vec::new(),
    }))
}

/// Without names: recognise rustls 0.23's functions by their code (seconds for
/// a large binary; the caller caches it). Older versions linked beside 0.23
/// are listed in [`Found::not_probed`].
pub fn find_by_code(elf: &object::File<'_>, versions: &BTreeSet<String>) -> Result<Found, Refused> {
    let (older, newer): (Vec<String>, Vec<String>) = versions.iter().cloned().partition(|v| minor(v) < 23);
    if newer.is_empty() && !older.is_empty() {
        return Err(Refused::Stripped);
    }
    let found = rustls_stripped::find(elf).map_err(|e| match e {
        NotFound::NoFunctionTable => Refused::NoFunctionTable,
        NotFound::Missing(what) => Refused::Missing(what),
        NotFound::Ambiguous(what) => Refused::Ambiguous(what),
    })?;
    let off = |a, what| super::placement::file_offset(elf, a).ok_or(Refused::Missing(what));
    let (send, recv) = (vec![off(found.send, found.send_function)?], vec![off(found.recv, RECV_NAME)?]);
    let version = latest(&newer.into_iter().collect()).unwrap_or_default();
    Ok(Found {
        version,
        chunks: true,
        send,
        send_function: found.send_function,
        recv,
        by_name: false,
        not_probed: older,
    })
}

const SEND_NAME: &str = rustls_stripped::SEND;
const RECV_NAME: &str = rustls_stripped::RECV;
const BUFFER_NAME: &str = rustls_stripped::BUFFER;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_version_from_source_paths() {
        // This test binary links rustls (through ureq).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let v = latest(&versions(&object::File::parse(&*me).unwrap())).expect("rustls in this binary");
        assert!(v.starts_with("0.2"), "{v}");
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(versions(&object::File::parse(&*sh).unwrap()).is_empty());
    }

    #[test]
    fn an_older_rustls_linked_beside_is_reported_as_not_captured() {
        let mut found = Found {
            version: "0.23.42".into(),
            chunks: true,
            send: vec![0x1000],
            send_function: BUFFER_NAME,
            recv: vec![0x2000],
            by_name: false,
            not_probed: Vec::new(),
        };
        assert_eq!(found.not_probed_reason(), None);
        found.not_probed = vec!["0.21.12".into()];
        assert_eq!(
            found.not_probed_reason().unwrap(),
            "rustls 0.21.12: also linked beside 0.23.42, stripped and older than 0.23: its calls are not captured"
        );
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

    #[test]
    fn the_argument_layout_is_read_from_the_code() {
        // send_appdata_encrypt's opening in a fat-LTO reqwest client.
        let hex =
            "554157415641554154534881ec380100004189cb4889fb85d2894c240874234c8b064d85c00f84e70000004c8b6e10488b7e18";
        let send: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        assert!(opening(&send, 0x1000).reads(&[0, 16, 24]));
        assert!(!opening(&send, 0x1000).reads(&[8, 16]));
    }

    #[test]
    fn this_binary_s_rustls_is_located_by_symbol() {
        // The unit-test binary keeps its symbol table and links rustls 0.23,
        // unoptimised: the functions are found, and the layout check decides.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let elf = object::File::parse(&*me).unwrap();
        let vs = versions(&elf);
        match find(&elf, &vs, find_by_code) {
            Ok(found) => {
                assert!(found.chunks);
                assert!(!found.send.is_empty() && !found.recv.is_empty());
                assert!(found.send.iter().chain(&found.recv).all(|&o| (o as usize) < me.len()));
            }
            Err(why) => assert!(matches!(why, Refused::Layout(_)), "{why:?}"),
        }
        // With names, two argument shapes are not told apart: refused.
        let mixed: BTreeSet<String> = ["0.22.4".to_string(), "0.23.46".to_string()].into();
        assert_eq!(find(&elf, &mixed, find_by_code), Err(Refused::MixedVersions));
        // By code only 0.23 is looked for; an older rustls alone is not.
        let old: BTreeSet<String> = ["0.21.12".to_string()].into();
        assert_eq!(find_by_code(&elf, &old), Err(Refused::Stripped));
        assert_eq!(
            Refused::Stripped.describe("0.22.4"),
            "rustls 0.22.4: stripped (no symbols), not captured before 0.23"
        );
    }
}
