//! Wires the stages together for each ring-buffer record:
//! capture (decode, connection table) -> http (pairing, classified exchanges) ->
//! providers (a complete call) -> attribution (who) -> cost -> stats, coverage
//! and sinks. It holds no stage's vocabulary: each stage assembles its own part
//! and names its own drops (counted through [`crate::stats::Counted`]).
//! Single-threaded and free of kernel dependencies, so unit tests and fuzz
//! targets drive it with synthetic records.
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokentap_agent_common::Source;
use tokentap_event::PriceTable;

use crate::attribution::{keys::KeyHasher, kubernetes::PodIndex, AttributionConfig, Attributor, PodFound};
use crate::blind_spots::{SocketTable, Tracker, Who};
use crate::capture::decode::{decode, socket_conn};
use crate::capture::event::{Chunk, ConnKey, ConnMeta, Control, Direction, Hello, RawEvent};
use crate::capture::streams::{ConnDrop, ConnTable, Continuity, Entry};
use crate::coverage::Coverage;
use crate::discovery::Unprobed;
use crate::http::exchange::{Classified, Held, HttpConnection, Lost};
use crate::http::message::Head;
use crate::http::mute::{Mute, StreamAt};
use crate::providers::call::{Call, CallContext};
use crate::providers::{self, Endpoint, ProviderError, Rules};
use crate::sinks::Sink;
use crate::stats::Stats;

/// The pipeline's callers (run loop, bench, fuzz target) build it with these.
pub use crate::capture::clock::{monotonic_ns, Clock};
pub use handoff::{ended_meta, ended_prefix, OrphanConns};

pub struct PipelineConfig {
    pub max_body_bytes: usize,
    /// Bytes all connections may hold together; above it the connections holding
    /// most are dropped (counted in `connections_shed`) at the next tick.
    pub max_buffered_bytes: usize,
    pub max_connections: usize,
    pub idle_timeout_ns: u64,
    pub rules: Rules,
    pub prices: PriceTable,
    pub proc_root: std::path::PathBuf,
    pub attribution: AttributionConfig,
    /// Fingerprints credentials into `api_key_id`; none: the field stays null.
    pub keys: Option<KeyHasher>,
    /// Kubernetes pod metadata by container id, when watched.
    pub pods: Option<PodIndex>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 << 20,
            max_buffered_bytes: 256 << 20,
            max_connections: 16384,
            idle_timeout_ns: 300 * 1_000_000_000,
            rules: Rules::default(),
            prices: PriceTable::shipped(),
            proc_root: "/proc".into(),
            attribution: AttributionConfig::default(),
            keys: None,
            pods: None,
        }
    }
}

/// What discovery hears from the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessEvent {
    /// The process exec'd a new program.
    Exec(u32),
    /// The process's dynamic loader mapped or unmapped libraries.
    LibsChanged(u32),
}

/// Tells the kernel to stop copying a connection's calls (and to forget it).
pub trait ConnFilter: Send {
    /// Stop copying the connection whose stream began at `base` (its
    /// chunks' `stream_base`): the kernel drops the word if its key names
    /// another connection by then (0: whichever it names).
    fn ignore(&mut self, tgid: u32, conn: u64, base: u64);
    /// Not to copy part of the connection's ingress stream: the reads inside
    /// a range, an HTTP/2 stream's DATA (bodies no one records: `http::mute`).
    fn mute(&mut self, tgid: u32, conn: u64, what: Mute);
    fn forget(&mut self, tgid: u32, conn: u64);
    /// Hand a connection's decoding state to the agent taking it over (an
    /// upgrade, see `handoff`); false when it could not be stored.
    fn hand_off(&mut self, _tgid: u32, _conn: u64, _state: &[u8]) -> bool {
        false
    }
    /// The state the agent before this one handed over for a connection
    /// this one took from it.
    fn handed(&mut self, _tgid: u32, _conn: u64) -> Handed {
        Handed::Never
    }
    /// Does an agent this one took over from still run (a state may come)?
    fn handover_pending(&mut self) -> bool {
        false
    }
    /// Periodic upkeep of what agents share (leftovers of handed-on states).
    fn tidy(&mut self) {}
}

