//! Who made a call: process (pid, comm, exe) and container (id from the cgroup
//! path). Read from /proc once per process, when its first connection appears
//! (the process may be gone by the time its response completes), and forgotten
//! when it exits. Bounded.
pub mod container;

use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub exe: Option<String>,
    pub container_id: Option<String>,
}

pub struct Attributor {
    proc_root: PathBuf,
    cache: HashMap<u32, ProcessInfo>,
    max: usize,
}

impl Attributor {
    pub fn new(proc_root: impl Into<PathBuf>, max: usize) -> Self {
        Self {
            proc_root: proc_root.into(),
            cache: HashMap::new(),
            max: max.max(1),
        }
    }

    /// Learn about `tgid` now if not known yet.
    pub fn observe(&mut self, tgid: u32) {
        if self.cache.contains_key(&tgid) {
            return;
        }
        if self.cache.len() >= self.max {
            // Rare (more live TLS-using processes than the cap): start over
            // rather than grow; entries are re-read on next sight.
            self.cache.clear();
        }
        let info = self.read(tgid);
        self.cache.insert(tgid, info);
    }

    pub fn get(&mut self, tgid: u32) -> ProcessInfo {
        self.observe(tgid);
        self.cache.get(&tgid).cloned().unwrap_or_default()
    }

    pub fn forget(&mut self, tgid: u32) {
        self.cache.remove(&tgid);
    }

    fn read(&self, tgid: u32) -> ProcessInfo {
        let dir = self.proc_root.join(tgid.to_string());
        let exe = std::fs::read_link(dir.join("exe"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let container_id = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|s| container::container_id_from_proc_cgroup(&s));
        ProcessInfo { exe, container_id }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let mut a = Attributor::new("/proc", 4);
        let me = std::process::id();
        let info = a.get(me);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(info.exe.as_deref(), Some(exe.to_str().unwrap()));
        // Bounded: more processes than the cap never grows the cache past it.
        for pid in 1..20 {
            a.observe(pid);
        }
        assert!(a.cache.len() <= 4);
        a.forget(me);
        assert!(!a.cache.contains_key(&me));
    }
}
