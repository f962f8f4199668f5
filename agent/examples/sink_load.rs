//! Load generator for the collector sink: writes synthetic but realistic
//! records (~700 bytes of JSON each) at a steady rate through the real
//! `CollectorSink`, flushing as the pipeline does, and reports what the sink
//! delivered and what it cost as JSON.
//!
//! ```sh
//! cargo run --release -p tokentap-agent --example sink_load -- \
//!   --url http://127.0.0.1:8787 --rate 5000 --seconds 60 --spool-dir /tmp/spool --out result.json
//! ```
//!
//! The rate is paced by the clock (every ~1 ms tick writes what is due since
//! the start), so a slow tick is caught up rather than drifting. After the
//! load it waits (60 s at most) for the spool to drain.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Serialize;
use tokentap_agent::sinks::collector::{self, CollectorSettings, CollectorSink};
use tokentap_agent::sinks::Sink;
use tokentap_agent::stats::Stats;
use tokentap_event::{LlmCall, PromptFeatures, ToolCall, UsageSource};

#[derive(Parser)]
#[command(about = "Drive the collector sink at a steady rate and report delivery and cost.")]
struct Args {
    /// Collector base URL.
    #[arg(long)]
    url: String,
    /// Bearer token file.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Records per second.
    #[arg(long)]
    rate: f64,
    /// How long to write.
    #[arg(long)]
    seconds: f64,
    /// Spool directory (created).
    #[arg(long)]
    spool_dir: PathBuf,
    #[arg(long, default_value_t = collector::DEFAULT_BATCH_RECORDS)]
    batch_records: usize,
    #[arg(long, default_value_t = collector::DEFAULT_BATCH_AGE.as_millis() as u64)]
    batch_age_ms: u64,
    #[arg(long, default_value_t = collector::DEFAULT_MAX_IN_FLIGHT)]
    max_in_flight: usize,
    #[arg(long, default_value_t = collector::DEFAULT_MERGE_RECORDS)]
    merge_records: usize,
    /// Where the result goes (JSON).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Serialize)]
struct Sample {
    t_s: f64,
    spool_bytes: u64,
    spool_batches: u64,
    records_sent: u64,
}

#[derive(Serialize)]
struct Report {
    url: String,
    rate_target: f64,
    seconds: f64,
    batch_records: usize,
    batch_age_ms: u64,
    max_in_flight: usize,
    merge_records: usize,
    records_written: u64,
    achieved_rate: f64,
    records_sent: u64,
    records_rejected: u64,
    records_invalid: u64,
    batches_sent: u64,
    send_errors: u64,
    spool_dropped_records: u64,
    spool_bytes_max: u64,
    /// From the end of the load until the spool was empty; null: not within 60 s.
    drain_seconds: Option<f64>,
    spool_bytes_left: u64,
    cpu_user_s: f64,
    cpu_sys_s: f64,
    max_rss_bytes: u64,
    samples: Vec<Sample>,
}

const PROVIDERS: [(&str, &str, &str); 4] = [
    ("openai", "gpt-4o-mini-2024-07-18", "api.openai.com"),
    ("anthropic", "claude-sonnet-4-20250514", "api.anthropic.com"),
    ("google", "gemini-2.5-flash", "generativelanguage.googleapis.com"),
    ("openai", "gpt-4.1-2025-04-14", "api.openai.com"),
];

/// `len` hex digits that look random (splitmix64 of `n`), like hashes and ids.
fn hex(n: u64, len: usize) -> String {
    let mut x = n;
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        s.push_str(&format!("{:016x}", z ^ (z >> 31)));
    }
    s.truncate(len);
    s
}

/// A record shaped like a captured one (a fresh UUIDv7, `ts` now).
fn synthetic(i: u64) -> LlmCall {
    let (provider, model, server) = PROVIDERS[(i % 4) as usize];
    let input = 500 + (i * 7919) % 4000;
    let output = 50 + (i * 104_729) % 800;
    let cached = if i.is_multiple_of(3) { Some(input / 2) } else { Some(0) };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let svc = ["checkout", "search", "support-bot", "summariser"][(i % 4) as usize];
    LlmCall {
        event_id: LlmCall::new_event_id(),
        ts: LlmCall::format_ts(now.as_nanos() as i128),
        duration_ms: Some(300.0 + (i % 5000) as f64 * 0.7),
        ttft_ms: Some(120.0 + (i % 900) as f64 * 0.3),
        provider: provider.into(),
        operation: match provider {
            "anthropic" => "messages",
            "google" => "generate_content",
            _ => "chat",
        }
        .into(),
        request_model: Some(model.split('-').take(3).collect::<Vec<_>>().join("-")),
        response_model: Some(model.into()),
        stream: i.is_multiple_of(2),
        status: Some(200),
        input_tokens: Some(input),
        output_tokens: Some(output),
        cached_input_tokens: cached,
        cache_write_tokens: Some(0),
        reasoning_tokens: Some(0),
        input_audio_tokens: None,
        cached_audio_tokens: None,
        output_audio_tokens: None,
        usage_source: Some(UsageSource::Reported),
        cost_usd: Some((input as f64 * 0.15 + output as f64 * 0.6) / 1e6),
        response_id: Some(match provider {
            "anthropic" => format!("msg_{}", hex(i, 24)),
            _ => format!("chatcmpl-{}", hex(i, 20)),
        }),
        request_id: None,
        server: Some(server.into()),
        path: Some(match provider {
            "anthropic" => "/v1/messages".into(),
            "google" => format!("/v1beta/models/{model}:generateContent"),
            _ => "/v1/chat/completions".into(),
        }),
        http_version: Some("1.1".into()),
        tls_library: Some("openssl".into()),
        pid: Some(1000 + (i % 64) as u32),
        comm: Some("python3".into()),
        exe: Some("/usr/local/bin/python3.12".into()),
        container_id: Some(hex(i % 64 + 1_000_000, 64)),
        pod: Some(format!("{svc}-7d9f8c6b5-{}", hex(i % 64, 5))),
        namespace: Some("prod".into()),
        workload_kind: None,
        workload: Some(svc.into()),
        service: Some(svc.into()),
        end_user: None,
        api_key_id: Some(hex(i % 8, 16)),
        feature: None,
        service_tier: None,
        labels: [("team".to_owned(), "platform".to_owned())].into(),
        features: Some(PromptFeatures {
            prompt_hash: Some(hex(i ^ (1 << 40), 16)),
            prefix_hash: Some(hex((i % 16) ^ (2 << 40), 16)),
            prefix_tokens: Some(400),
            conversation_hash: Some(hex((i % 256) ^ (3 << 40), 16)),
            simhash: Some(hex(i ^ (4 << 40), 16)),
            message_count: 3 + (i % 7) as u32,
            tool_calls: if i.is_multiple_of(4) {
                vec![ToolCall { name: "search".into(), args_hash: hex(i, 16) }]
            } else {
                vec![]
            },
            json_share: 0.12,
            whitespace_share: 0.03,
            minify_saved_tokens: None,
            max_tokens: Some(1024),
            duplicate_chunk_share: 0.0,
            embedding_inputs: None,
        }),
    }
}