/// [`ConnFilter::handed`]: a state, not yet (the agent before still runs),
/// or never.
#[derive(Debug, PartialEq, Eq)]
pub enum Handed {
    State(Vec<u8>),
    Wait,
    Never,
}

struct Conn {
    http: HttpConnection<Endpoint>,
    counted_ignore: bool,
    /// The stream base the kernel was last told to ignore this connection
    /// under: told again when the kernel's count restarted (an ignore it
    /// dropped as another connection's).
    filtered: Option<u64>,
    /// Its first request's `Host` was passed to the blind-spot tracker.
    named: bool,
}

pub struct Pipeline {
    cfg: PipelineConfig,
    /// Set by [`Pipeline::finish`]: an incomplete call is one the exit cut.
    exiting: bool,
    conns: ConnTable<Conn>,
    attribution: Attributor,
    sinks: Vec<Box<dyn Sink>>,
    stats: Arc<Stats>,
    clock: Clock,
    exec_tx: Option<Sender<ProcessEvent>>,
    exchanges: Vec<Classified<Endpoint>>,
    filter: Option<Box<dyn ConnFilter>>,
    /// Connections taken over whose records wait for the state the agent
    /// before hands on (see `handoff`).
    parked: handoff::Parked,
    /// Connections taken over with a state, until their first record.
    resumed: std::collections::HashMap<ConnKey, HttpConnection<Endpoint>>,
    coverage: Coverage,
    unprobed: Option<Receiver<Unprobed>>,
    /// Connections to LLM API hosts: read, or blind spots.
    blind: Tracker,
}

impl Pipeline {
    pub fn new(
        mut cfg: PipelineConfig,
        sinks: Vec<Box<dyn Sink>>,
        stats: Arc<Stats>,
        clock: Clock,
        exec_tx: Option<Sender<ProcessEvent>>,
    ) -> Self {
        let attribution = Attributor::new(cfg.proc_root.clone(), cfg.max_connections)
            .with_config(cfg.attribution.clone(), cfg.keys.take())
            .with_pods(cfg.pods.clone());
        let conns = ConnTable::new(cfg.max_connections);
        let blind = Tracker::new(stats.clone(), clock);
        Self {
            cfg,
            exiting: false,
            conns,
            attribution,
            sinks,
            stats,
            clock,
            exec_tx,
            exchanges: Vec::new(),
            filter: None,
            parked: Default::default(),
            resumed: Default::default(),
            coverage: Coverage::default(),
            unprobed: None,
            blind,
        }
    }

    /// The kernel's socket table: which TLS sockets to keep counting, and
    /// the bytes of those tracked.
    pub fn with_socket_table(mut self, table: Box<dyn SocketTable>) -> Self {
        self.blind =
            std::mem::replace(&mut self.blind, Tracker::new(self.stats.clone(), self.clock)).with_kernel(table);
        self
    }

    /// The LLM traffic not read, by process, host and reason.
    pub fn blind_spots(&self) -> Vec<tokentap_event::traffic::BlindSpot> {
        self.blind.ledger().blind_spots()
    }

