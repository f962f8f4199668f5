//! Finding TLS libraries to probe: every executable file mapped by the host's
//! processes (containers included, through `/proc/PID/root/...`) that *defines*
//! `SSL_write`/`SSL_read` (a shared libssl, or a binary like node that links
//! OpenSSL statically), Go programs using crypto/tls ([`go`]), stripped binaries
//! carrying BoringSSL ([`boringssl`], found by analysing their code), plus
//! `libssl.so*` in the usual library directories so that processes which load
//! it later are covered from the start. Each file is inspected once per
//! (device, inode); uprobes on a file apply to every process that maps it, now
//! or later, so one attach per file is enough. A file that carries a TLS
//! library the analysis could not verify is never probed: it is remembered with
//! the reason, and every process mapping it is reported ([`Unprobed`]).
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use object::Object;
use thiserror::Error;

pub mod boringssl;
mod cache;
pub use cache::AnalysisCache;
pub mod go;
pub mod java;
mod maps;
mod pages;
use maps::library_files;
pub use maps::{parse_maps, Mapping};
pub mod placement;
pub mod rustls;
pub mod rustls_stripped;
mod symbols;
use symbols::{place_probes, read_symbols, IoFuncs};

/// File offsets of the functions we probe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSymbols {
    pub ssl_write: Option<u64>,
    pub ssl_read: Option<u64>,
    pub ssl_write_ex: Option<u64>,
    pub ssl_read_ex: Option<u64>,
    pub ssl_free: Option<u64>,
    pub ssl_set_fd: Option<u64>,
    /// The dynamic loader's `_dl_debug_state` (this file is ld.so).
    pub dl_debug_state: Option<u64>,
    pub library: TlsLibrary,
    /// Go `crypto/tls` probe points (a Go executable).
    pub go: Option<go::GoTls>,
    /// The `_ex` probes sit on OpenSSL's internal read/write functions (see
    /// [`placement`]).
    pub rerouted: bool,
    /// BoringSSL found by analysis in a stripped binary (no symbols).
    pub boringssl: Option<boringssl::Found>,
    /// rustls's plaintext functions, found by symbol.
    pub rustls: Option<rustls::Found>,
    /// The Java agent's native functions (its own library, see [`java`]).
    pub java: Option<java::Found>,
    /// A TLS library is there but is not probed, and why.
    pub refused: Option<String>,
}

/// Which TLS implementation a file carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsLibrary {
    #[default]
    OpenSsl,
    BoringSsl,
    /// Go's `crypto/tls`, linked into a Go executable.
    Go,
    /// rustls, linked into a Rust program.
    Rustls,
    /// Java's JSSE, through the Java agent's native library.
    Java,
}

impl TlsLibrary {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsLibrary::OpenSsl => "openssl",
            TlsLibrary::BoringSsl => "boringssl",
            TlsLibrary::Go => "go",
            TlsLibrary::Rustls => "rustls",
            TlsLibrary::Java => "java",
        }
    }
}

impl TlsSymbols {
    pub fn is_tls_library(&self) -> bool {
        (self.ssl_write.is_some() || self.ssl_write_ex.is_some())
            && (self.ssl_read.is_some() || self.ssl_read_ex.is_some())
    }

    /// Gets TLS probes: a TLS library's exported functions, a Go program using
    /// crypto/tls, or TLS functions found in a static binary.
    pub fn captures_tls(&self) -> bool {
        self.is_tls_library()
            || self.go.is_some()
            || self.boringssl.is_some()
            || self.rustls.is_some()
            || self.java.is_some()
    }

    /// Worth probing: TLS to capture, or a dynamic loader (to learn of new
    /// libraries).
    pub fn is_target(&self) -> bool {
        self.captures_tls() || self.dl_debug_state.is_some()
    }
}

/// A process that maps a TLS library tokentap does not probe, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unprobed {
    pub pid: u32,
    pub comm: String,
    pub path: PathBuf,
    pub library: TlsLibrary,
    pub reason: String,
}

/// A file's identity: (device, inode, mtime in ns). The mtime tells apart a new
/// file that reuses the inode number of one inspected and deleted before.
pub type FileKey = (u64, u64, i64);

fn file_key(dev: u64, md: &std::fs::Metadata) -> FileKey {
    (dev, md.ino(), md.mtime() * 1_000_000_000 + md.mtime_nsec())
}

/// A file to attach to.
#[derive(Clone, Debug)]
pub struct Target {
    /// Where it was found (through /proc/PID/root for other mount namespaces).
    pub path: PathBuf,
    /// The file, held open: probes attach through `/proc/self/fd/N`, which stays
    /// valid when the process whose /proc/PID/root led here has exited.
    pub file: std::sync::Arc<File>,
    /// Attach once per file.
    pub key: FileKey,
    pub symbols: TlsSymbols,
}