/// (user s, system s, max RSS bytes) of this process.
fn rusage() -> (f64, f64, u64) {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (s(ru.ru_utime), s(ru.ru_stime), ru.ru_maxrss as u64 * 1024)
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    std::fs::create_dir_all(&a.spool_dir)?;
    let stats = Arc::new(Stats::default());
    let cfg = CollectorSettings {
        token_file: a.token_file.clone(),
        batch_records: a.batch_records,
        batch_age_ms: a.batch_age_ms,
        max_in_flight: a.max_in_flight,
        merge_records: a.merge_records,
        cluster: "sink-load".into(),
        drain_timeout: Duration::from_secs(1),
        ..CollectorSettings::new(a.url.clone(), a.spool_dir.clone())
    };
    let mut sink = CollectorSink::new(cfg, stats.clone())?;
    let start = Instant::now();
    let load = Duration::from_secs_f64(a.seconds);
    let mut samples = Vec::new();
    let mut sample = |t: Instant| {
        let s = stats.snapshot();
        samples.push(Sample {
            t_s: t.duration_since(start).as_secs_f64(),
            spool_bytes: s.get("collector_spool_bytes"),
            spool_batches: s.get("collector_spool_batches"),
            records_sent: s.get("collector_records_sent"),
        });
    };
    let (mut written, mut next_sample, mut next_flush) = (0u64, start + Duration::from_secs(1), start);
    loop {
        let now = Instant::now();
        let elapsed = now.duration_since(start).min(load);
        let due = (a.rate * elapsed.as_secs_f64()) as u64;
        while written < due {
            sink.write(&synthetic(written))?;
            written += 1;
        }
        // As the pipeline: a flush after each ring-buffer drain (every 10 ms while busy).
        if now >= next_flush {
            sink.flush()?;
            next_flush = now + Duration::from_millis(10);
        }
        if now >= next_sample {
            sample(now);
            next_sample += Duration::from_secs(1);
        }
        if now.duration_since(start) >= load {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let load_end = Instant::now();
    let achieved_rate = written as f64 / load_end.duration_since(start).as_secs_f64();
    // Drain: the idle pipeline keeps flushing, so the last batch seals by age.
    let deadline = load_end + Duration::from_secs(60);
    let mut drain_seconds = None;
    while Instant::now() < deadline {
        sink.flush()?;
        if sink.buffered() == 0 && stats.snapshot().get("collector_spool_batches") == 0 {
            drain_seconds = Some(load_end.elapsed().as_secs_f64());
            break;
        }
        let now = Instant::now();
        if now >= next_sample {
            sample(now);
            next_sample += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    sample(Instant::now());
    drop(sink);
    let (cpu_user_s, cpu_sys_s, max_rss_bytes) = rusage();
    let s = stats.snapshot();
    let report = Report {
        url: a.url,
        rate_target: a.rate,
        seconds: a.seconds,
        batch_records: a.batch_records,
        batch_age_ms: a.batch_age_ms,
        max_in_flight: a.max_in_flight,
        merge_records: a.merge_records,
        records_written: written,
        achieved_rate,
        records_sent: s.get("collector_records_sent"),
        records_rejected: s.get("collector_records_rejected"),
        records_invalid: s.get("collector_records_invalid"),
        batches_sent: s.get("collector_batches_sent"),
        send_errors: s.get("collector_send_errors"),
        spool_dropped_records: s.get("collector_spool_dropped_records"),
        spool_bytes_max: samples.iter().map(|x| x.spool_bytes).max().unwrap_or(0),
        drain_seconds,
        spool_bytes_left: s.get("collector_spool_bytes"),
        cpu_user_s,
        cpu_sys_s,
        max_rss_bytes,
        samples,
    };
    std::fs::write(&a.out, serde_json::to_vec_pretty(&report)?)?;
    eprintln!(
        "sink_load: {} written ({:.0}/s), {} sent, {} rejected, {} send errors, drain {:?} s, cpu {:.2}+{:.2} s",
        report.records_written,
        report.achieved_rate,
        report.records_sent,
        report.records_rejected,
        report.send_errors,
        report.drain_seconds,
        report.cpu_user_s,
        report.cpu_sys_s
    );
    Ok(())
}
