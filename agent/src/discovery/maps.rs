//! `/proc/PID/maps`: the executable files a process maps; and the TLS
//! libraries and loaders a library directory holds.
use std::collections::HashSet;

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
        let (Ok(maj), Ok(min)) = (u32::from_str_radix(maj, 16), u32::from_str_radix(min, 16)) else {
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

/// Files in `dir` named like an OpenSSL library or a dynamic loader.
pub(super) fn library_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libssl.so") || name.starts_with("ld-linux") || name.starts_with("ld-musl")
        })
        .map(|e| e.path())
        .collect()
}
