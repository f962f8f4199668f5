//! The real observed window (first call to last) and spend over time in
//! buckets sized to it. The monthly extrapolation counts the window as at
//! least one hour (`opportunities::window`); that floor is for estimates and
//! must not leak into what the report says was observed.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::model_of;
use crate::LlmCall;

fn ts(r: &LlmCall) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(&r.ts).ok().map(|t| t.with_timezone(&Utc))
}

/// The times of the first and the last call (records whose `ts` parses):
/// the window really observed, with no floor. None without such records.
pub fn observed_span(records: &[LlmCall]) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let mut times = records.iter().filter_map(ts);
    let first = times.next()?;
    Some(times.fold((first, first), |(lo, hi), t| (lo.min(t), hi.max(t))))
}

/// Seconds between two times, to the microsecond.
pub(super) fn seconds(first: DateTime<Utc>, last: DateTime<Utc>) -> f64 {
    (last - first).num_microseconds().map_or(0.0, |us| us as f64 / 1e6)
}

/// A duration in the largest unit that keeps it at 1 or more: "7 s",
/// "1.5 min", "3 h", "10 d" (one decimal below 10, none above).
pub(crate) fn duration_text(secs: f64) -> String {
    let (v, unit) = match secs {
        s if s < 60.0 => (s, "s"),
        s if s < 3600.0 => (s / 60.0, "min"),
        s if s < 86_400.0 => (s / 3600.0, "h"),
        s => (s / 86_400.0, "d"),
    };
    // Whole seconds read better than tenths, except under one.
    let text = if v >= 10.0 || (unit == "s" && v >= 1.0) { format!("{v:.0}") } else { format!("{v:.1}") };
    format!("{} {unit}", text.strip_suffix(".0").unwrap_or(&text))
}

/// When the window was: "2026-11-23 10:58:31-10:58:38 UTC", with both
/// dates when it crosses midnight, with milliseconds when within a second.
pub(super) fn span_text(first: DateTime<Utc>, last: DateTime<Utc>) -> String {
    if first.timestamp() == last.timestamp() {
        // Within one second: milliseconds, or both ends would read the same.
        format!("{}-{} UTC", first.format("%Y-%m-%d %H:%M:%S%.3f"), last.format("%H:%M:%S%.3f"))
    } else if first.date_naive() == last.date_naive() {
        format!("{}-{} UTC", first.format("%Y-%m-%d %H:%M:%S"), last.format("%H:%M:%S"))
    } else {
        format!("{} to {} UTC", first.format("%Y-%m-%d %H:%M:%S"), last.format("%Y-%m-%d %H:%M:%S"))
    }
}

/// Bucket sizes to choose from, in seconds: the finest one that gives at
/// most [`MAX_BUCKETS`] buckets over the window wins, so a 7 s demo gets
/// 1 s buckets and a week 6 h ones.
pub(super) const LADDER: [i64; 10] = [1, 5, 10, 30, 60, 300, 900, 3600, 21_600, 86_400];
pub(super) const MAX_BUCKETS: i64 = 48;

/// Buckets from `first` to `last` (Unix seconds) when they start on
/// multiples of `step` (so labels read 10:05, 10:10, not 10:03:17).
pub(super) fn bucket_count(first: i64, last: i64, step: i64) -> i64 {
    last.div_euclid(step) - first.div_euclid(step) + 1
}

/// The bucket size for a window (Unix seconds). Beyond the ladder (windows
/// of more than 47 days), whole days, as many as keep the count in bounds.
pub(super) fn bucket_step(first: i64, last: i64) -> i64 {
    LADDER.into_iter().find(|&s| bucket_count(first, last, s) <= MAX_BUCKETS).unwrap_or_else(|| {
        let days = (last - first) / 86_400 + 1;
        86_400 * ((days + MAX_BUCKETS - 2) / (MAX_BUCKETS - 1))
    })
}

/// How a bucket's start is labelled: seconds only when buckets are under a
/// minute, the date only when the window crosses midnight or buckets are days.
fn label_format(step: i64, crosses_midnight: bool) -> &'static str {
    match (step, crosses_midnight) {
        (s, _) if s >= 86_400 => "%Y-%m-%d",
        (s, false) if s < 60 => "%H:%M:%S",
        (s, true) if s < 60 => "%m-%d %H:%M:%S",
        (_, false) => "%H:%M",
        (_, true) => "%m-%d %H:%M",
    }
}

/// Spend per time bucket and model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OverTime {
    /// Bucket size in seconds.
    pub step: i64,
    /// Each bucket's start, formatted for the bucket size (UTC).
    pub labels: Vec<String>,
    /// Spend per model in each bucket (models outside the chosen ones as "other").
    pub buckets: Vec<BTreeMap<String, f64>>,
}

