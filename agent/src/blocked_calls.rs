//! Reads and writes blocked on a client socket when the agent starts, found
//! in `/proc` and handed to the socket programs, so that the bytes they
//! return with are copied.
//!
//! Why: the socket programs save a call's arguments at `sys_enter` and copy
//! its bytes at `sys_exit`. A client with no timeout (Python's `requests` or
//! the `openai` SDK with `timeout=None`, on a blocking socket) waits for its
//! answer inside one `recvfrom`, and writes a request body larger than the
//! sockets' buffers inside one `sendto` until the server has read most of
//! it; in an upgrade such a call began under the old agent, before the new
//! one's programs were attached, and returns after the old agent has left (a
//! long generation, a slow upload). The new agent's `sys_exit` runs for it (a
//! tracepoint runs at every syscall's exit) but found no arguments: the
//! answer, or the rest of the request, was lost. The thread's blocked
//! syscall and its arguments are in `/proc/PID/task/TID/syscall`; the
//! arguments go to the programs' table through a program of theirs
//! (`adopt_read`, agent-ebpf's `adopted.rs`, for writes too), as the sockets
//! found open do (`open_sockets`).
//!
//! What it falls back to: only plaintext sockets' calls, the ones whose bytes
//! the socket programs copy. A TLS read or write blocked inside the library
//! (`SSL_read`, `SSL_write`) has its plaintext copied by a return probe
//! instead, which runs for it when it is a `uprobe_multi` one
//! (`return_probes`), with the call's arguments in the map the agents share.
//! A call that returns between the look and the hand-over leaves an entry a
//! later syscall of the thread could take: its exit takes it only for the
//! same syscall (and, on the raw tracepoint, the same fd), and each call
//! handed over is looked at again at once, its entry removed when the thread
//! is no longer in it (`stale`).
use std::cell::Cell;
use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use aya::programs::ProgramError;
use aya::Ebpf;
use tokentap_agent_common::{found_read, SockCall};

use crate::open_sockets::as_owner;
use crate::run_only::RunOnly;

const SYS_READ: u32 = 0;
const SYS_WRITE: u32 = 1;
const SYS_READV: u32 = 19;
const SYS_WRITEV: u32 = 20;
const SYS_SENDTO: u32 = 44;
const SYS_RECVFROM: u32 = 45;
const SYS_SENDMSG: u32 = 46;
const SYS_RECVMSG: u32 = 47;

/// A thread blocked in a read or a write of a client socket, as the socket
/// programs save a call: the buffer and its length, or the iovec array and
/// its count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockedCall {
    pub pid_tgid: u64,
    /// The syscall's number, as `/proc` gives it.
    pub nr: u32,
    pub fd: i32,
    /// The syscall's own second and third arguments (a `recvmsg`'s header
    /// and flags), to tell it is still the same call.
    raw: [u64; 2],
    pub buf: u64,
    pub len: u64,
    /// [`found_read`]: the call kind, flagged, with `nr`.
    pub call: u32,
}

/// A `syscall` file: `NR ARG1 .. ARG6 SP PC`, the arguments in hex; a
/// thread not in a syscall says `running` or `-1 SP PC`. The number and the
/// first three arguments.
fn parse(text: &str) -> Option<(u32, [u64; 3])> {
    let mut f = text.split_whitespace();
    let nr: u32 = f.next()?.parse().ok()?;
    let mut arg = || u64::from_str_radix(f.next()?.strip_prefix("0x")?, 16).ok();
    Some((nr, [arg()?, arg()?, arg()?]))
}

/// The read or write a thread is blocked in, if it is one of `fds`, from
/// its `syscall` file's text. A `recvmsg`'s or `sendmsg`'s iovec array and
/// count are in its header, read through `header` (at the header's address
/// plus 16).
fn blocked_call(
    pid_tgid: u64,
    text: &str,
    fds: &HashSet<i32>,
    header: impl FnOnce(u64) -> Option<[u64; 2]>,
) -> Option<BlockedCall> {
    let (nr, [fd, a1, a2]) = parse(text)?;
    let fd = i32::try_from(fd).ok().filter(|fd| fds.contains(fd))?;
    let (buf, len, call) = match nr {
        SYS_READ | SYS_RECVFROM => (a1, a2, SockCall::Read),
        SYS_WRITE | SYS_SENDTO => (a1, a2, SockCall::Write),
        SYS_READV => (a1, a2, SockCall::ReadV),
        SYS_WRITEV => (a1, a2, SockCall::WriteV),
        // struct msghdr: msg_iov at +16, msg_iovlen at +24.
        SYS_RECVMSG | SYS_SENDMSG => {
            let [iov, count] = header(a1.checked_add(16)?)?;
            (iov, count, if nr == SYS_SENDMSG { SockCall::WriteV } else { SockCall::ReadV })
        }
        _ => return None,
    };
    Some(BlockedCall { pid_tgid, nr, fd, raw: [a1, a2], buf, len, call: found_read(call, nr) })
}

