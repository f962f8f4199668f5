//! Client sockets already open when the agent starts, found in `/proc` and
//! handed to the socket programs as adopted (`SOCK_ADOPTED`).
//!
//! Why: the socket programs watch only the sockets they see `connect`
//! (agent-ebpf's `sockets.rs`). During an upgrade (`--handover-dir`) the old
//! agent hands each plaintext HTTP keep-alive connection to the new one at
//! its next request; without this the new agent would not watch it, and every
//! later call on it would go uncopied until the client reconnects. An adopted
//! socket is copied from its next request's start, or from where the agent
//! before left off when that one handed on its state; one that no agent ever
//! copied (a database, TLS) is given up at its first call.
//!
//! A client socket here: a TCP socket of a process (`/proc/PID/fd/N` links to
//! `socket:[inode]`) that the `tcp`/`tcp6` table of the process's network
//! namespace lists as established or connecting, on a local port nothing in
//! that namespace listens on (an accepted socket shares its listener's).
//!
//! Read once, after the socket programs are attached: a socket connected
//! since is watched from its `connect`, one found here is handed to them by
//! a program of theirs (`adopt_socket`, run by `BPF_PROG_TEST_RUN`), so that
//! user space never updates their maps beside them. A process of another
//! user is listed as that user ([`socket_fds`]); one that cannot be read is
//! counted (`processes_unreadable_at_start`) and skipped.
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use aya::programs::ProgramError;
use aya::Ebpf;

use crate::run_only::RunOnly;

/// At most this many sockets adopted: the programs' socket table holds
/// 65,536, and the ones connected from now on need room too.
pub const MAX_ADOPTED: usize = 16384;

/// `/proc/net/tcp` states: established, SYN sent, listening.
const ESTABLISHED: u8 = 0x01;
const SYN_SENT: u8 = 0x02;
const LISTEN: u8 = 0x0A;

/// What the scan found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Client sockets (tgid, fd), in the order found, at most [`MAX_ADOPTED`].
    pub sockets: Vec<(u32, i32)>,
    /// Processes looked at, and those whose fds could not be listed (refused:
    /// not the ones that exited meanwhile).
    pub processes: usize,
    pub unreadable: usize,
    /// Client sockets beyond [`MAX_ADOPTED`], not adopted.
    pub over_limit: usize,
}

/// One row of a `/proc/net/tcp` table: the socket's inode, state and local port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    inode: u64,
    state: u8,
    port: u16,
}

/// The rows of a `tcp` or `tcp6` table (its header and unreadable lines skipped).
fn rows(table: &str) -> impl Iterator<Item = Row> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = f.get(1)?.rsplit_once(':')?.1;
        Some(Row {
            port: u16::from_str_radix(port, 16).ok()?,
            state: u8::from_str_radix(f.get(3)?, 16).ok()?,
            inode: f.get(9)?.parse().ok()?,
        })
    })
}

/// A namespace's client sockets, by inode: established or connecting, on a
/// port no socket of it listens on.
fn client_inodes(tables: &[String]) -> HashSet<u64> {
    let all: Vec<Row> = tables.iter().flat_map(|t| rows(t)).collect();
    let listening: HashSet<u16> = all.iter().filter(|r| r.state == LISTEN).map(|r| r.port).collect();
    all.iter()
        .filter(|r| matches!(r.state, ESTABLISHED | SYN_SENT) && r.inode != 0 && !listening.contains(&r.port))
        .map(|r| r.inode)
        .collect()
}

/// The inode of a `socket:[N]` link target.
fn socket_inode(target: &str) -> Option<u64> {
    target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The client sockets of every process under `proc_root` but `me`.
pub fn find(proc_root: &Path, me: u32) -> Found {
    // On a thread of its own: `socket_fds` changes the thread's file-system
    // ids, which must never be the caller's.
    std::thread::scope(|s| {
        let scan = std::thread::Builder::new().name("open-sockets".into()).spawn_scoped(s, || scan(proc_root, me));
        match scan {
            Ok(t) => t.join().unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "client sockets open at start: no thread to list them");
                Found::default()
            }
        }
    })
}

/// A process's sockets (fd, inode), listed as its owner where it must be
/// ([`as_owner`]).
fn socket_fds(base: &Path) -> std::io::Result<Vec<(i32, u64)>> {
    let dir = base.join("fd");
    as_owner(&dir, || {
        Ok(std::fs::read_dir(&dir)?
            .flatten()
            .filter_map(|fd| {
                let n = fd.file_name().to_str()?.parse::<i32>().ok()?;
                let target = std::fs::read_link(fd.path()).ok()?;
                Some((n, socket_inode(target.to_str()?)?))
            })
            .collect())
    })
}

