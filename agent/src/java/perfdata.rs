//! HotSpot's performance data file (`/tmp/hsperfdata_<user>/<pid>`, what
//! `jps` and `jstat` read): the one place a running JVM states whether it
//! accepts dynamic attach, however the option was given (command line,
//! `JAVA_TOOL_OPTIONS`, an `@argfile`, a flags file). Its counter
//! `sun.rt.jvmCapabilities` is a string of '0'/'1' whose first character is
//! '1' when attach is supported (`-XX:+DisableAttachMechanism` makes it '0').
//! Absent with `-XX:-UsePerfData`: the command line is read instead.
//!
//! Layout (HotSpot's perfData.hpp): a 32-byte prologue (magic `CA FE C0 C0`,
//! byte order, version, ..., first entry offset at 24, entry count at 28),
//! then entries of `{length, name offset, vector length, type, flags, units,
//! variability, data offset}` (20 bytes) with their name and data. Every
//! offset is checked against the buffer: a malformed file yields nothing.
use std::collections::HashMap;

/// The counters of one file that are strings (byte vectors).
pub fn strings(b: &[u8]) -> HashMap<String, String> {
    let mut out = HashMap::new();
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
        if kind == b'B' && vlen > 0 {
            let name = entry.get(name_off..).and_then(|n| n.split(|&c| c == 0).next());
            let data = entry.get(data_off..data_off.saturating_add(vlen));
            if let (Some(name), Some(data)) = (name, data) {
                let data = data.split(|&c| c == 0).next().unwrap_or_default();
                out.insert(String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(data).into_owned());
            }
        }
        at += len;
    }
    out
}

/// Whether the JVM accepts dynamic attach, when its file says.
pub fn attachable(counters: &HashMap<String, String>) -> Option<bool> {
    counters.get("sun.rt.jvmCapabilities").and_then(|c| c.chars().next()).map(|c| c == '1')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file as HotSpot lays it out (little endian), with these string counters.
    pub(crate) fn file(counters: &[(&str, &str)]) -> Vec<u8> {
        let mut b = vec![0xca, 0xfe, 0xc0, 0xc0, 1, 2, 0, 1];
        b.resize(32, 0);
        b[24..28].copy_from_slice(&32i32.to_le_bytes());
        b[28..32].copy_from_slice(&(counters.len() as i32).to_le_bytes());
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
        let on = strings(&caps("1100000000000000000000000000000000000000000000000000000000000000"));
        assert_eq!(on["java.property.java.vm.name"], "OpenJDK 64-Bit Server VM");
        assert_eq!(attachable(&on), Some(true));
        let off = strings(&caps("0100000000000000000000000000000000000000000000000000000000000000"));
        assert_eq!(attachable(&off), Some(false));
        assert_eq!(attachable(&strings(&file(&[]))), None);
    }

    #[test]
    fn malformed_files_yield_nothing_and_never_panic() {
        let good = file(&[("sun.rt.jvmCapabilities", "1")]);
        assert!(strings(&good[..31]).is_empty());
        assert!(strings(b"not a perf file at all, really not").is_empty());
        // Every truncation and every single-byte corruption: no panic.
        for n in 0..good.len() {
            let _ = strings(&good[..n]);
            for v in [0u8, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[n] = v;
                let _ = strings(&bad);
            }
        }
    }
}
