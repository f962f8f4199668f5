//! Finding TLS libraries to probe: every executable file mapped by the host's
//! processes (containers included, through `/proc/PID/root/...`) that *defines*
//! `SSL_write`/`SSL_read` (a shared libssl, or a binary like node that links
//! OpenSSL statically), plus `libssl.so*` in the usual library directories so that
//! processes which load it later are covered from the start. Each file is
//! inspected once per (device, inode); uprobes on a file apply to every process
//! that maps it, now or later, so one attach per file is enough.
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection, ObjectSymbol};
use thiserror::Error;

/// File offsets of the functions we probe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSymbols {
    pub ssl_write: Option<u64>,
    pub ssl_read: Option<u64>,
    pub ssl_write_ex: Option<u64>,
    pub ssl_read_ex: Option<u64>,
    pub ssl_free: Option<u64>,
    /// "openssl" or "boringssl".
    pub library: &'static str,
}

impl TlsSymbols {
    pub fn is_tls_library(&self) -> bool {
        self.ssl_write.is_some() && self.ssl_read.is_some()
    }
}

/// A file to attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Path the agent can open (through /proc/PID/root for other mount namespaces).
    pub path: PathBuf,
    /// (device, inode): attach once per file.
    pub key: (u64, u64),
    pub symbols: TlsSymbols,
}

#[derive(Debug, Error)]
pub enum InspectError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a readable ELF file: {reason}")]
    Elf { path: PathBuf, reason: String },
}

/// Read `path`'s symbol tables and return the TLS functions it defines.
pub fn inspect(path: &Path) -> Result<TlsSymbols, InspectError> {
    let f = File::open(path).map_err(|source| InspectError::Open {
        path: path.into(),
        source,
    })?;
    // SAFETY: read-only private mapping; a file truncated under us can SIGBUS, which
    // is why only mapped executables and library files are inspected.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|source| InspectError::Open {
        path: path.into(),
        source,
    })?;
    let elf = object::File::parse(&*map).map_err(|e| InspectError::Elf {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let mut s = TlsSymbols {
        library: "openssl",
        ..Default::default()
    };
    read_symbols(&elf, elf.dynamic_symbols(), &mut s);
    // Exported symbols are enough for shared libraries and binaries like node;
    // the (much larger) full symbol table only when they were not.
    if !s.is_tls_library() {
        read_symbols(&elf, elf.symbols(), &mut s);
    }
    Ok(s)
}

fn read_symbols<'d>(
    elf: &object::File<'d>,
    symbols: impl Iterator<Item = object::Symbol<'d, 'd>>,
    s: &mut TlsSymbols,
) {
    for sym in symbols {
        let Ok(name) = sym.name() else { continue };
        if name == "BORINGSSL_self_test" {
            s.library = "boringssl";
            continue;
        }
        let slot = match name {
            "SSL_write" => &mut s.ssl_write,
            "SSL_read" => &mut s.ssl_read,
            "SSL_write_ex" => &mut s.ssl_write_ex,
            "SSL_read_ex" => &mut s.ssl_read_ex,
            "SSL_free" => &mut s.ssl_free,
            _ => continue,
        };
        if slot.is_some() || !sym.is_definition() || sym.address() == 0 {
            continue;
        }
        let Some(idx) = sym.section_index() else {
            continue;
        };
        let Ok(section) = elf.section_by_index(idx) else {
            continue;
        };
        let Some((file_off, _)) = section.file_range() else {
            continue;
        };
        let Some(rel) = sym.address().checked_sub(section.address()) else {
            continue;
        };
        *slot = Some(rel + file_off);
    }
}

/// One executable file mapping of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub dev: u64,
    pub inode: u64,
    pub path: String,
}

/// Executable, file-backed mappings in `/proc/PID/maps` text, one per file.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let (Some(_range), Some(perms), Some(_off), Some(dev), Some(inode)) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        let path: Vec<&str> = it.collect();
        let path = path.join(" ");
        if !perms.contains('x') || !path.starts_with('/') || path.ends_with("(deleted)") {
            continue;
        }
        let Ok(inode) = inode.parse::<u64>() else {
            continue;
        };
        let Some((maj, min)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(maj), Ok(min)) = (u32::from_str_radix(maj, 16), u32::from_str_radix(min, 16))
        else {
            continue;
        };
        if inode == 0 {
            continue;
        }
        let dev = libc::makedev(maj, min);
        if seen.insert((dev, inode)) {
            out.push(Mapping { dev, inode, path });
        }
    }
    out
}

/// Library directories searched for `libssl.so*` at start.
pub const DEFAULT_LIB_DIRS: &[&str] = &[
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
];

