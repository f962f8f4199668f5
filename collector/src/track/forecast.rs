//! Month-to-date spend and its forecast per budget, from ClickHouse.
//!
//! For each budget, with `now` in UTC, the month starting at `month_start` and
//! the next at `month_end`, and the rate window `W` (`--budget-rate-window-hours`):
//!
//! ```text
//! window_start   = start of the hour of (now - W)
//! month_to_date  = spend with ts >= month_start
//! daily_rate     = spend with ts >= window_start  /  ((now - window_start) / 1 day)
//! forecast       = month_to_date + daily_rate * (month_end - now) / 1 day
//! forecast_ratio = forecast / monthly_usd
//! ```
//!
//! The rate window may reach into the previous month (early in a month the
//! rate is then still last week's). Service and namespace budgets read the
//! hourly rollup `llm_calls_1h`; team (`labels['team']`) and API key budgets
//! read `llm_calls` (this month's and the window's days, three columns). One
//! grouped query per scope kind that has budgets, each refresh.
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use serde::Deserialize;

use crate::budgets::{Budget, Scope};

/// The moments a refresh computes with, in seconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub now: i64,
    pub month_start: i64,
    pub month_end: i64,
    pub window_start: i64,
}

impl Span {
    pub fn at(now: DateTime<Utc>, window_secs: u64) -> Self {
        let month_start = Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).single().unwrap_or(now);
        let (y, m) = if now.month() == 12 { (now.year() + 1, 1) } else { (now.year(), now.month() + 1) };
        let month_end = Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single().unwrap_or(now);
        let w = now - chrono::Duration::seconds(window_secs.max(3600) as i64);
        let window_start = w.timestamp() - i64::from(w.minute() * 60 + w.second());
        Self {
            now: now.timestamp(),
            month_start: month_start.timestamp(),
            month_end: month_end.timestamp(),
            window_start,
        }
    }

    /// Earliest moment either sum reads.
    pub fn from(&self) -> i64 {
        self.month_start.min(self.window_start)
    }
}

/// One budget's numbers after a refresh.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Numbers {
    pub month_to_date: f64,
    pub daily_rate: f64,
    pub forecast: f64,
}

/// The formula above, for sums already read.
pub fn forecast(span: &Span, month_to_date: f64, recent: f64) -> Numbers {
    let day = 86_400.0;
    let elapsed = ((span.now - span.window_start) as f64 / day).max(1.0 / 24.0);
    let daily_rate = recent / elapsed;
    let remaining = ((span.month_end - span.now) as f64 / day).max(0.0);
    Numbers { month_to_date, daily_rate, forecast: month_to_date + daily_rate * remaining }
}

#[derive(clickhouse::Row, Deserialize)]
struct Sums {
    v: String,
    mtd: f64,
    recent: f64,
}

/// The query for one scope kind's values (bound: the three moments, the values).
pub fn query(scope: Scope) -> String {
    let (col, rollup) = scope.column();
    let (table, t, cost) =
        if rollup { ("llm_calls_1h", "t", "cost_usd") } else { ("llm_calls", "ts", "ifNull(cost_usd, 0)") };
    format!(
        "SELECT {col} AS v, sumIf({cost}, {t} >= toDateTime(?)) AS mtd, sumIf({cost}, {t} >= toDateTime(?)) AS recent \
         FROM {table} WHERE {t} >= toDateTime(?) AND v IN ? GROUP BY v"
    )
}

/// Month-to-date and recent spend of every budget, by budget name. A budget
/// with no spend at all gets zeros.
pub async fn read(
    client: &clickhouse::Client,
    budgets: &[Budget],
    span: &Span,
) -> Result<BTreeMap<String, Numbers>, clickhouse::error::Error> {
    let mut out = BTreeMap::new();
    for scope in Scope::ALL {
        let values: BTreeSet<&str> = budgets.iter().filter(|b| b.scope == scope).map(|b| b.value.as_str()).collect();
        if values.is_empty() {
            continue;
        }
        let values: Vec<&str> = values.into_iter().collect();
        let rows: Vec<Sums> = client
            .query(&query(scope))
            .bind(span.month_start)
            .bind(span.window_start)
            .bind(span.from())
            .bind(values)
            .fetch_all()
            .await?;
        let sums: BTreeMap<&str, (f64, f64)> = rows.iter().map(|r| (r.v.as_str(), (r.mtd, r.recent))).collect();
        for b in budgets.iter().filter(|b| b.scope == scope) {
            let (mtd, recent) = sums.get(b.value.as_str()).copied().unwrap_or((0.0, 0.0));
            out.insert(b.name.clone(), forecast(span, mtd, recent));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn span_bounds_the_month_and_the_window() {
        let s = Span::at(at("2026-12-10T12:30:15Z"), 7 * 86_400);
        assert_eq!(s.month_start, at("2026-12-01T00:00:00Z").timestamp());
        assert_eq!(s.month_end, at("2027-01-01T00:00:00Z").timestamp());
        assert_eq!(s.window_start, at("2026-12-03T12:00:00Z").timestamp());
        assert_eq!(s.from(), s.month_start);
        let early = Span::at(at("2026-02-02T06:00:00Z"), 7 * 86_400);
        assert_eq!(early.month_end, at("2026-03-01T00:00:00Z").timestamp());
        assert_eq!(early.from(), at("2026-01-26T06:00:00Z").timestamp(), "the window reaches into January");
    }

    #[test]
    fn forecast_is_month_to_date_plus_rate_times_days_left() {
        // 10 days into a 31-day month (21.5 days left), 7 USD over the last 7 days.
        let s = Span::at(at("2026-12-10T12:00:00Z"), 7 * 86_400);
        let n = forecast(&s, 40.0, 7.0);
        assert!((n.daily_rate - 1.0).abs() < 1e-9, "{n:?}");
        assert!((n.forecast - (40.0 + 21.5)).abs() < 1e-9, "{n:?}");
        // The last second of the month: nothing left to forecast.
        let end = Span::at(at("2026-12-31T23:59:59Z"), 86_400);
        assert!((forecast(&end, 40.0, 24.0).forecast - 40.0).abs() < 0.001);
    }

    #[test]
    fn queries_read_the_rollup_where_it_has_the_scope() {
        assert!(query(Scope::Service).contains("FROM llm_calls_1h WHERE t >= "));
        assert!(query(Scope::Namespace).contains("namespace AS v"));
        assert!(query(Scope::Team).contains("labels['team'] AS v"));
        assert!(query(Scope::Team).contains("FROM llm_calls WHERE ts >= "));
        assert!(query(Scope::ApiKeyId).contains("ifNull(api_key_id, '') AS v"));
    }
}
