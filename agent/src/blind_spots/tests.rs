use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokentap_event::traffic::Unread;

use super::*;
use crate::capture::event::Comm;

/// The kernel's socket table, in memory: verdicts given, totals to answer.
#[derive(Clone, Default)]
struct FakeKernel(Arc<Mutex<Kernel>>);

#[derive(Default)]
struct Kernel {
    verdicts: Vec<(SockId, bool)>,
    totals: HashMap<(u32, i32), (u64, Totals)>,
}

impl SocketTable for FakeKernel {
    fn verdict(&mut self, sock: SockId, count: bool) {
        self.0.lock().unwrap().verdicts.push((sock, count));
    }

    fn totals(&mut self, tgid: u32, fd: i32, remove: bool) -> Option<(u64, Totals)> {
        let mut k = self.0.lock().unwrap();
        let t = k.totals.get(&(tgid, fd)).copied();
        if remove {
            k.totals.remove(&(tgid, fd));
        }
        t
    }
}

impl FakeKernel {
    fn set(&self, sock: SockId, sent: u64, received: u64) {
        self.0.lock().unwrap().totals.insert((sock.tgid, sock.fd), (sock.id, Totals { sent, received }));
    }

    fn verdicts(&self) -> Vec<(SockId, bool)> {
        self.0.lock().unwrap().verdicts.clone()
    }
}

/// A ClientHello record naming `host` (none: no server_name extension).
pub(crate) fn client_hello(host: Option<&str>) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend([9u8; 32]); // random
    body.push(0); // no session id
    body.extend([0, 2, 0x13, 0x01, 1, 0]); // one suite, null compression
    let mut exts = Vec::new();
    if let Some(h) = host {
        let mut entry = vec![0u8];
        entry.extend((h.len() as u16).to_be_bytes());
        entry.extend(h.as_bytes());
        let mut list = (entry.len() as u16).to_be_bytes().to_vec();
        list.extend(entry);
        exts.extend([0, 0]);
        exts.extend((list.len() as u16).to_be_bytes());
        exts.extend(list);
    }
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(exts);
    let mut hs = vec![1];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    rec
}

const S: u64 = 1_000_000_000;

struct World {
    t: Tracker,
    kernel: FakeKernel,
    stats: Arc<Stats>,
    rules: Rules,
    /// What coverage would say of a process not claimed by any connection.
    facts: HashMap<u32, (Unread, Option<String>)>,
}

impl World {
    fn new() -> Self {
        let stats = Arc::new(Stats::default());
        let kernel = FakeKernel::default();
        let t = Tracker::new(stats.clone(), Clock::fixed(0)).with_kernel(Box::new(kernel.clone()));
        Self { t, kernel, stats, rules: Rules::default(), facts: HashMap::new() }
    }

    fn exited(&mut self, tgid: u32, ts: u64) {
        let facts = |pid| self.facts.get(&pid).cloned().unwrap_or((Unread::NoPlaintextSeen, None));
        self.t.exited(tgid, ts, &facts);
    }

    fn finish_all(&mut self, ts: u64) {
        let facts = |pid| self.facts.get(&pid).cloned().unwrap_or((Unread::NoPlaintextSeen, None));
        self.t.finish_all(ts, &facts);
    }

    /// A TLS socket's hello for `host`, opened when it names an LLM host.
    fn hello(&mut self, sock: SockId, host: &str, ts: u64) -> bool {
        let data = client_hello(Some(host));
        let h = Hello {
            sock,
            cgroup_id: 0,
            comm: Comm(*b"client\0\0\0\0\0\0\0\0\0\0"),
            ts_ns: ts,
            call_len: 0,
            data: &data,
        };
        let Some((host, provider)) = self.t.name(&h, &self.rules) else { return false };
        let who = Who { comm: "client".into(), service: Some("svc".into()), ..Default::default() };
        let facts = |pid| self.facts.get(&pid).cloned().unwrap_or((Unread::NoPlaintextSeen, None));
        self.t.open_tls(sock, host, provider, who, ts, &facts);
        true
    }

