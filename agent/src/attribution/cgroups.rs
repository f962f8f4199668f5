//! Kernel cgroup id (what `bpf_get_current_cgroup_id` returns: the inode of the
//! cgroup v2 directory) to cgroup path. A miss opens the directory by its file
//! handle, which on cgroupfs is the id itself (exact and immediate, whatever
//! happened to the process; needs CAP_DAC_READ_SEARCH: root has it, unless a
//! container drops it), and
//! where that is refused walks the cgroup2 mount and caches every directory
//! found. The cache is bounded.
//!
//! When to walk: kernfs numbers a hierarchy's nodes in order, so a cgroup
//! made since the last walk has an id above every one it found, and is
//! walked for at once (a pod's first process); a miss below them is a cgroup
//! already gone (or out of reach), walked for at most once a second.
//!
//! Why the handle first: a short-lived process (a job in a container) may be
//! gone from /proc when its record is made, and a cgroup created within the
//! last second is not in the last walk; its id still names its directory.
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MAX_ENTRIES: usize = 1 << 16;
const MAX_DEPTH: usize = 32;
const MIN_WALK_INTERVAL: Duration = Duration::from_secs(1);

pub struct CgroupPaths {
    root: Option<PathBuf>,
    /// The cgroup2 mount, open, for `open_by_handle_at`.
    mount: Option<File>,
    cache: HashMap<u64, String>,
    last_walk: Option<Instant>,
    /// The largest id the walks found.
    max_walked: u64,
    /// Whether a refused open by id was said (once).
    said_refused: bool,
}

impl CgroupPaths {
    /// Find the cgroup2 mount in /proc/self/mountinfo.
    pub fn discover() -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let ns = std::fs::metadata("/proc/self/ns/cgroup").ok().map(|m| m.ino());
        if only_own_cgroups_visible(&mountinfo, ns) {
            let what = if ns == Some(HOST_CGROUP_NS) {
                "sees only part of the cgroup hierarchy"
            } else {
                "is in a cgroup namespace of its own and sees only its own cgroups"
            };
            tracing::warn!(
                "this agent {what}: a process gone from /proc before its call is recorded gets no container or pod; \
                 mount the host's /sys/fs/cgroup read-only anywhere (the chart mounts it at /host/sys/fs/cgroup)"
            );
        }
        Self::at(cgroup2_mount(&mountinfo))
    }

    pub fn at(root: Option<PathBuf>) -> Self {
        let mount = root.as_deref().and_then(|r| File::open(r).ok());
        Self { root, mount, cache: HashMap::new(), last_walk: None, max_walked: 0, said_refused: false }
    }

    /// The path (relative to the cgroup2 root, starting with `/`) of cgroup `id`.
    pub fn path_of(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if let Some(p) = self.cache.get(&id) {
            return Some(p.clone());
        }
        let root = self.root.clone()?;
        if let Some(p) = self.by_handle(&root, id) {
            if self.cache.len() >= MAX_ENTRIES {
                self.cache.clear();
            }
            self.cache.insert(id, p.clone());
            return Some(p);
        }
        let newer = id > self.max_walked;
        if !newer && self.last_walk.is_some_and(|t| t.elapsed() < MIN_WALK_INTERVAL) {
            return None;
        }
        self.last_walk = Some(Instant::now());
        if self.cache.len() >= MAX_ENTRIES {
            self.cache.clear();
        }
        self.walk(&root, &root, 0);
        // A newer id the walk did not find (its cgroup gone already, or out of
        // reach) is not walked for again at once.
        self.max_walked = self.max_walked.max(id);
        self.cache.get(&id).cloned()
    }

    /// Open the cgroup directory whose kernfs file handle is `id`
    /// (`FILEID_KERNFS`) and read back where it is.
    fn by_handle(&mut self, root: &Path, id: u64) -> Option<String> {
        #[repr(C)]
        struct KernfsHandle {
            handle_bytes: u32,
            handle_type: i32,
            id: [u8; 8],
        }
        const FILEID_KERNFS: i32 = 0xfe;
        let mount = self.mount.as_ref()?;
        let mut h = KernfsHandle { handle_bytes: 8, handle_type: FILEID_KERNFS, id: id.to_ne_bytes() };
        // SAFETY: `h` is a file_handle header followed by its 8 bytes, as the
        // call expects; the descriptor returned is owned by the File below.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount.as_raw_fd(),
                (&mut h as *mut KernfsHandle).cast::<libc::file_handle>(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if !self.said_refused && e.raw_os_error() == Some(libc::EPERM) {
                self.said_refused = true;
                tracing::info!(
                    "cgroups are not opened by their id here ({e}: it takes {}): the cgroup of a process gone \
                     from /proc is looked for by walking {} instead",
                    crate::caps::ATTRIBUTION[0].name,
                    root.display()
                );
            }
            return None;
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let dir = unsafe { File::from_raw_fd(fd) };
        let path = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()?;
        let rel = path.strip_prefix(root).ok()?;
        Some(format!("/{}", rel.display()))
    }

    fn walk(&mut self, root: &Path, dir: &Path, depth: usize) {
        if depth > MAX_DEPTH || self.cache.len() >= MAX_ENTRIES {
            return;
        }
        if let Ok(md) = std::fs::metadata(dir) {
            let rel = dir.strip_prefix(root).map(|r| format!("/{}", r.display())).unwrap_or_default();
            self.max_walked = self.max_walked.max(md.ino());
            self.cache.insert(md.ino(), rel);
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                self.walk(root, &e.path(), depth + 1);
            }
        }
    }
}

