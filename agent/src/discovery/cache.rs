//! Analyses of stripped binaries, cached per code: the same binary in many
//! containers is analysed once.
use std::collections::{BTreeSet, HashMap};

use object::{Object, ObjectSection};

use super::{boringssl, rustls};

/// Analyses of stripped binaries by build id and code: the same binary in many
/// containers is analysed once. The build id alone is not enough: programs
/// built by `bun build --compile` carry Bun's, and an altered copy keeps it.
#[derive(Default)]
pub struct AnalysisCache {
    by_code: HashMap<CodeKey, Result<boringssl::Found, boringssl::Refused>>,
    rustls: HashMap<CodeKey, Result<rustls::Found, rustls::Refused>>,
}

/// (build id, CRC-32 and length of the executable sections' bytes).
type CodeKey = (Vec<u8>, u32, usize);

/// What identifies the code the analysis read (the CRC costs ~10 ms per 100 MB,
/// against ~1 s for the analysis).
pub(super) fn code_key(elf: &object::File<'_>) -> CodeKey {
    let id = elf.build_id().ok().flatten().map(<[u8]>::to_vec).unwrap_or_default();
    let mut crc = crc32fast::Hasher::new();
    let mut len = 0;
    for s in elf.sections().filter(|s| s.kind() == object::SectionKind::Text) {
        // Where the code lies, too: results are file offsets.
        let (off, _) = s.file_range().unwrap_or_default();
        crc.update(&s.address().to_le_bytes());
        crc.update(&off.to_le_bytes());
        if let Ok(d) = s.data() {
            for chunk in d.chunks(super::pages::CHUNK) {
                crc.update(chunk);
                super::pages::release(chunk);
            }
            len += d.len();
        }
    }
    (id, crc.finalize(), len)
}

impl AnalysisCache {
    const MAX: usize = 4096;

    /// rustls's functions found by code (seconds for Codex's 300 MB).
    pub(super) fn rustls(
        &mut self,
        elf: &object::File<'_>,
        versions: &BTreeSet<String>,
    ) -> Result<rustls::Found, rustls::Refused> {
        let key = code_key(elf);
        if let Some(r) = self.rustls.get(&key) {
            return r.clone();
        }
        let r = rustls::find_by_code(elf, versions);
        if self.rustls.len() >= Self::MAX {
            self.rustls.clear();
        }
        self.rustls.insert(key, r.clone());
        r
    }

    pub(super) fn boringssl(
        &mut self,
        elf: &object::File<'_>,
        strings: &[u64],
    ) -> Result<boringssl::Found, boringssl::Refused> {
        let key = code_key(elf);
        if let Some(r) = self.by_code.get(&key) {
            return *r;
        }
        let r = boringssl::analyse(elf, strings);
        if self.by_code.len() >= Self::MAX {
            self.by_code.clear();
        }
        self.by_code.insert(key, r);
        r
    }
}
