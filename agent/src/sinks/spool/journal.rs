//! The open batch, kept on disk as well as in memory.
//!
//! Records wait in the open batch until it is sealed (by default up to a
//! second, or `batch_records`). An agent killed in that time (SIGKILL, the
//! OOM killer, a grace period run out) took them with it, counted nowhere.
//! So each reader pass appends what the open batch gained to a journal file
//! in the spool directory (`open-<pid>-<start>.ndjson`, one per process and
//! spool), emptied when the batch is sealed. The next agent to own the
//! directory (the one after a crash, or the new one of an upgrade once the
//! old has exited) seals the journals of processes no longer running into
//! batches of their own and sends them.
//!
//! What it costs: one `write` a reader pass (not a record), no `fsync`: the
//! page cache outlives a killed process, not a node that loses power. A
//! process killed between sealing a batch and emptying its journal leaves
//! the same records twice: both are sent and the collector keeps one (its
//! dedup by event id). A record half written at the kill is dropped, counted.
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::counters::{self, SpoolCounters};

const PREFIX: &str = "open-";
const SUFFIX: &str = ".ndjson";

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
    /// Bytes of the open batch in the file.
    written: usize,
    /// Writing failed once: warned, and not tried again (the batch is still
    /// sealed and sent; only a kill would lose it).
    broken: bool,
}

impl Journal {
    pub(super) fn new(dir: &Path) -> Self {
        let pid = std::process::id();
        let start = crate::handover::start_time(pid).unwrap_or(0);
        Self { path: dir.join(name(pid, start)), file: None, written: 0, broken: false }
    }

    /// Append what `batch` (the open batch's bytes) gained since the last call.
    pub(super) fn sync(&mut self, batch: &[u8]) {
        if self.broken || batch.len() <= self.written {
            return;
        }
        let new = &batch[self.written..];
        let appended = self.open().and_then(|f| f.write_all(new));
        match appended {
            Ok(()) => self.written = batch.len(),
            Err(e) => {
                self.broken = true;
                tracing::warn!(file = %self.path.display(), error = %e, "the spool's journal cannot be written: records of the open batch would be lost if the agent were killed");
            }
        }
    }

    fn open(&mut self) -> io::Result<&mut File> {
        match &mut self.file {
            Some(f) => Ok(f),
            f @ None => Ok(f.insert(File::options().create(true).append(true).open(&self.path)?)),
        }
    }

    /// The open batch was sealed (or dropped): the journal starts afresh.
    pub(super) fn clear(&mut self) {
        if self.written > 0 {
            if let Some(f) = &self.file {
                if let Err(e) = f.set_len(0) {
                    // Its records would be sent again after a kill: the collector keeps one.
                    tracing::debug!(error = %e, "emptying the spool's journal");
                }
            }
        }
        self.written = 0;
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
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
        let mut body = std::fs::read(&path)?;
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
    let me = std::process::id();
    let running = |pid, start| pid == me || crate::handover::running(Path::new("/proc"), pid, start);
    let found = match left(dir, running) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(output, error = %e, "reading the journals killed agents left in the spool");
            return;
        }
    };
    for l in found {
        if l.cut {
            counters::add(&counters.spool_dropped_records, 1);
        }
        let sealed = match l.records {
            0 => Ok(()),
            n => zstd::bulk::compress(&l.body, 3).and_then(|body| write(n, l.body.len() as u64, &body)),
        };
        match sealed {
            Ok(()) => {
                counters::add(&counters.spool_recovered_records, l.records as u64);
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

    #[test]
    fn each_sync_appends_what_the_batch_gained_and_clearing_starts_afresh() {
        let d = dir("sync");
        let mut j = Journal::new(&d);
        let mut batch = b"{\"a\":1}\n".to_vec();
        j.sync(&batch);
        batch.extend_from_slice(b"{\"b\":2}\n");
        j.sync(&batch);
        j.sync(&batch);
        assert_eq!(std::fs::read(&j.path).unwrap(), batch);
        j.clear();
        assert!(std::fs::read(&j.path).unwrap().is_empty());
        j.sync(b"{\"c\":3}\n");
        assert_eq!(std::fs::read(&j.path).unwrap(), b"{\"c\":3}\n");
        let path = j.path.clone();
        j.clear();
        drop(j);
        assert!(!path.exists(), "an empty journal goes with its sink");
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
