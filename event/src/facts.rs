//! What a window of calls amounts to: every aggregate the assessment report,
//! the baseline and the compare read, and nothing per call. Built here from
//! records (the agent's audit over its events file), or by the collector with
//! GROUP BYs in ClickHouse (collector/src/analysis), so a window of 100 M
//! calls is never held in memory. Both give the same facts (tests/tests/
//! report_from_clickhouse.rs), so the documents built from them agree.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::baseline::{self, Group, Metrics};
use crate::report::{self, Concentration, ModelPercentiles, OverTime, Spenders, Usage};
use crate::summary::{self, Key, Line};
use crate::LlmCall;

/// Models drawn as their own series in the spend over time (the rest: "other").
pub const TOP_SERIES: usize = 5;

/// One end of the window: its time and the record's `ts` as written.
#[derive(Clone, Debug, PartialEq)]
pub struct Instant {
    pub at: DateTime<Utc>,
    pub ts: String,
}

impl Instant {
    pub fn from_micros(us: i64) -> Self {
        Self { at: DateTime::from_timestamp_micros(us).unwrap_or_default(), ts: LlmCall::format_ts(us as i128 * 1000) }
    }

    fn micros(&self) -> i64 {
        self.at.timestamp_micros()
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    pub calls: u64,
    /// The first and the last call whose time parses; None without any.
    pub first: Option<Instant>,
    pub last: Option<Instant>,
    /// Per (provider, model), most expensive first, and the total.
    pub lines: Vec<(Key, Line)>,
    pub total: Line,
    /// Per service, most expensive first.
    pub services: Vec<(String, Line)>,
    /// Cache hits and priced tokens per (provider, model) and overall.
    pub usage: BTreeMap<Key, Usage>,
    pub usage_total: Usage,
    /// Spend per time bucket for the [`TOP_SERIES`] most expensive models.
    pub over_time: OverTime,
    pub concentration: Concentration,
    pub end_users: Spenders,
    pub conversations: Spenders,
    /// Latency of calls that did not fail, and TTFT of streamed calls, per model.
    pub latency: Vec<(String, ModelPercentiles)>,
    pub ttft: Vec<(String, ModelPercentiles)>,
    /// The baseline's metrics: all calls, and per service, model, feature and provider.
    pub totals: Metrics,
    pub groups: Vec<Group>,
}

impl Facts {
    pub fn of(records: &[LlmCall]) -> Self {
        let (lines, total) = summary::summarize(records);
        let top = top_models(&lines);
        let (usage, usage_total) = report::usage(records);
        let (totals, groups) = baseline::group_metrics(records);
        let (first, last) = ends(records);
        Self {
            calls: records.len() as u64,
            first,
            last,
            services: summary::by_service(records),
            usage,
            usage_total,
            over_time: report::over_time(records, &top),
            concentration: report::concentration(records),
            end_users: report::spenders(records, report::end_user),
            conversations: report::spenders(records, report::conversation),
            latency: report::percentiles_by_model(records, report::latency),
            ttft: report::percentiles_by_model(records, report::ttft),
            lines,
            total,
            totals,
            groups,
        }
    }

    /// Observed window in hours (at least 1) and the factor to a 30-day
    /// month, as `opportunities::window` computes them from records.
    pub fn window(&self) -> (f64, f64) {
        let span = match (&self.first, &self.last) {
            (Some(a), Some(b)) => (b.micros() as f64 / 1e6 - a.micros() as f64 / 1e6) / 3600.0,
            _ => 0.0,
        };
        let hours = span.max(1.0);
        (hours, 720.0 / hours)
    }

    /// First and last call (RFC 3339) and the real span in hours, as
    /// `baseline::span` gives them from records.
    pub fn span(&self) -> (String, String, f64) {
        match (&self.first, &self.last) {
            (Some(a), Some(b)) => (a.ts.clone(), b.ts.clone(), (b.micros() - a.micros()) as f64 / 3.6e9),
            _ => (String::new(), String::new(), 0.0),
        }
    }
}

/// The models drawn as their own series over time.
pub fn top_models(lines: &[(Key, Line)]) -> Vec<String> {
    lines.iter().take(TOP_SERIES).map(|((_, m), _)| m.clone()).collect()
}

/// The earliest and the latest record by time (the first of equal times).
fn ends(records: &[LlmCall]) -> (Option<Instant>, Option<Instant>) {
    let mut lo: Option<Instant> = None;
    let mut hi: Option<Instant> = None;
    for r in records {
        let Ok(t) = DateTime::parse_from_rfc3339(&r.ts) else { continue };
        let at = t.with_timezone(&Utc);
        if lo.as_ref().is_none_or(|l| at < l.at) {
            lo = Some(Instant { at, ts: r.ts.clone() });
        }
        if hi.as_ref().is_none_or(|h| at > h.at) {
            hi = Some(Instant { at, ts: r.ts.clone() });
        }
    }
    (lo, hi)
}
