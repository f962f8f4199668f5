//! The TLS libraries' return probes as return-only `uprobe_multi` links.
//!
//! Why: a client with no timeout (Python's `requests` without one, on a
//! blocking socket) waits for its answer inside one `SSL_read`. In an upgrade
//! that call begins under the old agent and, for a long generation, returns
//! after the old agent has left. aya attaches a return probe as a perf-event
//! uretprobe: a consumer with an entry and a return handler, whose return
//! handler Linux 6.12 and later runs only for the calls whose entry it saw. So
//! the new agent's return program never ran for that read, and its answer was
//! lost (counted in `dropped_at_handover`). A return-only `uprobe_multi`
//! consumer has no entry handler, and the kernel runs it at every return it
//! hijacked, whichever consumer's entry asked for that. Measured on 6.18: one
//! attached after a call's entry ran at its return, also with the probe that
//! was there at the entry detached before the return (it is, here: the new
//! agent attaches while the old one is still attached); a perf-event
//! uretprobe attached after the entry did not. The call's arguments come from
//! the map the agents share (`CALL_ARGS`, `agent/src/handover.rs`), and the
//! new agent copies the answer on from the state the old one handed on.
//!
//! aya 0.14 neither loads a program for this attach type nor attaches one, so
//! the return programs are loaded here, from the same object, with their map
//! references pointed at the maps aya created (they share every map with the
//! other programs), and attached with `BPF_LINK_CREATE`.
//!
//! Every capture method's return programs are placed so (rustls's send's
//! too: its calls' arguments are its own agent's, so one whose entry only the
//! old agent saw finds none and copies nothing, as before). Go's returns are
//! plain uprobes on its `RET` instructions and need none of this.
//!
//! What it falls back to: used only with `--handover-dir`, the one case it
//! changes. Where the kernel has no `uprobe_multi` (before Linux 6.6: it
//! loads such a program but refuses its link, so a link is tried at start) or
//! loading fails, aya's uretprobes, as before (that one case still counted on 6.12+),
//! said at start with why.
//! A link is one file descriptor: closing it detaches the probe.
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use aya::maps::{Map, MapData};
use aya::Ebpf;
use thiserror::Error;