    /// Push "ignored" verdicts down to the kernel, which then skips those
    /// connections' calls instead of copying them.
    pub fn with_kernel_filter(mut self, filter: Box<dyn ConnFilter>) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Per-process capture methods and blind spots.
    pub fn coverage(&self) -> &Coverage {
        &self.coverage
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Bytes held across all connections.
    pub fn buffered_bytes(&self) -> usize {
        self.conns.iter().map(|(_, e)| e.state.http.buffered()).sum()
    }

    /// LLM calls begun on some connection and not yet complete.
    pub fn calls_in_flight(&self) -> usize {
        self.conns.iter().map(|(_, e)| e.state.http.calls_in_flight()).sum()
    }

    /// One ring-buffer record.
    pub fn handle(&mut self, raw: &[u8]) {
        Stats::inc(&self.stats.events);
        match decode(raw) {
            Ok(RawEvent::Data(c)) if self.park(&c, raw) => {}
            Ok(RawEvent::Data(c)) => self.on_data(&c),
            Ok(RawEvent::Hello(h)) => self.on_hello(&h),
            Ok(RawEvent::Control(c)) => self.on_control(c),
            Err(e) => {
                self.stats.count(e);
                tracing::debug!(error = %e, "bad ring-buffer record");
            }
        }
    }

    fn on_data(&mut self, c: &Chunk<'_>) {
        Stats::add(&self.stats.bytes, c.data.len() as u64);
        // An empty chunk only says where a read skipped to (muted HTTP/2
        // DATA): news for a connection being decoded, and no other.
        if c.data.is_empty() && !self.conns.contains(&c.key) {
            return;
        }
        let max_body = self.cfg.max_body_bytes;
        if !c.owner.source.ends_are_seen() && c.direction == Direction::Egress {
            // The connection object's address now carries a new connection.
            let restarts = self.conns.get_mut(&c.key).is_some_and(|e| e.state.http.restarts_with(c.data));
            if let Some(e) = restarts.then(|| self.conns.remove(&c.key)).flatten() {
                self.close_entry(e, c.ts_ns);
            }
        }
        if c.owner.source.key_may_move()
            && self.conns.get_mut(&c.key).is_none_or(|e| e.state.http.replaceable_by(c.direction, c.data))
        {
            self.follow_moved_websocket(c);
        }
        let mut lost = Lost::default();
        // Taken over with the decoding state the agent before handed on.
        let resumed = if self.resumed.is_empty() { None } else { self.resumed.remove(&c.key) };
        // Ignored by the agent before: counted there.
        let counted_ignore = resumed.as_ref().is_some_and(|h| h.ignored().is_some());
        let new_conn = || Conn {
            http: resumed.unwrap_or_else(|| HttpConnection::new(max_body)),
            counted_ignore,
            filtered: None,
            named: false,
        };
        let (entry, continuity, evicted) = self.conns.on_data(c, new_conn);
        let (meta, owner) = (entry.meta, c.owner);
        if entry.fresh {
            entry.fresh = false;
            Stats::inc(&self.stats.connections);
            self.coverage.connection(owner.tgid, &owner.comm.to_string(), owner.source);
            self.attribution.observe(owner.tgid, owner.cgroup_id);
            if owner.source != Source::Socket {
                self.blind.plaintext_started(c.key, c.fd, owner.source.as_str(), c.ts_ns);
            }
            tracing::debug!(pid = owner.tgid, conn = c.key.conn, fd = c.fd, "new connection");
        }
        let rules = &self.cfg.rules;
        let conn = &mut entry.state;
        // The first request's host (and what it was classified as) names the
        // connection for the blind-spot tracker; so does a later request when
        // the connection no longer reads a socket (a TLS object reused for a
        // new connection after the socket it read closed: Bun's keep-alive).
        let mut first: Option<(String, Option<String>)> = None;
        let renamed = conn.named && owner.source != Source::Socket && self.blind.released(c.key);
        let named = conn.named && !renamed;
        let mut classify = |head: &Head| {
            let endpoint = rules.classify(head);
            if !named && first.is_none() {
                first = head.header("host").map(|h| (h.to_owned(), endpoint.as_ref().map(|e| e.provider.clone())));
            }
            endpoint
        };
        let exchanges = &mut self.exchanges;
        let at = StreamAt { base: c.stream_base, pos: c.stream_pos };
        conn.http.chunk_starts_call(c.offset == 0);
        let mut held =
            conn.http.on_chunk(c.direction, continuity, at, c.data, c.ts_ns, &mut classify, exchanges, &mut lost);
        if c.skip_after > 0 && held == Held::Within {
            // The read went on past these bytes, skipped (muted HTTP/2 DATA):
            // where it ended, as an empty chunk there would say.
            // Wrapping, as the decoder's positions are: a record's fields are
            // the kernel's word, or garbage (a fuzz input overflowed the sum).
            let pos = c.stream_pos.wrapping_add(c.data.len() as u64).wrapping_add(c.skip_after);
            let end = StreamAt { pos, ..at };
            let next = Continuity::InOrder;
            held = conn.http.on_chunk(c.direction, next, end, &[], c.ts_ns, &mut classify, exchanges, &mut lost);
        }
        if held == Held::OverCap {
            self.stats.count(ConnDrop::Shed);
        }
        while let Some(what) = conn.http.take_mute() {
            Stats::inc(&self.stats.responses_muted);
            if let Some(f) = self.filter.as_mut() {
                f.mute(c.key.tgid, c.key.conn, what);
            }
        }
        if let Some((host, classified)) = first {
            conn.named = true;
            if owner.source != Source::Socket {
                if renamed {
                    self.blind.plaintext_started(c.key, c.fd, owner.source.as_str(), c.ts_ns);
                }
                self.blind.plaintext_host(c.key, c.fd, owner.source.as_str(), &host, c.ts_ns);
            } else if let Some(provider) = rules.llm_host(&host).map(str::to_owned).or(classified) {
                let who = who(&mut self.attribution, &owner);
                let host = crate::providers::host_without_port(&host).to_ascii_lowercase();
                self.blind.open_plaintext(c.key, c.fd, host, provider, who, c.ts_ns);
            }
        }
        if let Some(why) = conn.http.ignored() {
            if !conn.counted_ignore {
                conn.counted_ignore = true;
                self.stats.count(why);
                self.blind.ignored(c.key, why.as_str());
                self.coverage.not_decoded(owner.tgid, &owner.comm.to_string(), owner.source, why);
            }
            let told = conn.filtered == Some(c.stream_base);
            if let (Some(f), true, false) = (self.filter.as_mut(), owner.source.ends_are_seen(), told) {
                f.ignore(c.key.tgid, c.key.conn, c.stream_base);
                conn.filtered = Some(c.stream_base);
            }
        }
        let finished = conn.http.finished();
        self.count_lost(&lost);
        self.emit_exchanges(&meta);
        if finished {
            // Closed both ways: gone now, so a reused key starts afresh.
            if let Some(e) = self.conns.remove(&c.key) {
                self.close_entry(e, c.ts_ns);
            }
        }
        if let Some((_, e)) = evicted {
            self.stats.count(ConnDrop::Evicted);
            self.close_entry(e, c.ts_ns);
        }
    }

    /// A new key whose first bytes continue a WebSocket upgrade waiting under
    /// another key of the same process (the 101 it awaits, or the first
    /// frame after it): the connection object moved (rustls inside
    /// tungstenite's handshake, which moves the stream at each would-block),
    /// and the connection goes on under the new key. The earliest waiting
    /// upgrade is taken when several could be. A connection given up or
    /// finished under the new key is stale (its object was freed) and goes.
    fn follow_moved_websocket(&mut self, c: &Chunk<'_>) {
        let waiting = self
            .conns
            .iter()
            .filter(|(k, e)| k.tgid == c.key.tgid && **k != c.key && e.meta.source == c.owner.source)
            .filter_map(|(k, e)| Some((e.state.http.continues_with(c.direction, c.data)?, *k)))
            .min_by_key(|(since, _)| *since);
        if let Some((_, from)) = waiting {
            if let Some(stale) = self.conns.remove(&c.key) {
                self.close_entry(stale, c.ts_ns);
            }
            if self.conns.rekey(&from, c.key) {
                tracing::debug!(pid = c.key.tgid, from = from.conn, to = c.key.conn, "WebSocket moved to a new key");
            }
        }
    }

    /// A TLS client socket's first write: named, and tracked when its host is
    /// an LLM API's.
    fn on_hello(&mut self, h: &Hello<'_>) {
        let Some((host, provider)) = self.blind.name(h, &self.cfg.rules) else { return };
        let owner = ConnMeta { tgid: h.sock.tgid, cgroup_id: h.cgroup_id, comm: h.comm, source: Source::Socket };
        // Now, while a short-lived client still runs.
        let who = who(&mut self.attribution, &owner);
        let cov = &self.coverage;
        self.blind.open_tls(h.sock, host, provider, who, h.ts_ns, &|pid| cov.unread(pid));
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::ConnClosed { key, ts_ns } => {
                if !self.end_held(key, ts_ns) {
                    self.hand_off_at_end(key);
                    self.end_conn(key, ts_ns);
                }
            }
            Control::SockClosed { sock, ts_ns, totals, tls } => {
                if !tls {
                    // A plaintext socket's stream ends here (after its last bytes).
                    self.on_control(Control::ConnClosed { key: socket_conn(sock.tgid, sock.fd), ts_ns });
                }
                let cov = &self.coverage;
                self.blind.sock_closed(sock, totals, ts_ns, &|pid| cov.unread(pid));
            }
            Control::Exit { tgid, ts_ns } => {
                self.unpark_process(tgid);
                for (k, e) in self.conns.remove_process(tgid) {
                    if let (Some(_), Some(f)) = (e.state.filtered, self.filter.as_mut()) {
                        f.forget(k.tgid, k.conn);
                    }
                    self.close_entry(e, ts_ns);
                }
                let cov = &self.coverage;
                self.blind.exited(tgid, ts_ns, &|pid| cov.unread(pid));
                self.write_traffic();
                self.attribution.forget(tgid);
                self.coverage.exited(tgid);
            }
            Control::Exec { tgid } => {
                // A new program image: it may bring a TLS library we have not seen.
                self.attribution.forget(tgid);
                self.tell_discovery(ProcessEvent::Exec(tgid));
            }
            Control::LibsChanged { tgid } => self.tell_discovery(ProcessEvent::LibsChanged(tgid)),
        }
    }

