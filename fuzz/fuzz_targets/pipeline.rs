//! The whole user-space pipeline fed arbitrary ring-buffer records: decode,
//! connection table, HTTP, providers. Input: [u16 length][record]...
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tokentap_agent::pipeline::{Clock, Pipeline, PipelineConfig};
use tokentap_agent::stats::Stats;

fuzz_target!(|data: &[u8]| {
    // Built field by field: `Default` would parse the shipped price table per input.
    let cfg = PipelineConfig {
        max_body_bytes: 1 << 16,
        max_buffered_bytes: 1 << 20,
        max_connections: 8,
        idle_timeout_ns: 1_000_000_000,
        rules: tokentap_agent::providers::Rules::default(),
        prices: tokentap_event::PriceTable::empty(),
        proc_root: "/nonexistent".into(),
        attribution: Default::default(),
        keys: None,
        pods: None,
    };
    let mut p = Pipeline::new(cfg, Vec::new(), Arc::new(Stats::default()), Clock::fixed(0), None);
    let mut rest = data;
    while rest.len() >= 2 {
        let n = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        rest = &rest[2..];
        let n = n.min(rest.len());
        p.handle(&rest[..n]);
        rest = &rest[n..];
        assert!(p.connections() <= 8);
    }
    p.tick(u64::MAX);
    p.finish();
});
