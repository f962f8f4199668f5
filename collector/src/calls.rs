//! The window of a report or a baseline: a duration before now (`7d`) or
//! RFC 3339 times, as microseconds (`analysis` reads the calls in it).

#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    #[error("{0:?}: expected a duration before now (e.g. 30m, 24h, 7d) or an RFC 3339 time")]
    Bad(String),
    #[error("the window ends ({until}) before it starts ({since})")]
    Empty { since: String, until: String },
}

/// Seconds of `30m`, `24h`, `7d`, `90s` (a bare number is days).
pub fn duration_secs(s: &str) -> Option<u64> {
    let (n, unit) = s.split_at(s.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len());
    let n: u64 = n.parse().ok()?;
    let k = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" | "" => 86400,
        _ => return None,
    };
    n.checked_mul(k)
}

/// A point in time in microseconds: `now`, a duration before `now_us`, or RFC 3339.
pub fn time_micros(s: &str, now_us: i64) -> Result<i64, WindowError> {
    if s == "now" {
        return Ok(now_us);
    }
    if let Some(secs) = duration_secs(s) {
        return Ok(now_us - (secs as i64).saturating_mul(1_000_000));
    }
    chrono::DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_micros()).map_err(|_| WindowError::Bad(s.to_owned()))
}

/// `[since, until]` in microseconds.
pub fn window(since: &str, until: &str) -> Result<(i64, i64), WindowError> {
    let now = chrono::Utc::now().timestamp_micros();
    let (a, b) = (time_micros(since, now)?, time_micros(until, now)?);
    if b < a {
        return Err(WindowError::Empty { since: since.to_owned(), until: until.to_owned() });
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_from_durations_and_times() {
        let now = 1_795_428_000_000_000 + 3_600_000_000;
        assert_eq!(time_micros("now", now).unwrap(), now);
        assert_eq!(time_micros("30m", now).unwrap(), now - 1_800_000_000);
        assert_eq!(time_micros("7d", now).unwrap(), now - 7 * 86_400_000_000);
        assert_eq!(time_micros("2026-11-23T10:00:00Z", now).unwrap(), 1_795_428_000_000_000);
        for bad in ["", "7w", "yesterday", "99999999999999999999d"] {
            assert!(matches!(time_micros(bad, now), Err(WindowError::Bad(_))), "{bad}");
        }
        assert!(matches!(window("now", "7d"), Err(WindowError::Empty { .. })));
        assert!(window("7d", "now").is_ok());
    }
}
