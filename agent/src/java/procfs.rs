//! What the attach needs to know about a JVM process, from `/proc/PID`.
use std::path::Path;

/// A process's identity and credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// Effective uid and gid (as this agent's user namespace sees them).
    pub uid: u32,
    pub gid: u32,
    /// The pid in the process's own pid namespace (HotSpot names its attach
    /// files with it).
    pub nspid: u32,
    /// SIGQUIT has a handler: HotSpot installs it early in start-up (unless
    /// `-Xrs`). Sending SIGQUIT before that would kill the JVM.
    pub sigquit_caught: bool,
    /// Start time (clock ticks since boot): with the pid, names the process
    /// across pid reuse.
    pub start_time: u64,
}

impl Facts {
    pub fn read(proc_dir: &Path) -> Option<Self> {
        let status = std::fs::read_to_string(proc_dir.join("status")).ok()?;
        let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
        let mut f = parse_status(&status)?;
        f.start_time = start_time(&stat)?;
        Some(f)
    }
}

/// `Uid:`, `Gid:`, `NStgid:` (last = innermost namespace) and `SigCgt:`.
pub fn parse_status(text: &str) -> Option<Facts> {
    let (mut uid, mut gid, mut nspid, mut caught) = (None, None, None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let mut fields = value.split_ascii_whitespace();
        match key {
            // real, effective, saved, fs: the effective one decides access.
            "Uid" => uid = fields.nth(1).and_then(|v| v.parse().ok()),
            "Gid" => gid = fields.nth(1).and_then(|v| v.parse().ok()),
            "NStgid" => nspid = fields.last().and_then(|v| v.parse().ok()),
            "SigCgt" => {
                caught = u64::from_str_radix(value.trim(), 16).ok().map(|m| m & (1 << (libc::SIGQUIT - 1)) != 0)
            }
            _ => {}
        }
    }
    Some(Facts { uid: uid?, gid: gid?, nspid: nspid?, sigquit_caught: caught?, start_time: 0 })
}

/// Field 22 of `/proc/PID/stat` (after the command name, which may hold spaces
/// and parentheses: parsed from the last `)`).
pub fn start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// How long ago a process started (its `start_time` in clock ticks after boot).
pub fn age(start_time: u64) -> Option<std::time::Duration> {
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let up: f64 = uptime.split_ascii_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(std::time::Duration::from_secs_f64((up - start_time as f64 / hz).max(0.0)))
}

/// HotSpot's boolean flag `name` as the command line and the option
/// environment variables set it: the last occurrence wins, as in HotSpot
/// (environment variables before the command line). `None` when not given.
pub fn hotspot_flag(cmdline: &[u8], environ: &[u8], name: &str) -> Option<bool> {
    let mut args: Vec<String> = Vec::new();
    for var in environ.split(|&b| b == 0) {
        let var = String::from_utf8_lossy(var);
        let Some((k, v)) = var.split_once('=') else { continue };
        if matches!(k, "JAVA_TOOL_OPTIONS" | "_JAVA_OPTIONS" | "JDK_JAVA_OPTIONS") {
            args.extend(v.split_ascii_whitespace().map(str::to_owned));
        }
    }
    args.extend(cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()));
    flag_in(args.iter().map(String::as_str), name)
}

/// HotSpot's boolean flag `name` in a list of JVM arguments (the last
/// occurrence wins); `None` when not given.
pub fn flag_in<'a>(args: impl IntoIterator<Item = &'a str>, name: &str) -> Option<bool> {
    let (on, off) = (format!("-XX:+{name}"), format!("-XX:-{name}"));
    args.into_iter().fold(None, |value, arg| {
        if arg == on {
            Some(true)
        } else if arg == off {
            Some(false)
        } else {
            value
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tjava\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\nPid:\t4242\n\
PPid:\t1\nUid:\t1000\t1001\t1001\t1001\nGid:\t2000\t2002\t2002\t2002\nNStgid:\t4242\t7\nNSpid:\t4242\t7\n\
SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\nSigCgt:\t0000000000000004\n";

    #[test]
    fn status_gives_effective_ids_innermost_pid_and_sigquit() {
        let f = parse_status(STATUS).unwrap();
        assert_eq!((f.uid, f.gid, f.nspid, f.sigquit_caught), (1001, 2002, 7, true));
        let early = STATUS.replace("SigCgt:\t0000000000000004", "SigCgt:\t0000000000004a00");
        assert!(!parse_status(&early).unwrap().sigquit_caught, "no SIGQUIT handler yet: never signal");
        assert_eq!(parse_status("Name:\tx\n"), None);
        assert_eq!(parse_status(&STATUS.replace("Uid:\t1000\t1001", "Uid:\tx\ty")), None);
    }

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "4242 (we ird) (x) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 2 3";
        assert_eq!(start_time(stat), Some(987654));
        assert_eq!(start_time("garbage"), None);
        assert_eq!(start_time("1 (x) S"), None);
    }

    #[test]
    fn flags_from_command_line_and_option_variables_last_wins() {
        let cmd = b"java\0-XX:+DisableAttachMechanism\0-cp\0x\0Main\0";
        assert_eq!(hotspot_flag(cmd, b"", "DisableAttachMechanism"), Some(true));
        let env = b"HOME=/\0JAVA_TOOL_OPTIONS=-Xmx1g -XX:+DisableAttachMechanism\0";
        assert_eq!(hotspot_flag(b"java\0Main\0", env, "DisableAttachMechanism"), Some(true));
        // The command line comes after the environment.
        let cmd = b"java\0-XX:-DisableAttachMechanism\0Main\0";
        assert_eq!(hotspot_flag(cmd, env, "DisableAttachMechanism"), Some(false));
        assert_eq!(hotspot_flag(b"java\0Main\0", b"", "DisableAttachMechanism"), None);
        assert_eq!(hotspot_flag(&[0xff, 0, 0xfe], &[0xff], "DisableAttachMechanism"), None);
        let vm_args = "-Xmx1g -XX:+EnableDynamicAgentLoading -XX:-EnableDynamicAgentLoading";
        assert_eq!(flag_in(vm_args.split_ascii_whitespace(), "EnableDynamicAgentLoading"), Some(false));
        assert_eq!(flag_in("-XX:+EnableDynamicAgentLoadingX".split(' '), "EnableDynamicAgentLoading"), None);
    }
}
