//! Files inside a JVM's own file system, reached safely from this agent.
//!
//! A JVM in a container sees its own /tmp; this agent reaches it through
//! `/proc/PID/root`. A plain path walk through that link follows an absolute
//! symbolic link planted in the container against *this* agent's root (a
//! container could point us at the host's files), so every path inside is
//! resolved with `openat2(RESOLVE_IN_ROOT)`: symbolic links resolve inside
//! the JVM's root, as the JVM itself would resolve them. The last component
//! of every file we create or read is opened with `O_NOFOLLOW`.
//!
//! The caller works as the JVM's own user (see the java module), so what is
//! created there belongs to that user, as if the JVM's own tools made it:
//! that works where root cannot create files at all (a file system mounted
//! in a user namespace refuses owners it cannot map).
//!
//! What is placed (in `/tmp/.tokentap-java-<digest>-<uid>/`, named by the
//! content and the user, so the JVMs of one user in one mount namespace share
//! one copy, hence one uprobe; another user's JVMs never load files this user
//! could change): the agent jar and its native library, mode 0444 in a 0755
//! directory. A directory that exists but is not this user's, or is writable
//! by others, is not used. Files a JVM mapped are never removed: it reads
//! the jar's classes lazily.
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

fn cstr(s: &str) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

fn check(rc: libc::c_int) -> std::io::Result<libc::c_int> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A JVM's root directory, held open.
pub struct Root {
    fd: OwnedFd,
}

