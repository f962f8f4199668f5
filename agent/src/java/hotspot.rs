//! HotSpot's dynamic attach, the protocol `jcmd` and `VirtualMachine.attach`
//! speak, done by this agent itself.
//!
//! Facts it rests on (HotSpot's attachListener_linux.cpp, the JDK's
//! VirtualMachineImpl, jattach):
//! - the JVM listens on the Unix socket `<tmp>/.java_pid<pid>`, where `<tmp>`
//!   is HotSpot's `os::get_temp_directory()`, "/tmp" on Linux whatever
//!   `-Djava.io.tmpdir` says, and `<pid>` is the pid in the JVM's own pid
//!   namespace; the socket is created at start-up only with `-Xrs` or
//!   `-XX:+StartAttachListener`, else on demand:
//! - on SIGQUIT, the JVM's signal thread starts the listener if it finds a
//!   file `.attach_pid<pid>` in its working directory or in /tmp, owned by its
//!   effective uid or by root; without that file SIGQUIT prints a thread dump
//!   on the JVM's stdout, and before HotSpot installed its handler SIGQUIT
//!   kills the process. So SIGQUIT is sent only when `/proc/PID/status` shows
//!   it caught (as JDK 24's own client checks), and only with the file in place;
//! - the listener accepts a client whose SO_PEERCRED uid/gid equal the JVM's
//!   effective ones, or uid 0 as the JVM's user namespace sees it (root in a
//!   user-namespaced container is not 0 there): the caller runs all of this
//!   on a thread that took the JVM's uid and gid (see the java module);
//! - request: `1\0load\0instrument\0false\0<jar>=<options>\0`; reply: the
//!   command's result code on the first line, then, since JDK 9, `return code:
//!   N` (Agent_OnAttach's result: 0 when agentmain returned).
//!
//! Before sending anything the agent checks that the socket's listener is
//! the JVM (SO_PEERCRED pid): a socket planted by someone else gets nothing.
//! Before connecting it checks the socket file itself (a socket, owned by the
//! JVM's uid, not a symbolic link: it is opened with `O_PATH|O_NOFOLLOW` and
//! connected through that descriptor), and the connect is non-blocking,
//! polled against a deadline: a process that only looks like a JVM (a file
//! named libjvm.so mapped, SIGQUIT caught, a listener whose queue it keeps
//! full) must not hold the one attach thread, or the agent's shutdown,
//! forever. Every read and write on the stream has a timeout too.
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::root::Dir;

#[derive(Debug, Error)]
pub enum AttachError {
    #[error("cannot create the attach trigger file: {0}")]
    Trigger(std::io::Error),
    #[error("the JVM did not open its attach socket within {0:?}")]
    NoSocket(Duration),
    #[error("cannot connect to the attach socket: {0}")]
    Connect(std::io::Error),
    #[error("the attach socket accepted no connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("the attach socket is not the JVM's: {0}")]
    BadSocket(String),
    #[error("the attach socket is not the JVM's (its listener is pid {0})")]
    WrongPeer(i32),
    #[error("attach socket I/O: {0}")]
    Io(std::io::Error),
    #[error("the JVM refused the agent: {0}")]
    Refused(String),
}

/// The request that loads a Java agent jar with its options.
pub fn load_request(jar: &str, options: &str) -> Vec<u8> {
    let mut r = Vec::new();
    for part in ["1", "load", "instrument", "false", &format!("{jar}={options}")] {
        r.extend_from_slice(part.as_bytes());
        r.push(0);
    }
    r
}

/// The reply to a `load`: Ok when the command and the agent succeeded.
pub fn parse_reply(reply: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(reply);
    let mut lines = text.lines();
    let code = lines.next().map(str::trim).unwrap_or_default();
    if code != "0" {
        let rest: Vec<&str> = lines.take(3).collect();
        return Err(brief(&format!("result {code:?} {}", rest.join(" ")), REPLY_CHARS));
    }
    match lines.next().map(str::trim) {
        // JDK 8 and earlier: the agent's result is the only line.
        None => Ok(()),
        Some(l) => match l.strip_prefix("return code: ").unwrap_or(l).trim().parse::<i32>() {
            Ok(0) => Ok(()),
            Ok(n) => Err(format!("agent returned {n}")),
            Err(_) => Err(brief(&format!("unexpected reply {l:?}"), REPLY_CHARS)),
        },
    }
}

