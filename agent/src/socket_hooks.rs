//! Where plaintext socket capture hooks the syscalls (agent-ebpf's
//! `sockets.rs` holds what the programs do).
//!
//! Why these hooks, by default: the raw `sys_enter`/`sys_exit` tracepoints
//! need nothing but the kernel, and they run two programs on every syscall of
//! the host: ~45 ns added to each (docs/performance.md).
//!
//! `--syscall-hooks tracepoints` moves that cost: the syscalls' own
//! tracepoints (`syscalls/sys_enter_read`, `sys_exit_read`, ... for the ten
//! calls the programs look at) run a program on those calls alone, so every
//! other syscall pays the kernel's test of a bitmap, ~10 ns; but the kernel's
//! path to them (a perf record of the arguments) costs the calls looked at
//! 20-30 ns more than the raw ones. A host whose busy processes make other
//! calls (databases' `pread64`/`fsync`, `futex`, `epoll_wait`) pays less; one
//! whose processes read and write sockets and files pays more. Their ids are
//! read from tracefs, which is mounted at `/sys/kernel/tracing` when no
//! tracefs is found (most hosts mount it at boot; a container sees its own
//! mounts), and unmounted again once they are attached.
//!
//! What they fall back to: when anything stops the syscalls' tracepoints (no
//! tracefs and no right to mount one, a kernel without
//! `CONFIG_FTRACE_SYSCALLS`), the raw tracepoints take their place, with a
//! warning naming the cause and `socket_hooks_every_syscall` = 1 in the
//! stats and on /metrics. The same code runs behind both; what is captured is
//! the same.
use std::path::Path;

use aya::programs::{RawTracePoint, TracePoint};
use aya::Ebpf;

use crate::probes::ProbeError;

/// `--syscall-hooks`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyscallHooks {
    /// The raw `sys_enter`/`sys_exit` tracepoints: a program on every syscall of the host.
    #[default]
    Raw,
    /// The syscalls' own tracepoints: a program on socket and file calls alone, each a little dearer.
    Tracepoints,
}

/// The syscalls the programs look at.
pub const SYSCALLS: &[&str] =
    &["read", "write", "readv", "writev", "sendto", "recvfrom", "sendmsg", "recvmsg", "connect", "close"];

const TRACEFS: &str = "/sys/kernel/tracing";
const TRACEFS_UNDER_DEBUGFS: &str = "/sys/kernel/debug/tracing";

/// The programs behind the syscalls' tracepoints, exits first: a call that
/// enters before its exit program is attached would leave its entry in
/// flight for the thread's next exit to take.
const TRACEPOINT_PROGRAMS: [&str; 3] = ["sock_exit", "sock_close", "sock_enter"];

/// The tracepoints (in `syscalls/`) program `name` is attached to: the kernel
/// refuses a program that may read past the end of a tracepoint's record, so
/// `close`, whose record holds one argument, has a program of its own, and it
/// leaves no call in flight for an exit program.
fn tracepoints(name: &str) -> Vec<String> {
    match name {
        "sock_enter" => SYSCALLS.iter().filter(|&&c| c != "close").map(|c| format!("sys_enter_{c}")).collect(),
        "sock_close" => vec!["sys_enter_close".into()],
        _ => SYSCALLS.iter().filter(|&&c| c != "close").map(|c| format!("sys_exit_{c}")).collect(),
    }
}

/// Load and attach the socket programs as `want` says; what they run on.
pub fn attach(ebpf: &mut Ebpf, want: SyscallHooks) -> Result<SyscallHooks, ProbeError> {
    if want == SyscallHooks::Tracepoints {
        match attach_tracepoints(ebpf) {
            Ok(()) => return Ok(SyscallHooks::Tracepoints),
            Err(e) => {
                tracing::warn!(
                    error = %chain(&e),
                    "socket capture: the syscalls' tracepoints could not be attached; the raw sys_enter/sys_exit \
                     tracepoints are used instead, which run a program on every syscall of the host"
                );
                for name in TRACEPOINT_PROGRAMS {
                    if let Some(aya::programs::Program::TracePoint(p)) = ebpf.program_mut(name) {
                        let _ = p.unload();
                    }
                }
            }
        }
    }
    // Exits first, as above.
    for name in ["sys_exit", "sys_enter"] {
        let p: &mut RawTracePoint = program(ebpf, name)?;
        p.load().map_err(|source| ProbeError::Program { name, source })?;
        crate::probes::log_verified(name, || p.info().ok());
        p.attach(name).map_err(|source| ProbeError::Program { name, source })?;
    }
    Ok(SyscallHooks::Raw)
}