/// The cgroup2 mount in mountinfo text that shows the most of the
/// hierarchy: the highest root. In a container with a cgroup namespace of its
/// own (Kubernetes on cgroup v2) the runtime's /sys/fs/cgroup shows only the
/// container's own cgroups (its root field `/`), and the host's, mounted
/// beside it (the chart mounts it at /host/sys/fs/cgroup), shows them all:
/// its root is seen from the namespace as `/../..`, one `..` per level up.
/// A mount point mounted over later counts by its last mount. Ties: the first.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    best_cgroup2_mount(mountinfo).map(|(p, _)| p)
}

/// [`cgroup2_mount`] and its height: `..`s up from the namespace's root,
/// less names down.
fn best_cgroup2_mount(mountinfo: &str) -> Option<(PathBuf, i64)> {
    let mut mounts: Vec<(&str, i64)> = Vec::new();
    for l in mountinfo.lines() {
        let Some((pre, post)) = l.split_once(" - ") else { continue };
        if post.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let mut f = pre.split_whitespace();
        let (Some(root), Some(point)) = (f.nth(3), f.next()) else { continue };
        // Up the hierarchy for each `..`, down for each name (a runtime may
        // bind a container's own cgroup, `/system.slice/docker-….scope`).
        let height: i64 = root.split('/').filter(|c| !c.is_empty()).map(|c| if c == ".." { 1 } else { -1 }).sum();
        mounts.retain(|(p, _)| *p != point);
        mounts.push((point, height));
    }
    let most = mounts.iter().map(|m| m.1).max()?;
    mounts.iter().find(|m| m.1 == most).map(|m| (PathBuf::from(m.0), m.1))
}

/// The initial cgroup namespace's inode (`PROC_CGROUP_INIT_INO`).
const HOST_CGROUP_NS: u64 = 0xEFFF_FFFB;

