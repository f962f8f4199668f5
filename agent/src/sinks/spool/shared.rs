//! A spool directory two agents share for a while: during an upgrade the new
//! agent starts beside the old one (`--handover-dir`), both on the node's
//! spool directory.
//!
//! Why a lock and an adoption, not a directory each: what the old agent
//! leaves unsent must still be sent by the next one, and a directory each
//! would need someone to find and empty the old ones. So one agent at a time
//! owns the directory (`flock` on `.lock`, which the kernel releases when the
//! process ends, however it ends). The owner indexes what earlier runs left,
//! as before. An agent that finds the directory owned indexes only its own
//! batches, remembering their names, and tries the lock again now and then;
//! once the old agent has exited it adopts the batches left behind (any name
//! it did not write). No batch is sent by both, and none is stranded.
use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a waiting agent tries the lock again.
const RETRY: Duration = Duration::from_secs(1);

pub(super) struct DirLock {
    file: File,
    held: Mutex<Held>,
}

enum Held {
    Owner,
    /// Another process owns the directory: the names this one wrote since.
    Waiting {
        own: HashSet<Box<str>>,
        next_try: Instant,
    },
}

fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: a valid descriptor; flock only reads its arguments.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        return Ok(false);
    }
    Err(e)
}

impl DirLock {
    /// Open `dir`'s lock and take it if it is free.
    pub(super) fn open(dir: &Path) -> io::Result<Self> {
        let file = File::options().create(true).truncate(false).write(true).open(dir.join(".lock"))?;
        let held = if try_lock(&file)? {
            Held::Owner
        } else {
            Held::Waiting { own: HashSet::new(), next_try: Instant::now() }
        };
        Ok(Self { file, held: Mutex::new(held) })
    }

    pub(super) fn owned(&self) -> bool {
        matches!(*self.held.lock().unwrap_or_else(|e| e.into_inner()), Held::Owner)
    }

    /// Put batch `name` in place with `place`, remembered as this process's
    /// while another owns the directory (an adoption in between would take it twice).
    pub(super) fn place(&self, name: &str, place: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        place()?;
        if let Held::Waiting { own, .. } = &mut *held {
            own.insert(name.into());
        }
        Ok(())
    }

    /// Once the other owner has let go: run `adopt` with the names this
    /// process wrote (the rest of the directory is the other's leftovers),
    /// with no batch placed meanwhile. At most once; false when not (yet).
    pub(super) fn adopt(&self, adopt: impl FnOnce(&HashSet<Box<str>>)) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let Held::Waiting { own, next_try } = &mut *held else { return false };
        if Instant::now() < *next_try {
            return false;
        }
        *next_try = Instant::now() + RETRY;
        match try_lock(&self.file) {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                tracing::debug!(error = %e, "spool lock");
                return false;
            }
        }
        adopt(own);
        *held = Held::Owner;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_process_waits_remembers_its_names_and_adopts_once_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("tt-spool-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Two open file descriptions conflict as two processes would.
        let first = DirLock::open(&dir).unwrap();
        assert!(first.owned());
        let second = DirLock::open(&dir).unwrap();
        assert!(!second.owned());
        second.place("mine.zst", || Ok(())).unwrap();
        assert!(second.place("failed.zst", || Err(io::Error::other("disk full"))).is_err());
        assert!(!second.adopt(|_| panic!("the first still owns it")));
        drop(first);
        // The next try waits for its time, then adopts.
        let mut seen = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !second.adopt(|own| seen = Some(own.clone())) {
            assert!(Instant::now() < deadline, "not adopted");
            std::thread::sleep(Duration::from_millis(50));
        }
        let own = seen.unwrap();
        assert!(own.contains("mine.zst") && !own.contains("failed.zst"), "{own:?}");
        assert!(second.owned());
        assert!(!second.adopt(|_| panic!("adopted twice")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