/// An error and its causes ("bpf_link_create failed: Permission denied"),
/// each once: an error's text may end with its source's already.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.ends_with(&text) {
            s = format!("{s}: {text}");
        }
        cause = c.source();
    }
    s
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))?
        .try_into()
        .map_err(|source| ProbeError::Program { name, source })
}

fn attach_tracepoints(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    let mounted = ensure_tracefs().map_err(ProbeError::Tracefs)?;
    let attached = attach_each(ebpf);
    // The ids are read: a tracefs this agent mounted goes, so that none is
    // left behind on the host (an attached tracepoint does not need it).
    if mounted {
        unmount_tracefs(Path::new(TRACEFS));
    }
    attached
}

fn attach_each(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    for name in TRACEPOINT_PROGRAMS {
        let p: &mut TracePoint = program(ebpf, name)?;
        p.load().map_err(|source| ProbeError::Program { name, source })?;
        crate::probes::log_verified(name, || p.info().ok());
        for tp in tracepoints(name) {
            p.attach("syscalls", &tp).map_err(|source| ProbeError::Program { name, source })?;
        }
    }
    Ok(())
}

/// A tracefs where aya looks for one (`/sys/kernel/tracing`, or the one
/// under debugfs), mounting it at the first when there is none; whether it
/// was mounted here.
fn ensure_tracefs() -> Result<bool, String> {
    if [TRACEFS, TRACEFS_UNDER_DEBUGFS].iter().any(|p| has_events(Path::new(p))) {
        return Ok(false);
    }
    mount_tracefs(Path::new(TRACEFS))?;
    tracing::info!(path = TRACEFS, "mounted tracefs (for the ids of the syscalls' tracepoints)");
    Ok(true)
}

/// Unmount the tracefs mounted at `at` by [`ensure_tracefs`]. One another
/// process opened meanwhile stays (busy), said at debug level.
fn unmount_tracefs(at: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(target) = std::ffi::CString::new(at.as_os_str().as_bytes()) else { return };
    // SAFETY: a NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(target.as_ptr(), 0) } == 0 {
        tracing::info!(path = %at.display(), "unmounted the tracefs mounted at start (the tracepoints' ids are read)");
    } else {
        let e = std::io::Error::last_os_error();
        tracing::debug!(path = %at.display(), error = %e, "the tracefs mounted at start stays mounted");
    }
}

/// A mounted tracefs lists `events`; the empty directory sysfs keeps for it does not.
fn has_events(dir: &Path) -> bool {
    dir.join("events").is_dir()
}

fn mount_tracefs(at: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let target = std::ffi::CString::new(at.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let rc = unsafe { libc::mount(c"tracefs".as_ptr(), target.as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(format!(
            "no tracefs found, and mounting one at {} failed: {}",
            at.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_its_error_s_text_is_said_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("eBPF program p: {source}")]
        struct Outer {
            source: Inner,
        }
        #[derive(Debug, thiserror::Error)]
        #[error("`bpf_link_create` failed")]
        struct Inner {
            #[source]
            io: std::io::Error,
        }
        let e = Outer { source: Inner { io: std::io::Error::from_raw_os_error(13) } };
        assert_eq!(chain(&e), "eBPF program p: `bpf_link_create` failed: Permission denied (os error 13)");
    }

    #[test]
    fn an_empty_directory_is_not_a_tracefs() {
        let dir = std::env::temp_dir().join(format!("tokentap-tracefs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!has_events(&dir));
        std::fs::create_dir_all(dir.join("events")).unwrap();
        assert!(has_events(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_config_file_names_the_modes_as_the_flag_does() {
        #[derive(serde::Deserialize)]
        struct F {
            h: SyscallHooks,
        }
        for (text, want) in [("tracepoints", SyscallHooks::Tracepoints), ("raw", SyscallHooks::Raw)] {
            let f: F = toml::from_str(&format!("h = \"{text}\"")).unwrap();
            assert_eq!(f.h, want);
            assert_eq!(<SyscallHooks as clap::ValueEnum>::from_str(text, false).unwrap(), want);
        }
    }
}
