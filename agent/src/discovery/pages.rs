//! Keeps the file pages that inspection reads out of the agent's RSS.
//!
//! Inspection maps the whole file, and the scans of large sections (read-only
//! data, code, symbol tables) touch most of its pages: 492 MiB resident while
//! a 555 MB library was inspected, counted in RSS and against a DaemonSet's
//! memory limit. The scans hand back what they have passed, a few MiB at a
//! time ([`CHUNK`]), with `MADV_DONTNEED`: the pages leave this process's page
//! tables and stay in the page cache, and a later read of the same bytes faults
//! them in again unchanged (the mapping is read-only, never written), so what
//! the scans find is the same.
//!
//! The mapping being inspected is registered for the thread ([`Mapped`]), and
//! only bytes inside it are ever released: `MADV_DONTNEED` on anonymous memory
//! (a test's buffer) would zero it. On anything else these calls do nothing.
use std::cell::Cell;
use std::marker::PhantomData;

/// Bytes scanned between releases: large enough that the system calls cost
/// nothing next to the scan, small next to the agent's own ~50 MiB.
pub const CHUNK: usize = 4 << 20;

thread_local! {
    /// (start, length) of the mapping being inspected on this thread.
    static MAPPED: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

/// Registers a mapping for [`release`] while it lives.
pub struct Mapped<'a> {
    prev: Option<(usize, usize)>,
    _map: PhantomData<&'a [u8]>,
}

impl<'a> Mapped<'a> {
    /// `map` must be a read-only file mapping that nothing writes (a
    /// `memmap2::Mmap`): its pages may be dropped and read again at any time.
    pub fn new(map: &'a memmap2::Mmap) -> Self {
        let prev = MAPPED.replace(Some((map.as_ptr() as usize, map.len())));
        Self { prev, _map: PhantomData }
    }
}

impl Drop for Mapped<'_> {
    fn drop(&mut self) {
        MAPPED.set(self.prev);
    }
}

fn page_size() -> usize {
    // SAFETY: no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// Drop the pages holding `bytes` from this process, if they lie in the
/// registered mapping (else nothing). Neighbouring bytes on the same pages go
/// too: they are read back on the next access.
pub fn release(bytes: &[u8]) {
    let Some((base, len)) = MAPPED.get() else { return };
    let start = bytes.as_ptr() as usize;
    let end = start + bytes.len();
    if bytes.is_empty() || start < base || end > base + len {
        return;
    }
    let page = page_size();
    // The mapping starts on a page and covers its last page whole, so the
    // rounded range stays inside it.
    let from = start & !(page - 1);
    let to = (end + page - 1) & !(page - 1);
    // SAFETY: [from, to) lies in the registered mapping, which is alive (the
    // guard borrows it) and is a read-only file mapping never written: dropping
    // its pages changes no byte anyone reads, they are faulted in again from
    // the file. Failure only leaves the pages resident.
    unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_DONTNEED) };
}

/// Drop every page of the registered mapping (between scans).
pub fn release_all() {
    let Some((base, len)) = MAPPED.get() else { return };
    // SAFETY: the registered mapping's own extent (see `release`).
    release(unsafe { std::slice::from_raw_parts(base as *const u8, len) });
}

/// Calls [`release_all`] once every 4,096 steps of a loop (`i` counting them):
/// for walks, like those over symbol tables, that are not in file order. A
/// step of a symbol walk touches its 24-byte entry and its name, ~110 bytes
/// a step in a Rust debug build's table: 4,096 of them hold under 1 MiB. A
/// walk that never released held the whole table, ~11 MiB of a 170 MB debug
/// build, whenever one started on the host. One `madvise` of the whole
/// mapping costs microseconds: it is mostly not resident.
pub fn release_all_every(i: usize) {
    if i & 0xfff == 0xfff {
        release_all();
    }
}

/// `memchr::memmem::find_iter(hay, needle)` (the same non-overlapping
/// positions, in order), releasing each [`CHUNK`] of `hay` once passed.
pub fn find_iter<'h>(hay: &'h [u8], needle: &'h [u8]) -> impl Iterator<Item = usize> + 'h {
    find_iter_chunked(hay, needle, CHUNK)
}

fn find_iter_chunked<'h>(hay: &'h [u8], needle: &'h [u8], chunk: usize) -> impl Iterator<Item = usize> + 'h {
    debug_assert!(!needle.is_empty() && chunk > 0);
    let finder = memchr::memmem::Finder::new(needle);
    // Where the next match may start: memmem's matches do not overlap.
    let mut next = 0;
    (0..hay.len()).step_by(chunk).flat_map(move |start| {
        if start > 0 {
            release(&hay[start - chunk..start]);
        }
        // Matches starting in [start, start + chunk), whole: the window runs
        // `needle.len() - 1` bytes past the chunk.
        let end = hay.len().min(start + chunk + needle.len() - 1);
        let from = next.max(start);
        let mut found = Vec::new();
        if from < end {
            for at in finder.find_iter(&hay[from..end]) {
                found.push(from + at);
            }
        }
        if let Some(&last) = found.last() {
            next = last + needle.len();
        }
        found
    })
}

/// Releases what a sweep in address order over `code` ((address, bytes) per
/// section) has left behind, once per [`CHUNK`] of progress.
pub struct Behind {
    done: u64,
}

impl Behind {
    pub fn new(code: &[(u64, &[u8])]) -> Self {
        Self { done: code.iter().map(|&(a, _)| a).min().unwrap_or(0) }
    }