/// How much of a JVM's reply goes into a log line or a coverage reason.
pub const REPLY_CHARS: usize = 200;

/// `text` fit for a log line or a coverage reason: control characters become
/// spaces and at most `max` characters are kept. What a JVM (or a process
/// posing as one) answers is up to 64 KB of anything.
pub fn brief(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out.trim_end().to_owned()
}

pub fn socket_name(nspid: u32) -> String {
    format!(".java_pid{nspid}")
}

fn socket_ready(tmp: &Dir, nspid: u32) -> bool {
    tmp.stat(&socket_name(nspid)).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
}

/// The JVM to attach to.
pub struct Target<'a> {
    pub pid: u32,
    pub nspid: u32,
    /// Its effective uid (as this agent sees it): the owner of its socket.
    pub uid: u32,
    /// Its /tmp, held open.
    pub tmp: &'a Dir,
}

/// Make sure the JVM's attach listener runs: nothing to do when its socket
/// exists, else the trigger file and SIGQUIT (which the caller has checked
/// is caught), then wait for the socket. The trigger file is removed after.
pub fn start_listener(t: &Target, timeout: Duration) -> Result<(), AttachError> {
    if socket_ready(t.tmp, t.nspid) {
        return Ok(());
    }
    let trigger = format!(".attach_pid{}", t.nspid);
    // Created by the JVM's own user (this thread runs as it): HotSpot trusts
    // the file only if its effective uid (or root, as it sees it) owns it.
    let ours = match t.tmp.create(&trigger, 0o600) {
        Ok(_) => true,
        // Someone else's attach in flight (jcmd): its file serves us too.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(AttachError::Trigger(e)),
    };
    let result = signal_and_wait(t, timeout);
    if ours {
        t.tmp.remove(&trigger);
    }
    result
}

fn signal_and_wait(t: &Target, timeout: Duration) -> Result<(), AttachError> {
    let start = Instant::now();
    let mut resent = false;
    // SAFETY: a signal to a pid; the caller checked SIGQUIT is handled there.
    unsafe { libc::kill(t.pid as i32, libc::SIGQUIT) };
    let mut pause = Duration::from_millis(10);
    while start.elapsed() < timeout {
        if socket_ready(t.tmp, t.nspid) {
            return Ok(());
        }
        // As the JDK's client does: one more SIGQUIT halfway, in case the
        // first one arrived while the signal thread was not yet listening.
        if !resent && start.elapsed() > timeout / 2 {
            resent = true;
            // SAFETY: as above.
            unsafe { libc::kill(t.pid as i32, libc::SIGQUIT) };
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    Err(AttachError::NoSocket(timeout))
}

/// Connect to the attach socket, check the listener is the JVM, send
/// `request`, return the reply (bounded), all within `timeout`.
pub fn exchange(t: &Target, request: &[u8], timeout: Duration) -> Result<Vec<u8>, AttachError> {
    let deadline = Instant::now() + timeout;
    let stream = connect(t.tmp, &socket_name(t.nspid), t.uid, timeout.min(CONNECT_WAIT))?;
    let peer = peer_pid(&stream).map_err(AttachError::Connect)?;
    if peer != t.pid as i32 {
        return Err(AttachError::WrongPeer(peer));
    }
    stream.set_write_timeout(Some(timeout)).map_err(AttachError::Io)?;
    (&stream).write_all(request).map_err(AttachError::Io)?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(AttachError::Io(std::io::ErrorKind::TimedOut.into()));
        }
        stream.set_read_timeout(Some(left)).map_err(AttachError::Io)?;
        match (&stream).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                reply.extend_from_slice(&buf[..n]);
                if reply.len() > 64 * 1024 {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(AttachError::Io(e)),
        }
    }
    Ok(reply)
}

