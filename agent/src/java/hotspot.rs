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
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
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
        return Err(format!("result {code:?} {}", rest.join(" ")).trim_end().to_owned());
    }
    match lines.next().map(str::trim) {
        // JDK 8 and earlier: the agent's result is the only line.
        None => Ok(()),
        Some(l) => match l.strip_prefix("return code: ").unwrap_or(l).trim().parse::<i32>() {
            Ok(0) => Ok(()),
            Ok(n) => Err(format!("agent returned {n}")),
            Err(_) => Err(format!("unexpected reply {l:?}")),
        },
    }
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
    // Through our descriptor of its /tmp: no path walk through the container.
    let path = format!("/proc/self/fd/{}/{}", t.tmp.raw(), socket_name(t.nspid));
    let stream = UnixStream::connect(path).map_err(AttachError::Connect)?;
    let peer = peer_pid(&stream).map_err(AttachError::Connect)?;
    if peer != t.pid as i32 {
        return Err(AttachError::WrongPeer(peer));
    }
    let deadline = Instant::now() + timeout;
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
