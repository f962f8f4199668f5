//! Saved baselines in ClickHouse (table `baselines`, migration 13): save a
//! named baseline built from a window's rows, list, load and delete them.
//! The document is the event crate's `Baseline` as JSON, so a baseline saved
//! here and one an agent's audit wrote to baseline.json read the same way.
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};
use tokentap_event::baseline::{Baseline, BaselineError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("baseline {name:?}: {source}")]
    Document { name: String, source: BaselineError },
    #[error("baseline name {0:?}: use 1-128 letters, digits, '.', '_' or '-'")]
    Name(String),
}

/// One saved baseline, as listed.
#[derive(Clone, Debug, PartialEq, Row, Serialize, Deserialize)]
pub struct Listed {
    pub name: String,
    /// Milliseconds since the epoch (DateTime64(3)).
    pub saved_at: i64,
    /// Microseconds since the epoch (DateTime64(6)): the window's first and last call.
    pub since: i64,
    pub until: i64,
    pub calls: u64,
    pub spend_usd: f64,
    pub opportunities: u32,
}

#[derive(Row, Serialize)]
struct Stored<'a> {
    name: &'a str,
    saved_at: i64,
    since: i64,
    until: i64,
    calls: u64,
    spend_usd: f64,
    opportunities: u32,
    deleted: u8,
    body: String,
}

/// Names are typed on command lines and shown in Grafana: keep them plain.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Name(name.to_owned()))
    }
}

fn micros(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).map_or(0, |t| t.timestamp_micros())
}

async fn write(client: &Client, name: &str, b: Option<&Baseline>) -> Result<(), StoreError> {
    let row = Stored {
        name,
        saved_at: chrono::Utc::now().timestamp_millis(),
        since: b.map_or(0, |b| micros(&b.since)),
        until: b.map_or(0, |b| micros(&b.until)),
        calls: b.map_or(0, |b| b.totals.calls),
        spend_usd: b.map_or(0.0, |b| b.totals.spend_usd),
        opportunities: b.map_or(0, |b| b.opportunities.len() as u32),
        deleted: u8::from(b.is_none()),
        body: b.map(Baseline::to_json).unwrap_or_default(),
    };
    let mut insert = client.insert::<Stored>("baselines").await?;
    insert.write(&row).await?;
    insert.end().await?;
    Ok(())
}

/// Save `b` under its name (replacing a baseline of that name).
pub async fn save(client: &Client, b: &Baseline) -> Result<(), StoreError> {
    check_name(&b.name)?;
    write(client, &b.name, Some(b)).await
}

/// Delete `name`; false when there was none.
pub async fn delete(client: &Client, name: &str) -> Result<bool, StoreError> {
    check_name(name)?;
    if !list(client).await?.iter().any(|l| l.name == name) {
        return Ok(false);
    }
    write(client, name, None).await?;
    Ok(true)
}

pub async fn list(client: &Client) -> Result<Vec<Listed>, StoreError> {
    Ok(client
        .query("SELECT ?fields FROM baselines FINAL WHERE deleted = 0 ORDER BY saved_at DESC")
        .fetch_all::<Listed>()
        .await?)
}

/// The baseline saved as `name`, if any.
pub async fn load(client: &Client, name: &str) -> Result<Option<Baseline>, StoreError> {
    check_name(name)?;
    let bodies: Vec<String> =
        client.query("SELECT body FROM baselines FINAL WHERE name = ? AND deleted = 0").bind(name).fetch_all().await?;
    bodies
        .first()
        .map(|b| Baseline::from_json(b).map_err(|source| StoreError::Document { name: name.to_owned(), source }))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain() {
        for ok in ["q4", "before-caching_2026.11", &"a".repeat(128)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "x'; DROP", "ünï", &"a".repeat(129)] {
            assert!(matches!(check_name(bad), Err(StoreError::Name(_))), "{bad}");
        }
    }
}
