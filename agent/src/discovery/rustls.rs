//! rustls, linked into Rust programs (Codex CLI, services using reqwest or
//! hyper-rustls, Python extensions such as litellm's Rust core).
//!
//! What is done today: recognition only. A Rust binary carries the source paths
//! of its dependencies in panic locations (`.../rustls-0.23.46/src/conn.rs`),
//! stripped or not, so a file linking rustls is known with its version. Its
//! plaintext is not captured yet (the boundary chosen for capture,
//! `ConnectionCommon::send_plaintext` and `CommonState::take_received_plaintext`,
//! is not built), so such a file is reported as not probed: every process
//! mapping it is listed in coverage with this reason instead of being absent.
use object::{Object, ObjectSection, SectionKind};

const NEEDLE: &[u8] = b"/rustls-0.";

/// The rustls version a file links (`0.23.46`), from its source paths.
pub fn version(elf: &object::File<'_>) -> Option<String> {
    for s in elf.sections() {
        if !matches!(s.kind(), SectionKind::ReadOnlyString | SectionKind::ReadOnlyData) {
            continue;
        }
        let Ok(d) = s.data() else { continue };
        for at in memchr::memmem::find_iter(d, NEEDLE) {
            // `/rustls-0.MINOR.PATCH/src/`
            let rest = &d[at + 1..d.len().min(at + 40)];
            let Some(end) = rest.iter().position(|&b| b == b'/') else { continue };
            let name = &rest[..end];
            let v = std::str::from_utf8(&name[b"rustls-".len()..]).ok()?;
            let semver = v.split('.').count() == 3
                && v.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if semver && rest[end..].starts_with(b"/src/") {
                return Some(v.to_owned());
            }
        }
    }
    None
}

/// Why a file with rustls is not probed.
pub fn not_probed(version: &str) -> String {
    format!("rustls {version}: not captured yet")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_version_from_source_paths() {
        // This test binary links rustls (through ureq).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let v = version(&object::File::parse(&*me).unwrap()).expect("rustls in this binary");
        assert!(v.starts_with("0.2"), "{v}");
        let sh = std::fs::read("/bin/sh").unwrap();
        assert_eq!(version(&object::File::parse(&*sh).unwrap()), None);
        assert_eq!(not_probed("0.23.46"), "rustls 0.23.46: not captured yet");
    }
}