impl BlockedCall {
    fn writes(&self) -> bool {
        let (_, call) = tokentap_agent_common::found_nr(self.call);
        call == SockCall::Write as u32 || call == SockCall::WriteV as u32
    }
}

/// The reads and writes of `pid`'s threads blocked on one of `fds` (its client
/// sockets), its `/proc` directory at `base`. Run where `open_sockets` scans
/// (a thread whose file-system ids it may change: see `as_owner`). Threads
/// whose `syscall` file is refused (Yama's `ptrace_scope` 3, an LSM) are
/// added to `refused`.
/// Lazy: each thread is looked at just before its call is handed over.
fn find<'a>(
    base: PathBuf,
    pid: u32,
    fds: &'a HashSet<i32>,
    refused: &'a Cell<usize>,
) -> impl Iterator<Item = BlockedCall> + 'a {
    let tasks = std::fs::read_dir(base.join("task")).into_iter().flatten();
    let mem = base.join("mem");
    let header = move |at: u64| -> Option<[u64; 2]> {
        let b = as_owner(&mem, || {
            let mut b = [0u8; 16];
            std::fs::File::open(&mem)?.read_exact_at(&mut b, at)?;
            Ok(b)
        })
        .ok()?;
        let word = |i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Some([word(0), word(8)])
    };
    tasks.flatten().filter_map(move |t| {
        let tid: u32 = t.file_name().to_str()?.parse().ok()?;
        let path = t.path().join("syscall");
        let text = match as_owner(&path, || std::fs::read_to_string(&path)) {
            Ok(text) => text,
            Err(e) => {
                // Not one that exited meanwhile.
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    refused.set(refused.get() + 1);
                }
                return None;
            }
        };
        blocked_call(u64::from(pid) << 32 | u64::from(tid), &text, fds, &header)
    })
}

/// Where a thread is now, against a call found in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Now {
    /// In the same syscall with the same arguments (a new call on the same
    /// buffer looks the same: its own `sys_enter` wrote over the entry then).
    InIt,
    /// Elsewhere: the call returned (or the thread is gone).
    Elsewhere,
    /// `running`: on a CPU, maybe on its way out of the call, its exit not
    /// yet run.
    Running,
}

fn now(proc_root: &Path, r: &BlockedCall) -> Now {
    let (tgid, tid) = (r.pid_tgid >> 32, r.pid_tgid as u32);
    let path = proc_root.join(format!("{tgid}/task/{tid}/syscall"));
    let Ok(text) = as_owner(&path, || std::fs::read_to_string(&path)) else {
        return Now::Elsewhere;
    };
    if text.trim() == "running" {
        return Now::Running;
    }
    match parse(&text) {
        Some((nr, [fd, a1, a2])) if nr == r.nr && fd == r.fd as u64 && [a1, a2] == r.raw => Now::InIt,
        _ => Now::Elsewhere,
    }
}

/// Is the thread still in the call found ([`find`])? A thread seen running
/// is looked at again a few times, a millisecond apart (a wakeup, or the
/// call returning, whose exit takes the entry itself): one still running
/// then has left the call long since. Each wait takes one of `patience`'s
/// (shared by all the calls: the agent's start waits on them); with none
/// left, running is taken as gone.
fn still_blocked(proc_root: &Path, r: &BlockedCall, patience: &Cell<u32>) -> bool {
    for _ in 0..5 {
        match now(proc_root, r) {
            Now::InIt => return true,
            Now::Elsewhere => return false,
            Now::Running if patience.get() == 0 => return false,
            Now::Running => {
                patience.set(patience.get() - 1);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
    false
}

/// Waits of a millisecond [`still_blocked`] may take in all.
const PATIENCE: u32 = 200;

/// Calls handed over at most: the programs' table of calls in flight holds
/// 16,384 for the whole host, and the calls made from now on need room.
const MAX_CALLS: usize = 4096;

/// What [`hand_over`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Handed {
    /// Reads whose arguments the programs now hold (those on plaintext HTTP
    /// connections have their answer copied; TLS ones or a database's are
    /// given up at that exit, as at any first call).
    pub reads: usize,
    /// Writes likewise (a plaintext HTTP request's rest copied).
    pub writes: usize,
    /// Calls that returned before they were handed over (their entry removed).
    pub stale: usize,
    /// Threads with a call of their own saved since the attach, or a full
    /// table, or calls past [`MAX_CALLS`].
    pub skipped: usize,
    /// Threads whose blocked syscall could not be read (refused).
    pub refused: usize,
}

/// The programs [`hand_over`] runs (agent-ebpf's `adopted.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// `adopt_read` (a write's too): 0 when the call's entry was written.
    Adopt,
    /// `drop_found_read`: 1 when it removed the call's entry.
    Drop,
}

impl Step {
    fn program(self) -> &'static str {
        match self {
            Step::Adopt => "adopt_read",
            Step::Drop => "drop_found_read",
        }
    }
}

