//! The open batch, kept on disk as well as in memory.
//!
//! Records wait in the open batch until it is sealed (by default up to a
//! second, or `batch_records`). An agent killed in that time (SIGKILL, the
//! OOM killer, a grace period run out) took them with it, counted nowhere.
//! So each record is also copied, as it joins the open batch, into a journal
//! file in the spool directory (`open-<pid>-<start>.ndjson`, one per process
//! and spool), emptied when the batch is sealed. The next agent to own the
//! directory (the one after a crash, or the new one of an upgrade once the
//! old has exited) seals the journals of processes no longer running into
//! batches of their own and sends them.
//!
//! Why a shared mapping, not `write`: a record is journaled before the ring
//! buffer record that completed it is released, so no kill falls between a
//! call leaving the ring and reaching the disk; a `write` a record would cost
//! a system call each, a copy into a mapped file mostly a `memcpy` (a page
//! the kernel wrote back since takes a fault when written again). On a
//! copy-on-write filesystem (btrfs, ZFS, bcachefs) a store into a mapping
//! needs new blocks, and on a full disk it is a SIGBUS: there each record
//! is written with `pwrite` instead. No `fsync`:
//! the page cache outlives a killed process, not a node that loses power.
//! The file is zeros past its records: allocated larger than they are, and
//! zeroed at each seal from its first byte on (the mapping and its pages are
//! kept for the next batch: no page faults, no block allocation a batch;
//! one far larger than the batches now is given back). JSON holds no NUL
//! byte, so the first one ends what was written, whatever order a copy cut
//! by the kill stored its bytes in. A process killed between sealing a batch
//! and emptying its journal leaves the same records twice: both are sent and
//! the collector keeps one (its dedup by event id). A record half written at
//! the kill is dropped, counted.
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use super::counters::{self, SpoolCounters};

const PREFIX: &str = "open-";
const SUFFIX: &str = ".ndjson";
/// The mapping's first size; it doubles as a batch outgrows it.
const FIRST_MAP: usize = 256 << 10;
/// `statfs` magic numbers of copy-on-write filesystems: btrfs, ZFS, bcachefs.
const COPY_ON_WRITE: [i64; 3] = [0x9123_683e, 0x2fc1_2fc1, 0xca45_1a4e];

/// The journal of process `pid` that started at `start`.
fn name(pid: u32, start: u64) -> String {
    format!("{PREFIX}{pid}-{start}{SUFFIX}")
}

/// (pid, start) of a journal's name.
fn parse(name: &str) -> Option<(u32, u64)> {
    let (pid, start) = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?.split_once('-')?;
    Some((pid.parse().ok()?, start.parse().ok()?))
}

pub(super) struct Journal {
    path: PathBuf,
    file: Option<File>,
    /// The file mapped (zeros past `written`).
    map: Option<MmapMut>,
    /// Bytes of the open batch in the file.
    written: usize,
    /// No journal for this process (no start time, or it cannot be emptied).
    broken: bool,
    /// Journaling this batch failed (the disk full, say): tried again from
    /// the next batch on. The batch is still sealed and sent; only a kill
    /// would lose it.
    failed: bool,
    /// A failure was warned of (once; the next ones are debug).
    warned: bool,
    /// Records are copied into a mapping (else written with `pwrite`).
    mapped: bool,
}

impl Journal {
    pub(super) fn new(dir: &Path) -> Self {
        let pid = std::process::id();
        Self::of(dir, pid, crate::handover::start_time(pid))
    }

    /// The journal of process `pid` that started at `start`. Without a start
    /// time (no /proc) there is none: a journal named with a made-up one
    /// would look left by a dead process to any other agent, which would
    /// send its records while this one still sends them too.
    fn of(dir: &Path, pid: u32, start: Option<u64>) -> Self {
        let broken = start.is_none();
        if broken {
            tracing::warn!(
                pid,
                "no start time of this process in /proc: the open batch is not journaled, and a kill would lose it"
            );
        }
        let mapped = !crate::handover::fs_magic(dir).is_ok_and(|m| COPY_ON_WRITE.contains(&m));
        let path = dir.join(name(pid, start.unwrap_or(0)));
        Self { path, file: None, map: None, written: 0, broken, failed: false, warned: false, mapped }
    }

    /// Copy `record` (one record as the open batch holds it) to the journal.
    pub(super) fn append(&mut self, record: &[u8]) {
        if self.broken || self.failed || record.is_empty() {
            return;
        }
        let (from, to) = (self.written, self.written + record.len());
        let copied = if self.mapped {
            self.room(to).map(|map| map[from..to].copy_from_slice(record))
        } else {
            self.file().and_then(|f| f.write_all_at(record, from as u64))
        };
        match copied {
            Ok(()) => self.written = to,
            Err(e) => {
                self.failed = true;
                self.map = None;
                if std::mem::replace(&mut self.warned, true) {
                    tracing::debug!(error = %e, "the spool's journal cannot be written");
                } else {
                    tracing::warn!(file = %self.path.display(), error = %e, "the spool's journal cannot be written: records of the open batch would be lost if the agent were killed (warned once)");
                }
            }
        }
    }