#[derive(Debug, Error)]
pub enum InspectError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a readable ELF file: {reason}")]
    Elf { path: PathBuf, reason: String },
}

/// Read `path`'s symbol tables and return the TLS functions it defines.
pub fn inspect(path: &Path) -> Result<TlsSymbols, InspectError> {
    let f = File::open(path).map_err(|source| InspectError::Open { path: path.into(), source })?;
    inspect_file(&f, path)
}

/// [`inspect`] on an open file (`path` for error messages).
pub fn inspect_file(f: &File, path: &Path) -> Result<TlsSymbols, InspectError> {
    inspect_cached(f, path, &mut AnalysisCache::default())
}

fn inspect_cached(f: &File, path: &Path, cache: &mut AnalysisCache) -> Result<TlsSymbols, InspectError> {
    // SAFETY: read-only private mapping; a file truncated under us can SIGBUS, which
    // is why only mapped executables and library files are inspected.
    let map = unsafe { memmap2::Mmap::map(f) }.map_err(|source| InspectError::Open { path: path.into(), source })?;
    // The scans release the pages they pass, and each step those it read.
    let _mapped = pages::Mapped::new(&map);
    let elf = object::File::parse(&*map).map_err(|e| InspectError::Elf { path: path.into(), reason: e.to_string() })?;
    let mut s = TlsSymbols { library: TlsLibrary::OpenSsl, ..Default::default() };
    let mut io = IoFuncs::default();
    read_symbols(&elf, elf.dynamic_symbols(), &mut s, &mut io);
    // Exported symbols are enough for shared libraries and binaries like node;
    // the (much larger) full symbol table only when they were not.
    if !s.is_target() {
        read_symbols(&elf, elf.symbols(), &mut s, &mut io);
    }
    pages::release_all();
    if s.is_tls_library() {
        place_probes(&elf, &map, &io, &mut s);
    }
    if !s.is_target() && java::may_be_agent_lib(path) {
        s.java = java::inspect(&elf);
        if s.java.is_some() {
            s.library = TlsLibrary::Java;
        }
    }
    if !s.is_target() {
        match go::inspect(&elf, &map) {
            Ok(g) => {
                s.library = TlsLibrary::Go;
                s.go = Some(g);
            }
            Err(go::NotProbed::NotGo | go::NotProbed::NoTls) => {}
            Err(why) => tracing::info!(path = %path.display(), ?why, "Go program not probed"),
        }
        pages::release_all();
    }
    // Stripped, statically linked BoringSSL (Bun): no symbols, so the code is
    // analysed; only when its source file names are there (cheap to check).
    let strings = if s.is_target() { Vec::new() } else { boringssl::ssl_lib_strings(&elf) };
    pages::release_all();
    if !strings.is_empty() {
        s.library = TlsLibrary::BoringSsl;
        let started = std::time::Instant::now();
        match cache.boringssl(&elf, &strings) {
            Ok(found) => {
                s.boringssl = Some(found);
                tracing::info!(path = %path.display(), took_ms = started.elapsed().as_millis() as u64,
                    "BoringSSL found by code analysis");
            }
            Err(why) => {
                let reason = why.describe();
                tracing::warn!(path = %path.display(), %reason, "BoringSSL present but not probed");
                s.refused = Some(reason);
            }
        }
    }
    if !s.is_target() && s.refused.is_none() {
        let versions = rustls::versions(&elf);
        pages::release_all();
        if let Some(v) = rustls::latest(&versions) {
            s.library = TlsLibrary::Rustls;
            let started = std::time::Instant::now();
            let found = rustls::find(&elf, &versions, |elf, versions| cache.rustls(elf, versions));
            match found {
                Ok(found) => {
                    tracing::info!(path = %path.display(), version = %found.version, send = found.send_function,
                        took_ms = started.elapsed().as_millis() as u64, "rustls found");
                    if let Some(reason) = found.not_probed_reason() {
                        tracing::warn!(path = %path.display(), %reason, "rustls partly probed");
                        s.refused = Some(reason);
                    }
                    s.rustls = Some(found);
                }
                Err(why) => {
                    let reason = why.describe(&v);
                    tracing::warn!(path = %path.display(), %reason, "rustls present but not probed");
                    s.refused = Some(reason);
                }
            }
        }
    }
    Ok(s)
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

const MAX_INSPECTED: usize = 1 << 18;

/// Remembers which files were inspected so each is read once.
pub struct Discovery {
    proc_root: PathBuf,
    inspected: HashSet<FileKey>,
    self_pid: u32,
    /// This agent's own executable (inode, mtime): never probed, so that its
    /// own HTTPS (it links rustls) is not captured when another process maps it.
    own_exe: Option<(u64, i64)>,
    /// Files inspected (for logs and metrics).
    pub files_inspected: u64,
    /// This agent's mount namespace (its files are found by `scan_dirs`).
    own_mnt_ns: Option<u64>,
    /// Library files found per other mount namespace (relative to its root).
    ns_libs: HashMap<u64, Vec<PathBuf>>,
    /// Process names whose files are not inspected (`--exclude-process`).
    exclude: Vec<String>,
    /// Processes skipped for that (for logs and metrics).
    pub processes_excluded: u64,
    /// Processes whose maps or mapped files were refused to this agent
    /// (permission: no `CAP_SYS_PTRACE`, an LSM), each counted once.
    pub processes_unreadable: u64,
    unreadable: HashSet<u32>,
    cache: AnalysisCache,
    /// Files with a TLS library that is not probed: (library, reason).
    refused: HashMap<FileKey, (TlsLibrary, String)>,
    /// Processes found mapping one of them since the last [`Self::take_unprobed`].
    unprobed: Vec<Unprobed>,
    /// (pid, file) pairs already reported.
    reported: HashSet<(u32, FileKey)>,
    /// JVMs seen since the last [`Self::take_jvms`].
    jvms: Vec<java::Jvm>,
}

impl Discovery {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            inspected: HashSet::new(),
            self_pid: std::process::id(),
            own_exe: std::fs::metadata("/proc/self/exe").ok().map(|m| {
                let k = file_key(0, &m);
                (k.1, k.2)
            }),
            files_inspected: 0,
            own_mnt_ns: std::fs::metadata("/proc/self/ns/mnt").ok().map(|m| m.ino()),
            ns_libs: HashMap::new(),
            exclude: Vec::new(),
            processes_excluded: 0,
            processes_unreadable: 0,
            unreadable: HashSet::new(),
            cache: AnalysisCache::default(),
            refused: HashMap::new(),
            unprobed: Vec::new(),
            reported: HashSet::new(),
            jvms: Vec::new(),
        }
    }

    /// JVMs found in processes' maps since the last call (a JVM is reported
    /// each time its process is scanned; the Java module keeps what it did).
    pub fn take_jvms(&mut self) -> Vec<java::Jvm> {
        std::mem::take(&mut self.jvms)
    }

    /// Files carrying a TLS library that is not probed.
    pub fn files_not_probed(&self) -> usize {
        self.refused.len()
    }

    /// Processes newly found mapping a file whose TLS library is not probed.
    pub fn take_unprobed(&mut self) -> Vec<Unprobed> {
        std::mem::take(&mut self.unprobed)
    }

    fn report_unprobed(&mut self, pid: u32, dir: &Path, key: FileKey, path: &Path) {
        let Some((library, reason)) = self.refused.get(&key).cloned() else { return };
        if self.reported.len() >= MAX_INSPECTED {
            self.reported.clear();
        }
        if !self.reported.insert((pid, key)) || self.unprobed.len() >= 4096 {
            return;
        }
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default().trim_end().to_owned();
        self.unprobed.push(Unprobed { pid, comm, path: path.to_path_buf(), library, reason });
    }

    /// Leave the files of processes with these names alone (command name, or the
    /// executable's file name for names longer than the kernel's 15 characters).
    pub fn exclude(mut self, names: &[String]) -> Self {
        self.exclude = names.to_vec();
        self
    }

    fn excluded(&self, dir: &Path) -> bool {
        if self.exclude.is_empty() {
            return false;
        }
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let exe = std::fs::read_link(dir.join("exe")).ok();
        let exe = exe.as_deref().and_then(Path::file_name).and_then(|n| n.to_str()).unwrap_or("");
        self.exclude.iter().any(|n| n == comm.trim_end_matches('\n') || n == exe)
    }

    /// Inspect `key` again next time it is seen (its attach failed, e.g. the
    /// process whose /proc/PID/root led to it exited meanwhile).
    pub fn forget(&mut self, key: FileKey) {
        self.inspected.remove(&key);
    }

    fn consider(&mut self, key: FileKey, path: PathBuf, out: &mut Vec<Target>) {
        // Bounded: after a clear, files are inspected again, and probes.rs refuses
        // to attach a file twice.
        if self.inspected.len() >= MAX_INSPECTED {
            self.inspected.clear();
        }
        if !self.inspected.insert(key) || self.own_exe == Some((key.1, key.2)) {
            return;
        }
        self.files_inspected += 1;
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                // Gone before we could look (short-lived process): try again next time.
                self.inspected.remove(&key);
                tracing::debug!(path = %path.display(), error = %e, "cannot open");
                return;
            }
        };
        match inspect_cached(&file, &path, &mut self.cache) {
            Ok(symbols) => {
                // A refusal may come with probes (a part of the file not captured).
                if let Some(reason) = symbols.refused.clone() {
                    if self.refused.len() >= MAX_INSPECTED {
                        self.refused.clear();
                    }
                    self.refused.insert(key, (symbols.library, reason));
                }
                if symbols.is_target() {
                    out.push(Target { path, file: std::sync::Arc::new(file), key, symbols })
                }
            }
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
        if self.excluded(&dir) {
            self.processes_excluded += 1;
            return out;
        }
        let maps = match std::fs::read_to_string(dir.join("maps")) {
            Ok(m) => m,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    self.refused_process(pid, &e);
                }
                return out;
            }
        };
        let maps = parse_maps(&maps);
        if let Some(jvm) = java::jvm_in(pid, &maps).filter(|_| self.jvms.len() < 4096) {
            self.jvms.push(jvm);
        }
        for m in maps {
            // Through the process's root so container files resolve; verify the
            // inode so a replaced file is not mistaken for the mapped one.
            let path = dir.join("root").join(m.path.trim_start_matches('/'));
            match std::fs::metadata(&path) {
                Ok(md) if md.ino() == m.inode => {
                    let key = file_key(m.dev, &md);
                    self.consider(key, path.clone(), &mut out);
                    self.report_unprobed(pid, &dir, key, Path::new(&m.path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => self.refused_process(pid, &e),
                _ => {}
            }
        }
        out
    }

    /// This agent may not read a process's maps or files: count it once (a
    /// blind spot the stats and the log name, not a silent one).
    fn refused_process(&mut self, pid: u32, e: &std::io::Error) {
        if self.unreadable.len() >= MAX_INSPECTED {
            self.unreadable.clear();
        }
        if self.unreadable.insert(pid) {
            self.processes_unreadable += 1;
            tracing::debug!(pid, error = %e, "process not readable");
        }
    }

    /// Up to `n` of the processes refused to this agent, `pid (name)`, lowest
    /// pids first: for the warning, which the count alone leaves to guesswork.
    pub fn unreadable_examples(&self, n: usize) -> Vec<String> {
        let mut pids: Vec<u32> = self.unreadable.iter().copied().collect();
        pids.sort_unstable();
        let comm = |pid: u32| std::fs::read_to_string(self.proc_root.join(format!("{pid}/comm"))).unwrap_or_default();
        pids.into_iter().take(n).map(|pid| format!("{pid} ({})", comm(pid).trim_end())).collect()
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

    /// `libssl.so*` and dynamic loaders in `dirs` (this agent's own mount namespace).
    pub fn scan_dirs(&mut self, dirs: &[PathBuf]) -> Vec<Target> {
        let mut out = Vec::new();
        for path in dirs.iter().flat_map(|d| library_files(d)) {
            let Ok(md) = std::fs::metadata(&path) else {
                continue;
            };
            if md.is_file() {
                let path = path.canonicalize().unwrap_or(path);
                self.consider(file_key(md.dev(), &md), path, &mut out);
            }
        }
        out
    }

    /// The same libraries as seen by a process in another mount namespace (a
    /// container), through `/proc/PID/root`, so they are probed at exec, before
    /// the loader maps them. A namespace's directories are listed once; later
    /// execs only re-check those files (a bind mount may put a new file there).
    pub fn scan_root_libs(&mut self, pid: u32, dirs: &[PathBuf]) -> Vec<Target> {
        let mut out = Vec::new();
        let dir = self.proc_root.join(pid.to_string());
        if self.excluded(&dir) {
            self.processes_excluded += 1;
            return out;
        }
        let Ok(ns) = std::fs::metadata(dir.join("ns/mnt")).map(|m| m.ino()) else {
            return out;
        };
        if Some(ns) == self.own_mnt_ns {
            return out;
        }
        let root = dir.join("root");
        if !self.ns_libs.contains_key(&ns) {
            if self.ns_libs.len() >= 4096 {
                self.ns_libs.clear();
            }
            let found: Vec<PathBuf> = dirs
                .iter()
                .flat_map(|d| library_files(&root.join(d.strip_prefix("/").unwrap_or(d))))
                .filter_map(|p| p.strip_prefix(&root).ok().map(Path::to_path_buf))
                .collect();
            self.ns_libs.insert(ns, found);
        }
        let rel: Vec<PathBuf> = self.ns_libs.get(&ns).cloned().unwrap_or_default();
        for rel in rel {
            let path = root.join(rel);
            // Regular files only: an absolute symlink would resolve in our namespace.
            match std::fs::symlink_metadata(&path) {
                Ok(md) if md.is_file() => self.consider(file_key(md.dev(), &md), path, &mut out),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => self.refused_process(pid, &e),
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