    /// Pass a process event to discovery; a full queue drops it (counted), a
    /// discovery thread that has stopped is not a full queue.
    fn tell_discovery(&self, event: ProcessEvent) {
        if let Some(tx) = &self.exec_tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(event) {
                Stats::inc(&self.stats.process_events_dropped);
            }
        }
    }

    /// A connection ended: its calls in flight are cut (counted).
    fn end_conn(&mut self, key: ConnKey, ts_ns: u64) {
        self.blind.conn_gone(key);
        if let Some(e) = self.conns.remove(&key) {
            self.coverage.closed(e.meta.tgid, &e.meta.comm.to_string(), e.meta.source);
            self.close_entry(e, ts_ns);
        }
    }

    fn close_entry(&mut self, mut e: Entry<Conn>, ts: u64) {
        let mut lost = Lost::default();
        e.state.http.close(ts, &mut self.exchanges, &mut lost);
        self.count_lost(&lost);
        self.emit_exchanges(&e.meta);
    }

    /// Discovery's reports of processes mapping a TLS library it does not
    /// probe, for coverage.
    pub fn with_unprobed(mut self, rx: Receiver<Unprobed>) -> Self {
        self.unprobed = Some(rx);
        self
    }

    /// Expire idle connections; call periodically with the current monotonic time.
    pub fn tick(&mut self, now_mono_ns: u64) {
        if let Some(rx) = &self.unprobed {
            for u in rx.try_iter().take(4096) {
                let what = format!("{}: {}", u.library.as_str(), u.path.display());
                self.coverage.not_probed(u.pid, &u.comm, &what, &u.reason);
            }
        }
        Stats::set(&self.stats.kubernetes_containers, self.attribution.containers_known().unwrap_or(0) as u64);
        let cov = &self.coverage;
        self.blind.tick(now_mono_ns, &|pid| cov.unread(pid));
        self.write_traffic();
        if let Some(f) = self.filter.as_mut() {
            f.tidy();
        }
        let cutoff = now_mono_ns.saturating_sub(self.cfg.idle_timeout_ns);
        for (_, e) in self.conns.expire(cutoff) {
            self.stats.count(ConnDrop::Expired);
            self.close_entry(e, now_mono_ns);
        }
        self.shed_memory();
    }

    /// Keep the bytes held by all connections under `max_buffered_bytes` by
    /// dropping the connections that hold most (their calls count as dropped).
    fn shed_memory(&mut self) {
        let shed = self.conns.shed(self.cfg.max_buffered_bytes, |c| c.http.buffered());
        if shed.is_empty() {
            return;
        }
        for (_, mut e) in shed {
            let mut lost = Lost::default();
            e.state.http.lose_sync(&mut lost);
            self.count_lost(&lost);
            self.stats.count(ConnDrop::Shed);
        }
        tracing::warn!(limit = self.cfg.max_buffered_bytes, "buffered bytes over the limit: connections dropped");
    }

    /// Shut down: every open connection is closed (in-flight calls count as dropped).
    /// The agent stops (its probes are detached): every connection closes; a
    /// call still without its response counts in `dropped_at_exit`.
    pub fn finish(&mut self) {
        self.unpark_all();
        self.exiting = true;
        for (_, mut e) in self.conns.expire(u64::MAX) {
            let mut lost = Lost::default();
            // A request still being written (a state too large to hand on:
            // a body of megabytes) is cut by the exit too: `close` counts it.
            e.state.http.close(monotonic_ns(), &mut self.exchanges, &mut lost);
            Stats::add(&self.stats.dropped_at_exit, std::mem::take(&mut lost.unanswered));
            self.count_lost(&lost);
            self.emit_exchanges(&e.meta);
        }
        let cov = &self.coverage;
        self.blind.finish_all(monotonic_ns(), &|pid| cov.unread(pid));
        self.write_traffic();
        self.flush();
        let since = std::time::Instant::now();
        for s in &mut self.sinks {
            s.closing(since);
        }
    }

    /// The LLM traffic rows the tracker has ready, to every sink.
    fn write_traffic(&mut self) {
        for row in self.blind.take_rows() {
            for s in &mut self.sinks {
                if let Err(e) = s.write_traffic(&row) {
                    Stats::inc(&self.stats.sink_errors);
                    tracing::warn!(error = %e, "sink write failed");
                }
            }
        }
    }

    pub fn flush(&mut self) {
        self.unpark();
        for s in &mut self.sinks {
            if let Err(e) = s.flush() {
                Stats::inc(&self.stats.sink_errors);
                tracing::warn!(error = %e, "sink flush failed");
            }
        }
    }

    fn count_lost(&self, lost: &Lost) {
        for (what, n) in lost.counts() {
            self.stats.count_n(what, n);
        }
    }

    /// Each exchange the HTTP stage completed: its call, attributed and priced,
    /// to the counters, the coverage and every sink.
    fn emit_exchanges(&mut self, meta: &ConnMeta) {
        for exchange in std::mem::take(&mut self.exchanges) {
            let attribution = &self.attribution;
            let hash = |b: &[u8]| attribution.hash_prompt(b);
            let cx = CallContext { max_body: self.cfg.max_body_bytes, clock: self.clock, hash: &hash };
            let Call { mut record, body_user, body_unread } = match providers::call(&exchange, meta, &cx) {
                Ok(c) => c,
                Err(ProviderError::Incomplete) if self.exiting => {
                    Stats::inc(&self.stats.dropped_at_exit);
                    continue;
                }
                Err(e) => {
                    self.stats.count(&e);
                    tracing::debug!(error = %e, provider = %exchange.endpoint.provider, "LLM call dropped");
                    continue;
                }
            };
            let found = self.attribution.attribute(&mut record, meta, &exchange.exchange.request.head, body_user);
            Stats::add(&self.stats.records_pod_unknown, u64::from(found == PodFound::Unknown));
            record.apply_cost(&self.cfg.prices);
            Stats::inc(&self.stats.records);
            if body_unread {
                Stats::inc(&self.stats.records_body_unread);
            }
            Stats::add(&self.stats.cost_micro_usd, (record.cost_usd.unwrap_or(0.0) * 1e6).round() as u64);
            self.coverage.record(meta.tgid, record.comm.as_deref().unwrap_or(""), meta.source);
            for s in &mut self.sinks {
                if let Err(e) = s.write(&record) {
                    Stats::inc(&self.stats.sink_errors);
                    tracing::warn!(error = %e, "sink write failed");
                }
            }
        }
    }
}

/// Who a process is, for the blind-spot tracker: what its call records say.
fn who(attribution: &mut Attributor, owner: &ConnMeta) -> Who {
    let mut r = tokentap_event::LlmCall { comm: Some(owner.comm.to_string()), ..Default::default() };
    attribution.fill(&mut r, owner.tgid, owner.cgroup_id, &Head::default());
    Who {
        comm: owner.comm.to_string(),
        exe: r.exe,
        container_id: r.container_id,
        pod: r.pod,
        namespace: r.namespace,
        workload: r.workload,
        service: r.service,
    }
}

mod handoff;
#[cfg(test)]
mod tests;