/// The buckets of a window: where they start, their size and count. Shared
/// by the spend over time from records and from ClickHouse rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Unix seconds of the first bucket's start.
    pub start: i64,
    pub step: i64,
    pub buckets: usize,
    crosses_midnight: bool,
}

impl Frame {
    pub fn of(first: DateTime<Utc>, last: DateTime<Utc>) -> Self {
        let (lo, hi) = (first.timestamp(), last.timestamp());
        let step = bucket_step(lo, hi);
        Self {
            start: lo.div_euclid(step) * step,
            step,
            buckets: bucket_count(lo, hi, step) as usize,
            crosses_midnight: first.date_naive() != last.date_naive(),
        }
    }

    /// The bucket of a time (Unix seconds) inside the window.
    pub fn bucket(&self, secs: i64) -> usize {
        ((secs - self.start) / self.step) as usize
    }

    /// The spend over time from (bucket, series, spend) entries; entries
    /// outside the frame are ignored.
    pub fn over_time(&self, entries: impl IntoIterator<Item = (usize, String, f64)>) -> OverTime {
        let mut buckets = vec![BTreeMap::new(); self.buckets];
        for (i, key, cost) in entries {
            if let Some(b) = buckets.get_mut(i) {
                *b.entry(key).or_insert(0.0) += cost;
            }
        }
        let format = label_format(self.step, self.crosses_midnight);
        let labels = (0..self.buckets)
            .map(|i| {
                DateTime::from_timestamp(self.start + i as i64 * self.step, 0)
                    .map_or_else(String::new, |d| d.format(format).to_string())
            })
            .collect();
        OverTime { step: self.step, labels, buckets }
    }
}

/// An empty spend over time (no call has a time).
pub fn no_time() -> OverTime {
    OverTime { step: LADDER[0], labels: Vec::new(), buckets: Vec::new() }
}

/// Spend per bucket for `models` (the rest as "other"); no buckets without
/// a parsable time.
pub(crate) fn over_time(records: &[LlmCall], models: &[String]) -> OverTime {
    let Some((first, last)) = observed_span(records) else {
        return no_time();
    };
    let frame = Frame::of(first, last);
    frame.over_time(records.iter().filter_map(|r| {
        let t = ts(r)?;
        let m = model_of(r);
        let key = if models.contains(&m) { m } else { "other".into() };
        Some((frame.bucket(t.timestamp()), key, r.cost_usd.unwrap_or(0.0)))
    }))
}

