//! tokentap-collector: agents POST batches of LLM call records; the collector
//! validates them and writes them to ClickHouse (docs/collector.md).
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
use tokentap_collector::{analysis, baselines, calls};
use tokentap_event::baseline::Baseline;
use tokentap_event::{compare, compare_report, report, PriceTable};

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
    /// File holding the ClickHouse password (an empty file: none, as the Helm
    /// chart's Secret holds when no password is set).
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
    /// Prompts (service, model, prompt hash) and conversations remembered to
    /// find repeated prompts and growing conversations as calls arrive (the
    /// Opportunities dashboard), each; when full, the oldest half is
    /// forgotten (at most ~85 MiB at 1,000,000).
    #[arg(long, default_value_t = 1_000_000, global = true)]
    repeat_keys: usize,
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
    /// Remediation Roadmap — printed as Markdown (the agent's audit code);
    /// with --baseline, the comparison with a saved baseline instead.
    Report {
        /// Window start: a duration before now (30m, 24h, 7d) or an RFC 3339 time.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Window end: `now`, a duration before now or an RFC 3339 time.
        #[arg(long, default_value = "now")]
        until: String,
        /// Compare the window with this saved baseline (`baseline save`):
        /// spend change split into volume, mix and unit cost, each roadmap
        /// target's progress and realised saving, new opportunities,
        /// regressions. Writes compare.md, compare.html and compare.json.
        #[arg(long, value_name = "NAME")]
        baseline: Option<String>,
        /// Also write the report files here (report.md, report.html,
        /// opportunities.json, baseline.json; compare.* with --baseline).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Saved baselines (the Calibrate window to track against), kept in ClickHouse.
    Baseline {
        #[command(subcommand)]
        action: BaselineCmd,
    },
}

#[derive(Debug, Subcommand)]
enum BaselineCmd {
    /// Build a baseline from the window's calls and save it as NAME
    /// (replacing a baseline of that name).
    Save {
        /// Letters, digits, '.', '_', '-'.
        name: String,
        /// Window start: a duration before now (30m, 24h, 7d) or an RFC 3339 time.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Window end: `now`, a duration before now or an RFC 3339 time.
        #[arg(long, default_value = "now")]
        until: String,
    },
    /// List saved baselines, newest first.
    List,
    /// Print a saved baseline's JSON document.
    Show { name: String },
    /// Delete a saved baseline.
    Delete { name: String },
}

/// The window's assessment, computed in ClickHouse (`analysis`): `f` gets
/// the open window and its assessment; the scratch table is dropped after,
/// whatever `f` returned.
async fn assessed<T>(
    client: &Client,
    since: &str,
    until: &str,
    f: impl AsyncFnOnce(&analysis::Window, analysis::Assessment) -> Result<T>,
) -> Result<T> {
    let (a, b) = calls::window(since, until)?;
    let w = analysis::Window::open(client, a, b).await.context("copying the window's calls to a scratch table")?;
    let out = match w.assess(&PriceTable::shipped(), &Default::default()).await {
        Ok(x) => f(&w, x).await,
        Err(e) => Err(anyhow::Error::new(e).context("aggregating the window's calls")),
    };
    if let Err(e) = w.close().await {
        tracing::warn!(error = %e, "dropping the report's scratch table");
    }
    out
}

async fn report(
    client: &Client,
    (since, until): (&str, &str),
    baseline: Option<&str>,
    out: Option<&Path>,
) -> Result<()> {
    let base = match baseline {
        Some(name) => Some(
            baselines::load(client, name)
                .await?
                .with_context(|| format!("no baseline named {name:?} (tokentap-collector baseline list)"))?,
        ),
        None => None,
    };
    let unread = match base {
        Some(_) => Vec::new(),
        None => {
            let (a, _) = calls::window(since, until)?;
            let secs = ((chrono::Utc::now().timestamp_micros() - a) / 1_000_000).max(0) as u64;
            tokentap_collector::traffic::blind_spots(client, secs).await.context("reading llm_traffic")?
        }
    };
    let files = assessed(client, since, until, async |w: &analysis::Window, x: analysis::Assessment| {
        let mut files = Vec::new();
        if let Some(base) = &base {
            let mut measures = Vec::with_capacity(base.roadmap.len());
            for item in &base.roadmap {
                measures.push(w.measure(item).await.context("measuring a roadmap target")?);
            }
            let c = compare::compare_of(base, &x.facts, &measures, &x.opportunities, &Default::default());
            files.push(("compare.md", compare_report::markdown(&c)));
            files.push(("compare.html", compare_report::html(&c)));
            files.push(("compare.json", serde_json::to_string_pretty(&c)? + "\n"));
        } else {
            let (f, o, r) = (&x.facts, &x.opportunities, &x.roadmap);
            files.push(("report.md", report::markdown_of(f, o, r, Some(&unread))));
            files.push(("report.html", report::html_of(f, o, r, Some(&unread))));
            files.push(("opportunities.json", serde_json::to_string_pretty(o)? + "\n"));
            files.push(("baseline.json", Baseline::assemble("report", f, o, x.roadmap.clone()).to_json()));
        }
        Ok(files)
    })
    .await?;
    // The Markdown on stdout: the first file.
    print!("{}", files[0].1);
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, text) in files {
            std::fs::write(dir.join(name), text).with_context(|| format!("writing {name}"))?;
        }
    }
    Ok(())
}

