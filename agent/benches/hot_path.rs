//! Per-call costs on the agent's hot path (run with `cargo xtask bench`):
//! - attribution of a call from a process already seen (target: no syscalls,
//!   nanoseconds: it is a cache lookup);
//! - a whole exchange through the pipeline (decode, HTTP, provider, record).
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokentap_agent::attribution::Attributor;
use tokentap_agent::http::h1::Head;
use tokentap_agent::pipeline::{Clock, Pipeline, PipelineConfig};
use tokentap_agent::sinks::Sink;
use tokentap_agent::stats::Stats;
use tokentap_agent_common::{DataHeader, EventKind, DATA_HEADER_LEN, DIR_EGRESS, DIR_INGRESS, FLAG_LAST};
use tokentap_event::LlmCall;

fn attribution(c: &mut Criterion) {
    let mut a = Attributor::new("/proc", 1024);
    let me = std::process::id();
    a.observe(me, 0);
    let head = Head::default();
    c.bench_function("attribution_fill_cached", |b| {
        b.iter(|| {
            let mut r = LlmCall::default();
            a.fill(&mut r, black_box(me), 0, &head);
            black_box(r)
        })
    });
}

struct Null;
impl Sink for Null {
    fn write(&mut self, r: &LlmCall) -> std::io::Result<()> {
        black_box(r);
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn record(conn: u64, dir: u32, data: &[u8]) -> Vec<u8> {
    let h = DataHeader {
        kind: EventKind::Data as u32,
        direction: dir,
        tgid: std::process::id(),
        tid: 1,
        ts_ns: 1,
        conn,
        cgroup_id: 0,
        call_len: data.len() as u64,
        offset: 0,
        stream_pos: 0,
        stream_base: 0,
        len: data.len() as u32,
        flags: FLAG_LAST,
        fd: -1,
        source: 1,
        comm: [0; 16],
    };
    // SAFETY: plain-old-data to bytes.
    let mut v = unsafe { std::slice::from_raw_parts((&h as *const DataHeader).cast::<u8>(), DATA_HEADER_LEN) }.to_vec();
    v.extend_from_slice(data);
    v
}

fn pipeline(c: &mut Criterion) {
    // A 2 KB request and an 8 KB response, as in the overhead target.
    let prompt = "x".repeat(1900);
    let body = format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{prompt}"}}]}}"#);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = "y".repeat(7800);
    let rbody = format!(
        r#"{{"id":"chatcmpl-1","model":"gpt-4o-mini-2024-07-18","choices":[{{"message":{{"content":"{answer}"}}}}],"usage":{{"prompt_tokens":500,"completion_tokens":1900}}}}"#
    );
    let resp =
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{rbody}", rbody.len());
    let (rq, rs) = (record(1, DIR_EGRESS, req.as_bytes()), record(1, DIR_INGRESS, resp.as_bytes()));
    let mut p = Pipeline::new(
        PipelineConfig::default(),
        vec![Box::new(Null)],
        Arc::new(Stats::default()),
        Clock::fixed(0),
        None,
    );
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes((rq.len() + rs.len()) as u64));
    g.bench_function("exchange_2k_8k", |b| {
        b.iter(|| {
            p.handle(black_box(&rq));
            p.handle(black_box(&rs));
        })
    });
    g.finish();
}

criterion_group!(benches, attribution, pipeline);
criterion_main!(benches);