/// Spend per bucket as one line of block characters (· for no spend), for a
/// terminal: the shape of the spend without a chart.
pub(super) fn sparkline(buckets: &[BTreeMap<String, f64>]) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let sums: Vec<f64> = buckets.iter().map(|b| b.values().sum()).collect();
    let max = sums.iter().copied().fold(0.0, f64::max);
    sums.iter().map(|&v| if v <= 0.0 { '·' } else { BLOCKS[((v / max * 7.0).round() as usize).min(7)] }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ts: &str, model: &str, cost: f64) -> LlmCall {
        LlmCall { ts: ts.into(), request_model: Some(model.into()), cost_usd: Some(cost), ..Default::default() }
    }

    fn unix_micros(ts: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(ts).unwrap().with_timezone(&Utc)
    }

    fn unix(ts: &str) -> i64 {
        DateTime::parse_from_rfc3339(ts).unwrap().timestamp()
    }

    /// The ladder step that gives the most buckets without exceeding the
    /// bound, worked out by counting bucket boundaries one by one.
    fn finest_step_by_counting(lo: i64, hi: i64) -> i64 {
        for step in LADDER {
            let mut n = 1;
            let mut t = lo - lo.rem_euclid(step) + step;
            while t <= hi {
                n += 1;
                t += step;
            }
            if n <= MAX_BUCKETS {
                return step;
            }
        }
        unreachable!("windows in this test fit the ladder")
    }

    #[test]
    fn the_real_window_has_no_floor() {
        let rs = vec![
            at("2026-11-23T10:58:38.250Z", "a", 0.1),
            at("2026-11-23T10:58:31Z", "a", 0.1),
            at("not a time", "a", 0.1),
        ];
        let (first, last) = observed_span(&rs).unwrap();
        assert_eq!((first.timestamp(), last.timestamp()), (unix(&rs[1].ts), unix("2026-11-23T10:58:38Z")));
        assert!((seconds(first, last) - 7.25).abs() < 1e-9);
        // The extrapolation still counts an hour; the headline must not.
        assert!(crate::opportunities::window(&rs).0 >= 1.0);
        assert_eq!(duration_text(seconds(first, last)), "7 s");
        assert_eq!(span_text(first, last), "2026-11-23 10:58:31-10:58:38 UTC");
        assert!(observed_span(&[at("x", "a", 1.0)]).is_none());
        let (a, b) = (unix_micros("2026-11-23T10:58:31.120Z"), unix_micros("2026-11-23T10:58:31.340Z"));
        assert_eq!(span_text(a, b), "2026-11-23 10:58:31.120-10:58:31.340 UTC");
        let (a, b) = (unix_micros("2026-11-23T23:59:58Z"), unix_micros("2026-11-24T00:00:03Z"));
        assert_eq!(span_text(a, b), "2026-11-23 23:59:58 to 2026-11-24 00:00:03 UTC");
    }

    #[test]
    fn durations_read_in_human_units() {
        for (secs, want) in
            [(0.4, "0.4 s"), (7.3, "7 s"), (90.0, "1.5 min"), (3.0 * 3600.0, "3 h"), (10.0 * 86_400.0, "10 d")]
        {
            assert_eq!(duration_text(secs), want);
        }
    }

    #[test]
    fn buckets_are_sized_to_the_window() {
        let lo = unix("2026-11-23T10:58:31Z");
        for (span, want) in [(7, 1), (3 * 3600, 300), (10 * 86_400, 21_600)] {
            let step = bucket_step(lo, lo + span);
            assert_eq!(step, finest_step_by_counting(lo, lo + span), "window of {span} s");
            assert_eq!(step, want, "window of {span} s");
            assert!(bucket_count(lo, lo + span, step) <= MAX_BUCKETS);
        }
        // Past the ladder: whole days, still in bounds.
        let year = bucket_step(lo, lo + 365 * 86_400);
        assert_eq!(year % 86_400, 0);
        assert!(bucket_count(lo, lo + 365 * 86_400, year) <= MAX_BUCKETS);
    }

    #[test]
    fn spend_lands_in_its_bucket_with_labels_for_the_size() {
        let rs = vec![
            at("2026-11-23T10:58:31Z", "gpt-4o", 0.5),
            at("2026-11-23T10:58:33.900Z", "gpt-4o", 0.25),
            at("2026-11-23T10:58:33Z", "other-model", 0.125),
            at("2026-11-23T10:58:38Z", "gpt-4o", 1.0),
        ];
        let ot = over_time(&rs, &["gpt-4o".to_string()]);
        let lo = unix(&rs[0].ts);
        assert_eq!(ot.step, 1);
        assert_eq!(ot.buckets.len() as i64, unix(&rs[3].ts) - lo + 1);
        assert_eq!(ot.labels.first().map(String::as_str), Some("10:58:31"));
        assert_eq!(ot.labels.last().map(String::as_str), Some("10:58:38"));
        let key_of = |r: &LlmCall| if r.request_model.as_deref() == Some("gpt-4o") { "gpt-4o" } else { "other" };
        for r in &rs {
            let i = (unix(&r.ts) - lo) as usize;
            let want: f64 = rs
                .iter()
                .filter(|x| unix(&x.ts) == unix(&r.ts) && key_of(x) == key_of(r))
                .map(|x| x.cost_usd.unwrap())
                .sum();
            assert!((ot.buckets[i][key_of(r)] - want).abs() < 1e-12, "bucket {i} {}", key_of(r));
        }
        let total: f64 = ot.buckets.iter().flat_map(|b| b.values()).sum();
        assert!((total - rs.iter().map(|r| r.cost_usd.unwrap()).sum::<f64>()).abs() < 1e-12);
        let line = sparkline(&ot.buckets);
        assert_eq!(line.chars().count(), ot.buckets.len());
        assert_eq!(line.chars().last(), Some('█'), "the largest bucket is the last");
        assert_eq!(line.chars().nth(1), Some('·'), "nothing at 10:58:32");

        // Three hours: 5-minute buckets labelled to the minute; ten days: dated.
        let hours = over_time(&[at("2026-11-23T10:03:17Z", "m", 1.0), at("2026-11-23T13:03:17Z", "m", 1.0)], &[]);
        assert_eq!((hours.step, hours.labels[0].as_str()), (300, "10:00"));
        let days = over_time(&[at("2026-11-23T10:03:17Z", "m", 1.0), at("2026-12-03T10:03:17Z", "m", 1.0)], &[]);
        assert_eq!((days.step, days.labels[0].as_str()), (21_600, "11-23 06:00"));
        assert!(days.buckets.iter().all(|b| b.keys().all(|k| k == "other")));
    }
}
