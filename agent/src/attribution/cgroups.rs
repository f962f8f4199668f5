//! Kernel cgroup id (what `bpf_get_current_cgroup_id` returns: the inode of the
//! cgroup v2 directory) to cgroup path. A miss opens the directory by its file
//! handle, which on cgroupfs is the id itself (exact and immediate, whatever
//! happened to the process; needs CAP_DAC_READ_SEARCH, which root has), and
//! where that is refused walks the cgroup2 mount once and caches every
//! directory found (walks at most once a second). The cache is bounded.
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
}

impl CgroupPaths {
    /// Find the cgroup2 mount in /proc/self/mountinfo.
    pub fn discover() -> Self {
        let root = std::fs::read_to_string("/proc/self/mountinfo").ok().and_then(|m| cgroup2_mount(&m));
        Self::at(root)
    }

    pub fn at(root: Option<PathBuf>) -> Self {
        let mount = root.as_deref().and_then(|r| File::open(r).ok());
        Self { root, mount, cache: HashMap::new(), last_walk: None }
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
        if self.last_walk.is_some_and(|t| t.elapsed() < MIN_WALK_INTERVAL) {
            return None;
        }
        self.last_walk = Some(Instant::now());
        if self.cache.len() >= MAX_ENTRIES {
            self.cache.clear();
        }
        self.walk(&root, &root, 0);
        self.cache.get(&id).cloned()
    }

    /// Open the cgroup directory whose kernfs file handle is `id`
    /// (`FILEID_KERNFS`) and read back where it is.
    fn by_handle(&self, root: &Path, id: u64) -> Option<String> {
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

/// Mount point of the cgroup2 filesystem in mountinfo text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mount = pre.split_whitespace().nth(4)?;
        (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
    })
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
    fn maps_directory_inodes_to_paths() {
        // Any directory tree behaves like cgroupfs for the walk.
        let root = std::env::temp_dir().join(format!("tt-cg-{}", std::process::id()));
        let leaf = root.join("system.slice/docker-abc.scope");
        std::fs::create_dir_all(&leaf).unwrap();
        let id = std::fs::metadata(&leaf).unwrap().ino();
        let mut c = CgroupPaths::at(Some(root.clone()));
        assert_eq!(c.path_of(id).as_deref(), Some("/system.slice/docker-abc.scope"));
        assert_eq!(c.path_of(0), None);
        // A miss right after a walk does not walk again (rate limit)...
        let new = root.join("new");
        std::fs::create_dir_all(&new).unwrap();
        let new_id = std::fs::metadata(&new).unwrap().ino();
        assert_eq!(c.path_of(new_id), None);
        // ...but a hit is served from the cache.
        assert!(c.path_of(id).is_some());
        assert_eq!(CgroupPaths::at(None).path_of(id), None);
    }

    #[test]
    fn a_cgroup_made_after_the_last_walk_is_found_by_its_handle() {
        // Root (tests run as root): a cgroup created right after a walk, which
        // the walk's rate limit would miss, is found by its id at once.
        let Some(root) = std::fs::read_to_string("/proc/self/mountinfo").ok().and_then(|m| cgroup2_mount(&m)) else {
            panic!("no cgroup2 mount on this machine");
        };
        let mut c = CgroupPaths::at(Some(root.clone()));
        assert_eq!(c.path_of(u64::MAX - 1), None, "an id no cgroup has");
        let name = format!("tt-handle-{}", std::process::id());
        let dir = root.join(&name);
        std::fs::create_dir(&dir).unwrap();
        let id = std::fs::metadata(&dir).unwrap().ino();
        let found = c.path_of(id);
        let _ = std::fs::remove_dir(&dir);
        assert_eq!(found, Some(format!("/{name}")));
        // The root cgroup itself.
        let root_id = std::fs::metadata(&root).unwrap().ino();
        assert_eq!(CgroupPaths::at(Some(root.clone())).path_of(root_id).as_deref(), Some("/"));
    }
}
