//! The eBPF object as built: what its programs call.
use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionKind};

use super::EBPF_OBJECT;

/// The BPF target calls a byte-at-a-time `memset`/`memmove` where LLVM made
/// one out of plain code (agent-ebpf's `words.rs`): ~500 instructions for a
/// 64-byte copy. Only functions that run once a connection, a process or a
/// send may call one; nothing a read or a system call runs.
#[test]
fn only_once_a_connection_paths_call_a_byte_at_a_time_memset_or_memmove() {
    if EBPF_OBJECT.is_empty() {
        eprintln!("eBPF object not built (AYA_BUILD_SKIP): nothing to read");
        return;
    }
    let obj = object::File::parse(EBPF_OBJECT).expect("the eBPF object parses");
    // Once a connection (its end, its hello, its connect, an adopted socket),
    // a process (exec, a library load) or a rustls send.
    let once = ["emit_control_for", "emit_hello", "connected", "adopt_socket", "dl_debug_state"];
    let allowed =
        |f: &str| once.iter().any(|a| f.contains(a)) || ["sched_process_exec", "rustls_send_slice"].contains(&f);
    let (mut calls, mut names) = (Vec::new(), Vec::new());
    for section in obj.sections().filter(|s| s.kind() == SectionKind::Text) {
        let funcs: Vec<_> = obj
            .symbols()
            .filter(|s| s.section_index() == Some(section.index()) && s.size() > 0)
            .map(|s| (s.address(), s.address() + s.size(), s.name().unwrap_or("?").to_string()))
            .collect();
        names.extend(funcs.iter().map(|(_, _, f)| f.clone()));
        for (at, r) in section.relocations() {
            let RelocationTarget::Symbol(i) = r.target() else { continue };
            let callee =
                obj.symbol_by_index(i).ok().and_then(|s| s.name().ok().map(str::to_string)).unwrap_or_default();
            if !matches!(callee.as_str(), "memset" | "memmove" | "memcpy") {
                continue;
            }
            let caller = funcs.iter().find(|(lo, hi, _)| (*lo..*hi).contains(&at)).map_or("?", |(_, _, f)| f);
            if !allowed(caller) {
                calls.push(format!("{caller} calls {callee}"));
            }
        }
    }
    // The functions looked at are there by these names (not renamed away).
    for hot in ["tokentap_emit", "h2_walk4step", "copy_one_chunk", "owns_call", "sys_enter", "sys_exit", "ssl_read_ex"]
    {
        assert!(names.iter().any(|n| n == hot || n.ends_with(hot)), "{hot} in the object: {names:?}");
    }
    assert!(calls.is_empty(), "{calls:#?}");
}