impl Root {
    pub fn open(pid: u32) -> std::io::Result<Self> {
        let path = cstr(&format!("/proc/{pid}/root"))?;
        // SAFETY: a valid C string; the fd returned is ours.
        let fd = check(unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
        // SAFETY: fd was just opened.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// `rel` (no leading `/`) resolved inside the root.
    pub fn resolve(&self, rel: &str, flags: i32) -> std::io::Result<OwnedFd> {
        let path = cstr(rel)?;
        let how = OpenHow {
            flags: (flags | libc::O_CLOEXEC) as u64,
            mode: 0,
            resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        };
        // SAFETY: valid pointers for the duration of the call.
        let fd = unsafe {
            libc::syscall(libc::SYS_openat2, self.fd.as_raw_fd(), path.as_ptr(), &how, std::mem::size_of::<OpenHow>())
        };
        check(fd as libc::c_int)?;
        // SAFETY: fd was just opened.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// The JVM's /tmp (where HotSpot's attach files live).
    pub fn tmp(&self) -> std::io::Result<Dir> {
        self.dir("tmp")
    }

    /// The directory `rel` inside the root, held open.
    pub fn dir(&self, rel: &str) -> std::io::Result<Dir> {
        Ok(Dir { fd: self.resolve(rel, libc::O_PATH | libc::O_DIRECTORY)? })
    }
}

/// A directory held open; names are single components inside it.
pub struct Dir {
    fd: OwnedFd,
}

impl Dir {
    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// `name`'s status, not following a symbolic link.
    pub fn stat(&self, name: &str) -> std::io::Result<libc::stat> {
        let n = cstr(name)?;
        // SAFETY: zeroed stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers.
        check(unsafe { libc::fstatat(self.raw(), n.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
        Ok(st)
    }

    /// `name` itself, whatever it is, held by an `O_PATH` descriptor (a
    /// symbolic link is the link, never its target).
    pub fn open_node(&self, name: &str) -> std::io::Result<OwnedFd> {
        let n = cstr(name)?;
        // SAFETY: valid C string.
        let fd =
            check(unsafe { libc::openat(self.raw(), n.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) })?;
        // SAFETY: fd was just opened.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Whether the file system this directory is on is mounted noexec (a
    /// library placed there could not be loaded: `System.load` fails).
    pub fn noexec(&self) -> std::io::Result<bool> {
        // SAFETY: zeroed statvfs is a valid out-parameter; valid fd.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        check(unsafe { libc::fstatvfs(self.raw(), &mut st) })?;
        Ok(st.f_flag & libc::ST_NOEXEC != 0)
    }

    /// A new file (never an existing one, never through a link), mode `mode`.
    pub fn create(&self, name: &str, mode: u32) -> std::io::Result<std::fs::File> {
        let n = cstr(name)?;
        let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: valid C string.
        let fd = check(unsafe { libc::openat(self.raw(), n.as_ptr(), flags, mode) })?;
        // SAFETY: fd was just opened.
        let f = unsafe { std::fs::File::from_raw_fd(fd) };
        // The umask may have taken bits away.
        // SAFETY: valid fd.
        check(unsafe { libc::fchmod(f.as_raw_fd(), mode) })?;
        Ok(f)
    }

    /// Up to `max` bytes of a regular file (not through a link).
    pub fn read(&self, name: &str, max: usize) -> std::io::Result<Vec<u8>> {
        let n = cstr(name)?;
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: valid C string.
        let fd = check(unsafe { libc::openat(self.raw(), n.as_ptr(), flags) })?;
        // SAFETY: fd was just opened.
        let f = unsafe { std::fs::File::from_raw_fd(fd) };
        if !f.metadata()?.is_file() {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        let mut out = Vec::new();
        f.take(max as u64).read_to_end(&mut out)?;
        Ok(out)
    }

    pub fn remove(&self, name: &str) {
        if let Ok(n) = cstr(name) {
            // SAFETY: valid C string.
            unsafe { libc::unlinkat(self.raw(), n.as_ptr(), 0) };
        }
    }

    /// An existing subdirectory, whoever owns it (not through a link).
    pub fn subdir_any(&self, name: &str) -> std::io::Result<Dir> {
        let n = cstr(name)?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: valid C string.
        let fd = check(unsafe { libc::openat(self.raw(), n.as_ptr(), flags) })?;
        // SAFETY: fd was just opened.
        Ok(Dir { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// A subdirectory: created (0755) if missing; an existing one must be
    /// this thread's user's and writable by no one else.
    pub fn subdir(&self, name: &str) -> std::io::Result<Dir> {
        let n = cstr(name)?;
        // SAFETY: valid C string.
        let made = unsafe { libc::mkdirat(self.raw(), n.as_ptr(), 0o755) } == 0;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: valid C string.
        let fd = check(unsafe { libc::openat(self.raw(), n.as_ptr(), flags) })?;
        // SAFETY: fd was just opened.
        let dir = Dir { fd: unsafe { OwnedFd::from_raw_fd(fd) } };
        if made {
            // SAFETY: valid fd.
            check(unsafe { libc::fchmod(dir.raw(), 0o755) })?;
        }
        // SAFETY: zeroed stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and pointer.
        check(unsafe { libc::fstat(dir.raw(), &mut st) })?;
        if st.st_uid != euid() || st.st_mode & 0o022 != 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "exists, not this user's own"));
        }
        Ok(dir)
    }

    /// `name` holds exactly `bytes`: kept if it already does (a regular file
    /// of this thread's user), else written beside it and renamed into place.
    pub fn put(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        if let Ok(st) = self.stat(name) {
            let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
            if regular
                && st.st_uid == euid()
                && st.st_size as usize == bytes.len()
                && self.read(name, bytes.len() + 1).is_ok_and(|b| b == bytes)
            {
                return Ok(());
            }
        }
        let tmp = format!(".{name}.{:016x}", rand64());
        let mut f = self.create(&tmp, 0o444)?;
        let written = f.write_all(bytes).and_then(|_| f.sync_all());
        drop(f);
        if let Err(e) = written {
            self.remove(&tmp);
            return Err(e);
        }
        let (from, to) = (cstr(&tmp)?, cstr(name)?);
        // SAFETY: valid C strings.
        let rc = unsafe { libc::renameat(self.raw(), from.as_ptr(), self.raw(), to.as_ptr()) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            self.remove(&tmp);
            return Err(e);
        }
        Ok(())
    }
}

/// This thread's effective uid (threads of this agent may differ, see above).
fn euid() -> u32 {
    // SAFETY: no preconditions; the kernel answers for the calling thread.
    unsafe { libc::syscall(libc::SYS_geteuid) as u32 }
}

/// Take `uid` and `gid` (and no supplementary groups) for the calling thread
/// only: raw system calls, not glibc's wrappers, which change every thread.
/// Meant for a thread that ends after its work.
pub fn become_user(uid: u32, gid: u32) -> std::io::Result<()> {
    if uid == 0 && gid == 0 {
        return Ok(());
    }
    let (u, g) = (uid as libc::c_long, gid as libc::c_long);
    // SAFETY: raw credential changes of the calling thread; gid and groups
    // first, while the thread may still change them.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, 0 as libc::c_long, std::ptr::null::<libc::gid_t>()) != 0
            || libc::syscall(libc::SYS_setresgid, g, g, g) != 0
            || libc::syscall(libc::SYS_setresuid, u, u, u) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A random 64-bit value (names that cannot be guessed ahead).
pub fn rand64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: valid buffer of 8 bytes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) };
    if n != 8 {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        return t.as_nanos() as u64 ^ (std::process::id() as u64) << 32;
    }
    u64::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private directory under this process's /tmp, as the JVM's would be.
    fn scratch() -> (std::path::PathBuf, Dir) {
        let name = format!("tokentap-root-test-{}-{:x}", std::process::id(), rand64());
        let path = std::env::temp_dir().join(&name);
        std::fs::create_dir(&path).unwrap();
        let root = Root::open(std::process::id()).unwrap();
        let rel = path.to_str().unwrap().trim_start_matches('/').to_owned();
        (path, Dir { fd: root.resolve(&rel, libc::O_PATH | libc::O_DIRECTORY).unwrap() })
    }

    #[test]
    fn symlinks_resolve_inside_the_root_and_files_are_never_followed() {
        let (path, dir) = scratch();
        // A link to an absolute path: resolved in the root (here ours), and
        // never followed when opening a file by name.
        std::os::unix::fs::symlink("/etc/hostname", path.join("link")).unwrap();
        assert!(dir.read("link", 100).is_err(), "a symlink is not followed");
        assert!(dir.create("link", 0o600).is_err(), "an existing name is not reused");
        dir.put("f", b"abc").unwrap();
        assert_eq!(dir.read("f", 100).unwrap(), b"abc");
        let ino = dir.stat("f").unwrap().st_ino;
        dir.put("f", b"abc").unwrap();
        assert_eq!(dir.stat("f").unwrap().st_ino, ino, "same content: kept, not rewritten");
        dir.put("f", b"abcd").unwrap();
        assert_eq!(dir.read("f", 100).unwrap(), b"abcd");
        assert_eq!(dir.stat("f").unwrap().st_mode & 0o777, 0o444);
        let sub = dir.subdir("d").unwrap();
        sub.put("x", b"1").unwrap();
        // Writable by others: refused.
        std::fs::create_dir(path.join("open")).unwrap();
        std::fs::set_permissions(path.join("open"), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        assert!(dir.subdir("open").is_err());
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn another_users_directory_is_not_used() {
        let (path, dir) = scratch();
        let other = path.join("theirs");
        std::fs::create_dir(&other).unwrap();
        std::os::unix::fs::chown(&other, Some(65534), Some(65534)).unwrap();
        assert!(dir.subdir("theirs").is_err(), "not this user's");
        // As that user (a thread of its own), it is.
        let ok = std::thread::scope(|s| {
            s.spawn(|| {
                become_user(65534, 65534).unwrap();
                assert_eq!(euid(), 65534);
                dir.subdir("theirs").map(|d| d.put("f", b"x").is_ok())
            })
            .join()
            .unwrap()
        });
        assert!(ok.unwrap(), "the user's own directory, written as the user");
        assert_eq!(euid(), 0, "other threads keep their credentials");
        std::fs::remove_dir_all(&path).unwrap();
    }
}