/// Hand the reads and writes blocked on `sockets` (found open at start, and
/// adopted already: a call begun since then has its arguments saved by
/// `sys_enter` and keeps them) to the socket programs (`adopt_read`), each
/// looked at again at once and its entry removed if it no longer is blocked
/// (`drop_found_read`). On a thread of its own, as `as_owner` needs. What
/// was done, and the error that stopped it, if any.
pub fn hand_over(ebpf: &mut Ebpf, proc_root: &Path, sockets: &[(u32, i32)]) -> (Handed, Option<ProgramError>) {
    let mut by_process: std::collections::BTreeMap<u32, HashSet<i32>> = Default::default();
    for &(pid, fd) in sockets {
        by_process.entry(pid).or_default().insert(fd);
    }
    let mut done = Handed::default();
    if by_process.is_empty() {
        return (done, None);
    }
    let mut work = || -> Result<(), ProgramError> {
        let mut programs = RunOnly::load(ebpf, &[Step::Adopt.program(), Step::Drop.program()])?;
        let mut run = |step: Step, r: &BlockedCall| {
            programs.run(step.program(), &[r.pid_tgid, r.buf, r.len, r.fd as u32 as u64, u64::from(r.call)])
        };
        // Each process's threads looked at just before their calls are handed over.
        let refused = Cell::new(0);
        let calls = by_process.iter().flat_map(|(&pid, fds)| find(proc_root.join(pid.to_string()), pid, fds, &refused));
        let patience = Cell::new(PATIENCE);
        let handed = hand_over_with(calls, &mut run, |r| still_blocked(proc_root, r, &patience), &mut done);
        done.refused = refused.get();
        handed
    };
    let outcome = std::thread::scope(|s| {
        std::thread::Builder::new().name("blocked-calls".into()).spawn_scoped(s, &mut work).map(|t| t.join())
    });
    let error = match outcome {
        Ok(Ok(result)) => result.err(),
        Ok(Err(_)) => {
            tracing::warn!("calls blocked at start: the thread handing them over panicked");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "calls blocked at start: no thread to hand them over");
            None
        }
    };
    (done, error)
}

