//! Budgets and baseline tracking on `/metrics` (docs/collector.md, "Budgets
//! and alerts"): every `--budget-refresh-secs` the budgets file is re-read
//! (a bad file keeps the budgets loaded before, logged and counted), each
//! budget's month-to-date spend and forecast are read from ClickHouse
//! ([`forecast`]), and with `--track-baseline` the baseline's cost per call and
//! cache-hit ratio and the current ones ([`baseline`]). ClickHouse answers are
//! shared by every collector replica, so every replica exports the same
//! numbers (alert rules take `max` over replicas).
//!
//! A refresh that fails keeps the last numbers; the timestamp of the last
//! good one (`tokentap_budget_last_refresh_timestamp_seconds`, the start time
//! before the first) says how old they are.
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::budgets::{self, Budget};
use crate::server::Shared;
use crate::spend::escape;

pub mod baseline;
pub mod forecast;

#[derive(Debug, Clone)]
pub struct TrackConfig {
    pub budgets_file: Option<PathBuf>,
    pub refresh: Duration,
    /// The trailing window of a budget's daily rate.
    pub rate_window: Duration,
    pub baseline: Option<String>,
    /// The trailing window of the current cost per call and cache-hit ratio.
    pub baseline_window: Duration,
}

impl TrackConfig {
    pub fn enabled(&self) -> bool {
        self.budgets_file.is_some() || self.baseline.is_some()
    }
}

#[derive(Default)]
struct State {
    budgets: Vec<Budget>,
    /// The file's text the budgets came from (a changed file is parsed again).
    text: String,
    /// The file could not be read at the last look.
    unreadable: bool,
    numbers: BTreeMap<String, forecast::Numbers>,
    last_refresh: Option<f64>,
    /// Baseline found (Some) or not (None) at the last look; unset before it.
    baseline: Option<Option<BTreeMap<String, baseline::Point>>>,
    current: BTreeMap<String, baseline::Point>,
}

/// What `/metrics` shows of budgets and the baseline.
#[derive(Default)]
pub struct Track {
    state: Mutex<State>,
    baseline_name: Mutex<Option<String>>,
    pub refreshes: AtomicU64,
    pub refresh_errors: AtomicU64,
    pub file_errors: AtomicU64,
    pub file_reloads: AtomicU64,
}

fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Track {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Budgets checked at start (a bad file stops the collector before this).
    pub fn set_budgets(&self, budgets: Vec<Budget>, text: String) {
        let mut s = self.lock();
        s.budgets = budgets;
        s.text = text;
    }

    /// Re-read the budgets file; keep the old budgets if it is bad.
    fn reload(&self, path: &std::path::Path) {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                // Counted once until it can be read again.
                let mut s = self.lock();
                if !s.unreadable {
                    s.unreadable = true;
                    self.file_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(path = %path.display(), error = %e, "budgets file unreadable; keeping the budgets loaded before");
                }
                return;
            }
        };
        self.lock().unreadable = false;
        if text == self.lock().text {
            return;
        }
        match budgets::parse(path, &text) {
            Ok(b) => {
                tracing::info!(path = %path.display(), budgets = b.len(), "budgets file reloaded");
                self.file_reloads.fetch_add(1, Ordering::Relaxed);
                let mut s = self.lock();
                s.numbers.retain(|name, _| b.iter().any(|x| &x.name == name));
                s.budgets = b;
                s.text = text;
            }
            Err(e) => {
                self.file_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "budgets file refused; keeping the budgets loaded before");
                // Not again until it changes.
                self.lock().text = text;
            }
        }
    }

    async fn refresh(&self, cfg: &TrackConfig, client: &clickhouse::Client) {
        if let Some(p) = &cfg.budgets_file {
            self.reload(p);
        }
        let mut ok = true;
        let budgets = self.lock().budgets.clone();
        if !budgets.is_empty() {
            let span = forecast::Span::at(chrono::Utc::now(), cfg.rate_window.as_secs());
            match forecast::read(client, &budgets, &span).await {
                Ok(n) => self.lock().numbers = n,
                Err(e) => {
                    ok = false;
                    tracing::warn!(error = %e, "reading budgets' spend from ClickHouse failed; keeping the last numbers");
                }
            }
        }
        if let Some(name) = &cfg.baseline {
            ok &= self.refresh_baseline(name, cfg, client).await;
        }
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        if ok {
            self.lock().last_refresh = Some(now_secs());
        } else {
            self.refresh_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn refresh_baseline(&self, name: &str, cfg: &TrackConfig, client: &clickhouse::Client) -> bool {
        let found = match baseline::load(client, name).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "reading the tracked baseline failed; keeping the last numbers");
                return false;
            }
        };
        let was = self.lock().baseline.as_ref().map(Option::is_some);
        match (&found, was) {
            (None, Some(false)) | (Some(_), Some(true)) => {}
            (None, _) => tracing::warn!(
                baseline = name,
                "--track-baseline {name:?}: no such baseline in ClickHouse (table baselines); \
                 baseline gauges are not exported (tokentap_track_baseline_found 0) until it is saved"
            ),
            (Some(b), _) => tracing::info!(baseline = name, services = b.len() - 1, "tracking baseline"),
        }
        let Some(points) = found else {
            let mut s = self.lock();
            s.baseline = Some(None);
            s.current.clear();
            return true;
        };
        let services: Vec<&str> = points.keys().map(String::as_str).collect();
        let current = baseline::current(client, &services, cfg.baseline_window.as_secs()).await;
        let mut s = self.lock();
        s.baseline = Some(Some(points));
        match current {
            Ok(c) => {
                s.current = c;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading current cost per call failed; keeping the last numbers");
                false
            }
        }
    }

    pub fn render(&self, out: &mut String) {
        let guard = self.lock();
        let s: &State = &guard;
        let mut gauge = |name: &str, help: &str, rows: &mut dyn Iterator<Item = (String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, v) in rows {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        };
        let labels = |b: &Budget| {
            format!(
                "budget=\"{}\",scope=\"{}\",scope_value=\"{}\"",
                escape(&b.name),
                b.scope.as_str(),
                escape(&b.value)
            )
        };
        let with = |f: fn(&Budget, &forecast::Numbers) -> f64| {
            s.budgets.iter().filter_map(|b| s.numbers.get(&b.name).map(|n| (labels(b), f(b, n)))).collect::<Vec<_>>()
        };
        gauge(
            "tokentap_budget_monthly_usd",
            "The budget (budgets file).",
            &mut s.budgets.iter().map(|b| (labels(b), b.monthly_usd)),
        );
        gauge(
            "tokentap_budget_month_to_date_usd",
            "Spend this calendar month (UTC) in the budget's scope, from ClickHouse.",
            &mut with(|_, n| n.month_to_date).into_iter(),
        );
        gauge(
            "tokentap_budget_daily_rate_usd",
            "Spend per day over the trailing --budget-rate-window-hours.",
            &mut with(|_, n| n.daily_rate).into_iter(),
        );
        gauge(
            "tokentap_budget_forecast_usd",
            "Month-to-date spend + daily rate x days left in the month.",
            &mut with(|_, n| n.forecast).into_iter(),
        );
        gauge(
            "tokentap_budget_forecast_ratio",
            "Forecast / monthly budget (1 = the budget).",
            &mut with(|b, n| n.forecast / b.monthly_usd).into_iter(),
        );
        gauge(
            "tokentap_budget_month_to_date_ratio",
            "Month-to-date spend / monthly budget (1 = spent).",
            &mut with(|b, n| n.month_to_date / b.monthly_usd).into_iter(),
        );
        gauge("tokentap_budgets", "Budgets loaded.", &mut std::iter::once((String::new(), s.budgets.len() as f64)));
        if let Some(t) = s.last_refresh {
            gauge(
                "tokentap_budget_last_refresh_timestamp_seconds",
                "When budgets and baseline numbers were last read from ClickHouse.",
                &mut std::iter::once((String::new(), t)),
            );
        }
        let name = self.baseline_name.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let (Some(name), Some(found)) = (name, s.baseline.as_ref()) {
            let bl = format!("baseline=\"{}\"", escape(&name));
            gauge(
                "tokentap_track_baseline_found",
                "1 when the --track-baseline baseline exists in ClickHouse, else 0.",
                &mut std::iter::once((bl.clone(), if found.is_some() { 1.0 } else { 0.0 })),
            );
            let empty = BTreeMap::new();
            let points = found.as_ref().unwrap_or(&empty);
            let series = |m: &BTreeMap<String, baseline::Point>, f: fn(&baseline::Point) -> Option<f64>| {
                m.iter()
                    .filter_map(|(svc, p)| f(p).map(|v| (format!("{bl},service=\"{}\"", escape(svc)), v)))
                    .collect::<Vec<_>>()
            };
            for (name, help, m, f) in [
                (
                    "tokentap_track_baseline_cost_per_call_usd",
                    "The tracked baseline's cost per call, by service.",
                    points,
                    (|p: &baseline::Point| p.cost_per_call) as fn(&baseline::Point) -> Option<f64>,
                ),
                (
                    "tokentap_track_current_cost_per_call_usd",
                    "Cost per call over --track-window-hours.",
                    &s.current,
                    |p| p.cost_per_call,
                ),
                (
                    "tokentap_track_baseline_cache_hit_ratio",
                    "The tracked baseline's cache-hit ratio, by service.",
                    points,
                    |p| p.cache_hit_ratio,
                ),
                (
                    "tokentap_track_current_cache_hit_ratio",
                    "Cached input tokens / input tokens over --track-window-hours.",
                    &s.current,
                    |p| p.cache_hit_ratio,
                ),
            ] {
                gauge(name, help, &mut series(m, f).into_iter());
            }
        }
        drop(guard);
        for (name, help, c) in [
            ("tokentap_budget_refreshes_total", "Refreshes of budgets and baseline numbers.", &self.refreshes),
            ("tokentap_budget_refresh_errors_total", "Refreshes that failed to read ClickHouse.", &self.refresh_errors),
            (
                "tokentap_budget_file_errors_total",
                "Budgets file reloads refused (unreadable or invalid).",
                &self.file_errors,
            ),
            ("tokentap_budget_file_reloads_total", "Budgets file changes loaded.", &self.file_reloads),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", c.load(Ordering::Relaxed));
        }
    }
}

/// Refresh every `cfg.refresh`, forever (a task beside the server).
pub async fn run(cfg: TrackConfig, client: clickhouse::Client, shared: Arc<Shared>) {
    let track = &shared.metrics.track;
    *track.baseline_name.lock().unwrap_or_else(|e| e.into_inner()) = cfg.baseline.clone();
    // Numbers age from the start until a first good read: a collector that never
    // reaches ClickHouse is stale too (TokentapBudgetDataStale).
    track.lock().last_refresh.get_or_insert_with(now_secs);
    let mut tick = tokio::time::interval(cfg.refresh.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        track.refresh(&cfg, &client).await;
    }
}

#[cfg(test)]
mod tests;
