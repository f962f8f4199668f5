//! Java: finding JVMs, and the Java agent's native library once a JVM loaded it.
//!
//! JSSE does TLS in Java: a JVM maps no TLS library worth probing. What marks
//! one is its VM library in `/proc/PID/maps`: HotSpot's `libjvm.so`, OpenJ9's
//! `libj9vm*.so` (OpenJ9 also ships a `libjvm.so` shim, so it is checked
//! first). Discovery reports each JVM it sees ([`Jvm`]); the agent's `java`
//! module decides whether to attach and does it (HotSpot dynamic attach).
//!
//! The Java agent's native library (`libtokentap_java.so`, placed by the
//! agent into each JVM's /tmp) is then an ordinary target: its exported
//! `tokentap_java_data` and `tokentap_java_close` are where the `java` eBPF
//! programs attach. The agent attaches them before loading the Java agent;
//! discovery finds the library again in the maps of a JVM that loaded it
//! under an earlier agent (a restart), so such a JVM is probed without a
//! second attach.
use std::path::PathBuf;

use object::{Object, ObjectSection, ObjectSymbol};

use super::Mapping;

/// The Java agent's native library file name (prefix: a copy may be renamed).
pub const LIB_PREFIX: &str = "libtokentap_java";

/// File offsets of the Java agent's native functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub data: u64,
    pub close: u64,
}

/// The two functions, by their exported names; both or nothing.
pub fn inspect(elf: &object::File<'_>) -> Option<Found> {
    let mut data = None;
    let mut close = None;
    for sym in elf.dynamic_symbols() {
        let slot = match sym.name() {
            Ok("tokentap_java_data") => &mut data,
            Ok("tokentap_java_close") => &mut close,
            _ => continue,
        };
        if !sym.is_definition() || sym.address() == 0 {
            continue;
        }
        let section = sym.section_index().and_then(|i| elf.section_by_index(i).ok());
        let Some((file_off, _)) = section.as_ref().and_then(|s| s.file_range()) else { continue };
        let Some(rel) = section.and_then(|s| sym.address().checked_sub(s.address())) else { continue };
        *slot = Some(rel + file_off);
    }
    Some(Found { data: data?, close: close? })
}

/// Which virtual machine a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vm {
    HotSpot,
    OpenJ9,
}

/// A JVM seen in a process's maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jvm {
    pub pid: u32,
    pub vm: Vm,
    /// The VM library, as the process sees it (for coverage).
    pub lib: PathBuf,
    /// The process already maps the Java agent's native library.
    pub agent_loaded: bool,
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The JVM in a process's executable mappings, if it runs one.
pub fn jvm_in(pid: u32, maps: &[Mapping]) -> Option<Jvm> {
    let mut hotspot = None;
    let mut j9 = None;
    let mut agent_loaded = false;
    for m in maps {
        let name = file_name(&m.path);
        if name == "libjvm.so" {
            hotspot = Some(&m.path);
        } else if name.starts_with("libj9vm") && name.ends_with(".so") {
            j9 = Some(&m.path);
        } else if name.starts_with(LIB_PREFIX) {
            agent_loaded = true;
        }
    }
    let (vm, lib) = match (j9, hotspot) {
        (Some(p), _) => (Vm::OpenJ9, p),
        (None, Some(p)) => (Vm::HotSpot, p),
        (None, None) => return None,
    };
    Some(Jvm { pid, vm, lib: PathBuf::from(lib), agent_loaded })
}

/// Worth reading the symbols of: named like the Java agent's library.
pub fn may_be_agent_lib(path: &std::path::Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(LIB_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(path: &str) -> Mapping {
        Mapping { dev: 1, inode: 2, path: path.into() }
    }

    #[test]
    fn hotspot_openj9_and_the_loaded_agent_are_told_apart() {
        let hs = [map("/usr/bin/java"), map("/usr/lib/jvm/java-17/lib/server/libjvm.so")];
        let j = jvm_in(7, &hs).unwrap();
        assert_eq!((j.vm, j.agent_loaded), (Vm::HotSpot, false));
        assert_eq!(j.lib, PathBuf::from("/usr/lib/jvm/java-17/lib/server/libjvm.so"));
        // OpenJ9 maps a libjvm.so shim beside its own VM library.
        let j9 = [map("/opt/j9/lib/j9vm/libjvm.so"), map("/opt/j9/lib/default/libj9vm29.so")];
        assert_eq!(jvm_in(7, &j9).unwrap().vm, Vm::OpenJ9);
        let loaded = [map("/usr/lib/jvm/x/libjvm.so"), map("/tmp/.tokentap-java-0123/libtokentap_java.so")];
        assert!(jvm_in(7, &loaded).unwrap().agent_loaded);
        assert_eq!(jvm_in(7, &[map("/usr/bin/python3.11")]), None);
        assert_eq!(jvm_in(7, &[]), None);
    }

    #[test]
    fn only_files_named_like_the_library_are_read() {
        assert!(may_be_agent_lib(std::path::Path::new("/proc/9/root/tmp/.tokentap-java-ab/libtokentap_java.so")));
        assert!(!may_be_agent_lib(std::path::Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3")));
    }
}