/// [`hand_over`] with its programs run by `run` and whether a call handed
/// over is still blocked told by `blocked`, counted in `done`.
fn hand_over_with<E>(
    calls: impl Iterator<Item = BlockedCall>,
    mut run: impl FnMut(Step, &BlockedCall) -> Result<u32, E>,
    blocked: impl Fn(&BlockedCall) -> bool,
    done: &mut Handed,
) -> Result<(), E> {
    for r in calls {
        if done.reads + done.writes >= MAX_CALLS || run(Step::Adopt, &r)? != 0 {
            done.skipped += 1;
            continue;
        }
        // Returned since it was looked at: its entry goes, unless its exit
        // has taken it already (its answer copied: it counts as handed over).
        if !blocked(&r) && run(Step::Drop, &r)? == 1 {
            done.stale += 1;
        } else {
            *(if r.writes() { &mut done.writes } else { &mut done.reads }) += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FDS: [i32; 2] = [5, 9];

    fn found(text: &str) -> Option<BlockedCall> {
        blocked_call(7 << 32 | 8, text, &HashSet::from(FDS), |at| (at == 0x7000 + 16).then_some([0xa0, 3]))
    }

    #[test]
    fn a_thread_blocked_in_a_read_of_a_watched_socket_is_found_with_the_call_s_arguments() {
        let r = found("45 0x5 0x7f00 0x10000 0x0 0x0 0x0 0x7ffd 0x7f12\n").expect("a recvfrom on fd 5");
        assert_eq!((r.pid_tgid, r.nr, r.fd, r.buf, r.len), (7 << 32 | 8, 45, 5, 0x7f00, 0x10000));
        assert_eq!(tokentap_agent_common::found_nr(r.call), (45, SockCall::Read as u32));
        let r = found("0 0x9 0x10 0x20 0x0 0x0 0x0 0x1 0x2").expect("a read on fd 9");
        assert_eq!((r.buf, r.len, r.call & 0xffff), (0x10, 0x20, SockCall::Read as u32));
        let r = found("19 0x5 0x10 0x2 0x0 0x0 0x0 0x1 0x2").expect("a readv");
        assert_eq!((r.buf, r.len, r.call & 0xffff), (0x10, 2, SockCall::ReadV as u32));
        // recvmsg: the iovecs from its header.
        let r = found("47 0x5 0x7000 0x0 0x0 0x0 0x0 0x1 0x2").expect("a recvmsg");
        assert_eq!((r.buf, r.len, r.call & 0xffff, r.raw), (0xa0, 3, SockCall::ReadV as u32, [0x7000, 0]));
    }

    #[test]
    fn a_thread_blocked_in_a_write_of_a_watched_socket_is_found_as_a_write() {
        let r = found("44 0x5 0x7f00 0x800000 0x0 0x0 0x0 0x7ffd 0x7f12").expect("a sendto on fd 5");
        assert_eq!((r.buf, r.len, r.writes()), (0x7f00, 0x800000, true));
        assert_eq!(tokentap_agent_common::found_nr(r.call), (44, SockCall::Write as u32));
        let r = found("1 0x9 0x10 0x20 0x0 0x0 0x0 0x1 0x2").expect("a write on fd 9");
        assert_eq!((r.call & 0xffff, r.writes()), (SockCall::Write as u32, true));
        let r = found("20 0x5 0x10 0x2 0x0 0x0 0x0 0x1 0x2").expect("a writev");
        assert_eq!((r.buf, r.len, r.call & 0xffff), (0x10, 2, SockCall::WriteV as u32));
        let r = found("46 0x5 0x7000 0x0 0x0 0x0 0x0 0x1 0x2").expect("a sendmsg");
        assert_eq!((r.buf, r.len, r.call & 0xffff, r.writes()), (0xa0, 3, SockCall::WriteV as u32, true));
        assert!(!found("47 0x5 0x7000 0x0 0x0 0x0 0x0 0x1 0x2").unwrap().writes(), "a recvmsg reads");
    }

    #[test]
    fn anything_else_is_not_a_blocked_call() {
        for text in [
            "running",
            "-1 0x7ffd 0x7f12",
            "",
            // Another fd, a poll, a close, a connect.
            "45 0x6 0x7f00 0x10000 0x0 0x0 0x0 0x7ffd 0x7f12",
            "7 0x5 0x1 0x0 0x0 0x0 0x0 0x7ffd 0x7f12",
            "3 0x5 0x0 0x0 0x0 0x0 0x0 0x7ffd 0x7f12",
            "42 0x5 0x7f00 0x10 0x0 0x0 0x0 0x7ffd 0x7f12",
            // Truncated, malformed, an fd out of range, a header unreadable.
            "45 0x5",
            "45 5 0x7f00 0x10",
            "x 0x5 0x7f00 0x10",
            "45 0x100000005 0x7f00 0x10",
            "47 0x5 0x8000 0x0 0x0 0x0 0x0 0x1 0x2",
            "47 0x5 0xfffffffffffffff8 0x0 0x0 0x0 0x0 0x1 0x2",
        ] {
            assert_eq!(found(text), None, "{text:?}");
        }
    }

    /// The programs' table as a map: a read that returned before it was
    /// handed over loses its entry; one that returned after had it taken by
    /// its exit; a thread with a call of its own keeps it.
    #[test]
    fn reads_no_longer_blocked_once_handed_over_have_their_entries_removed_unless_taken() {
        let read = |tid: u64| {
            let r = found(&format!("45 0x5 0x7f00 {:#x} 0 0 0 1 2", 0x100 * tid)).unwrap();
            BlockedCall { pid_tgid: 7 << 32 | tid, ..r }
        };
        let [blocked, returned_before, returned_after, own_call] = [1, 2, 3, 4].map(read);
        let table = std::cell::RefCell::new(std::collections::HashMap::from([(own_call.pid_tgid, 0u64)]));
        let run = |step: Step, r: &BlockedCall| -> Result<u32, ()> {
            let mut t = table.borrow_mut();
            Ok(match step {
                Step::Adopt if t.contains_key(&r.pid_tgid) => 1,
                Step::Adopt => {
                    t.insert(r.pid_tgid, r.len);
                    0
                }
                Step::Drop => u32::from(t.get(&r.pid_tgid) == Some(&r.len) && t.remove(&r.pid_tgid).is_some()),
            })
        };
        let still = |r: &BlockedCall| {
            if *r == returned_after {
                // Its exit took its entry.
                table.borrow_mut().remove(&r.pid_tgid);
            }
            *r == blocked
        };
        let mut done = Handed::default();
        let reads = [blocked, returned_before, returned_after, own_call].into_iter();
        hand_over_with(reads, run, still, &mut done).unwrap();
        assert_eq!(done, Handed { reads: 2, writes: 0, stale: 1, skipped: 1, refused: 0 });
        let t = table.borrow();
        let mut left: Vec<u64> = t.keys().copied().collect();
        left.sort();
        assert_eq!(left, [blocked.pid_tgid, own_call.pid_tgid]);
        assert_eq!(t[&own_call.pid_tgid], 0, "the thread's own call kept");
    }

    #[test]
    fn past_the_limit_reads_are_not_handed_over_and_an_error_stops_with_the_count_so_far() {
        let read = found("45 0x5 0x7f00 0x10 0 0 0 1 2").unwrap();
        let mut done = Handed::default();
        let ok = |_: Step, _: &BlockedCall| -> Result<u32, ()> { Ok(0) };
        hand_over_with(std::iter::repeat_n(read, MAX_CALLS + 3), ok, |_| true, &mut done).unwrap();
        assert_eq!((done.reads, done.skipped), (MAX_CALLS, 3));
        let mut done = Handed::default();
        let mut runs = 0;
        let fails_third = |_: Step, _: &BlockedCall| {
            runs += 1;
            if runs == 3 {
                Err("test run failed")
            } else {
                Ok(0)
            }
        };
        let e = hand_over_with(std::iter::repeat_n(read, 5), fails_third, |_| true, &mut done);
        assert_eq!((e, done.reads), (Err("test run failed"), 2));
    }

    /// A `/proc` tree: a process with a thread in a read of a client socket,
    /// one in a read of another fd, one running.
    #[test]
    fn find_reads_each_thread_s_syscall_file() {
        let root = std::env::temp_dir().join(format!("tokentap-blocked-calls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (tid, text) in
            [(40, "45 0x5 0x7f00 0x400 0x0 0x0 0x0 0x1 0x2"), (41, "0 0x3 0x1 0x2 0 0 0 1 2"), (42, "running")]
        {
            let dir = root.join(format!("40/task/{tid}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("syscall"), text).unwrap();
        }
        let refused = Cell::new(0);
        let fds = HashSet::from(FDS);
        let reads: Vec<BlockedCall> = find(root.join("40"), 40, &fds, &refused).collect();
        assert_eq!(refused.get(), 0);
        assert_eq!(reads.len(), 1, "{reads:?}");
        assert_eq!((reads[0].pid_tgid, reads[0].fd, reads[0].len), (40 << 32 | 40, 5, 0x400));
        let patience = Cell::new(3);
        assert_eq!(now(&root, &reads[0]), Now::InIt);
        assert!(still_blocked(&root, &reads[0], &patience));
        std::fs::write(root.join("40/task/40/syscall"), "45 0x5 0x7f00 0x800 0x0 0x0 0x0 0x1 0x2").unwrap();
        assert_eq!(now(&root, &reads[0]), Now::Elsewhere, "another read: the one found returned");
        std::fs::write(root.join("40/task/40/syscall"), "running\n").unwrap();
        assert_eq!(now(&root, &reads[0]), Now::Running);
        assert!(!still_blocked(&root, &reads[0], &patience), "running at every look: it left the read");
        assert_eq!(patience.get(), 0, "three waits taken, then no more");
        assert!(!still_blocked(&root, &reads[0], &patience), "no patience left: running is gone at once");
        std::fs::remove_dir_all(root.join("40/task/40")).unwrap();
        assert_eq!(now(&root, &reads[0]), Now::Elsewhere, "the thread is gone");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
