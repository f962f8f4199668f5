//! HotSpot's performance data file (`/tmp/hsperfdata_<user>/<pid>`, what
//! `jps` and `jstat` read): the one place a running JVM states whether it
//! accepts dynamic attach, however the option was given (command line,
//! `JAVA_TOOL_OPTIONS`, an `@argfile`, a flags file). Its counter
//! `sun.rt.jvmCapabilities` is a string of '0'/'1' whose first character is
//! '1' when attach is supported (`-XX:+DisableAttachMechanism` makes it '0').
//! Absent with `-XX:-UsePerfData`: the command line is read instead.
//! It also says when the JVM finished starting (`sun.rt.createVmEndTime`
//! set): an agent loaded before that fails inside the JVM (the system class
//! loader is not up yet), so the attach waits for it.
//!
//! Layout (HotSpot's perfData.hpp): a 32-byte prologue (magic `CA FE C0 C0`,
//! byte order, version, ..., first entry offset at 24, entry count at 28),
//! then entries of `{length, name offset, vector length, type, flags, units,
//! variability, data offset}` (20 bytes) with their name and data. Every
//! offset is checked against the buffer: a malformed file yields nothing.
use std::collections::HashMap;

/// The counters of one file: strings (byte vectors) and scalar longs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub strings: HashMap<String, String>,
    pub longs: HashMap<String, i64>,
}

impl Counters {
    pub fn is_empty(&self) -> bool {
        self.strings.is_empty() && self.longs.is_empty()
    }

    /// Whether the JVM accepts dynamic attach, when its file says.
    pub fn attachable(&self) -> Option<bool> {
        self.strings.get("sun.rt.jvmCapabilities").and_then(|c| c.chars().next()).map(|c| c == '1')
    }

    /// Whether the JVM finished starting (the agent can load), when its file says.
    pub fn started(&self) -> Option<bool> {
        self.longs.get("sun.rt.createVmEndTime").map(|&t| t != 0)
    }
}

/// The counters of one file.
pub fn parse(b: &[u8]) -> Counters {
    let mut out = Counters::default();
    if b.len() < 32 || b[..4] != [0xca, 0xfe, 0xc0, 0xc0] {
        return out;
    }
    let little = b[4] == 1;
    let int = |at: usize| -> Option<usize> {
        let w: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        let v = if little { i32::from_le_bytes(w) } else { i32::from_be_bytes(w) };
        usize::try_from(v).ok()
    };
    let (Some(mut at), Some(count)) = (int(24), int(28)) else { return out };
    for _ in 0..count.min(1 << 16) {
        let (Some(len), Some(name_off), Some(vlen), Some(data_off)) = (int(at), int(at + 4), int(at + 8), int(at + 16))
        else {
            break;
        };
        if len < 20 || at + len > b.len() {
            break;
        }
        let entry = &b[at..at + len];
        let kind = entry[12];
        let name = entry.get(name_off..).and_then(|n| n.split(|&c| c == 0).next());
        let name = name.map(|n| String::from_utf8_lossy(n).into_owned());
        match (kind, vlen, name) {
            (b'B', 1.., Some(name)) => {
                if let Some(data) = entry.get(data_off..data_off.saturating_add(vlen)) {
                    let data = data.split(|&c| c == 0).next().unwrap_or_default();
                    out.strings.insert(name, String::from_utf8_lossy(data).into_owned());
                }
            }
            (b'J', 0, Some(name)) => {
                if let Some(w) =
                    entry.get(data_off..data_off.saturating_add(8)).and_then(|w| <[u8; 8]>::try_from(w).ok())
                {
                    out.longs.insert(name, if little { i64::from_le_bytes(w) } else { i64::from_be_bytes(w) });
                }
            }
            _ => {}
        }
        at += len;
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A file as HotSpot lays it out (little endian), with these string
    /// counters and a long `sun.rt.createVmEndTime` of `end`.
    pub(crate) fn file(counters: &[(&str, &str)]) -> Vec<u8> {
        file_with(counters, Some(7))
    }

    pub(crate) fn file_with(counters: &[(&str, &str)], end: Option<i64>) -> Vec<u8> {
        let mut b = vec![0xca, 0xfe, 0xc0, 0xc0, 1, 2, 0, 1];
        b.resize(32, 0);
        b[24..28].copy_from_slice(&32i32.to_le_bytes());
        b[28..32].copy_from_slice(&((counters.len() + end.iter().count()) as i32).to_le_bytes());
        if let Some(end) = end {
            let name = "sun.rt.createVmEndTime";
            let mut e = vec![0u8; 56];
            e[0..4].copy_from_slice(&56i32.to_le_bytes());
            e[4..8].copy_from_slice(&20i32.to_le_bytes());
            e[12] = b'J';
            e[16..20].copy_from_slice(&48i32.to_le_bytes());
            e[20..20 + name.len()].copy_from_slice(name.as_bytes());
            e[48..56].copy_from_slice(&end.to_le_bytes());
            b.extend(e);
        }
        for (name, value) in counters {
            let name_off = 20;
            let data_off = name_off + name.len() + 1;
            let vlen = value.len() + 1;
            let len = (data_off + vlen).div_ceil(8) * 8;
            let mut e = vec![0u8; len];
            e[0..4].copy_from_slice(&(len as i32).to_le_bytes());
            e[4..8].copy_from_slice(&(name_off as i32).to_le_bytes());
            e[8..12].copy_from_slice(&(vlen as i32).to_le_bytes());
            e[12] = b'B';
            e[16..20].copy_from_slice(&(data_off as i32).to_le_bytes());
            e[name_off..name_off + name.len()].copy_from_slice(name.as_bytes());
            e[data_off..data_off + value.len()].copy_from_slice(value.as_bytes());
            b.extend(e);
        }
        b
    }

    #[test]
    fn capabilities_say_whether_attach_is_on() {
        let caps = |c: &str| {
            file(&[("java.property.java.vm.name", "OpenJDK 64-Bit Server VM"), ("sun.rt.jvmCapabilities", c)])
        };
        let on = parse(&caps("1100000000000000000000000000000000000000000000000000000000000000"));
        assert_eq!(on.strings["java.property.java.vm.name"], "OpenJDK 64-Bit Server VM");
        assert_eq!((on.attachable(), on.started()), (Some(true), Some(true)));
        let off = parse(&caps("0100000000000000000000000000000000000000000000000000000000000000"));
        assert_eq!(off.attachable(), Some(false));
        assert_eq!(parse(&file(&[])).attachable(), None);
    }

    #[test]
    fn a_jvm_still_starting_says_so() {
        assert_eq!(parse(&file_with(&[("sun.rt.jvmCapabilities", "1")], Some(0))).started(), Some(false));
        assert_eq!(parse(&file_with(&[("sun.rt.jvmCapabilities", "1")], None)).started(), None);
    }

    #[test]
    fn malformed_files_yield_nothing_and_never_panic() {
        let good = file(&[("sun.rt.jvmCapabilities", "1")]);
        assert!(parse(&good[..31]).is_empty());
        assert!(parse(b"not a perf file at all, really not").is_empty());
        // Every truncation and every single-byte corruption: no panic.
        for n in 0..good.len() {
            let _ = parse(&good[..n]);
            for v in [0u8, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[n] = v;
                let _ = parse(&bad);
            }
        }
    }
}
