//! Why attaching a probe failed, told from the kernel's answer, for the
//! `attach_failures_*` counters.
use crate::probes::ProbeError;

/// Why an attach failed, for `attach_failures_*`: the kernel's answer to the
/// syscall that failed (`perf_event_open` for a uprobe, `BPF_LINK_CREATE` for a
/// `uprobe_multi` link).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachFailure {
    /// EPERM/EACCES: a capability, an LSM or seccomp refused it.
    PermissionDenied,
    /// ENOENT/ESRCH: the file or its process went away meanwhile.
    Gone,
    Other,
}

impl AttachFailure {
    pub fn of(e: &ProbeError) -> Self {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                return match io.raw_os_error() {
                    Some(libc::EPERM | libc::EACCES) => Self::PermissionDenied,
                    Some(libc::ENOENT | libc::ESRCH) => Self::Gone,
                    _ => Self::Other,
                };
            }
            cur = err.source();
        }
        Self::Other
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PermissionDenied => "permission_denied",
            Self::Gone => "gone",
            Self::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's answer to `perf_event_open` names the failure's reason.
    #[test]
    fn attach_failures_are_told_apart_by_the_kernel_answer() {
        let failed = |errno: i32| {
            let io_error = std::io::Error::from_raw_os_error(errno);
            let source =
                aya::programs::ProgramError::SyscallError(aya::sys::SyscallError { call: "perf_event_open", io_error });
            AttachFailure::of(&ProbeError::Program { name: "ssl_write", source })
        };
        assert_eq!(failed(libc::EPERM), AttachFailure::PermissionDenied);
        assert_eq!(failed(libc::EACCES), AttachFailure::PermissionDenied);
        assert_eq!(failed(libc::ENOENT), AttachFailure::Gone);
        assert_eq!(failed(libc::EINVAL), AttachFailure::Other);
        assert_eq!(AttachFailure::of(&ProbeError::MissingProgram("x")), AttachFailure::Other);
        assert_eq!(AttachFailure::PermissionDenied.as_str(), "permission_denied");
        // A return probe's `BPF_LINK_CREATE` (`return_probes`), the same way.
        let link = |errno: i32| {
            let source = std::io::Error::from_raw_os_error(errno);
            let e = crate::return_probes::ReturnProbeError::Attach { name: "ssl_read_ret", offset: 0x10, source };
            AttachFailure::of(&ProbeError::Return(e))
        };
        assert_eq!(link(libc::EPERM), AttachFailure::PermissionDenied);
        assert_eq!(link(libc::ENOENT), AttachFailure::Gone);
    }
}