use crate::discovery::FileKey;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_BTF_LOAD: libc::c_long = 18;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
const BPF_TRACE_UPROBE_MULTI: u32 = 48;
const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;
/// The verifier's log asked for when a load fails, to say why.
const LOG_BYTES: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum ReturnProbeError {
    #[error("reading the eBPF object: {0}")]
    Object(String),
    #[error("eBPF program {0} missing from the object")]
    MissingProgram(String),
    #[error("eBPF map {0} not created")]
    MissingMap(String),
    #[error("this kernel has no uprobe_multi links (Linux 6.6 and later have them)")]
    NotSupported(#[source] io::Error),
    #[error("this kernel takes no BTF")]
    NoBtf,
    #[error("loading the programs' BTF")]
    Btf(#[source] io::Error),
    #[error("loading {name} as a uprobe_multi return program{log}")]
    Load { name: &'static str, log: String, source: io::Error },
    #[error("attaching {name} as a uprobe_multi return probe at {offset:#x}")]
    Attach { name: &'static str, offset: u64, source: io::Error },
}

/// `--return-probes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReturnProbes {
    /// `uprobe_multi` links with `--handover-dir` where the kernel has them, else perf-event uretprobes.
    #[default]
    Auto,
    /// Perf-event uretprobes always (on Linux 6.12+ a TLS read blocked across a whole upgrade is then counted, not copied).
    Uretprobe,
}

/// The capture methods' return programs loaded for `uprobe_multi`: None,
/// with why in the log, where they cannot be (aya's uretprobes then).
pub fn load_for(ebpf: &mut Ebpf, object: &[u8], mode: ReturnProbes) -> Option<MultiReturns> {
    if mode == ReturnProbes::Uretprobe {
        tracing::info!("return probes: perf-event uretprobes (--return-probes uretprobe)");
        return None;
    }
    let names: Vec<&'static str> = crate::probes::METHODS
        .iter()
        .flat_map(|m| m.programs.iter().copied())
        .filter(|&name| {
            let program = ebpf.program_mut(name).and_then(|p| <&mut aya::programs::UProbe>::try_from(p).ok());
            program.is_some_and(|p| matches!(p.kind(), aya::programs::ProbeKind::Return))
        })
        .collect();
    if names.is_empty() {
        // Nothing to link: the gauge must not say uprobe_multi.
        tracing::info!("return probes: none in the object to link as uprobe_multi");
        return None;
    }
    match MultiReturns::load(ebpf, object, &names) {
        Ok(returns) => {
            tracing::debug!(programs = names.len(), "return probes: uprobe_multi links");
            Some(returns)
        }
        Err(e) => {
            tracing::info!(
                error = crate::error_text(&e),
                "return probes: perf-event uretprobes (a TLS read a client is blocked in \
                 across a whole upgrade is then counted, not copied, on Linux 6.12 and later)"
            );
            None
        }
    }
}

/// The return programs loaded for `uprobe_multi`, and their links by file.
pub struct MultiReturns {
    programs: HashMap<&'static str, OwnedFd>,
    links: HashMap<FileKey, Vec<(&'static str, OwnedFd)>>,
}

impl MultiReturns {
    /// Load the programs `names` of `object` (loaded by aya as `ebpf`, whose
    /// maps they use).
    pub fn load(ebpf: &Ebpf, object: &[u8], names: &[&'static str]) -> Result<Self, ReturnProbeError> {
        let mut obj = aya_obj::Object::parse(object).map_err(|e| ReturnProbeError::Object(e.to_string()))?;
        if obj.has_btf_relocations() {
            return Err(ReturnProbeError::Object("it has BTF relocations, which are not done here".into()));
        }
        // The programs' BTF: `bpf_loop`'s callbacks need their functions
        // described. Made for this kernel as aya makes it for the others.
        let features = aya::features().btf().ok_or(ReturnProbeError::NoBtf)?;
        let btf = match obj.fixup_and_sanitize_btf(features).map_err(|e| ReturnProbeError::Object(e.to_string()))? {
            Some(btf) => load_btf(&btf.to_bytes()).map_err(ReturnProbeError::Btf)?,
            None => return Err(ReturnProbeError::Object("it has no BTF".into())),
        };
        let definitions = obj.maps.clone();
        let mut fds = Vec::with_capacity(definitions.len());
        for (name, definition) in &definitions {
            let map = ebpf.map(name).ok_or_else(|| ReturnProbeError::MissingMap(name.clone()))?;
            fds.push((name.as_str(), map_data(map).fd().as_fd().as_raw_fd(), definition));
        }
        let text_sections: HashSet<usize> = obj.functions.keys().map(|&(section, _)| section).collect();
        obj.relocate_maps(fds.into_iter(), &text_sections).map_err(|e| ReturnProbeError::Object(e.to_string()))?;
        obj.relocate_calls(&text_sections).map_err(|e| ReturnProbeError::Object(e.to_string()))?;
        let mut programs = HashMap::new();
        for &name in names {
            let program = obj.programs.get(name).ok_or_else(|| ReturnProbeError::MissingProgram(name.into()))?;
            let function = obj
                .functions
                .get(&program.function_key())
                .ok_or_else(|| ReturnProbeError::MissingProgram(name.into()))?;
            let fd = load_program(name, function, &program.license, &btf)?;
            if programs.is_empty() {
                supported(&fd)?;
            }
            programs.insert(name, fd);
        }
        Ok(Self { programs, links: HashMap::new() })
    }

    /// Each program's name and a descriptor of it (for `program_misses`).
    pub fn program_fds(&self) -> Vec<(String, OwnedFd)> {
        self.programs.iter().filter_map(|(&name, fd)| Some((name.to_owned(), fd.try_clone().ok()?))).collect()
    }

    /// Whether `name` is one of these programs.
    pub fn has(&self, name: &str) -> bool {
        self.programs.contains_key(name)
    }

    /// Attach the program `name` at the return of the function at `offset`
    /// of the file at `path`, in every process; the link is kept under `file`.
    pub fn attach(
        &mut self,
        file: FileKey,
        name: &'static str,
        path: &Path,
        offset: u64,
    ) -> Result<(), ReturnProbeError> {
        let prog = self.programs.get(name).ok_or_else(|| ReturnProbeError::MissingProgram(name.into()))?;
        let link =
            create_link(prog, path, offset).map_err(|source| ReturnProbeError::Attach { name, offset, source })?;
        self.links.entry(file).or_default().push((name, link));
        Ok(())
    }

    /// Detach every probe placed in `file`.
    pub fn detach_file(&mut self, file: &FileKey) {
        self.links.remove(file);
    }

    /// Detach every probe of the programs `which` selects.
    pub fn detach_programs(&mut self, which: impl Fn(&str) -> bool) {
        for links in self.links.values_mut() {
            links.retain(|(name, _)| !which(name));
        }
    }
}

/// `union bpf_attr` for `BPF_PROG_LOAD`, as far as it is used here.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
}

/// `union bpf_attr` for `BPF_BTF_LOAD`.
#[repr(C)]
#[derive(Default)]
struct BtfLoad {
    btf: u64,
    btf_log_buf: u64,
    btf_size: u32,
    btf_log_size: u32,
    btf_log_level: u32,
    btf_log_true_size: u32,
}

/// `union bpf_attr` for `BPF_LINK_CREATE` of a `uprobe_multi` link.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    multi_flags: u32,
    pid: u32,
    _pad: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size given; the
    // pointers in it outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_ref(attr), size_of::<T>() as u32) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new file descriptor the kernel gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

fn load_btf(bytes: &[u8]) -> io::Result<OwnedFd> {
    let attr = BtfLoad { btf: bytes.as_ptr() as u64, btf_size: bytes.len() as u32, ..Default::default() };
    bpf(BPF_BTF_LOAD, &attr)
}

fn load_program(
    name: &'static str,
    function: &aya_obj::Function,
    license: &CString,
    btf: &OwnedFd,
) -> Result<OwnedFd, ReturnProbeError> {
    let insns = &function.instructions;
    let func_info = function.func_info.func_info_bytes();
    let line_info = function.line_info.line_info_bytes();
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_KPROBE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_TRACE_UPROBE_MULTI,
        prog_btf_fd: btf.as_raw_fd() as u32,
        ..Default::default()
    };
    if function.func_info_rec_size > 0 {
        attr.func_info_rec_size = function.func_info_rec_size as u32;
        attr.func_info = func_info.as_ptr() as u64;
        attr.func_info_cnt = function.func_info.func_info.len() as u32;
    }
    if function.line_info_rec_size > 0 {
        attr.line_info_rec_size = function.line_info_rec_size as u32;
        attr.line_info = line_info.as_ptr() as u64;
        attr.line_info_cnt = function.line_info.line_info.len() as u32;
    }
    // The kernel's name: 15 bytes at most, NUL-terminated.
    for (d, s) in attr.prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    match bpf(BPF_PROG_LOAD, &attr) {
        Ok(fd) => Ok(fd),
        Err(source) => {
            // Again with the verifier's log, to say why.
            let mut log = vec![0u8; LOG_BYTES];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &attr);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let log = if tail.is_empty() {
                String::new()
            } else {
                format!(" (verifier: {})", tail.into_iter().rev().collect::<Vec<_>>().join(" | "))
            };
            Err(ReturnProbeError::Load { name, log, source })
        }
    }
}

/// Does this kernel link a program as a `uprobe_multi` consumer? Before 6.6
/// it loads one for that attach type (a kprobe-type program's is not checked)
/// but refuses the link, as an unknown attach type (EINVAL). One that has them
/// refuses a link on a directory as not a regular file (EBADF), attaching nothing.
fn supported(prog: &OwnedFd) -> Result<(), ReturnProbeError> {
    match create_link(prog, Path::new("/"), 0) {
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(()),
        Err(e) => Err(ReturnProbeError::NotSupported(e)),
        Ok(_) => Err(ReturnProbeError::NotSupported(io::Error::other("a link on / was made"))),
    }
}

fn create_link(prog: &OwnedFd, path: &Path, offset: u64) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let offsets = [offset];
    let attr = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_TRACE_UPROBE_MULTI,
        path: path.as_ptr() as u64,
        offsets: offsets.as_ptr() as u64,
        cnt: 1,
        multi_flags: BPF_F_UPROBE_MULTI_RETURN,
        ..Default::default()
    };
    bpf(BPF_LINK_CREATE, &attr)
}

