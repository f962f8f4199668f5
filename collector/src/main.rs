//! tokentap-collector: agents POST batches of LLM call records; the collector
//! validates them and writes them to ClickHouse (docs/collector.md).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use clickhouse::Client;
use tokentap_collector::budgets;
use tokentap_collector::schema::{self, SchemaConfig};
use tokentap_collector::serve::{self, ConnLimits};
use tokentap_collector::server::{self, ServerConfig};
use tokentap_collector::store::CallRow;
use tokentap_collector::tls;
use tokentap_collector::track::{self, TrackConfig};
use tokentap_collector::traffic::TrafficRow;
use tokentap_collector::writer::WriterConfig;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "tokentap-collector",
    version,
    about = "Receive tokentap agents' LLM call records and write them to ClickHouse."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Address the ingest endpoint (and /healthz, /readyz, /metrics) listens on.
    #[arg(long, default_value = "0.0.0.0:8787", global = true)]
    listen: SocketAddr,
    /// ClickHouse HTTP interface.
    #[arg(long, default_value = "http://localhost:8123", env = "TOKENTAP_CLICKHOUSE_URL", global = true)]
    clickhouse_url: String,
    /// ClickHouse database (created if missing).
    #[arg(long, default_value = "tokentap", global = true)]
    database: String,
    /// ClickHouse user.
    #[arg(long, default_value = "default", global = true)]
    clickhouse_user: String,
    /// File holding the ClickHouse password.
    #[arg(long, value_name = "PATH", global = true)]
    clickhouse_password_file: Option<PathBuf>,
    /// Compression of inserts and results: lz4 or none.
    #[arg(long, default_value = "lz4", global = true)]
    clickhouse_compression: String,
    /// ClickHouse cluster (remote_servers name): replicated tables + Distributed.
    /// Default: a single node.
    #[arg(long, value_name = "NAME", global = true)]
    cluster: Option<String>,
    /// Days of raw rows and rollups kept (TTL, set when the tables are created).
    #[arg(long, default_value_t = 395, global = true)]
    retention_days: u32,
    /// File holding the bearer token agents must send. Without it, no authentication.
    #[arg(long, value_name = "PATH", global = true)]
    token_file: Option<PathBuf>,
    /// Serve the ingest endpoint over TLS with this certificate (PEM chain).
    #[arg(long, value_name = "PATH", global = true, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PATH", global = true, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require agents to present a client certificate signed by this CA (mutual TLS).
    #[arg(long, value_name = "PATH", global = true, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Records accepted and not yet in ClickHouse, at most; beyond, agents get 503.
    #[arg(long, default_value_t = 200_000, global = true)]
    max_queue_records: usize,
    /// Rows per ClickHouse insert, at most.
    #[arg(long, default_value_t = 100_000, global = true)]
    insert_rows: usize,
    /// ClickHouse inserts in flight at once. Each takes every row queued when it
    /// starts (group commit), so under load rows from many agents share one insert.
    #[arg(long, default_value_t = 2, global = true)]
    insert_concurrency: usize,
    /// Milliseconds an insert waits for more rows before it starts. 0 (the
    /// default): none, group commit alone sizes the inserts.
    #[arg(long, default_value_t = 0, global = true)]
    flush_ms: u64,
    /// Seconds one ClickHouse insert may take; past it the insert is abandoned,
    /// and retried once the rows already stored are looked up.
    #[arg(long, default_value_t = 30, global = true)]
    clickhouse_timeout_secs: u64,
    /// Seconds an agent's request waits for its rows to be stored before a 503
    /// (the agent retries; the retry waits for the same rows, never stores them twice).
    #[arg(long, default_value_t = 30, global = true)]
    ack_timeout_secs: u64,
    /// Open agent connections, at most; beyond, new ones get 503 and are closed.
    #[arg(long, default_value_t = 1024, global = true)]
    max_connections: usize,
    /// Seconds a client has to send a request's headers; also how long an idle
    /// keep-alive connection is kept.
    #[arg(long, default_value_t = 10, global = true)]
    header_timeout_secs: u64,
    /// Seconds a client has to send a request's body.
    #[arg(long, default_value_t = 60, global = true)]
    body_timeout_secs: u64,
    /// Largest request body (compressed), in bytes.
    #[arg(long, default_value_t = 32 << 20, global = true)]
    max_body_bytes: usize,
    /// Request body bytes all connections may hold at once while reading and
    /// decoding; beyond, agents get 503 and retry.
    #[arg(long, default_value_t = 256 << 20, global = true)]
    max_inflight_bytes: usize,
    /// Event ids remembered to drop batches delivered twice.
    #[arg(long, default_value_t = 1_000_000, global = true)]
    dedup_window: usize,
    /// Prices for OTLP spans' calls: a file in the agent's `--prices` format,
    /// adding to or replacing the shipped table (use the agents' file).
    #[arg(long, value_name = "PATH", global = true)]
    prices: Option<PathBuf>,
    /// Milliseconds after its call ended an OTLP span waits before it is
    /// stored, so an agent's record of the same call arriving meanwhile is
    /// stored instead (0: no wait; a later record is then the duplicate).
    #[arg(long, default_value_t = 3000, global = true)]
    otlp_hold_ms: u64,
    /// Calls remembered (provider family + response id) to match agents'
    /// records with OTLP spans of the same call.
    #[arg(long, default_value_t = 1_000_000, global = true)]
    otlp_match_keys: usize,
    /// Milliseconds the answer to "did any replica store OTLP spans in the
    /// last day?" is kept. While none did, agents' batches skip the check
    /// for spans stored through other replicas (one cheap count per period).
    #[arg(long, default_value_t = 60_000, global = true)]
    otlp_peer_refresh_ms: u64,
    /// Budgets file (TOML: monthly USD per team label, service, namespace or
    /// API key id; docs/collector.md). Month-to-date spend and forecast per
    /// budget on /metrics. Re-read every --budget-refresh-secs; a bad file
    /// stops the start, and on a reload keeps the budgets loaded before.
    #[arg(long, value_name = "FILE", global = true)]
    budgets: Option<PathBuf>,
    /// Seconds between reads of budgets' spend (and the tracked baseline) from
    /// ClickHouse: one grouped query per scope kind with budgets.
    #[arg(long, default_value_t = 60, global = true)]
    budget_refresh_secs: u64,
    /// Hours of spend a budget's daily rate (and so its forecast) is taken over.
    #[arg(long, default_value_t = 168, global = true)]
    budget_rate_window_hours: u64,
    /// A saved baseline (table `baselines`) whose cost per call and cache-hit
    /// ratio per service are exported beside the current ones, for alerts.
    #[arg(long, value_name = "NAME", global = true)]
    track_baseline: Option<String>,
    /// Hours the current cost per call and cache-hit ratio are taken over.
    #[arg(long, default_value_t = 24, global = true)]
    track_window_hours: u64,
    /// (service, model, provider) series of tokentap_spend_usd_total, at most;
    /// beyond, spend is counted under "other".
    #[arg(long, default_value_t = 1000, global = true)]
    spend_series_max: usize,
    /// Log filter (tracing syntax).
    #[arg(long, default_value = "info", global = true)]
    log_level: String,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Receive batches and write them (the default).
    Serve,
    /// Apply the schema migrations, then exit.
    Migrate,
    /// The assessment from ClickHouse — Spend Map, Opportunity Register,
    /// Remediation Roadmap — printed as Markdown (the agent's audit code).
    Report {
        /// How far back: e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Also write report.md, report.html and opportunities.json here.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

fn parse_since(s: &str) -> Result<Duration> {
    let (n, unit) = s.split_at(s.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len());
    let n: u64 = n.parse().with_context(|| format!("--since {s:?}: expected e.g. 30m, 24h, 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" | "" => n * 86400,
        _ => bail!("--since {s:?}: unit must be s, m, h or d"),
    };
    Ok(Duration::from_secs(secs))
}

fn read_secret(p: &PathBuf, what: &str) -> Result<String> {
    let s = std::fs::read_to_string(p).with_context(|| format!("reading {what} {}", p.display()))?;
    let s = s.trim().to_owned();
    if s.is_empty() {
        bail!("{what} {} is empty", p.display());
    }
    Ok(s)
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log_level))
        .with_writer(std::io::stderr)
        .init();
    let mut client = Client::default()
        .with_url(&cli.clickhouse_url)
        .with_user(&cli.clickhouse_user)
        .with_database(&cli.database)
        .with_validation(false)
        .with_compression(match cli.clickhouse_compression.as_str() {
            "none" => clickhouse::Compression::None,
            "lz4" => clickhouse::Compression::Lz4,
            other => bail!("--clickhouse-compression {other:?}: lz4 or none"),
        });
    if let Some(p) = &cli.clickhouse_password_file {
        client = client.with_password(read_secret(p, "ClickHouse password file")?);
    }
    let schema_cfg =
        SchemaConfig { database: cli.database.clone(), cluster: cli.cluster.clone(), ttl_days: cli.retention_days };
    // The database may not exist yet: migrations run without it selected.
    let admin = client.clone().with_database("default");
    match cli.cmd.as_ref().unwrap_or(&Cmd::Serve) {
        Cmd::Migrate => {
            let applied = schema::migrate(&admin, &schema_cfg).await.context("applying migrations")?;
            println!("migrations applied: {applied:?}");
        }
        Cmd::Report { since, out } => {
            let since = parse_since(since)?;
            let rows: Vec<CallRow> = client
                .query("SELECT ?fields FROM llm_calls FINAL WHERE ts >= now64(6) - toIntervalSecond(?) ORDER BY ts")
                .bind(since.as_secs())
                .fetch_all()
                .await
                .context("reading llm_calls")?;
            let records: Vec<_> = rows.into_iter().map(CallRow::into_record).collect();
            let prices = tokentap_event::PriceTable::shipped();
            let opps = tokentap_event::opportunities::detect(&records, &prices, &Default::default());
            let unread = tokentap_collector::traffic::blind_spots(&client, since.as_secs())
                .await
                .context("reading llm_traffic")?;
            let md = tokentap_event::report::markdown_with(&records, &opps, Some(&unread));
            print!("{md}");
            if let Some(dir) = out {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                std::fs::write(dir.join("report.md"), &md)?;
                let html = tokentap_event::report::html_with(&records, &opps, Some(&unread));
                std::fs::write(dir.join("report.html"), html)?;
                std::fs::write(dir.join("opportunities.json"), serde_json::to_string_pretty(&opps)? + "\n")?;
            }
        }
        Cmd::Serve => {
            let token = cli.token_file.as_ref().map(|p| read_secret(p, "token file")).transpose()?;
            // A bad budgets file stops the start: better than alerts that never fire.
            let budgets = cli.budgets.as_deref().map(budgets::load).transpose()?;
            if token.is_none() {
                tracing::warn!("no --token-file: batches are accepted without authentication");
            }
            // ClickHouse may come up after us: retry the migrations.
            let mut attempt = 0;
            loop {
                match schema::migrate(&admin, &schema_cfg).await {
                    Ok(_) => break,
                    Err(e) if attempt < 30 => {
                        tracing::warn!(error = %e, "ClickHouse not ready for migrations; retrying");
                        tokio::time::sleep(tokentap_collector::store::backoff(attempt)).await;
                        attempt += 1;
                    }
                    Err(e) => return Err(e).context("applying migrations"),
                }
            }
            let recent = server::load_recent::<CallRow>(&client, cli.dedup_window, 24)
                .await
                .context("loading recent event ids")?;
            // Traffic rows are few (one per process, host and verdict every ten seconds).
            let recent_traffic = server::load_recent::<TrafficRow>(&client, cli.dedup_window / 10, 24)
                .await
                .context("loading recent traffic row ids")?;
            tracing::info!(ids = recent.len(), traffic_ids = recent_traffic.len(), "dedup window loaded");
            let mut prices = tokentap_event::PriceTable::shipped();
            if let Some(p) = &cli.prices {
                prices = prices.with_overrides(p)?;
            }
            let cfg = ServerConfig {
                token,
                max_body_bytes: cli.max_body_bytes.max(1024),
                max_inflight_bytes: cli.max_inflight_bytes.max(cli.max_body_bytes),
                body_timeout: Duration::from_secs(cli.body_timeout_secs.max(1)),
                ack_timeout: Duration::from_secs(cli.ack_timeout_secs.max(1)),
                max_queue_records: cli.max_queue_records,
                dedup_window: cli.dedup_window,
                retention_days: cli.retention_days,
                prices: std::sync::Arc::new(prices),
                otlp_hold: Duration::from_millis(cli.otlp_hold_ms),
                otlp_match_keys: cli.otlp_match_keys,
                otlp_peer_refresh: Duration::from_millis(cli.otlp_peer_refresh_ms),
                spend_series_max: cli.spend_series_max.max(1),
                writer: WriterConfig {
                    insert_rows: cli.insert_rows.max(1),
                    insert_concurrency: cli.insert_concurrency.max(1),
                    linger: Duration::from_millis(cli.flush_ms),
                    insert_timeout: Duration::from_secs(cli.clickhouse_timeout_secs.max(1)),
                    ..Default::default()
                },
                ..Default::default()
            };
            let limits = ConnLimits {
                max_connections: cli.max_connections.max(1),
                header_timeout: Duration::from_secs(cli.header_timeout_secs.max(1)),
                ..Default::default()
            };
            if let Some(n) = serve::raise_fd_limit() {
                if (n as usize) < limits.max_connections + 64 {
                    tracing::warn!(
                        open_files = n,
                        max_connections = limits.max_connections,
                        "the open-files limit is below --max-connections: lower it or raise the limit"
                    );
                }
            }
            let (app, writer, shared) = server::build(cfg, client.clone(), client.clone(), recent, recent_traffic);
            // The calls stored recently, so a restart keeps matching agents' records with spans.
            let keys = tokentap_collector::otlp::load_matches(&client, &shared.otlp.matcher, cli.otlp_match_keys, 24)
                .await
                .context("loading recent calls for OTLP matching")?;
            tracing::info!(keys, "OTLP match window loaded");
            // Calls the other replicas stored: asked of ClickHouse before storing a span or record.
            shared.otlp.set_peers(std::sync::Arc::new(client.clone()));
            let tcp =
                tokio::net::TcpListener::bind(cli.listen).await.with_context(|| format!("binding {}", cli.listen))?;
            tracing::info!(listen = %tcp.local_addr()?, database = %cli.database, tls = cli.tls_cert.is_some(),
                mutual_tls = cli.tls_client_ca.is_some(), "tokentap-collector ready");
            tokio::spawn(writer);
            let track = TrackConfig {
                budgets_file: cli.budgets.clone(),
                refresh: Duration::from_secs(cli.budget_refresh_secs.max(1)),
                rate_window: Duration::from_secs(cli.budget_rate_window_hours.max(1) * 3600),
                baseline: cli.track_baseline.clone(),
                baseline_window: Duration::from_secs(cli.track_window_hours.max(1) * 3600),
            };
            if let Some((b, text)) = budgets {
                tracing::info!(budgets = b.len(), "budgets loaded");
                shared.metrics.track.set_budgets(b, text);
            }
            if track.enabled() {
                tokio::spawn(track::run(track, client.clone(), shared.clone()));
            }
            let shutdown = async {
                // SIGINT or SIGTERM (Kubernetes): stop accepting, finish requests in flight.
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { if let Some(t) = term.as_mut() { t.recv().await; } else { std::future::pending::<()>().await } } => {}
                }
                tracing::info!("shutting down");
            };
            let tls = match (&cli.tls_cert, &cli.tls_key) {
                (Some(cert), Some(key)) => {
                    Some(tokio_rustls::TlsAcceptor::from(tls::server_config(cert, key, cli.tls_client_ca.as_deref())?))
                }
                _ => None,
            };
            serve::serve(tcp, tls, app, shared, limits, shutdown).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_units() {
        assert_eq!(parse_since("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse_since("30m").unwrap(), Duration::from_secs(1800));
        assert!(parse_since("x").is_err());
        assert!(parse_since("5w").is_err());
    }
}
