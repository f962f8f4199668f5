//! Spend counters of the rows this replica wrote:
//! `tokentap_spend_usd_total{service,model,provider}` and the calls counted.
//!
//! Series are bounded (`--spend-series-max`, 1,000 by default): once that many
//! (service, model, provider) triples exist, a new triple's spend goes to the
//! series labelled `other` in all three, and the calls folded that way are
//! counted (`tokentap_spend_folded_calls_total`). Summing a counter over the
//! replicas gives the fleet's spend; budgets read ClickHouse instead
//! ([`crate::track`]), which stays right across restarts.
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::store::CallRow;

pub const OTHER: &str = "other";

type Key = (String, String, String);

/// The `other` series' key (no real triple ends this way: parts end in NUL).
const OTHER_KEY: &str = "\0other";

#[derive(Default)]
struct Series {
    labels: Key,
    usd: f64,
    calls: u64,
}

pub struct SpendCounters {
    max_series: AtomicUsize,
    /// By service, model and provider, each followed by a NUL.
    series: Mutex<HashMap<String, Series>>,
    /// Calls whose triple was folded into `other`.
    pub folded_calls: AtomicU64,
    /// Calls stored without a cost (no price for the model).
    pub unpriced_calls: AtomicU64,
}

impl Default for SpendCounters {
    fn default() -> Self {
        Self {
            max_series: AtomicUsize::new(1000),
            series: Mutex::default(),
            folded_calls: AtomicU64::new(0),
            unpriced_calls: AtomicU64::new(0),
        }
    }
}

impl SpendCounters {
    pub fn set_max_series(&self, n: usize) {
        self.max_series.store(n.max(1), Ordering::Relaxed);
    }

    /// Count rows this replica inserted.
    pub fn add(&self, rows: &[CallRow]) {
        let max = self.max_series.load(Ordering::Relaxed);
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let (mut folded, mut unpriced) = (0, 0);
        let mut buf = String::new();
        for r in rows {
            buf.clear();
            for part in [&r.service, &r.model, &r.provider] {
                buf.push_str(part);
                buf.push('\0');
            }
            if !series.contains_key(buf.as_str()) {
                if series.len() < max.saturating_sub(1) {
                    let labels = (r.service.clone(), r.model.clone(), r.provider.clone());
                    series.insert(buf.clone(), Series { labels, ..Default::default() });
                } else {
                    folded += 1;
                    buf.clear();
                    buf.push_str(OTHER_KEY);
                    if !series.contains_key(OTHER_KEY) {
                        let labels = (OTHER.into(), OTHER.into(), OTHER.into());
                        series.insert(OTHER_KEY.into(), Series { labels, ..Default::default() });
                    }
                }
            }
            let Some(entry) = series.get_mut(buf.as_str()) else { continue };
            entry.calls += 1;
            match r.cost_usd {
                Some(c) if c.is_finite() => entry.usd += c,
                _ => unpriced += 1,
            }
        }
        self.folded_calls.fetch_add(folded, Ordering::Relaxed);
        self.unpriced_calls.fetch_add(unpriced, Ordering::Relaxed);
    }

    pub fn render(&self, s: &mut String) {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<&Series> = series.values().collect();
        all.sort_by(|a, b| a.labels.cmp(&b.labels));
        let _ = writeln!(
            s,
            "# HELP tokentap_spend_usd_total Cost of the calls this collector replica stored, by service, model and provider (priced calls only).\n# TYPE tokentap_spend_usd_total counter"
        );
        for v in &all {
            let _ = writeln!(s, "tokentap_spend_usd_total{{{}}} {}", labels(&v.labels), v.usd);
        }
        let _ = writeln!(
            s,
            "# HELP tokentap_spend_calls_total Calls this collector replica stored, by service, model and provider.\n# TYPE tokentap_spend_calls_total counter"
        );
        for v in &all {
            let _ = writeln!(s, "tokentap_spend_calls_total{{{}}} {}", labels(&v.labels), v.calls);
        }
        for (name, help, v) in [
            (
                "tokentap_spend_folded_calls_total",
                "Calls counted under service/model/provider=\"other\": past --spend-series-max series.",
                &self.folded_calls,
            ),
            (
                "tokentap_spend_unpriced_calls_total",
                "Calls stored without a cost (model not priced).",
                &self.unpriced_calls,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Ordering::Relaxed));
        }
    }
}

fn labels((service, model, provider): &Key) -> String {
    format!("service=\"{}\",model=\"{}\",provider=\"{}\"", escape(service), escape(model), escape(provider))
}

/// A Prometheus label value: backslash, quote and newline escaped.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokentap_event::LlmCall;

    fn row(service: &str, model: &str, cost: Option<f64>) -> CallRow {
        CallRow::from_record(
            LlmCall {
                event_id: LlmCall::new_event_id(),
                ts: LlmCall::format_ts(1_763_900_000_000_000_000),
                provider: "openai".into(),
                operation: "chat".into(),
                response_model: Some(model.into()),
                service: Some(service.into()),
                cost_usd: cost,
                ..Default::default()
            },
            "",
        )
    }

    #[test]
    fn sums_per_series_and_folds_past_the_bound() {
        let c = SpendCounters::default();
        c.set_max_series(3);
        c.add(&[row("a", "m", Some(0.5)), row("a", "m", Some(0.25)), row("b\"x", "m", None)]);
        c.add(&[row("c", "m", Some(1.0)), row("d", "m", Some(2.0)), row("a", "m", Some(1.0))]);
        let mut t = String::new();
        c.render(&mut t);
        assert!(t.contains("tokentap_spend_usd_total{service=\"a\",model=\"m\",provider=\"openai\"} 1.75\n"), "{t}");
        assert!(t.contains("tokentap_spend_calls_total{service=\"a\",model=\"m\",provider=\"openai\"} 3\n"), "{t}");
        assert!(t.contains("service=\"b\\\"x\""), "escaped: {t}");
        assert!(
            t.contains("tokentap_spend_usd_total{service=\"other\",model=\"other\",provider=\"other\"} 3\n"),
            "{t}"
        );
        assert!(t.contains("tokentap_spend_folded_calls_total 2\n"), "{t}");
        assert!(t.contains("tokentap_spend_unpriced_calls_total 1\n"), "{t}");
        assert_eq!(t.matches("tokentap_spend_usd_total{").count(), 3, "at most 3 series: {t}");
    }
}