/// Remembers which files were inspected so each is read once.
pub struct Discovery {
    proc_root: PathBuf,
    inspected: HashSet<(u64, u64)>,
    self_pid: u32,
    /// Files inspected (for logs and metrics).
    pub files_inspected: u64,
}

impl Discovery {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            inspected: HashSet::new(),
            self_pid: std::process::id(),
            files_inspected: 0,
        }
    }

    fn consider(&mut self, key: (u64, u64), path: PathBuf, out: &mut Vec<Target>) {
        if !self.inspected.insert(key) {
            return;
        }
        self.files_inspected += 1;
        match inspect(&path) {
            Ok(symbols) if symbols.is_tls_library() => out.push(Target { path, key, symbols }),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "skipping file"),
        }
    }

    /// TLS libraries mapped by one process not inspected before.
    pub fn scan_pid(&mut self, pid: u32) -> Vec<Target> {
        let mut out = Vec::new();
        if pid == self.self_pid {
            return out;
        }
        let dir = self.proc_root.join(pid.to_string());
        let Ok(maps) = std::fs::read_to_string(dir.join("maps")) else {
            return out;
        };
        for m in parse_maps(&maps) {
            if self.inspected.contains(&(m.dev, m.inode)) {
                continue;
            }
            // Through the process's root so container files resolve; verify the
            // inode so a replaced file is not mistaken for the mapped one.
            let path = dir.join("root").join(m.path.trim_start_matches('/'));
            match std::fs::metadata(&path) {
                Ok(md) if std::os::unix::fs::MetadataExt::ino(&md) == m.inode => {
                    self.consider((m.dev, m.inode), path, &mut out)
                }
                _ => {}
            }
        }
        out
    }

    /// Every running process.
    pub fn scan_all(&mut self) -> Vec<Target> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.proc_root) else {
            return out;
        };
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                out.extend(self.scan_pid(pid));
            }
        }
        out
    }

    /// `libssl.so*` files in `dirs`.
    pub fn scan_dirs(&mut self, dirs: &[PathBuf]) -> Vec<Target> {
        let mut out = Vec::new();
        for d in dirs {
            let Ok(rd) = std::fs::read_dir(d) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name();
                if !name.to_string_lossy().starts_with("libssl.so") {
                    continue;
                }
                let path = e.path();
                let Ok(md) = std::fs::metadata(&path) else {
                    continue;
                };
                if !md.is_file() {
                    continue;
                }
                use std::os::unix::fs::MetadataExt;
                self.consider(
                    (md.dev(), md.ino()),
                    path.canonicalize().unwrap_or(path),
                    &mut out,
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let text = "\
7f0000000000-7f0000001000 r--p 00000000 fd:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000001000-7f0000002000 r-xp 00001000 fd:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000003000-7f0000004000 r-xp 00000000 00:00 0 [vdso]
7f0000005000-7f0000006000 r-xp 00000000 08:02 99 /opt/my app/bin/node
7f0000007000-7f0000008000 r-xp 00000000 08:02 100 /tmp/x (deleted)
garbage line
";
        let m = parse_maps(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].path, "/usr/lib/x86_64-linux-gnu/libssl.so.3");
        assert_eq!(m[0].dev, libc::makedev(0xfd, 1));
        assert_eq!(m[1].path, "/opt/my app/bin/node");
    }

    #[test]
    fn finds_system_libssl_and_its_symbols() {
        let mut d = Discovery::new("/proc");
        let dirs: Vec<PathBuf> = DEFAULT_LIB_DIRS.iter().map(PathBuf::from).collect();
        let t = d.scan_dirs(&dirs);
        assert!(
            !t.is_empty(),
            "no libssl.so* found in {DEFAULT_LIB_DIRS:?}; install libssl3"
        );
        let s = &t[0].symbols;
        assert!(s.ssl_write.is_some() && s.ssl_read.is_some() && s.ssl_free.is_some());
        assert_eq!(s.library, "openssl");
        // The same file is not inspected twice.
        assert!(d.scan_dirs(&dirs).is_empty());
    }

    #[test]
    fn non_tls_and_non_elf_files_are_not_targets() {
        let me = std::env::current_exe().unwrap();
        assert!(!inspect(&me).unwrap().is_tls_library());
        let f = std::env::temp_dir().join(format!("tt-not-elf-{}", std::process::id()));
        std::fs::write(&f, b"#!/bin/sh\n").unwrap();
        assert!(matches!(inspect(&f), Err(InspectError::Elf { .. })));
        assert!(matches!(
            inspect(Path::new("/nonexistent/x")),
            Err(InspectError::Open { .. })
        ));
    }
}
