//! `tokentap-agent uninstall`: remove what agents pinned in `--handover-dir`.
//!
//! Why more than the names this version pins: after a rollback, the agent
//! that runs `uninstall` may be older than one that ran before it, whose
//! pins (maps a later version added) it has no name for. They would outlive
//! every agent, holding kernel memory. Every agent pins a map under its own
//! name (the object's symbol, which the kernel keeps as the map's name, cut
//! to 15 bytes), so a pin whose map carries its name, in capitals as ours
//! are, is taken for a tokentap map of another version and removed too; any
//! other pin in the directory is someone else's and stays, named. Not in the
//! root of a bpf filesystem, where every tool built with aya pins its maps
//! so by default: there only this version's names go.
//!
//! Why it refuses while an agent runs: the pins are how the next agent finds
//! the running one. Without them an upgrade on that node starts a new agent
//! that does not see the old one, both copy every connection while they
//! overlap, and those calls are recorded twice; and a later kill of the old
//! agent leaves no ring for anyone to read. `--force` removes them anyway.
use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use thiserror::Error;

use crate::handover::{alive, remove_pins, HandoverError};

#[derive(Debug, Error)]
pub enum UninstallError {
    #[error(
        "{dir}: agent(s) {pids:?} still run with their maps pinned here, and the next upgrade on this node \
         finds them through these pins: stop them first (uninstall the DaemonSet, or let the last one exit: it removes \
         the pins itself), or pass --force to remove the pins anyway (an upgrade before they exit may then record \
         calls twice); nothing was removed"
    )]
    AgentsRunning { dir: PathBuf, pids: Vec<u32> },
    #[error(
        "{dir}: cannot tell whether the agents registered here still run ({reason}); nothing was removed (--force \
         removes the pins anyway)"
    )]
    CannotTell { dir: PathBuf, reason: String },
    #[error(
        "{0}: not on a bpf filesystem, so nothing an agent pinned is there (is it the agents' --handover-dir?); \
         nothing was removed"
    )]
    NotBpfFs(PathBuf),
    #[error(transparent)]
    Handover(#[from] HandoverError),
}

/// What `uninstall` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Uninstalled {
    /// Agents still running (from the pinned map of agents).
    pub running: Vec<u32>,
    /// Pins removed, this version's and others'.
    pub removed: usize,
    /// Pins left: not tokentap's.
    pub left: Vec<String>,
    /// No such directory: nothing was pinned there (or it is already gone).
    pub missing: bool,
}

/// Remove every tokentap pin in `dir` (and `dir` once empty); refused while
/// an agent registered there still runs, unless `force`.
pub fn uninstall(dir: &Path, force: bool) -> Result<Uninstalled, UninstallError> {
    if !dir.exists() {
        return Ok(Uninstalled { missing: true, ..Default::default() });
    }
    // Files there that bear a pin's name are someone else's.
    if crate::handover::fs_magic(dir).ok() != Some(crate::handover::BPF_FS_MAGIC) {
        return Err(UninstallError::NotBpfFs(dir.into()));
    }
    let running = match running_agents(dir) {
        Ok(pids) if !pids.is_empty() && !force => {
            return Err(UninstallError::AgentsRunning { dir: dir.into(), pids });
        }
        Ok(pids) => pids,
        Err(reason) if !force => return Err(UninstallError::CannotTell { dir: dir.into(), reason }),
        Err(_) => Vec::new(),
    };
    // A bpf filesystem's root is shared by every tool that pins by name
    // there (aya's default): other versions' maps are looked for only in a
    // directory of its own.
    let map_name = |path: &Path| MapInfo::from_pin(path).ok().map(|i| i.name().to_vec());
    let others = if mount_root(dir) { Ok((0, Vec::new())) } else { remove_other_versions(dir, map_name) };
    // This version's own pins go whatever befell the others'.
    let own = remove_pins(dir)?;
    let (removed, left) = others.map_err(|cause| HandoverError::Io { dir: dir.into(), cause })?;
    Ok(Uninstalled { running, removed: removed + own, left, missing: false })
}

/// The agents registered in `dir`'s pinned map of agents that still run (the
/// same pid with the same start time; a killed one's entry stays behind);
/// none without the pin. Why it cannot tell, when the map is there but cannot
/// be read, or this process sees another PID namespace than the agents'.
fn running_agents(dir: &Path) -> Result<Vec<u32>, String> {
    let all = crate::peers::registered(dir)?;
    if all.is_empty() {
        return Ok(Vec::new());
    }
    let ns = crate::caps::pid_namespace().map_err(|e| format!("/proc/self/ns/pid: {e}"))?;
    if ns != crate::caps::HOST_PID_NS {
        return Err(format!(
            "this process is in a PID namespace of its own (pid:[{ns}]), not the host's, where agents know each other by pid"
        ));
    }
    Ok(all.into_iter().filter(|&(pid, since)| alive(pid, since)).map(|(p, _)| p).collect())
}

