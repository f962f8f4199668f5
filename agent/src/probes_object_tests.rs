//! The eBPF object as built: what its hot paths call.
use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionKind};

use super::EBPF_OBJECT;

/// The BPF target calls a byte-at-a-time `memset`/`memmove` where LLVM made
/// one out of plain code (agent-ebpf's `words.rs`): ~500 instructions for a
/// 64-byte copy. None may sit in a function every copied call runs.
#[test]
fn the_copy_path_and_the_http2_walk_call_no_byte_at_a_time_memset_or_memmove() {
    if EBPF_OBJECT.is_empty() {
        eprintln!("eBPF object not built (AYA_BUILD_SKIP): nothing to read");
        return;
    }
    let obj = object::File::parse(EBPF_OBJECT).expect("the eBPF object parses");
    let hot = |f: &str| {
        ["tokentap_emit", "h2_walk4step", "copy_one_chunk", "finish_call", "owns_call"].iter().any(|h| f.contains(h))
            || ["sys_enter", "sys_exit", "sock_enter", "sock_exit", "ssl_read_ex_ret", "ssl_read_ret"].contains(&f)
    };
    let (mut calls, mut hot_seen) = (Vec::new(), 0);
    for section in obj.sections().filter(|s| s.kind() == SectionKind::Text) {
        let funcs: Vec<_> = obj
            .symbols()
            .filter(|s| s.section_index() == Some(section.index()) && s.size() > 0)
            .map(|s| (s.address(), s.address() + s.size(), s.name().unwrap_or("?").to_string()))
            .collect();
        hot_seen += funcs.iter().filter(|(_, _, f)| hot(f)).count();
        for (at, r) in section.relocations() {
            let RelocationTarget::Symbol(i) = r.target() else { continue };
            let callee =
                obj.symbol_by_index(i).ok().and_then(|s| s.name().ok().map(str::to_string)).unwrap_or_default();
            if !matches!(callee.as_str(), "memset" | "memmove" | "memcpy") {
                continue;
            }
            if let Some((_, _, f)) = funcs.iter().find(|(lo, hi, _)| (*lo..*hi).contains(&at)) {
                if hot(f) {
                    calls.push(format!("{f} calls {callee}"));
                }
            }
        }
    }
    assert!(hot_seen >= 8, "the hot functions are found by name ({hot_seen})");
    assert!(calls.is_empty(), "{calls:#?}");
}