    fn close(&mut self, sock: SockId, sent: u64, received: u64, ts: u64) {
        let facts = |pid| self.facts.get(&pid).cloned().unwrap_or((Unread::NoPlaintextSeen, None));
        self.t.sock_closed(sock, Totals { sent, received }, ts, &facts);
    }

    fn tick(&mut self, now: u64) {
        let facts = |pid| self.facts.get(&pid).cloned().unwrap_or((Unread::NoPlaintextSeen, None));
        self.t.tick(now, &facts);
    }

    fn spots(&self) -> Vec<(String, String, u64, u64, u64)> {
        let mut v: Vec<_> = self
            .t
            .ledger()
            .blind_spots()
            .into_iter()
            .map(|b| (b.provider_host, b.reason, b.connections, b.bytes_sent, b.bytes_received))
            .collect();
        v.sort();
        v
    }
}

fn sock(tgid: u32, fd: i32, id: u64) -> SockId {
    SockId { tgid, fd, id }
}

fn conn(tgid: u32, ssl: u64) -> ConnKey {
    ConnKey { tgid, conn: ssl }
}

#[test]
fn a_connection_no_capture_method_read_is_a_blind_spot_with_exact_bytes() {
    let mut w = World::new();
    let s = sock(10, 5, 111);
    assert!(w.hello(s, "api.openai.com", S));
    assert_eq!(w.kernel.verdicts(), [(s, true)], "the kernel keeps counting an LLM socket");
    w.close(s, 3002, 8324, 2 * S);
    assert_eq!(w.spots(), [("api.openai.com".into(), "no_plaintext_seen".into(), 1, 3002, 8324)]);
    let snap = w.stats.snapshot();
    assert_eq!(
        (snap.llm_connections_unread, snap.llm_unread_bytes_sent, snap.llm_unread_bytes_received),
        (1, 3002, 8324)
    );
    assert_eq!(snap.llm_connections_decoded, 0);
    assert_eq!(w.t.open(), 0);
}

#[test]
fn other_hosts_and_unnamed_hellos_make_no_entry_and_stop_the_kernel_counting() {
    let mut w = World::new();
    assert!(!w.hello(sock(10, 5, 1), "example.internal", S));
    let garbage = [0x16, 3, 1, 0, 2, 9, 9];
    let h = Hello { sock: sock(10, 6, 2), cgroup_id: 0, comm: Comm::default(), ts_ns: S, call_len: 7, data: &garbage };
    assert!(w.t.name(&h, &w.rules).is_none());
    let no_sni = client_hello(None);
    let h = Hello { data: &no_sni, sock: sock(10, 7, 3), ..h };
    assert!(w.t.name(&h, &w.rules).is_none());
    assert_eq!(w.kernel.verdicts().iter().filter(|(_, count)| !count).count(), 3);
    w.close(sock(10, 5, 1), 100, 100, 2 * S);
    assert!(w.spots().is_empty());
    let snap = w.stats.snapshot();
    assert_eq!((snap.tls_connections_named, snap.tls_connections_unnamed), (1, 2));
    assert_eq!(w.t.open(), 0);
}

#[test]
fn provider_hosts_are_matched_by_the_rules_without_port_or_case() {
    let r = Rules::default();
    assert_eq!(r.llm_host("api.openai.com"), Some("openai"));
    assert_eq!(r.llm_host("API.Anthropic.com:443"), Some("anthropic"));
    assert_eq!(r.llm_host("bedrock-runtime.eu-west-1.amazonaws.com"), Some("bedrock"));
    assert_eq!(r.llm_host("my-resource.openai.azure.com"), Some("azure_openai"));
    assert_eq!(r.llm_host("example.internal"), None);
    assert_eq!(r.llm_host("openai.com"), None);
    let user = crate::providers::RuleSet::parse(
        "[hosts]\n\"llm-gateway.internal\" = \"openai\"\n\"api.openai.com\" = \"ignore\"\n",
    )
    .unwrap();
    let r = Rules::new(&user).unwrap();
    assert_eq!(r.llm_host("llm-gateway.internal"), Some("openai"), "a user rule names a host");
    assert_eq!(r.llm_host("api.openai.com"), None, "an ignored host is nobody's LLM traffic");
}