    fn file(&mut self) -> io::Result<&File> {
        if self.file.is_none() {
            let f = File::options().read(true).write(true).create(true).truncate(true).open(&self.path)?;
            self.file = Some(f);
        }
        Ok(self.file.as_ref().expect("opened"))
    }

    /// The mapping, at least `need` bytes long.
    fn room(&mut self, need: usize) -> io::Result<&mut MmapMut> {
        if self.map.as_ref().is_some_and(|m| m.len() >= need) {
            return Ok(self.map.as_mut().expect("checked"));
        }
        let len = need.next_power_of_two().max(FIRST_MAP);
        let file = self.file()?;
        // Zeros past what is written: they end the records for a reader.
        // Allocated, not only sized: a store into a hole of a shared mapping
        // on a full disk is a SIGBUS.
        // SAFETY: a valid fd, plain integers.
        match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) } {
            0 => {}
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
        // SAFETY: a file of this process's own, never shortened while mapped
        // (`clear` unmaps before it shrinks it); another agent reads it only
        // once this process no longer runs.
        let map = unsafe { MmapMut::map_mut(file)? };
        Ok(self.map.insert(map))
    }

    /// The open batch was sealed (or dropped): the journal starts afresh.
    pub(super) fn clear(&mut self) {
        self.failed = false;
        let written = std::mem::take(&mut self.written);
        if written == 0 {
            return;
        }
        match &mut self.map {
            // Kept, and zeroed: its first byte first, so that a kill midway
            // leaves an empty journal, not a piece of this batch.
            Some(map) if map.len() <= FIRST_MAP.max(written * 4) => {
                map[0] = 0;
                std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
                map[1..written].fill(0);
            }
            // Far larger than this batch (one rare huge batch): given back.
            _ => {
                self.map = None;
                if let Some(Err(e)) = self.file.as_ref().map(|f| f.set_len(0)) {
                    // Later records written over these would leave pieces of them.
                    self.broken = true;
                    tracing::warn!(file = %self.path.display(), error = %e, "the spool's journal cannot be emptied: not journaled from now on");
                }
            }
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.map = None;
        // Sealed before (the sink's drop): nothing in it.
        if self.file.take().is_some() && self.written == 0 {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A journal a process no longer running left: its complete records, and
/// whether a record was cut at its end.
pub(super) struct Left {
    pub path: PathBuf,
    pub body: Vec<u8>,
    pub records: usize,
    pub cut: bool,
}

/// The journals in `dir` of processes for which `running(pid, start)` is
/// false, read; empty ones are removed here.
pub(super) fn left(dir: &Path, running: impl Fn(u32, u64) -> bool) -> io::Result<Vec<Left>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)?.flatten() {
        let Some((pid, start)) = e.file_name().to_str().and_then(parse) else { continue };
        if running(pid, start) {
            continue;
        }
        let path = e.path();
        let mut body = match std::fs::read(&path) {
            Ok(b) => b,
            // The others are still read; this one waits for the next start.
            Err(err) => {
                tracing::warn!(file = %path.display(), error = %err, "a journal a killed agent left cannot be read");
                continue;
            }
        };
        // Zeros past the records (see the module's prose).
        body.truncate(body.iter().position(|&b| b == 0).unwrap_or(body.len()));
        let whole = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let cut = whole < body.len();
        body.truncate(whole);
        let records = body.iter().filter(|&&b| b == b'\n').count();
        if records == 0 && !cut {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        out.push(Left { path, body, records, cut });
    }
    Ok(out)
}

/// Seal what processes no longer running left in their journals in `dir`
/// into batches (`write`: records, raw bytes, zstd body), then remove them:
/// the agent that now owns the spool directory, at its start or adoption.
pub(super) fn recover(
    dir: &Path,
    output: &str,
    counters: &SpoolCounters,
    mut write: impl FnMut(usize, u64, &[u8]) -> io::Result<()>,
) {
    let running = |pid, start| crate::handover::running(Path::new("/proc"), pid, start);
    let found = match left(dir, running) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(output, error = %e, "reading the journals killed agents left in the spool");
            return;
        }
    };
    for l in found {
        let sealed = match l.records {
            0 => Ok(()),
            n => zstd::bulk::compress(&l.body, 3).and_then(|body| write(n, l.body.len() as u64, &body)),
        };
        match sealed {
            Ok(()) => {
                counters::add(&counters.spool_recovered_records, l.records as u64);
                // Counted once: the journal goes now.
                counters::add(&counters.spool_dropped_records, l.cut as u64);
                tracing::info!(
                    output,
                    records = l.records,
                    cut = l.cut,
                    "records a killed agent left in its open batch: spooled"
                );
                let _ = std::fs::remove_file(&l.path);
            }
            // Left in place for the next start, not lost.
            Err(e) => {
                tracing::warn!(output, file = %l.path.display(), error = %e, "spooling a journal a killed agent left")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tt-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn names_carry_pid_and_start_and_other_files_are_not_journals() {
        assert_eq!(parse(&name(42, 777)), Some((42, 777)));
        for other in ["open-1.ndjson", "open-x-1.ndjson", "1-2-3.zst", "open-1-2.ndjson.tmp"] {
            assert_eq!(parse(other), None, "{other}");
        }
    }

    /// What another agent would read of `path`: the records, and whether one was cut.
    fn read_back(d: &Path, path: &Path) -> (Vec<u8>, bool) {
        let found = left(d, |_, _| false).unwrap();
        let l = found.into_iter().find(|l| l.path == path).expect("the journal is there");
        (l.body, l.cut)
    }

    #[test]
    fn each_record_is_on_disk_once_appended_however_many_and_clearing_starts_afresh() {
        // Mapped, and written with pwrite (copy-on-write filesystems).
        for mapped in [true, false] {
            let d = dir(if mapped { "append-mapped" } else { "append-written" });
            let mut j = Journal::new(&d);
            j.mapped = mapped;
            let path = j.path.clone();
            let mut batch = Vec::new();
            // Past the first mapping's size: the journal grows, keeping what it held.
            for i in 0..40_000 {
                let record = format!("{{\"n\":{i}}}\n");
                j.append(record.as_bytes());
                batch.extend_from_slice(record.as_bytes());
                if i == 0 {
                    assert_eq!(read_back(&d, &path), (batch.clone(), false), "on disk without a flush");
                }
            }
            assert!(batch.len() > FIRST_MAP);
            assert_eq!(read_back(&d, &path), (batch, false));
            j.clear();
            let kept = std::fs::read(&path).unwrap();
            if mapped {
                assert!(kept.len() > FIRST_MAP && kept.iter().all(|&b| b == 0), "kept for the next batch, zeroed");
            } else {
                assert!(kept.is_empty());
            }
            j.append(b"{\"c\":3}\n");
            assert_eq!(read_back(&d, &path), (b"{\"c\":3}\n".to_vec(), false));
            // Mapped: far larger than this batch, given back.
            j.clear();
            assert!(std::fs::read(&path).unwrap().is_empty());
            j.append(b"{\"d\":4}\n");
            assert_eq!(read_back(&d, &path), (b"{\"d\":4}\n".to_vec(), false));
            j.clear();
            drop(j);
            assert!(!path.exists(), "an empty journal goes with its sink");
            let _ = std::fs::remove_dir_all(&d);
        }
    }

    #[test]
    fn without_a_start_time_nothing_is_journaled() {
        let d = dir("nostart");
        let mut j = Journal::of(&d, 4242, None);
        j.append(b"{\"a\":1}\n");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0, "no journal another agent could take as a dead one's");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_copy_cut_by_a_kill_in_any_order_is_one_cut_record() {
        let d = dir("cut");
        // The copy stored the record's end before its middle: the first NUL ends what was written.
        let mut body = b"{\"a\":1}\n{\"b\":".to_vec();
        body.extend_from_slice(&[0; 64]);
        body.extend_from_slice(b"22}\n");
        body.extend_from_slice(&[0; 4000]);
        std::fs::write(d.join(name(7, 1)), &body).unwrap();
        // Whole records, then the mapping's zeros: nothing cut.
        let mut whole = b"{\"a\":1}\n".to_vec();
        whole.extend_from_slice(&[0; 4000]);
        std::fs::write(d.join(name(8, 1)), &whole).unwrap();
        assert_eq!(read_back(&d, &d.join(name(7, 1))), (b"{\"a\":1}\n".to_vec(), true));
        assert_eq!(read_back(&d, &d.join(name(8, 1))), (b"{\"a\":1}\n".to_vec(), false));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_dead_process_s_journal_is_read_up_to_its_last_whole_record() {
        let d = dir("left");
        std::fs::write(d.join(name(7, 1)), b"{\"a\":1}\n{\"b\":2}\n{\"c\"").unwrap();
        std::fs::write(d.join(name(8, 1)), b"{\"a\":1}\n").unwrap();
        std::fs::write(d.join(name(9, 1)), b"").unwrap();
        std::fs::write(d.join("other.zst"), b"x").unwrap();
        let mut found = left(&d, |pid, _| pid == 8).unwrap();
        found.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(found.len(), 1, "the running one's is left alone, the empty one removed");
        assert_eq!((found[0].records, found[0].cut), (2, true));
        assert_eq!(found[0].body, b"{\"a\":1}\n{\"b\":2}\n");
        assert!(d.join(name(8, 1)).exists() && !d.join(name(9, 1)).exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
