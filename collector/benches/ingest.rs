//! Collector ingest throughput, records per second on one core:
//! - `decode_batch`: an agent's zstd NDJSON batch -> validated records -> rows;
//! - `find_repeats`: numbering the rows' prompt repeats and conversation turns
//!   (`repeats`, in the writer before each insert);
//! - `rowbinary_insert`: rows -> RowBinary -> an HTTP insert to a local server
//!   that reads and discards the body (ClickHouse's own work excluded: that is
//!   ClickHouse's capacity, measured by ClickHouse).
//!
//! Target (issue #4): at least 100k records/s per core on the encode path.
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokentap_collector::repeats::{RepeatMetrics, Repeats};
use tokentap_collector::store::{self, CallRow};
use tokentap_event::{wire, LlmCall, PromptFeatures, ToolCall};

fn records(n: usize) -> Vec<LlmCall> {
    (0..n)
        .map(|i| LlmCall {
            event_id: LlmCall::new_event_id(),
            ts: LlmCall::format_ts(1_763_900_000_000_000_000 + i as i128 * 1_000_000),
            duration_ms: Some(812.5),
            ttft_ms: Some(120.0),
            provider: "openai".into(),
            operation: "chat".into(),
            request_model: Some("gpt-4o-mini".into()),
            response_model: Some("gpt-4o-mini-2024-07-18".into()),
            stream: i % 2 == 0,
            status: Some(200),
            input_tokens: Some(1200 + i as u64 % 500),
            output_tokens: Some(80),
            cached_input_tokens: Some(512),
            reasoning_tokens: Some(0),
            usage_source: Some(tokentap_event::UsageSource::Reported),
            cost_usd: Some(0.000231),
            response_id: Some(format!("chatcmpl-{i:024}")),
            request_id: Some(format!("req_{i:016}")),
            server: Some("api.openai.com".into()),
            path: Some("/v1/chat/completions".into()),
            http_version: Some("1.1".into()),
            tls_library: Some("openssl".into()),
            pid: Some(4242),
            comm: Some("python3".into()),
            exe: Some("/usr/bin/python3.11".into()),
            container_id: Some("0123456789abcdef".repeat(4)),
            pod: Some("checkout-7d9f8b6c5-x2x9z".into()),
            namespace: Some("payments".into()),
            workload: Some("checkout".into()),
            service: Some("checkout".into()),
            api_key_id: Some("k_0123456789abcdef01234567".into()),
            labels: [("team".to_string(), "payments".to_string())].into(),
            // A tenth of the prompts repeat; conversations of eight turns.
            features: Some(PromptFeatures {
                prompt_hash: Some(format!("{:024x}", if i % 10 == 0 { i % 50 } else { i })),
                prefix_hash: Some(format!("{:024x}", i % 3)),
                prefix_tokens: Some(1800),
                conversation_hash: Some(format!("{:024x}", i / 8)),
                message_count: 1 + 2 * (i as u32 % 8),
                tool_calls: vec![ToolCall { name: "search".into(), args_hash: format!("{:016x}", i % 7) }],
                json_share: 0.2,
                whitespace_share: 0.05,
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let batch = records(5000);
    let body = wire::encode(&batch);
    let mut g = c.benchmark_group("collector");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("decode_batch", |b| {
        b.iter(|| {
            let rs = wire::decode(Some("zstd"), &body, 256 << 20, &wire::Limits::now(None)).unwrap();
            rs.into_iter().map(|r| CallRow::from_record(r, "prod")).collect::<Vec<_>>()
        })
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let addr = rt.block_on(async {
        let app = axum::Router::new().fallback(|body: axum::body::Bytes| async move { format!("{}", body.len()) });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app.layer(axum::extract::DefaultBodyLimit::disable())).await });
        addr
    });
    let client = clickhouse::Client::default()
        .with_url(format!("http://{addr}"))
        .with_validation(false)
        .with_compression(clickhouse::Compression::None);
    let mut rows: Vec<CallRow> = batch.iter().cloned().map(|r| CallRow::from_record(r, "prod")).collect();
    // One finder across iterations, at its default size: the batch's keys stay
    // remembered, as a steady stream's recent ones are.
    let (mut repeats, m) = (Repeats::new(1_000_000), RepeatMetrics::default());
    g.bench_function("find_repeats", |b| b.iter(|| repeats.mark(&mut rows, &m)));
    g.bench_function("rowbinary_insert", |b| b.iter(|| rt.block_on(store::insert(&client, &rows)).unwrap()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
