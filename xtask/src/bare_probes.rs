//! `cargo xtask bench --only-download`: the floor under the agent's cost on a
//! client, which is the kernel's. Every probed call takes a trap at its entry
//! and another at its return, and with the socket hooks every system call of
//! every task takes the slow path past the raw `sys_enter`/`sys_exit`
//! tracepoints, whatever the programs there do: no program change makes them
//! cheaper. The bench reads the hooks the agent attached (each uprobe's file,
//! offset and whether a return probe from the agent's debug log; the raw
//! tracepoints from the kernel's BPF link info) and places the same ones again with nothing behind
//! them: the uprobes as perf events with no eBPF program (as
//! `uprobe_cost.rs` does), the raw tracepoints with a program that returns at
//! once. The client's run with them is the agent's floor: what "as close to
//! nothing as the kernel allows" means here.
use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Result};

/// One hook of the agent's.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// A uprobe: its file, offset, and whether a return probe.
    Uprobe(PathBuf, u64, bool),
    /// A raw tracepoint of the system calls (`sys_enter`, `sys_exit`).
    RawSyscalls(String),
}

/// The hooks the agent attached: its uprobes from its log (`uprobe attached`,
/// at debug level for `tokentap_agent::probes`: the kernel names each file
/// by the agent's descriptor of it), its raw system call tracepoints from
/// the kernel's BPF link info (in the bench no other program is attached).
pub fn of_agent(log: &Path) -> Result<Vec<Target>> {
    let mut found = BTreeSet::new();
    let mut other_files = BTreeSet::new();
    for line in std::fs::read_to_string(log)?.lines().map(plain).filter(|l| l.contains("uprobe attached")) {
        let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k).map(str::to_string));
        let (Some(path), Some(inode), Some(mtime), Some(offset), Some(ret)) =
            (field("path="), field("inode="), field("mtime_ns="), field("offset="), field("ret="))
        else {
            bail!("an attach line without its path, file, offset or kind: {line}");
        };
        let file = host_path(&path);
        // The same file, not one of the same name: a container's build of a
        // library at another offset would put a breakpoint mid-instruction.
        if identity(&file) != Some((inode.parse()?, mtime.parse()?)) {
            other_files.insert(path);
            continue;
        }
        found.insert(Target::Uprobe(file, offset.parse()?, ret == "true"));
    }
    if !other_files.is_empty() {
        eprintln!("bare probes: not placed again, not the host's file: {other_files:?}");
    }
    ensure!(!found.is_empty(), "no `uprobe attached` line for a host file in {} (log level?)", log.display());
    let mut id = 0u32;
    loop {
        // BPF_LINK_GET_NEXT_ID: start_id, next_id.
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&id.to_ne_bytes());
        if bpf(BPF_LINK_GET_NEXT_ID, &mut attr) < 0 {
            let e = std::io::Error::last_os_error();
            ensure!(e.raw_os_error() == Some(libc::ENOENT), "listing BPF links: {e} (needs root)");
            break;
        }
        id = u32::from_ne_bytes(attr[4..8].try_into().expect("4 bytes"));
        // BPF_LINK_GET_FD_BY_ID: link_id.
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&id.to_ne_bytes());
        let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut attr);
        if fd < 0 {
            continue; // gone since
        }
        // SAFETY: a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        if let Some(tp) = raw_syscalls_of(&fd) {
            found.insert(Target::RawSyscalls(tp));
        }
    }
    Ok(found.into_iter().collect())
}

/// A log line without its colours.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

/// A file's inode and modification time in nanoseconds (the agent's key).
fn identity(file: &Path) -> Option<(u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(file).ok()?;
    Some((md.ino(), md.mtime() * 1_000_000_000 + md.mtime_nsec()))
}

/// A path found through `/proc/PID/root` (the process may be gone), as seen
/// from the host's root; whether it is the same file is checked apart.
fn host_path(p: &str) -> PathBuf {
    let parts: Vec<&str> = p.splitn(5, '/').collect();
    match parts.as_slice() {
        ["", "proc", pid, "root", rest] if pid.bytes().all(|b| b.is_ascii_digit()) => Path::new("/").join(rest),
        _ => PathBuf::from(p),
    }
}

const BPF_PROG_LOAD: i64 = 5;
const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
const BPF_RAW_TRACEPOINT_OPEN: i64 = 17;
const BPF_LINK_GET_FD_BY_ID: i64 = 30;
const BPF_LINK_GET_NEXT_ID: i64 = 31;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const BPF_LINK_TYPE_RAW_TRACEPOINT: u32 = 1;

fn bpf(cmd: i64, attr: &mut [u8; 128]) -> i64 {
    // SAFETY: `attr` is a zeroed-then-filled bpf_attr of 128 bytes.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) }
}