/// How long a connect to the attach socket may take (the JVM's listener
/// accepts at once; a queue that stays full is not a JVM at work).
pub const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// Connect to the socket `name` in `tmp`, which must be a socket owned by
/// `uid`, within `timeout`; the stream has read and write timeouts of the
/// time left. Through our descriptor of its /tmp (no path walk through the
/// container) and an `O_PATH|O_NOFOLLOW` descriptor of the socket itself (a
/// symbolic link in its place is never followed, and what was checked is
/// what is connected to).
pub fn connect(tmp: &Dir, name: &str, uid: u32, timeout: Duration) -> Result<UnixStream, AttachError> {
    let deadline = Instant::now() + timeout;
    let st = tmp.stat(name).map_err(AttachError::Connect)?;
    let node = tmp.open_node(name).map_err(AttachError::Connect)?;
    let held = fstat(&node).map_err(AttachError::Connect)?;
    if held.st_mode & libc::S_IFMT != libc::S_IFSOCK || (held.st_dev, held.st_ino) != (st.st_dev, st.st_ino) {
        return Err(AttachError::BadSocket(format!("{name} is not a socket")));
    }
    if held.st_uid != uid {
        return Err(AttachError::BadSocket(format!("{name} belongs to uid {}, the JVM runs as {uid}", held.st_uid)));
    }
    let path = format!("/proc/self/fd/{}", node.as_raw_fd());
    // SAFETY: zeroed sockaddr_un is valid; the path fits (checked).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if path.len() >= addr.sun_path.len() {
        return Err(AttachError::Connect(std::io::ErrorKind::InvalidInput.into()));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(path.bytes()) {
        *d = s as libc::c_char;
    }
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain socket creation; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(AttachError::Connect(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just created and is ours.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    loop {
        // SAFETY: valid fd and address of `len` bytes.
        let rc = unsafe { libc::connect(sock.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) };
        if rc == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            // A Unix socket's full queue answers EAGAIN (EINPROGRESS is for
            // other families, handled alike): try again until the deadline.
            Some(libc::EAGAIN | libc::EINPROGRESS | libc::EALREADY) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(AttachError::ConnectTimeout(timeout));
                }
                std::thread::sleep(left.min(Duration::from_millis(10)));
            }
            Some(libc::EISCONN) => break,
            _ => return Err(AttachError::Connect(e)),
        }
    }
    // Blocking from here on, every call bounded by a timeout.
    // SAFETY: fcntl on our own fd.
    unsafe {
        let fl = libc::fcntl(sock.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(sock.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
    let stream = UnixStream::from(sock);
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    stream.set_read_timeout(Some(left)).map_err(AttachError::Io)?;
    stream.set_write_timeout(Some(left)).map_err(AttachError::Io)?;
    Ok(stream)
}

fn fstat(fd: &OwnedFd) -> std::io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out-parameter; valid fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

fn peer_pid(s: &UnixStream) -> std::io::Result<i32> {
    // SAFETY: zeroed ucred is valid; the length matches.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid fd and out-parameters.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::java::root::{rand64, Root};

    /// A fresh directory under this process's /tmp, held open as a JVM's would be.
    fn scratch() -> (std::path::PathBuf, Dir) {
        let path = std::env::temp_dir().join(format!("tokentap-hotspot-test-{:x}", rand64()));
        std::fs::create_dir(&path).unwrap();
        let dir = Root::open(std::process::id()).unwrap().dir(path.to_str().unwrap().trim_start_matches('/')).unwrap();
        (path, dir)
    }

    fn me() -> u32 {
        // SAFETY: no preconditions.
        unsafe { libc::geteuid() }
    }

    /// A listener with a backlog of 0 whose queue is then filled: what a
    /// process posing as a JVM can do to hold a blocking connect forever.
    fn full_listener(path: &std::path::Path) -> (OwnedFd, Vec<OwnedFd>) {
        // SAFETY: plain socket calls on fds owned below; the address fits.
        unsafe {
            let l = OwnedFd::from_raw_fd(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0));
            let mut addr: libc::sockaddr_un = std::mem::zeroed();
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (d, s) in addr.sun_path.iter_mut().zip(path.to_str().unwrap().bytes()) {
                *d = s as libc::c_char;
            }
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            assert_eq!(libc::bind(l.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len), 0);
            assert_eq!(libc::listen(l.as_raw_fd(), 0), 0);
            let mut queued = Vec::new();
            for _ in 0..16 {
                let fl = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
                let c = OwnedFd::from_raw_fd(libc::socket(libc::AF_UNIX, fl, 0));
                if libc::connect(c.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                    break;
                }
                queued.push(c);
            }
            assert!(!queued.is_empty() && queued.len() < 16, "the queue fills: {}", queued.len());
            (l, queued)
        }
    }

    #[test]
    fn a_listener_that_never_accepts_costs_a_bounded_wait() {
        let (path, dir) = scratch();
        let _held = full_listener(&path.join(".java_pid7"));
        let started = Instant::now();
        let err = connect(&dir, ".java_pid7", me(), Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, AttachError::ConnectTimeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn only_a_socket_of_the_jvms_user_is_connected_to_never_through_a_link() {
        let (path, dir) = scratch();
        let listener = std::os::unix::net::UnixListener::bind(path.join(".java_pid7")).unwrap();
        // Connected through the O_PATH descriptor of the checked socket.
        let s = connect(&dir, ".java_pid7", me(), Duration::from_secs(1)).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(peer_pid(&s).unwrap(), std::process::id() as i32);
        drop(accepted);
        let err = connect(&dir, ".java_pid7", me() + 1, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, AttachError::BadSocket(ref m) if m.contains("belongs to uid")), "{err}");
        std::os::unix::fs::symlink(path.join(".java_pid7"), path.join(".java_pid8")).unwrap();
        let err = connect(&dir, ".java_pid8", me(), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, AttachError::BadSocket(ref m) if m.contains("not a socket")), "{err}");
        std::fs::write(path.join(".java_pid9"), b"").unwrap();
        assert!(matches!(connect(&dir, ".java_pid9", me(), Duration::from_secs(1)), Err(AttachError::BadSocket(_))));
        assert!(matches!(connect(&dir, ".java_pid10", me(), Duration::from_secs(1)), Err(AttachError::Connect(_))));
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn replies_are_cut_short_and_lose_their_control_characters() {
        let long = format!("-1\n{}\x1b[31m\r\nmore", "x".repeat(70_000));
        let err = parse_reply(long.as_bytes()).unwrap_err();
        assert!(err.chars().count() <= REPLY_CHARS + 1, "{}", err.len());
        assert!(!err.chars().any(char::is_control), "{err:?}");
        assert_eq!(brief("a\tb\x07c", 200), "a b c");
        assert_eq!(brief("abcdef", 3), "abc…");
    }

    #[test]
    fn the_load_request_is_five_nul_terminated_strings() {
        let r = load_request("/tmp/d/a.jar", "dir=/tmp/d;status=s");
        assert_eq!(r, b"1\0load\0instrument\0false\0/tmp/d/a.jar=dir=/tmp/d;status=s\0");
    }

    #[test]
    fn replies_of_every_jdk_shape() {
        assert_eq!(parse_reply(b"0\nreturn code: 0\n"), Ok(()));
        assert_eq!(parse_reply(b"0\n0\n"), Ok(()), "JDK 8");
        assert_eq!(parse_reply(b"0\n"), Ok(()));
        assert_eq!(parse_reply(b"0\nreturn code: -1\n"), Err("agent returned -1".into()));
        assert!(parse_reply(b"101\n").unwrap_err().contains("101"), "protocol version refused");
        assert!(parse_reply(b"-1\ncom.sun.tools.attach.AgentLoadException: x\n").unwrap_err().contains("AgentLoad"));
        assert!(parse_reply(b"").is_err());
        assert!(parse_reply(b"0\nwhat\n").is_err());
        assert!(parse_reply(&[0xff, 0xfe, b'\n']).is_err());
    }
}