/// The map behind each of aya's map types.
fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(m)
        | Map::ArrayOfMaps(m)
        | Map::BloomFilter(m)
        | Map::CgroupArray(m)
        | Map::CgroupStorage(m)
        | Map::CgrpStorage(m)
        | Map::CpuMap(m)
        | Map::DevMap(m)
        | Map::DevMapHash(m)
        | Map::HashMap(m)
        | Map::HashOfMaps(m)
        | Map::InodeStorage(m)
        | Map::LpmTrie(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuCgroupStorage(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m)
        | Map::PerfEventArray(m)
        | Map::ProgramArray(m)
        | Map::Queue(m)
        | Map::ReusePortSockArray(m)
        | Map::RingBuf(m)
        | Map::SockHash(m)
        | Map::SockMap(m)
        | Map::SkStorage(m)
        | Map::Stack(m)
        | Map::StackTraceMap(m)
        | Map::Unsupported(m)
        | Map::XskMap(m) => m,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attribute layouts match `union bpf_attr`'s (offsets read from the
    /// kernel's BTF on Linux 6.18).
    #[test]
    fn attribute_layouts_match_the_kernel_s() {
        assert_eq!(std::mem::offset_of!(ProgLoad, license), 16);
        assert_eq!(std::mem::offset_of!(ProgLoad, log_buf), 32);
        assert_eq!(std::mem::offset_of!(ProgLoad, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoad, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(ProgLoad, func_info), 80);
        assert_eq!(std::mem::offset_of!(ProgLoad, line_info), 96);
        assert_eq!(std::mem::offset_of!(ProgLoad, attach_btf_id), 108);
        assert_eq!(std::mem::offset_of!(BtfLoad, btf_size), 16);
        assert_eq!(std::mem::offset_of!(LinkCreate, path), 16);
        assert_eq!(std::mem::offset_of!(LinkCreate, cnt), 48);
        assert_eq!(std::mem::offset_of!(LinkCreate, multi_flags), 52);
        assert_eq!(std::mem::offset_of!(LinkCreate, pid), 56);
    }
}
