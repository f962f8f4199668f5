//! The capabilities the agent needs: one list, used by `--help`, by the check
//! at start and by the load error (docs/operations.md states the same set; a
//! test compares them). Missing one is an error at start, never an agent that
//! runs and captures nothing.
use thiserror::Error;

/// A Linux capability: its name and bit number (linux/capability.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    pub name: &'static str,
    pub bit: u32,
}

/// What capture needs, on every kernel: load programs and maps (`CAP_BPF`),
/// create uprobes and tracepoint links (`CAP_PERFMON`; the kernel also asks
/// `CAP_SYS_ADMIN` for uprobe creation through `perf_event_open`) and read other
/// processes' maps and `/proc/PID/root` (`CAP_SYS_PTRACE`).
pub const REQUIRED: &[Cap] = &[
    Cap { name: "CAP_BPF", bit: 39 },
    Cap { name: "CAP_PERFMON", bit: 38 },
    Cap { name: "CAP_SYS_PTRACE", bit: 19 },
    Cap { name: "CAP_SYS_ADMIN", bit: 21 },
];

/// Also needed on kernels before 5.11, which charge BPF maps to RLIMIT_MEMLOCK
/// (one that old runs the agent only with `bpf_loop` backported, as some
/// distributions' kernels have it).
pub const OLD_KERNEL: Cap = Cap { name: "CAP_SYS_RESOURCE", bit: 24 };
pub const OLD_KERNEL_BEFORE: (u32, u32) = (5, 11);

/// Java capture's: the attach works inside each JVM's file system as the
/// JVM's own user. Without them JVMs are not attached (logged at start).
/// `--handover-dir` uses them too: an upgrade's new agent lists another
/// user's open sockets as that user (without them, warned at start).
pub const JAVA: &[Cap] = &[Cap { name: "CAP_SETUID", bit: 7 }, Cap { name: "CAP_SETGID", bit: 6 }];

/// Attribution's, in a cgroup namespace of its own (Kubernetes on cgroup v2):
/// a process gone from /proc is placed by opening its cgroup by the kernel's
/// id. Without it the agent walks the host's cgroups for it instead.
pub const ATTRIBUTION: &[Cap] = &[Cap { name: "CAP_DAC_READ_SEARCH", bit: 2 }];

/// `CAP_A + CAP_B + …`
pub fn join(caps: &[Cap]) -> String {
    caps.iter().map(|c| c.name).collect::<Vec<_>>().join(" + ")
}

/// The whole requirement, as `--help`, the start check and the load error say it.
pub fn needs() -> String {
    format!(
        "root, or {} (+ {} on kernels before {}.{}); Java capture and --handover-dir add {}",
        join(REQUIRED),
        OLD_KERNEL.name,
        OLD_KERNEL_BEFORE.0,
        OLD_KERNEL_BEFORE.1,
        join(JAVA)
    )
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CapsError {
    #[error("missing capabilities {missing}: the agent needs {needs}")]
    Missing { missing: String, needs: String },
    #[error(
        "running in a user namespace (uid_map `{uid_map}`): its capabilities do not count for eBPF; the agent needs {needs} in the host's user namespace"
    )]
    UserNamespace { uid_map: String, needs: String },
    #[error(
        "running in a PID namespace of its own (pid:[{ns}], not the host's): the kernel names processes by their \
         host pids, which this process's /proc does not show, so no call could be attributed, no process started \
         later probed and no other agent found; run it in the host's PID namespace (Kubernetes: hostPID: true, as \
         the chart sets; docker: --pid=host). A node that is itself a container (kind, k3d, minikube's docker \
         driver) gives hostPID pods that container's namespace: not supported"
    )]
    PidNamespace { ns: u64 },
    #[error("cannot read this process's capabilities from /proc/self/status: {0}")]
    Unreadable(String),
}

/// The inode of the initial PID namespace (`PROC_PID_INIT_INO`, fixed in
/// the kernel since 3.8): what `/proc/self/ns/pid` names on the host.
pub const HOST_PID_NS: u64 = 0xEFFF_FFFC;

/// The inode of this process's PID namespace. Not `NSpid` in
/// `/proc/self/status`: a container's own /proc lists the pids from its own
/// namespace down, one pid, as the host's does.
pub fn pid_namespace() -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/self/ns/pid")?.ino())
}

/// The `CapEff` mask of a `/proc/PID/status` text.
pub fn effective_from_status(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
}

/// Whether a `/proc/self/uid_map` is the initial user namespace's (identity,
/// every uid): capabilities anywhere else are not the kernel's for eBPF.
pub fn initial_user_namespace(uid_map: &str) -> bool {
    let lines: Vec<Vec<&str>> = uid_map.lines().map(|l| l.split_whitespace().collect()).collect();
    lines == [vec!["0", "0", "4294967295"]]
}

/// `major.minor` of a kernel release (`6.8.0-45-generic`).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(['.', '-']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The required capabilities missing from `effective` on this kernel.
pub fn missing(effective: u64, kernel: Option<(u32, u32)>) -> Vec<Cap> {
    let old = kernel.is_some_and(|k| k < OLD_KERNEL_BEFORE);
    REQUIRED.iter().chain(old.then_some(&OLD_KERNEL)).filter(|c| effective & (1u64 << c.bit) == 0).copied().collect()
}