#[test]
fn a_capture_that_knows_the_fd_claims_that_socket_only() {
    let mut w = World::new();
    let (a, b) = (sock(10, 5, 1), sock(10, 6, 2));
    w.hello(a, "api.openai.com", S);
    w.hello(b, "api.openai.com", S + 1);
    // OpenSSL after SSL_set_fd: fd 5's plaintext.
    w.t.plaintext_started(conn(10, 0xa), 5, "openssl", S + 10);
    // Another process's plaintext on the same fd number claims nothing here.
    w.t.plaintext_started(conn(11, 0xb), 6, "openssl", S + 10);
    w.close(a, 10, 20, 2 * S);
    w.close(b, 30, 40, 2 * S);
    assert_eq!(w.spots(), [("api.openai.com".into(), "no_plaintext_seen".into(), 1, 30, 40)]);
    let snap = w.stats.snapshot();
    assert_eq!((snap.llm_connections_decoded, snap.llm_decoded_bytes), (1, 30));
}

#[test]
fn without_an_fd_one_connection_claims_one_socket_and_the_host_moves_the_claim() {
    let mut w = World::new();
    w.facts.insert(10, (Unread::PlaintextNotSeen, None));
    let (oa, an, oa2) = (sock(10, 5, 1), sock(10, 6, 2), sock(10, 7, 3));
    w.hello(oa, "api.openai.com", S);
    w.hello(an, "api.anthropic.com", S + 1);
    w.hello(oa2, "api.openai.com", S + 2);
    // A memory-BIO connection starts: it takes the latest hello (oa2)...
    let c1 = conn(10, 0x1);
    w.t.plaintext_started(c1, -1, "openssl", S + 5);
    // ...and its request says api.anthropic.com: the claim moves there.
    w.t.plaintext_host(c1, -1, "openssl", "API.Anthropic.com:443", S + 6);
    // A second connection, to api.openai.com: one of the two openai sockets.
    let c2 = conn(10, 0x2);
    w.t.plaintext_started(c2, -1, "openssl", S + 7);
    w.t.plaintext_host(c2, -1, "openssl", "api.openai.com", S + 8);
    // A connection to a host with no socket tracked claims nothing.
    let c3 = conn(10, 0x3);
    w.t.plaintext_host(c3, -1, "openssl", "github.com", S + 9);
    // One whose fd is known claims by fd only, whatever its host.
    w.t.plaintext_host(conn(10, 0x4), 99, "openssl", "api.openai.com", S + 9);
    for (s, n) in [(oa, 1), (an, 2), (oa2, 3)] {
        w.close(s, n, n, 2 * S);
    }
    // Two decoded connections never hide the third.
    let snap = w.stats.snapshot();
    assert_eq!((snap.llm_connections_decoded, snap.llm_connections_unread), (2, 1));
    let spots = w.spots();
    assert_eq!(spots.len(), 1);
    assert_eq!((spots[0].0.as_str(), spots[0].1.as_str(), spots[0].2), ("api.openai.com", "plaintext_not_seen", 1));
}

#[test]
fn a_connection_whose_http_was_given_up_is_not_read_with_that_reason() {
    let mut w = World::new();
    let s = sock(10, 5, 1);
    w.hello(s, "api.anthropic.com", S);
    let c = conn(10, 0x9);
    w.t.plaintext_started(c, 5, "go_tls", S + 1);
    w.t.ignored(c, "http2_joined");
    // The connection object goes first: the claim stays with the socket.
    w.t.conn_gone(c);
    w.close(s, 7, 8, 2 * S);
    assert_eq!(w.spots(), [("api.anthropic.com".into(), "http2_joined".into(), 1, 7, 8)]);
}