/// BPF_OBJ_GET_INFO_BY_FD into `info` (struct bpf_link_info: type, id,
/// prog_id, then the type's part at 16).
fn link_info(fd: &OwnedFd, info: &mut [u8; 64]) -> bool {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) >= 0
}

/// A raw tracepoint link's name when it is `sys_enter` or `sys_exit` (at 16:
/// raw_tracepoint { tp_name, tp_name_len }).
fn raw_syscalls_of(fd: &OwnedFd) -> Option<String> {
    let mut info = [0u8; 64];
    if !link_info(fd, &mut info)
        || u32::from_ne_bytes(info[0..4].try_into().expect("4 bytes")) != BPF_LINK_TYPE_RAW_TRACEPOINT
    {
        return None;
    }
    let mut name = [0u8; 64];
    let mut info = [0u8; 64];
    info[16..24].copy_from_slice(&(name.as_mut_ptr() as u64).to_ne_bytes());
    info[24..28].copy_from_slice(&(name.len() as u32).to_ne_bytes());
    if !link_info(fd, &mut info) {
        return None;
    }
    let len = name.iter().position(|&b| b == 0)?;
    let tp = String::from_utf8_lossy(&name[..len]).into_owned();
    matches!(tp.as_str(), "sys_enter" | "sys_exit").then_some(tp)
}

/// The same hooks with nothing behind them, for every process, while this lives.
pub struct Placed {
    _fds: Vec<OwnedFd>,
}

/// Place `targets` bare. A file gone since (a client's deleted temporary
/// executable) is skipped; the count placed is returned beside.
pub fn place(targets: &[Target]) -> Result<(Placed, usize)> {
    let mut fds = Vec::new();
    let mut empty = None;
    for t in targets {
        match t {
            Target::Uprobe(file, offset, ret) => {
                if !file.exists() {
                    continue;
                }
                // Any process, counted on CPU 0 (as the agent's are
                // attached): the breakpoint sits in every process's copy of
                // the code, so each CPU takes the trap.
                fds.push(crate::uprobe_cost::open_probe(file, *offset, *ret, -1, 0)?);
            }
            Target::RawSyscalls(tp) => {
                if empty.is_none() {
                    empty = Some(empty_program()?);
                }
                let prog = empty.as_ref().expect("loaded above");
                let name = std::ffi::CString::new(tp.as_str())?;
                let mut attr = [0u8; 128];
                attr[0..8].copy_from_slice(&(name.as_ptr() as u64).to_ne_bytes());
                attr[8..12].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
                let fd = bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr);
                if fd < 0 {
                    bail!("attaching an empty program to {tp}: {}", std::io::Error::last_os_error());
                }
                // SAFETY: a new descriptor we own.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            }
        }
    }
    let n = fds.len();
    fds.extend(empty);
    Ok((Placed { _fds: fds }, n))
}

/// A raw tracepoint program that returns at once (`r0 = 0; exit`).
fn empty_program() -> Result<OwnedFd> {
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_RAW_TRACEPOINT.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    let fd = bpf(BPF_PROG_LOAD, &mut attr);
    if fd < 0 {
        bail!("loading an empty raw tracepoint program: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attach_line_is_read_past_its_colours_and_a_dead_process_s_root() {
        let line = "\x1b[2m2026\x1b[0m DEBUG tokentap_agent::probes: uprobe attached \x1b[3mpath\x1b[0m\x1b[2m=\x1b[0m/proc/77/root/usr/bin/node inode=5 mtime_ns=6 offset=4096 ret=true program=\"ssl_read_ret\"";
        let p = plain(line);
        assert!(p.contains("path=/proc/77/root/usr/bin/node inode=5 mtime_ns=6 offset=4096 ret=true"), "{p}");
        assert_eq!(host_path("/proc/77/root/usr/bin/node"), PathBuf::from("/usr/bin/node"));
        assert_eq!(host_path("/usr/lib/libssl.so.3"), PathBuf::from("/usr/lib/libssl.so.3"));
        assert_eq!(host_path("/proc/self/root/x"), PathBuf::from("/proc/self/root/x"));
    }

    #[test]
    fn a_file_of_the_same_name_is_not_the_file_the_agent_probed() {
        let dir = std::env::temp_dir().join(format!("tokentap-bare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("libssl.so.3");
        std::fs::write(&f, b"one").unwrap();
        let first = identity(&f).expect("a file");
        std::fs::remove_file(&f).unwrap();
        std::fs::write(&f, b"two").unwrap();
        // Another build: its inode may be the freed one, its time is not.
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::options().write(true).open(&f).unwrap().set_modified(when).unwrap();
        assert_ne!(identity(&f), Some(first), "a new file under the old name");
        assert_eq!(identity(&dir.join("gone")), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
