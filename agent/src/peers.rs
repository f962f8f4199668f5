//! Other tokentap agents on this host that this one shares no
//! `--handover-dir` with. Each of them copies every call too, so every call
//! is recorded once per agent: two DaemonSets, a test run beside the
//! deployed one, or a rollout that mixes agents with and without the flag.
//! Found through /proc (the agent runs in the host's PID namespace, as the
//! chart deploys it: from a container's own namespace it sees none) and said
//! once at start, with their pids. Agents that share the directory know each
//! other through its pinned map of agents and split the connections.
use std::path::Path;

/// Subcommands that capture nothing.
const NOT_CAPTURING: [&str; 4] = ["report", "inspect", "uninstall", "help"];

/// The pids of the other capturing tokentap agents under `proc_root`:
/// processes named `tokentap-agent` not running a subcommand that captures
/// nothing.
pub fn capturing_agents(proc_root: &Path, me: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc_root) else { return Vec::new() };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let dir = proc_root.join(pid.to_string());
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
            let mut args = cmdline.split(|&b| b == 0).skip(1);
            comm.trim_end() == "tokentap-agent" && !args.any(|a| NOT_CAPTURING.iter().any(|s| s.as_bytes() == a))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Warn about the capturing agents other than `shared` (those registered in
/// this agent's `--handover-dir`); returns their pids.
pub fn warn_unshared(shared: &[u32], handover_dir: Option<&Path>) -> Vec<u32> {
    let others: Vec<u32> =
        capturing_agents(Path::new("/proc"), std::process::id()).into_iter().filter(|p| !shared.contains(p)).collect();
    if !others.is_empty() {
        let why = match handover_dir {
            None => "this agent has no --handover-dir".to_owned(),
            Some(d) => format!("they are not registered in this agent's --handover-dir {}", d.display()),
        };
        tracing::warn!(
            pids = ?others,
            "other tokentap agents capture on this host and {why}: each of them records every call too (give \
             every agent on a host the same --handover-dir, or run one)"
        );
    }
    others
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_capturing_agents_are_found_by_name_and_subcommand() {
        let root = std::env::temp_dir().join(format!("tt-peers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let process = |pid: u32, comm: &str, args: &[&str]| {
            let d = root.join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
            std::fs::write(d.join("cmdline"), args.iter().map(|a| format!("{a}\0")).collect::<String>()).unwrap();
        };
        process(10, "tokentap-agent", &["/usr/bin/tokentap-agent", "-o", "stdout"]);
        process(11, "tokentap-agent", &["tokentap-agent", "inspect", "/bin/x"]);
        process(12, "bash", &["bash", "-c", "tokentap-agent"]);
        process(13, "tokentap-agent", &["tokentap-agent", "--handover-dir", "/sys/fs/bpf/tokentap"]);
        process(14, "tokentap-agent", &["tokentap-agent", "audit", "/tmp/out"]);
        process(15, "tokentap-agent", &["tokentap-agent", "uninstall"]);
        std::fs::create_dir_all(root.join("self")).unwrap();
        assert_eq!(capturing_agents(&root, 13), [10, 14]);
        assert!(capturing_agents(&root.join("none"), 1).is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }
}