#[test]
fn a_plaintext_llm_connection_is_read_by_the_socket_capture_unless_given_up() {
    let mut w = World::new();
    let who = Who { comm: "curl".into(), ..Default::default() };
    let c = crate::capture::decode::socket_conn(10, 4);
    w.t.open_plaintext(c, 4, "localhost".into(), "openai_compatible".into(), who.clone(), S);
    w.close(sock(10, 4, 77), 100, 200, 2 * S);
    let c = crate::capture::decode::socket_conn(10, 5);
    w.t.open_plaintext(c, 5, "api.openai.com".into(), "openai".into(), who, S);
    w.t.ignored(c, "desync");
    w.close(sock(10, 5, 78), 1, 2, 2 * S);
    assert_eq!(w.spots(), [("api.openai.com".into(), "desync".into(), 1, 1, 2)]);
    assert_eq!(w.stats.snapshot().llm_connections_decoded, 1);
}

#[test]
fn a_long_lived_connection_is_judged_while_open_and_counted_once() {
    let mut w = World::new();
    let s = sock(10, 5, 1);
    w.hello(s, "api.openai.com", S);
    w.kernel.set(s, 100, 1000);
    w.tick(2 * S);
    assert!(w.spots().is_empty(), "not judged before {JUDGE_AFTER_NS} ns");
    w.tick(7 * S);
    assert_eq!(w.spots(), [("api.openai.com".into(), "no_plaintext_seen".into(), 1, 100, 1000)]);
    w.kernel.set(s, 150, 3000);
    w.tick(13 * S);
    assert_eq!(w.spots()[0].2..=w.spots()[0].4, 1..=3000);
    w.close(s, 160, 3500, 14 * S);
    assert_eq!(w.spots(), [("api.openai.com".into(), "no_plaintext_seen".into(), 1, 160, 3500)]);
    // Rows are deltas: summed, they are the totals, and the connection once.
    w.finish_all(20 * S);
    let rows = w.t.take_rows();
    let sum = |f: fn(&LlmTraffic) -> u64| rows.iter().map(f).sum::<u64>();
    assert_eq!((sum(|r| r.connections), sum(|r| r.bytes_sent), sum(|r| r.bytes_received)), (1, 160, 3500));
    assert!(rows.iter().all(|r| !r.decoded && r.reason.as_deref() == Some("no_plaintext_seen")));
    assert!(rows.iter().all(|r| tokentap_event::traffic::validate(r).is_ok()));
}

#[test]
fn a_process_exit_reads_its_sockets_from_the_kernel_and_sends_its_rows() {
    let mut w = World::new();
    let (a, b) = (sock(10, 5, 1), sock(10, 6, 2));
    w.hello(a, "api.openai.com", S);
    w.hello(b, "generativelanguage.googleapis.com", S);
    w.hello(sock(11, 5, 3), "api.openai.com", S);
    w.kernel.set(a, 10, 20);
    // The fd was reused by a socket we never heard of: its bytes are not a's.
    w.kernel.set(sock(10, 6, 99), 500, 500);
    w.exited(10, 2 * S);
    assert_eq!(
        w.spots(),
        [
            ("api.openai.com".into(), "no_plaintext_seen".into(), 1, 10, 20),
            ("generativelanguage.googleapis.com".into(), "no_plaintext_seen".into(), 1, 0, 0),
        ]
    );
    assert!(w.kernel.0.lock().unwrap().totals.is_empty(), "exited sockets are removed from the kernel's table");
    let rows = w.t.take_rows();
    assert!(rows.iter().all(|r| r.pid == Some(10)), "only the exited process's rows");
    assert_eq!(rows.len(), 2);
    assert!(w.t.ledger().blind_spots().iter().all(|b| b.exited));
    assert_eq!(w.t.open(), 1, "the other process's socket stays");
}