/// Whether the cgroup2 mounts in `mountinfo` miss the top of the hierarchy:
/// in a cgroup namespace of its own, none shows above the namespace's root;
/// in the host's, the best shows only a part (a container's own cgroup bound
/// at /sys/fs/cgroup). Then a process gone from /proc before its record is
/// made can't be placed in its container (said once at start).
pub fn only_own_cgroups_visible(mountinfo: &str, cgroup_ns: Option<u64>) -> bool {
    let Some(ns) = cgroup_ns else { return false };
    let Some((_, height)) = best_cgroup2_mount(mountinfo) else { return false };
    if ns == HOST_CGROUP_NS {
        height < 0
    } else {
        height <= 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let mi = "25 30 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                  35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(mi), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup2_mount("garbage\n"), None);
    }

    #[test]
    fn in_a_cgroup_namespace_the_mount_showing_the_host_hierarchy_is_taken() {
        // The runtime's own (its namespace's root) first, the host's beside it.
        let pod = "1500 1490 0:30 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n\
                   1510 1490 0:30 /../../.. /host/sys/fs/cgroup ro,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(pod), Some(PathBuf::from("/host/sys/fs/cgroup")));
        assert!(!only_own_cgroups_visible(pod, Some(4026532500)));
        // Without the host's: the namespace's own, and said so.
        let own = "1500 1490 0:30 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(own), Some(PathBuf::from("/sys/fs/cgroup")));
        assert!(only_own_cgroups_visible(own, Some(4026532500)));
        assert!(!only_own_cgroups_visible(own, Some(0xEFFF_FFFB)), "the host's namespace sees every cgroup");
        assert!(!only_own_cgroups_visible(own, None), "can't tell: nothing said");
        // A mount point mounted over counts by its last mount.
        let over = "1500 1490 0:30 /.. /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n\
                    1510 1490 0:30 /../.. /host rw - cgroup2 cgroup2 rw\n\
                    1520 1500 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n\
                    1530 1500 0:30 /.. /other rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(over), Some(PathBuf::from("/host")));
        let shadowed = "1500 1490 0:30 /../.. /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n\
                        1510 1490 0:30 /.. /b rw - cgroup2 cgroup2 rw\n\
                        1520 1500 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(shadowed), Some(PathBuf::from("/b")));
        // The host's namespace, a runtime's bind of a container's own cgroup first.
        let docker = "1500 1490 0:30 /system.slice/docker-ab.scope /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n\
                      1510 1490 0:30 / /host/sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(docker), Some(PathBuf::from("/host/sys/fs/cgroup")));
        // ...and without the host's: only a part of the hierarchy, said.
        let docker_own = "1500 1490 0:30 /system.slice/docker-ab.scope /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert!(only_own_cgroups_visible(docker_own, Some(0xEFFF_FFFB)));
        assert!(!only_own_cgroups_visible("garbage\n", Some(4026532500)), "no cgroup2 at all: nothing to say");
    }

    #[test]
    fn maps_directory_inodes_to_paths() {
        // Any directory tree behaves like cgroupfs for the walk.
        let root = std::env::temp_dir().join(format!("tt-cg-{}", std::process::id()));
        let leaf = root.join("system.slice/docker-abc.scope");
        std::fs::create_dir_all(&leaf).unwrap();
        let id = std::fs::metadata(&leaf).unwrap().ino();
        let mut c = CgroupPaths::at(Some(root.clone()));
        assert_eq!(c.path_of(id).as_deref(), Some("/system.slice/docker-abc.scope"));
        assert_eq!(c.path_of(0), None);
        // A miss below the ids walked, right after a walk, does not walk again...
        let walked = c.last_walk;
        assert_eq!(c.path_of(1), None);
        assert_eq!(c.last_walk, walked, "rate-limited");
        // ...but a hit is served from the cache.
        assert!(c.path_of(id).is_some());
        assert_eq!(CgroupPaths::at(None).path_of(id), None);
        let _ = std::fs::remove_dir_all(&root);
    }

    fn this_hosts_cgroup2() -> PathBuf {
        let root = std::fs::read_to_string("/proc/self/mountinfo").ok().and_then(|m| cgroup2_mount(&m));
        root.expect("no cgroup2 mount on this machine")
    }

    /// Make a cgroup under `root`, look it up at once, remove it: its name,
    /// what was found, its id.
    fn look_up_a_new_cgroup(c: &mut CgroupPaths, root: &Path, prefix: &str) -> (String, Option<String>, u64) {
        let name = format!("{prefix}-{}", std::process::id());
        let dir = root.join(&name);
        std::fs::create_dir(&dir).unwrap();
        let id = std::fs::metadata(&dir).unwrap().ino();
        let found = c.path_of(id);
        let _ = std::fs::remove_dir(&dir);
        (name, found, id)
    }

    /// Root (tests run as root), the walk alone (as an agent without
    /// CAP_DAC_READ_SEARCH): a cgroup made right after a walk is walked for
    /// at once, since kernfs gives it a larger id than every one walked.
    #[test]
    fn a_cgroup_made_after_the_last_walk_is_walked_for_at_once() {
        let root = this_hosts_cgroup2();
        let mut c = CgroupPaths { mount: None, ..CgroupPaths::at(Some(root.clone())) };
        let root_id = std::fs::metadata(&root).unwrap().ino();
        assert_eq!(c.path_of(root_id).as_deref(), Some("/"));
        let (name, found, id) = look_up_a_new_cgroup(&mut c, &root, "tt-walk");
        assert_eq!(found, Some(format!("/{name}")));
        assert!(c.max_walked >= id);
    }

    #[test]
    fn a_cgroup_made_after_the_last_walk_is_found_by_its_handle() {
        // Root (tests run as root): a cgroup created right after a walk, which
        // the walk's rate limit would miss, is found by its id at once.
        let root = this_hosts_cgroup2();
        let mut c = CgroupPaths::at(Some(root.clone()));
        assert_eq!(c.path_of(u64::MAX - 1), None, "an id no cgroup has");
        let (name, found, _) = look_up_a_new_cgroup(&mut c, &root, "tt-handle");
        assert_eq!(found, Some(format!("/{name}")));
        // The root cgroup itself.
        let root_id = std::fs::metadata(&root).unwrap().ino();
        assert_eq!(CgroupPaths::at(Some(root.clone())).path_of(root_id).as_deref(), Some("/"));
    }
}