/// `read`, done again as the owner of `path` when refused. A process's `fd`
/// directory, its threads' `syscall` files and its `mem` are its user's
/// alone (checked as a file's permissions, which CAP_SYS_PTRACE does not
/// lift): one of another user is read as that user, with the thread's
/// file-system ids (`setfsuid`, CAP_SETUID and CAP_SETGID, which the agent
/// holds for Java attach too), then set back. Only on a thread of the
/// caller's own that nothing else runs on (see [`find`]).
pub(crate) fn as_owner<T>(path: &Path, read: impl Fn() -> std::io::Result<T>) -> std::io::Result<T> {
    match read() {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            // The file's owner, not the process's: a process that is not
            // dumpable has its files owned by root (of its user namespace).
            let owner = std::fs::metadata(path)?;
            // SAFETY: plain syscalls on this thread's credentials; each
            // returns the previous id, restored below.
            let (uid, gid) = unsafe { (libc::setfsuid(owner.uid()), libc::setfsgid(owner.gid())) };
            let again = read();
            unsafe {
                libc::setfsgid(gid as u32);
                libc::setfsuid(uid as u32);
            }
            again
        }
        other => other,
    }
}

fn scan(proc_root: &Path, me: u32) -> Found {
    let mut found = Found::default();
    // Client inodes per network namespace (by the namespace file's inode).
    let mut namespaces: HashMap<u64, HashSet<u64>> = HashMap::new();
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        found.processes += 1;
        let base = entry.path();
        let sockets = match socket_fds(&base) {
            Ok(sockets) => sockets,
            // Exited meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) => {
                found.unreadable += 1;
                continue;
            }
        };
        if sockets.is_empty() {
            continue;
        }
        // A process whose namespace cannot be named reads its own tables.
        let ns = std::fs::metadata(base.join("ns/net")).map(|m| m.ino()).unwrap_or(u64::MAX - pid as u64);
        if let std::collections::hash_map::Entry::Vacant(e) = namespaces.entry(ns) {
            let read = |name: &str| std::fs::read_to_string(base.join("net").join(name)).ok();
            // Not kept when unreadable (the process exited): the namespace's
            // next process reads them.
            let Some(tables) = [read("tcp"), read("tcp6")].into_iter().collect::<Option<Vec<String>>>() else {
                continue;
            };
            e.insert(client_inodes(&tables));
        }
        let clients = &namespaces[&ns];
        for (fd, inode) in sockets {
            if clients.contains(&inode) {
                if found.sockets.len() < MAX_ADOPTED {
                    found.sockets.push((pid, fd));
                } else {
                    found.over_limit += 1;
                }
            }
        }
    }
    found
}

/// What [`adopt`] did: sockets now watched as adopted, and those a
/// `connect` since the programs' attach had given an entry already.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    pub adopted: usize,
    pub already_watched: usize,
}

/// Hand `sockets` to the socket programs as adopted, through their
/// `adopt_socket` program (run, never attached: see agent-ebpf's
/// `adopted.rs`), after they are attached. `now_ns`: `CLOCK_MONOTONIC`, the
/// kernel's `bpf_ktime_get_ns`, which names a socket (its id) as `connect` does.
pub fn adopt(ebpf: &mut Ebpf, sockets: &[(u32, i32)], now_ns: u64) -> Result<Adopted, ProgramError> {
    const ADOPT: &str = "adopt_socket";
    let mut programs = RunOnly::load(ebpf, &[ADOPT])?;
    let mut done = Adopted::default();
    for &(tgid, fd) in sockets {
        match programs.run(ADOPT, &[tgid as u64, fd as u32 as u64, now_ns])? {
            0 => done.adopted += 1,
            _ => done.already_watched += 1,
        }
    }
    Ok(done)
}

/// What [`adopt_open`] did, for the stats.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AtStart {
    /// Client sockets watched from their next request.
    pub sockets: usize,
    /// Processes whose sockets could not be listed.
    pub unreadable: usize,
    /// Reads found blocked on them, handed to the socket programs.
    pub reads: usize,
    /// Writes likewise.
    pub writes: usize,
}