#[test]
fn a_close_for_another_socket_on_the_fd_is_not_ours_and_a_new_hello_finishes_a_lost_one() {
    let mut w = World::new();
    let s = sock(10, 5, 1);
    w.hello(s, "api.openai.com", S);
    w.close(sock(10, 5, 2), 9, 9, 2 * S);
    assert_eq!(w.t.open(), 1);
    // Its close was lost; a new socket on the fd says hello.
    w.hello(sock(10, 5, 3), "api.openai.com", 3 * S);
    assert_eq!(w.spots()[0].2, 1, "the first socket is judged");
    assert_eq!(w.t.open(), 1);
}

#[test]
fn the_socket_table_is_bounded() {
    let mut w = World::new();
    for fd in 0..(MAX_SOCKETS as i32 + 5) {
        w.hello(sock(10, fd, fd as u64 + 1), "api.openai.com", S);
    }
    assert_eq!(w.t.open(), MAX_SOCKETS);
    assert_eq!(w.stats.snapshot().llm_sockets_untracked, 5);
    let stopped = w.kernel.verdicts().iter().filter(|(_, count)| !count).count();
    assert_eq!(stopped, 5, "untracked sockets are not counted on in the kernel");
}

#[test]
fn the_ledger_and_the_metric_series_are_bounded() {
    let mut l = Ledger::default();
    let who = Who { comm: "java".into(), ..Default::default() };
    let one = Counts { connections: 1, sent: 1, received: 1 };
    for pid in 0..(ledger::MAX_ENTRIES as u32 + 50) {
        let add = Add {
            pid,
            who: &who,
            host: "api.openai.com",
            provider: "openai",
            verdict: Verdict::Unread(Unread::NoPlaintextSeen),
            detail: None,
            counts: one,
            wall_ns: pid as i128,
        };
        l.add(add);
    }
    assert_eq!(l.len(), ledger::MAX_ENTRIES);
    assert_eq!(l.evicted, 50);
    // Nothing counted is lost to eviction: the rows add up to every connection.
    let rows = l.flush(None);
    assert_eq!(rows.iter().map(|r| r.connections).sum::<u64>(), ledger::MAX_ENTRIES as u64 + 50);
    assert!(l.flush(None).is_empty(), "a flush sends each count once");

    let series = Series::default();
    for i in 0..(ledger::MAX_SERIES + 10) {
        series.add(&format!("h{i}"), "java", Verdict::Unread(Unread::NoPlaintextSeen), one);
    }
    let snap = series.snapshot();
    assert_eq!(snap.len(), ledger::MAX_SERIES + 1);
    let other = snap.iter().find(|(k, _)| k.host == "_other").map(|(_, c)| c.connections);
    assert_eq!(other, Some(10));
}

#[test]
fn arbitrary_hellos_never_panic() {
    let mut w = World::new();
    let good = client_hello(Some("api.openai.com"));
    let mut noise = crate::Noise(0x1234_5678_9abc_def1);
    for i in 0..3000u64 {
        let mut b = good.clone();
        let x = noise.next();
        let at = (x as usize) % b.len();
        b[at] = (x >> 32) as u8;
        let cut = &b[..((x >> 8) as usize % (b.len() + 1))];
        let h = Hello {
            sock: sock(10, (i % 64) as i32, i),
            cgroup_id: 0,
            comm: Comm::default(),
            ts_ns: i,
            call_len: 0,
            data: cut,
        };
        if let Some((host, provider)) = w.t.name(&h, &w.rules) {
            w.t.open_tls(h.sock, host, provider, Who::default(), i, &|_| (Unread::NoPlaintextSeen, None));
        }
    }
    assert!(w.t.open() <= 64);
}