/// Whether `dir` is the root of a mount (its device differs from its parent's).
fn mount_root(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    match (dev(dir), dir.parent().and_then(dev)) {
        (Some(d), Some(parent)) => d != parent,
        _ => true,
    }
}

/// Whether a pin named `pin` whose map the kernel names `map` is one an
/// agent made: the name in capitals, digits and `_`, and the map's name the
/// pin's (cut as the kernel cuts it).
fn tokentap_pin(pin: &str, map: &[u8]) -> bool {
    const NAME_MAX: usize = 15;
    let ours = !pin.is_empty() && pin.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    ours && map == &pin.as_bytes()[..pin.len().min(NAME_MAX)]
}

/// Remove the pins in `dir` that `tokentap_pin` recognises by their map's
/// name (`map_name` reads it; None: not a map). This version's pins and
/// rings are left to `remove_pins`. Returns (removed, left by name).
fn remove_other_versions(
    dir: &Path,
    map_name: impl Fn(&Path) -> Option<Vec<u8>>,
) -> std::io::Result<(usize, Vec<String>)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, Vec::new())),
        Err(e) => return Err(e),
    };
    let (mut removed, mut left) = (0, Vec::new());
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if crate::handover::PINNED.contains(&name.as_str()) || crate::orphan_rings::is_ring_pin(&name) {
            continue;
        }
        if map_name(&e.path()).is_some_and(|m| tokentap_pin(&name, &m)) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        } else {
            left.push(name);
        }
    }
    left.sort();
    Ok((removed, left))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_not_there_or_not_on_bpffs_is_said_and_left_alone() {
        let dir = std::env::temp_dir().join(format!("tokentap-uninstall-where-{}", std::process::id()));
        let done = uninstall(&dir, false).unwrap();
        assert!(done.missing && done.removed == 0, "{done:?}");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("AGENTS"), b"someone's").unwrap();
        assert!(matches!(uninstall(&dir, true), Err(UninstallError::NotBpfFs(_))));
        assert!(dir.join("AGENTS").exists(), "a file bearing a pin's name, not on bpffs, is not ours");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_pin_is_ours_when_its_map_bears_its_name_in_capitals() {
        assert!(tokentap_pin("CALL_TURNS", b"CALL_TURNS"));
        // The kernel keeps 15 bytes of a map's name.
        assert!(tokentap_pin("A_MUCH_LONGER_MAP_NAME", b"A_MUCH_LONGER_M"));
        assert!(!tokentap_pin("A_MUCH_LONGER_MAP_NAME", b"A_MUCH_LONGER_MAP_NAME"));
        assert!(!tokentap_pin("CALL_TURNS", b"OTHER"));
        assert!(!tokentap_pin("cilium_calls", b"cilium_calls"), "lower case: not ours");
        assert!(!tokentap_pin("", b""));
    }

    #[test]
    fn a_mount_root_is_told_from_a_directory_in_one() {
        assert!(mount_root(Path::new("/")));
        assert!(mount_root(Path::new("/proc")));
        assert!(!mount_root(Path::new("/proc/self")));
    }

    #[test]
    fn only_other_versions_maps_are_removed_and_the_rest_named() {
        let dir = std::env::temp_dir().join(format!("tokentap-uninstall-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["AGENTS", "NEWER_MAP", "their_map", "NOT_A_MAP", "RENAMED"] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        // What the kernel would say of each pin: the tests' stand-in for
        // BPF_OBJ_GET on a bpf filesystem (e2e_handover pins real maps).
        let kernel = |p: &Path| match p.file_name()?.to_str()? {
            "NEWER_MAP" => Some(b"NEWER_MAP".to_vec()),
            "their_map" => Some(b"their_map".to_vec()),
            "RENAMED" => Some(b"SOMETHING_ELSE".to_vec()),
            _ => None,
        };
        let (removed, left) = remove_other_versions(&dir, kernel).unwrap();
        assert_eq!(removed, 1);
        assert_eq!(left, ["NOT_A_MAP", "RENAMED", "their_map"]);
        assert!(dir.join("AGENTS").exists(), "this version's pins are left to remove_pins");
        assert!(!dir.join("NEWER_MAP").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