/// Watch the client sockets open now (with `--handover-dir`: the keep-alive
/// connections the agent before this one will hand over), and hand over the
/// reads and writes blocked on them (`blocked_calls`). Best effort: a failure leaves
/// them unwatched, as they were before, with a warning.
pub fn adopt_open(ebpf: &mut Ebpf, me: u32) -> AtStart {
    let t = std::time::Instant::now();
    let proc_root = Path::new("/proc");
    let found = find(proc_root, me);
    let mut at_start = AtStart { unreadable: found.unreadable, ..AtStart::default() };
    let done = match adopt(ebpf, &found.sockets, monotonic_ns()) {
        Ok(done) => done,
        Err(e) => {
            tracing::warn!(error = %e, "client sockets open at start: not watched (their calls after a handover are \
                 not copied)");
            return at_start;
        }
    };
    at_start.sockets = done.adopted;
    let (calls, error) = crate::blocked_calls::hand_over(ebpf, proc_root, &found.sockets);
    if let Some(e) = error {
        tracing::warn!(error = %e, handed_over = calls.reads + calls.writes, "calls blocked at start: not all \
             handed over (the bytes the others return with are not copied)");
    }
    (at_start.reads, at_start.writes) = (calls.reads, calls.writes);
    tracing::info!(
        sockets = done.adopted,
        already_watched = done.already_watched,
        processes = found.processes,
        unreadable = found.unreadable,
        over_limit = found.over_limit,
        blocked_reads = calls.reads,
        blocked_writes = calls.writes,
        blocked_calls_returned = calls.stale,
        blocked_calls_skipped = calls.skipped,
        blocked_calls_refused = calls.refused,
        ms = t.elapsed().as_millis() as u64,
        "client sockets open at start: watched from their next request"
    );
    if found.over_limit > 0 {
        tracing::warn!(
            sockets = found.over_limit,
            limit = MAX_ADOPTED,
            "client sockets open at start beyond the limit: not watched (their calls after a handover are not copied)"
        );
    }
    at_start
}

/// `CLOCK_MONOTONIC` in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows as Linux writes them: a listener on 8080, the server's accepted
    /// socket on it, a client connected to it, one connecting, one closing.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D2F0 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 1003 1 0000000000000000 20 4 30 10 -1
   3: 0A00000F:C350 5DB8D822:0050 02 00000001:00000000 01:00000064 00000000  1000        0 1004 2 0000000000000000 100 0 0 10 -1
   4: 0A00000F:C352 5DB8D822:0050 08 00000000:00000000 00:00000000 00000000  1000        0 1005 1 0000000000000000 20 4 30 10 -1
";
    /// An IPv6 listener on 443 (taking IPv4 too) and a client of it.
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:01BB 0000000000000000FFFF00000100007F:E000 01 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 20 4 30 10 -1
   2: 0000000000000000FFFF00000100007F:E000 0000000000000000FFFF00000100007F:01BB 01 00000000:00000000 00:00000000 00000000     0        0 2003 1 0000000000000000 20 4 30 10 -1
garbage
   3: short
";

    #[test]
    fn clients_are_the_established_or_connecting_sockets_on_ports_nothing_listens_on() {
        let c = client_inodes(&[TCP.into(), TCP6.into()]);
        let mut v: Vec<u64> = c.into_iter().collect();
        v.sort();
        assert_eq!(v, [1003, 1004, 2003]);
    }

    #[test]
    fn a_socket_link_names_its_inode_and_nothing_else_does() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[12345]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("socket:[]"), None);
        assert_eq!(socket_inode("socket:[1"), None);
    }

    /// A `/proc` tree of processes: a client and the server it talks to,
    /// one connecting, one whose fds cannot be listed, one gone.
    #[test]
    fn the_scan_finds_each_process_s_client_sockets_by_fd() {
        let root = std::env::temp_dir().join(format!("tokentap-open-sockets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let proc = |pid: u32, fds: &[(i32, &str)]| {
            let base = root.join(pid.to_string());
            std::fs::create_dir_all(base.join("fd")).unwrap();
            std::fs::create_dir_all(base.join("net")).unwrap();
            std::fs::write(base.join("net/tcp"), TCP).unwrap();
            std::fs::write(base.join("net/tcp6"), TCP6).unwrap();
            for (fd, target) in fds {
                std::os::unix::fs::symlink(target, base.join("fd").join(fd.to_string())).unwrap();
            }
        };
        proc(10, &[(0, "/dev/null"), (5, "socket:[1003]"), (7, "socket:[1005]"), (80, "socket:[2003]")]);
        proc(11, &[(3, "socket:[1001]"), (4, "socket:[1002]"), (6, "pipe:[9]")]);
        proc(12, &[(3, "socket:[1004]")]);
        // 13's fds cannot be listed (as for a refusal); 14 exited meanwhile.
        std::fs::create_dir_all(root.join("13")).unwrap();
        std::fs::write(root.join("13/fd"), b"").unwrap();
        std::fs::create_dir_all(root.join("14")).unwrap();
        std::fs::create_dir_all(root.join("self")).unwrap();
        let found = find(&root, 12);
        let mut sockets = found.sockets.clone();
        sockets.sort();
        assert_eq!(sockets, [(10, 5), (10, 80)]);
        assert_eq!((found.processes, found.unreadable, found.over_limit), (4, 1, 0));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