#[test]
fn a_reused_connection_object_is_released_by_its_closed_socket_and_claims_the_next() {
    let mut w = World::new();
    w.facts.insert(10, (Unread::PlaintextNotSeen, None));
    let c = conn(10, 0x1);
    let (first, second) = (sock(10, 5, 1), sock(10, 5, 2));
    w.hello(first, "api.anthropic.com", S);
    w.t.plaintext_started(c, -1, "boringssl", S + 1);
    assert!(!w.t.released(c), "reading a socket");
    w.close(first, 10, 20, 2 * S);
    assert!(w.t.released(c), "its socket closed, the object lives on");
    // The object now carries a new connection (keep-alive across sockets):
    // the pipeline claims again at its next request.
    w.hello(second, "api.anthropic.com", 3 * S);
    w.t.plaintext_started(c, -1, "boringssl", 3 * S + 1);
    w.t.plaintext_host(c, -1, "boringssl", "api.anthropic.com", 3 * S + 1);
    assert!(!w.t.released(c));
    w.close(second, 30, 40, 4 * S);
    let snap = w.stats.snapshot();
    assert_eq!((snap.llm_connections_decoded, snap.llm_connections_unread), (2, 0));
    // Released keys are forgotten with their process or their object.
    w.t.conn_gone(c);
    assert!(!w.t.released(c));
    w.hello(sock(10, 6, 3), "api.anthropic.com", 5 * S);
    w.t.plaintext_started(conn(10, 0x2), -1, "boringssl", 5 * S + 1);
    w.exited(10, 6 * S);
    assert!(!w.t.released(conn(10, 0x2)));
}

#[test]
fn a_socket_missing_from_the_kernel_table_waits_a_period_for_its_close() {
    let mut w = World::new();
    let s = sock(10, 5, 1);
    w.hello(s, "api.openai.com", S);
    w.kernel.set(s, 100, 1000);
    w.tick(7 * S);
    assert_eq!(w.spots()[0].3..=w.spots()[0].4, 100..=1000);
    // Closed in the kernel (gone from its table); its close record, with the
    // last bytes, comes after the next refresh.
    w.kernel.0.lock().unwrap().totals.clear();
    w.tick(13 * S);
    assert_eq!(w.t.open(), 1, "not finished on the first miss");
    w.close(s, 150, 4000, 14 * S);
    assert_eq!(w.spots(), [("api.openai.com".into(), "no_plaintext_seen".into(), 1, 150, 4000)]);
    // A close that never comes: finished at the second miss.
    let t = sock(10, 6, 2);
    w.hello(t, "api.openai.com", 20 * S);
    w.tick(26 * S);
    assert_eq!(w.t.open(), 1);
    w.tick(32 * S);
    assert_eq!(w.t.open(), 0);
}

#[test]
fn the_ledger_evicts_decoded_traffic_before_blind_spots() {
    let mut l = Ledger::default();
    let who = Who { comm: "svc".into(), ..Default::default() };
    let one = Counts { connections: 1, sent: 1, received: 1 };
    let add = |l: &mut Ledger, pid: u32, verdict: Verdict| {
        l.add(Add {
            pid,
            who: &who,
            host: "api.openai.com",
            provider: "openai",
            verdict,
            detail: None,
            counts: one,
            wall_ns: i128::from(pid),
        })
    };
    // The oldest entries are blind spots; then decoded traffic fills the ledger.
    for pid in 0..10 {
        add(&mut l, pid, Verdict::Unread(Unread::NoPlaintextSeen));
    }
    for pid in 10..(ledger::MAX_ENTRIES as u32 + 20) {
        add(&mut l, pid, Verdict::Decoded("openssl"));
    }
    assert_eq!(l.len(), ledger::MAX_ENTRIES);
    assert_eq!(l.blind_spots().len(), 10, "every blind spot kept");
    assert_eq!((l.evicted, l.rows_dropped), (20, 0));
}