async fn baseline_cmd(client: &Client, action: &BaselineCmd) -> Result<()> {
    match action {
        BaselineCmd::Save { name, since, until } => {
            baselines::check_name(name)?;
            let b = assessed(client, since, until, async |_: &analysis::Window, x: analysis::Assessment| {
                if x.facts.calls == 0 {
                    bail!("no calls stored between {since} and {until}: nothing to save as a baseline");
                }
                Ok(Baseline::assemble(name, &x.facts, &x.opportunities, x.roadmap))
            })
            .await?;
            baselines::save(client, &b).await?;
            println!(
                "saved baseline {name}: {} calls, ${:.2} ({} to {}), {} opportunities, {} roadmap items",
                b.totals.calls,
                b.totals.spend_usd,
                b.since,
                b.until,
                b.opportunities.len(),
                b.roadmap.len()
            );
        }
        BaselineCmd::List => {
            println!("name\tsaved at\tsince\tuntil\tcalls\tspend USD\topportunities");
            for l in baselines::list(client).await? {
                let t = |us: i64| tokentap_event::LlmCall::format_ts(us as i128 * 1000);
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{:.2}\t{}",
                    l.name,
                    t(l.saved_at * 1000),
                    t(l.since),
                    t(l.until),
                    l.calls,
                    l.spend_usd,
                    l.opportunities
                );
            }
        }
        BaselineCmd::Show { name } => {
            let b = baselines::load(client, name).await?.with_context(|| format!("no baseline named {name:?}"))?;
            print!("{}", b.to_json());
        }
        BaselineCmd::Delete { name } => {
            if !baselines::delete(client, name).await? {
                bail!("no baseline named {name:?}");
            }
            println!("deleted baseline {name}");
        }
    }
    Ok(())
}

fn read_secret(p: &PathBuf, what: &str) -> Result<String> {
    let s = std::fs::read_to_string(p).with_context(|| format!("reading {what} {}", p.display()))?;
    let s = s.trim().to_owned();
    if s.is_empty() {
        bail!("{what} {} is empty", p.display());
    }
    Ok(s)
}

/// The password in `--clickhouse-password-file`, without its line end; an empty file is
/// no password (the chart's Secret when `clickhouse.password` is unset), which
/// ClickHouse's `default` user has out of the box.
fn clickhouse_password(p: &std::path::Path) -> Result<Option<String>> {
    let s = std::fs::read_to_string(p).with_context(|| format!("reading ClickHouse password file {}", p.display()))?;
    // Only the line end an editor leaves: spaces may be part of a password.
    Ok(Some(s.trim_end_matches(['\n', '\r']).to_owned()).filter(|s| !s.is_empty()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log_level))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
    if let Some(file) = &cli.clickhouse_password_file {
        match clickhouse_password(file)? {
            Some(password) => client = client.with_password(password),
            // Said, so that ClickHouse's "authentication failed" is explained.
            None => tracing::info!(user = %cli.clickhouse_user, file = %file.display(),
                "the ClickHouse password file is empty: connecting without a password"),
        }
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
        Cmd::Report { since, until, baseline, out } => {
            report(&client, (since, until), baseline.as_deref(), out.as_deref()).await?
        }
        Cmd::Baseline { action } => baseline_cmd(&client, action).await?,
        Cmd::Serve => {
            let token = cli.token_file.as_ref().map(|p| read_secret(p, "token file")).transpose()?;
            // A bad budgets file stops the start: better than alerts that never fire.
            let budgets = cli.budgets.as_deref().map(budgets::load).transpose()?;
            if let Some(name) = &cli.track_baseline {
                baselines::check_name(name).context("--track-baseline")?;
            }
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
                repeat_keys: cli.repeat_keys,
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
    fn an_empty_password_file_is_no_password_and_a_missing_one_an_error() {
        let dir = std::env::temp_dir().join(format!("tt-ch-password-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        assert_eq!(clickhouse_password(&file("empty", "")).unwrap(), None, "the chart's Secret with no password");
        assert_eq!(clickhouse_password(&file("newline", "\r\n")).unwrap(), None);
        assert_eq!(clickhouse_password(&file("set", "s3cret\n")).unwrap().as_deref(), Some("s3cret"));
        assert_eq!(clickhouse_password(&file("spaced", " s3 cret \n")).unwrap().as_deref(), Some(" s3 cret "));
        let e = clickhouse_password(&dir.join("absent")).unwrap_err().to_string();
        assert!(e.contains("reading ClickHouse password file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