/// Of `caps`, those not in `effective`.
pub fn lacking(effective: u64, caps: &[Cap]) -> Vec<Cap> {
    caps.iter().filter(|c| effective & (1u64 << c.bit) == 0).copied().collect()
}

/// Check this process's effective capabilities against [`REQUIRED`]: one error
/// naming what is missing and the whole set. Java's are only warned about.
pub fn check(java_attach: bool, handover: bool) -> Result<(), CapsError> {
    if let Ok(map) = std::fs::read_to_string("/proc/self/uid_map") {
        if !initial_user_namespace(&map) {
            let uid_map = map.split_whitespace().collect::<Vec<_>>().join(" ");
            return Err(CapsError::UserNamespace { uid_map, needs: needs() });
        }
    }
    match pid_namespace() {
        Ok(ns) if ns != HOST_PID_NS => return Err(CapsError::PidNamespace { ns }),
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "/proc/self/ns/pid not read: the PID namespace is not checked"),
    }
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| CapsError::Unreadable(e.to_string()))?;
    let effective = effective_from_status(&status).ok_or_else(|| CapsError::Unreadable("no CapEff line".into()))?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let missing = missing(effective, kernel_version(release.trim()));
    if !missing.is_empty() {
        return Err(CapsError::Missing { missing: join(&missing), needs: needs() });
    }
    let java = lacking(effective, JAVA);
    if java_attach && !java.is_empty() {
        tracing::warn!(
            missing = %join(&java),
            "JVMs will not be attached (Java capture needs {}); --no-java-attach silences this",
            join(JAVA)
        );
    }
    if handover && !java.is_empty() {
        tracing::warn!(
            missing = %join(&java),
            "--handover-dir: other users' open sockets will not be listed at start (it needs {}), so the plaintext \
             keep-alive connections the agent before hands over in their processes are not copied",
            join(JAVA)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOUR: u64 = 1 << 19 | 1 << 21 | 1 << 38 | 1 << 39;

    #[test]
    fn missing_capabilities_are_named_with_the_whole_set() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000280000\n";
        assert_eq!(effective_from_status(status), Some(FOUR));
        assert!(missing(FOUR, Some((6, 8))).is_empty());
        assert_eq!(missing(FOUR, Some((5, 10))), vec![OLD_KERNEL]);
        let no_admin = missing(FOUR & !(1 << 21), Some((6, 8)));
        assert_eq!(join(&no_admin), "CAP_SYS_ADMIN");
        let e = CapsError::Missing { missing: join(&missing(0, None)), needs: needs() }.to_string();
        assert!(
            e.starts_with("missing capabilities CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE + CAP_SYS_ADMIN: the agent needs root, or CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE + CAP_SYS_ADMIN (+ CAP_SYS_RESOURCE on kernels before 5.11)"),
            "{e}"
        );
        assert_eq!(lacking(FOUR | 1 << 7, JAVA), vec![JAVA[1]]);
        assert!(initial_user_namespace("         0          0 4294967295\n"));
        assert!(!initial_user_namespace("         0       1000          1\n"));
        assert!(!initial_user_namespace(""));
        assert_eq!(kernel_version("6.8.0-45-generic"), Some((6, 8)));
        assert_eq!(kernel_version("5.4"), Some((5, 4)));
    }

    /// The one set, as `--help`, docs/operations.md and the load error state it.
    #[test]
    fn help_docs_and_errors_state_the_same_set() {
        use clap::CommandFactory;
        let help = crate::config::Cli::command().render_long_help().to_string();
        assert!(help.contains(&needs()), "--help states {}:\n{help}", needs());
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md")).unwrap();
        let req = docs.split("## Requirements").nth(1).unwrap().split("\n## ").next().unwrap();
        let req = req.split_whitespace().collect::<Vec<_>>().join(" ");
        let stated = format!(
            "root, or exactly {}",
            REQUIRED.iter().map(|c| format!("`{}`", c.name)).collect::<Vec<_>>().join(", ")
        );
        assert!(req.contains(&stated), "docs state `{stated}`:\n{req}");
        let old =
            format!("`{}` too on kernels before {}.{}", OLD_KERNEL.name, OLD_KERNEL_BEFORE.0, OLD_KERNEL_BEFORE.1);
        assert!(req.contains(&old), "docs state `{old}`");
        let java = format!(
            "Java capture adds {}",
            JAVA.iter().map(|c| format!("`{}`", c.name)).collect::<Vec<_>>().join(" and ")
        );
        assert!(req.contains(&java), "docs state `{java}`");
        assert!(req.contains("With `--handover-dir` the agent uses them too"), "docs state --handover-dir's use");
        // Every capability the docs name in the section is one of ours.
        let ours: Vec<&str> =
            REQUIRED.iter().chain([&OLD_KERNEL]).chain(JAVA).chain(ATTRIBUTION).map(|c| c.name).collect();
        for word in req.split(|c: char| !(c.is_ascii_uppercase() || c == '_')).filter(|w| w.starts_with("CAP_")) {
            assert!(ours.contains(&word), "docs name {word}, which the agent does not list");
        }
        let load = crate::probes::ProbeError::Load(aya::EbpfError::UnexpectedPinningType { name: 0 }).to_string();
        assert!(load.contains(&needs()), "{load}");
    }
}
