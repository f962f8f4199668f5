//! The index alone: names, backoff, runs, bounds.
use super::*;
use crate::sinks::spool::counters::get;

#[test]
fn batch_names_sort_and_parse() {
    let a = batch_name(1, 10);
    let b = batch_name(2, 3);
    assert!(a < b);
    let (id, n) = parse_name(&a).unwrap();
    assert_eq!(n, 10);
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    assert_eq!(parse_name("garbage.zst"), None);
}

#[test]
fn backoff_doubles_to_ten_seconds() {
    let ms: Vec<u128> = (1..=10).map(|a| backoff(a).as_millis()).collect();
    assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]);
}

fn spool_with(name: &str, sizes: &[u64], max_bytes: u64) -> (PathBuf, Spool, Arc<SpoolCounters>) {
    let dir = std::env::temp_dir().join(format!("tt-spool-idx-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("half.zst.tmp"), b"x").unwrap();
    for (i, n) in sizes.iter().enumerate() {
        std::fs::write(dir.join(batch_name(i as u64, 10)), vec![0u8; *n as usize]).unwrap();
    }
    let counters = Arc::new(SpoolCounters::default());
    let spool = Spool::open(name, &dir, max_bytes, counters.clone()).unwrap();
    (dir, spool, counters)
}

#[test]
fn takes_consecutive_runs_within_limits_and_splits_refused_ones() {
    let (dir, spool, stats) = spool_with("take", &[100, 100, 100, 100, 100], 1 << 20);
    assert!(!dir.join("half.zst.tmp").exists(), "leftovers of a crash are deleted");
    assert_eq!(get(&stats.spool_batches), 5);
    let a = spool.take(25, 1 << 20, u64::MAX).unwrap();
    assert_eq!((a.len(), a.records()), (2, 20), "record limit");
    let b = spool.take(1000, 250, u64::MAX).unwrap();
    assert_eq!(b.len(), 2, "byte limit");
    assert_eq!(get(&stats.in_flight), 2);
    let first = spool.path(a.batches().next().unwrap());
    spool.done(a, Done::Split);
    let again = spool.take(1000, 1 << 20, u64::MAX).unwrap();
    assert_eq!(again.len(), 1, "a refused merge goes one batch at a time");
    assert_eq!(spool.path(again.batches().next().unwrap()), first, "oldest first");
    spool.done(again, Done::Delivered);
    spool.done(b, Done::Delivered);
    let s = &stats;
    assert_eq!((get(&s.spool_batches), get(&s.spool_bytes), get(&s.in_flight)), (2, 200, 0));
    assert!(!first.exists());
}

#[test]
fn merges_stay_under_the_decompressed_limit() {
    let (dir, _, _) = spool_with("raw", &[], 1 << 20);
    for i in 0..3 {
        // 10 KB of NDJSON-like text each, far smaller compressed.
        std::fs::write(dir.join(batch_name(i, 10)), zstd::bulk::compress(&[b'{'; 10_000], 3).unwrap()).unwrap();
    }
    std::fs::write(dir.join(batch_name(3, 10)), [0u8; 2000]).unwrap();
    let spool = Spool::open("raw", &dir, 1 << 20, Arc::default()).unwrap();
    let run = spool.take(1000, 1 << 20, 25_000).unwrap();
    assert_eq!(run.len(), 2, "the frame headers say 10 KB each");
    let run = spool.take(1000, 1 << 20, 25_000).unwrap();
    assert_eq!(run.len(), 1, "the next has no frame header: assumed 16x its 2000 bytes");
}

#[test]
fn bound_drops_oldest_waiting_batches_only() {
    let (_dir, spool, stats) = spool_with("bound", &[100, 100], 250);
    let sending = spool.take(10, 1 << 20, u64::MAX).unwrap();
    spool.write(9, 7, 1000, &[0u8; 100]).unwrap();
    // 300 > 250: the oldest waiting one goes, not the one being sent.
    assert_eq!(get(&stats.spool_dropped_records), 10);
    assert_eq!(spool.index().len(), 1);
    spool.done(sending, Done::Retry(Some(Duration::ZERO)));
    assert_eq!(spool.index().len(), 2);
    assert_eq!(get(&stats.spool_bytes), 200);
}

#[test]
fn a_spool_owned_by_another_agent_adopts_its_batches_once_it_exits() {
    use std::os::fd::AsRawFd;
    let dir = std::env::temp_dir().join(format!("tt-spool-idx-{}-adopt", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(batch_name(0, 10)), vec![0u8; 100]).unwrap();
    std::fs::write(dir.join("its-half.zst.tmp"), b"x").unwrap();
    // The old agent: its lock (another open file description conflicts as a process would).
    let old = std::fs::File::options().create(true).truncate(false).write(true).open(dir.join(".lock")).unwrap();
    assert_eq!(unsafe { libc::flock(old.as_raw_fd(), libc::LOCK_EX) }, 0);
    let counters = Arc::new(SpoolCounters::default());
    let spool = Spool::open("adopt", &dir, 1 << 20, counters.clone()).unwrap();
    assert_eq!(get(&counters.spool_batches), 0, "the old agent's batches are its own while it runs");
    assert!(dir.join("its-half.zst.tmp").exists(), "a batch it is writing is left alone");
    spool.write(1, 5, 100, &[1u8; 50]).unwrap();
    spool.adopt();
    assert_eq!(get(&counters.spool_batches), 1, "still owned: nothing adopted");
    drop(old);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&counters.spool_batches) < 2 {
        assert!(Instant::now() < deadline, "not adopted");
        std::thread::sleep(Duration::from_millis(50));
        spool.adopt();
    }
    spool.adopt();
    // Its leftover and our own batch, each once.
    assert_eq!(get(&counters.spool_batches), 2);
    assert_eq!(spool.index().len(), 2);
    assert_eq!(spool.take(100, 1 << 20, u64::MAX).map(|t| t.records()), Some(15));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_open_batch_a_killed_agent_journaled_is_sealed_and_sent_by_the_next_owner() {
    let dir = std::env::temp_dir().join(format!("tt-spool-idx-{}-journal", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // No process has this pid: its journal is a dead agent's; the last
    // record was cut by the kill.
    let journal = dir.join("open-4294967294-1.ndjson");
    std::fs::write(&journal, b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n{\"a\"").unwrap();
    // This process's own (a journal it has open) is never taken.
    let own = dir.join(format!(
        "open-{}-{}.ndjson",
        std::process::id(),
        crate::handover::start_time(std::process::id()).unwrap()
    ));
    std::fs::write(&own, b"{\"mine\":1}\n").unwrap();
    let counters = Arc::new(SpoolCounters::default());
    let spool = Spool::open("journal", &dir, 1 << 20, counters.clone()).unwrap();
    assert_eq!((get(&counters.spool_recovered_records), get(&counters.spool_dropped_records)), (3, 1));
    assert!(!journal.exists() && own.exists());
    let index = spool.index();
    assert_eq!(index.len(), 1);
    let body = zstd::decode_all(std::fs::File::open(&index[0].0).unwrap()).unwrap();
    assert_eq!(body, b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n");
    assert_eq!(spool.take(100, 1 << 20, u64::MAX).map(|t| t.records()), Some(3));
    let _ = std::fs::remove_dir_all(&dir);
}