    /// The sweep has reached `addr`: nothing below it is read again (or, if it
    /// is, it is faulted in again).
    pub fn passed(&mut self, code: &[(u64, &[u8])], addr: u64) {
        if addr < self.done.saturating_add(CHUNK as u64) {
            return;
        }
        for &(a, d) in code {
            let lo = self.done.saturating_sub(a).min(d.len() as u64) as usize;
            let hi = addr.saturating_sub(a).min(d.len() as u64) as usize;
            if lo < hi {
                release(&d[lo..hi]);
            }
        }
        self.done = addr;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(hay: &[u8], needle: &[u8]) -> Vec<usize> {
        memchr::memmem::find_iter(hay, needle).collect()
    }

    #[test]
    fn chunked_search_finds_what_the_whole_buffer_search_finds() {
        // Matches straddling every chunk edge, back to back, overlapping
        // (non-overlapping ones reported, as memmem does), at both ends.
        let mut hay = Vec::new();
        for i in 0..300u32 {
            hay.extend_from_slice(b"xx/src/lib.rs\0");
            hay.extend(std::iter::repeat_n(b'a', (i % 7) as usize));
            hay.extend_from_slice(&i.to_le_bytes());
        }
        let needles: [&[u8]; 5] = [b"/src/lib.rs\0", b"aa", b"aaa", b"a", b"\0xx"];
        for needle in needles {
            let want = whole(&hay, needle);
            assert!(!want.is_empty());
            for chunk in [1, 2, 3, 5, 16, 17, 64, 100, 4096, hay.len() - 1, hay.len(), hay.len() + 9] {
                let got: Vec<usize> = find_iter_chunked(&hay, needle, chunk).collect();
                assert_eq!(got, want, "needle {needle:?}, chunk {chunk}");
            }
        }
        // A run of one byte: which overlapping matches are reported depends
        // on the previous chunk's last match.
        let run = vec![b'a'; 1000];
        for chunk in 1..40 {
            assert_eq!(find_iter_chunked(&run, b"aaa", chunk).collect::<Vec<_>>(), whole(&run, b"aaa"), "{chunk}");
        }
        assert_eq!(find_iter_chunked(b"", b"a", 4).count(), 0);
    }

    /// Rss of this process's mapping starting at `start` (/proc/self/smaps).
    fn mapping_rss_kib(start: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let head = format!("{start:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
        lines.find_map(|l| l.strip_prefix("Rss:")).and_then(|v| v.trim().trim_end_matches(" kB").parse().ok()).unwrap()
    }

    #[test]
    fn a_released_mapping_reads_the_same_bytes() {
        let path = std::env::temp_dir().join(format!("tokentap-pages-{}", std::process::id()));
        let bytes: Vec<u8> = (0..3 * CHUNK + 12345).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        // SAFETY: a read-only mapping of a file only this test writes, before.
        let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
        let _g = Mapped::new(&map);
        let needle = &bytes[CHUNK - 3..CHUNK + 5];
        let found: Vec<usize> = find_iter(&map, needle).collect();
        assert_eq!(found, whole(&bytes, needle));
        assert!(found.contains(&(CHUNK - 3)), "across the first chunk edge");
        assert!(map[..] == bytes[..]);
        let resident = || mapping_rss_kib(map.as_ptr() as usize);
        assert!(resident() >= (3 * CHUNK / 1024) as u64, "all read: {} KiB", resident());
        let code = [(0x1000u64, &map[..])];
        let mut behind = Behind::new(&code);
        behind.passed(&code, 0x1000 + CHUNK as u64 / 2);
        assert!(resident() >= (3 * CHUNK / 1024) as u64, "less than a chunk passed: kept");
        behind.passed(&code, 0x1000 + 2 * CHUNK as u64);
        let left = resident();
        assert!(left <= (CHUNK / 1024 + 16) as u64, "two chunks passed: {left} KiB left");
        release_all();
        assert_eq!(resident(), 0);
        assert!(map[..] == bytes[..], "the bytes are read again from the file");
        // Outside the mapping: nothing happens (a heap buffer would be zeroed).
        let heap = bytes.clone();
        release(&heap);
        assert!(heap == bytes);
        drop(_g);
        let _ = std::fs::remove_file(&path);
    }

    /// A walk that is not in file order, a page a step (a symbol table's
    /// entry and name, far apart): at most one period of steps' pages stays.
    #[test]
    fn a_walk_keeps_at_most_4096_steps_of_pages() {
        let page = page_size();
        if page != 4096 {
            // The file is a page a step: 774 MiB with 64 KiB pages.
            eprintln!("skipped: written for 4 KiB pages, this machine's are {page} bytes");
            return;
        }
        let steps = 3 * 4096 + 100;
        let path = std::env::temp_dir().join(format!("tokentap-pages-walk-{}", std::process::id()));
        std::fs::write(&path, vec![1u8; steps * page]).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        // SAFETY: a read-only mapping of a file only this test writes, before.
        let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
        let _g = Mapped::new(&map);
        let (mut sum, mut most) = (0u64, 0);
        for i in 0..steps {
            release_all_every(i);
            // Backwards through the file, as a walk need not follow it.
            sum += u64::from(map[(steps - 1 - i) * page]);
            if i % 512 == 0 {
                most = most.max(mapping_rss_kib(map.as_ptr() as usize));
            }
        }
        assert_eq!(sum, steps as u64);
        let period_kib = (4096 * page / 1024) as u64;
        // Fault-around maps a few neighbours of each page read.
        assert!(most <= period_kib + 1024, "{most} KiB resident during the walk, a period is {period_kib} KiB");
        drop(_g);
        let _ = std::fs::remove_file(&path);
    }
}
