//! `/proc/PID/maps`: the executable files a process maps.
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
