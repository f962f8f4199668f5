//! The window's `Facts` from GROUP BYs over the scratch table: the Spend
//! Map's figures and the baseline's metrics, as `Facts::of` computes them
//! from records (same keys, same filters, same nearest-rank percentiles).
use std::collections::BTreeMap;

use clickhouse::Row;
use serde::Deserialize;
use tokentap_event::baseline::{is_frontier, Group, GroupKey, Percentiles, Sums};
use tokentap_event::facts::{top_models, Facts, Instant};
use tokentap_event::report::{self, Frame, ModelPercentiles, Spender, Spenders, Usage, TOP_SPENDERS};
use tokentap_event::summary::{self, Line};

use super::{Result, Window};

#[derive(Row, Deserialize)]
struct Span {
    calls: u64,
    first: i64,
    last: i64,
}

/// Sums per key: a (provider, model) line, a service or an area.
#[derive(Row, Deserialize)]
struct Sum {
    a: String,
    b: String,
    c: String,
    calls: u64,
    input: u64,
    output: u64,
    cached: u64,
    unpriced: u64,
    cost: f64,
    priced_tokens: u64,
    priced_cost: f64,
}

// Aliases never name a column: ClickHouse would read the alias inside the aggregate.
const SUMS: &str = "count() AS n_calls, sum(ifNull(input, 0)) AS n_input, sum(ifNull(output, 0)) AS n_output, \
    sum(ifNull(cached, 0)) AS n_cached, countIf(cost IS NULL) AS n_unpriced, sum(ifNull(cost, 0)) AS usd, \
    sumIf(ifNull(input, 0) + ifNull(output, 0), cost IS NOT NULL) AS priced_tokens, \
    toFloat64(sumIf(ifNull(cost, 0), cost IS NOT NULL)) AS priced_usd";

impl Sum {
    fn line(&self) -> Line {
        Line {
            calls: self.calls,
            input_tokens: self.input,
            output_tokens: self.output,
            cached_input_tokens: self.cached,
            unpriced_calls: self.unpriced,
            cost_usd: self.cost,
        }
    }

    fn usage(&self) -> Usage {
        Usage {
            input: self.input,
            cached: self.cached,
            priced_tokens: self.priced_tokens,
            priced_cost: self.priced_cost,
        }
    }
}

async fn sums(w: &Window, keys: &str) -> Result<Vec<Sum>> {
    w.query(&format!("SELECT {keys}, {SUMS} FROM {{t}} GROUP BY a, b, c")).fetch_all().await
}

#[derive(Row, Deserialize)]
struct Bucket {
    bucket: u64,
    series: String,
    cost: f64,
}

#[derive(Row, Deserialize)]
struct Top {
    key: String,
    calls: u64,
    cost: f64,
}

#[derive(Row, Deserialize)]
struct Totals {
    distinct: u64,
    calls: u64,
    cost: f64,
}

/// Spend per value of `key` over the calls where `has` holds.
async fn spenders(w: &Window, key: &str, has: &str) -> Result<Spenders> {
    let t: Totals = w
        .query(&format!(
            "SELECT uniqExact({key}) AS n_distinct, count() AS n_calls, sum(ifNull(cost, 0)) AS usd FROM {{t}} WHERE {has}"
        ))
        .fetch_one()
        .await?;
    let items: Vec<Top> = w
        .query(&format!(
            "SELECT assumeNotNull({key}) AS k, count() AS n_calls, sum(ifNull(cost, 0)) AS usd FROM {{t}} \
             WHERE {has} GROUP BY k ORDER BY usd DESC, n_calls DESC, k LIMIT {TOP_SPENDERS}"
        ))
        .fetch_all()
        .await?;
    Ok(Spenders {
        distinct: t.distinct,
        calls: t.calls,
        cost: t.cost,
        items: items.into_iter().map(|i| Spender { key: i.key, calls: i.calls, cost: i.cost }).collect(),
    })
}

#[derive(Row, Deserialize)]
struct ModelRanks {
    model: String,
    n: u64,
    p50: f64,
    p90: f64,
    p99: f64,
}

/// Percentiles per model of `value` where `has` holds (`report::percentiles_by_model`).
async fn by_model(w: &Window, value: &str, has: &str) -> Result<Vec<(String, ModelPercentiles)>> {
    // Report percentiles rank by `p * n / 100` rounded up (integers).
    let rows: Vec<ModelRanks> = w
        .query(&format!(
            "SELECT model, length(s) AS n, s[toUInt64(greatest(1, intDiv(50 * n + 99, 100)))] AS p50, \
             s[toUInt64(greatest(1, intDiv(90 * n + 99, 100)))] AS p90, \
             s[toUInt64(greatest(1, intDiv(99 * n + 99, 100)))] AS p99 FROM \
             (SELECT model, arraySort(groupArray(toFloat64(assumeNotNull({value})))) AS s FROM {{t}} \
              WHERE {value} IS NOT NULL AND isFinite(assumeNotNull({value})) AND {has} GROUP BY model) ORDER BY model"
        ))
        .fetch_all()
        .await?;
    Ok(report::rank_percentiles(
        rows.into_iter()
            .map(|r| (r.model, ModelPercentiles { n: r.n as usize, p50: r.p50, p90: r.p90, p99: r.p99 }))
            .collect(),
    ))
}

#[derive(Row, Deserialize)]
struct GroupRow {
    service: String,
    model: String,
    feature: Option<String>,
    provider: String,
    calls: u64,
    errors: u64,
    input: u64,
    output: u64,
    cached: u64,
    spend: f64,
    dedupable: u64,
    distinct_prompts: u64,
    latency: Ranks,
    ttft: Ranks,
}

/// Nearest-rank p50, p90, p99 of a set of values and how many there are.
#[derive(Row, Deserialize)]
struct Ranks {
    n: u64,
    p50: f64,
    p90: f64,
    p99: f64,
}

impl Ranks {
    fn percentiles(&self) -> Option<Percentiles> {
        (self.n > 0).then_some(Percentiles { p50: self.p50, p90: self.p90, p99: self.p99 })
    }
}

/// [`Ranks`] of the sorted array `s`, as `baseline::Percentiles::of` ranks:
/// the value at rank ceil(q x n), at least 1.
fn ranks(s: &str) -> String {
    let at = |q: &str| format!("if(length({s}) = 0, 0., {s}[toUInt64(greatest(1, ceil({q} * length({s}))))])");
    format!("(length({s}), {}, {}, {})", at("0.5"), at("0.9"), at("0.99"))
}

/// The baseline's sums per group, or over all calls (`keys` empty).
async fn metric_rows(w: &Window, grouped: bool) -> Result<Vec<GroupRow>> {
    let (keys, by, prompt) = if grouped {
        ("service, model, feature, provider", "GROUP BY service, model, feature, provider", "prompt_hash")
    } else {
        ("'' AS k1, '' AS k2, CAST(NULL, 'Nullable(String)') AS k3, '' AS k4", "", "(model, prompt_hash)")
    };
    let dedupable = "has_f AND prompt_hash IS NOT NULL AND embedding_inputs IS NULL";
    // The percentiles are taken in ClickHouse: only three values per group leave it.
    w.query(&format!(
        "SELECT * EXCEPT (lat, tt), {} AS latency, {} AS ttft FROM \
         (SELECT {keys}, count() AS n_calls, countIf(ifNull(status >= 400, 0)) AS errors, \
          sum(ifNull(input, 0)) AS n_input, sum(ifNull(output, 0)) AS n_output, sum(ifNull(cached, 0)) AS n_cached, \
          sum(ifNull(cost, 0)) AS spend, countIf({dedupable}) AS dedupable, \
          uniqExactIf({prompt}, {dedupable}) AS distinct_prompts, \
          arraySort(groupArrayIf(assumeNotNull(duration_ms), duration_ms IS NOT NULL)) AS lat, \
          arraySort(groupArrayIf(assumeNotNull(ttft_ms), ttft_ms IS NOT NULL)) AS tt FROM {{t}} {by})",
        ranks("lat"),
        ranks("tt")
    ))
    .fetch_all()
    .await
}

impl GroupRow {
    fn sums(&self) -> Sums {
        Sums {
            calls: self.calls,
            errors: self.errors,
            input_tokens: self.input,
            output_tokens: self.output,
            cached_input_tokens: self.cached,
            spend_usd: self.spend,
            frontier_usd: 0.0,
            frontier_calls: 0,
            duplicates: self.dedupable - self.distinct_prompts,
            dedupable: self.dedupable,
        }
    }
}

pub(super) async fn facts(w: &Window) -> Result<Facts> {
    let span: Span = w.query("SELECT count() AS calls, min(us) AS first, max(us) AS last FROM {t}").fetch_one().await?;
    let (first, last) = if span.calls == 0 {
        (None, None)
    } else {
        (Some(Instant::from_micros(span.first)), Some(Instant::from_micros(span.last)))
    };

    let mut lines = BTreeMap::new();
    let mut usage = BTreeMap::new();
    let (mut total, mut usage_total) = (Line::default(), Usage::default());
    for s in sums(w, "provider AS a, model AS b, '' AS c").await? {
        total = total.plus(&s.line());
        let u = s.usage();
        usage_total = Usage {
            input: usage_total.input + u.input,
            cached: usage_total.cached + u.cached,
            priced_tokens: usage_total.priced_tokens + u.priced_tokens,
            priced_cost: usage_total.priced_cost + u.priced_cost,
        };
        lines.insert((s.a.clone(), s.b.clone()), s.line());
        usage.insert((s.a, s.b), u);
    }
    let lines = summary::rank(lines);
    let unattributed = "if(service = '', '(unattributed)', service)";
    let services = summary::rank(
        sums(w, &format!("{unattributed} AS a, '' AS b, '' AS c"))
            .await?
            .into_iter()
            .map(|s| (s.a.clone(), s.line()))
            .collect(),
    );
    let areas = sums(w, &format!("{unattributed} AS a, model AS b, ifNull(feature, '(none)') AS c"))
        .await?
        .into_iter()
        .map(|s| ((s.a, s.b, s.c), (s.calls, s.cost)))
        .collect();

    let over_time = match (&first, &last) {
        (Some(a), Some(b)) => {
            let frame = Frame::of(a.at, b.at);
            let rows: Vec<Bucket> = w
                .query(&format!(
                    "SELECT toUInt64(intDiv(secs - {start}, {step})) AS bucket, \
                     if(has(?, model), model, 'other') AS series, sum(ifNull(cost, 0)) AS usd FROM {{t}} \
                     GROUP BY bucket, series",
                    start = frame.start,
                    step = frame.step
                ))
                .bind(top_models(&lines))
                .fetch_all()
                .await?;
            frame.over_time(rows.into_iter().map(|r| (r.bucket as usize, r.series, r.cost)))
        }
        _ => report::no_time(),
    };

    let mut groups: Vec<Group> = Vec::new();
    let (mut frontier_usd, mut frontier_calls) = (0.0, 0);
    for g in metric_rows(w, true).await? {
        let mut sums = g.sums();
        if is_frontier(&g.model) {
            (sums.frontier_usd, sums.frontier_calls) = (g.spend, g.calls);
            frontier_usd += g.spend;
            frontier_calls += g.calls;
        }
        let key = GroupKey {
            service: (!g.service.is_empty()).then(|| g.service.clone()),
            model: g.model.clone(),
            feature: g.feature.clone(),
            provider: g.provider.clone(),
        };
        groups.push(Group { key, metrics: sums.metrics(g.latency.percentiles(), g.ttft.percentiles()) });
    }
    // As `baseline::group_metrics`: by key, then the most expensive first.
    groups.sort_by(|a, b| a.key.cmp(&b.key));
    groups.sort_by(|a, b| b.metrics.spend_usd.total_cmp(&a.metrics.spend_usd));
    let totals = match metric_rows(w, false).await?.into_iter().next() {
        Some(all) => {
            let mut sums = all.sums();
            (sums.frontier_usd, sums.frontier_calls) = (frontier_usd, frontier_calls);
            sums.metrics(all.latency.percentiles(), all.ttft.percentiles())
        }
        None => Sums::default().metrics(None, None),
    };

    Ok(Facts {
        calls: span.calls,
        first,
        last,
        lines,
        total,
        services,
        usage,
        usage_total,
        over_time,
        concentration: report::concentrate(areas),
        end_users: spenders(w, "end_user", "end_user IS NOT NULL AND end_user != ''").await?,
        conversations: spenders(w, "conv", "has_f AND conv IS NOT NULL AND conv != ''").await?,
        latency: by_model(w, "duration_ms", "(status IS NULL OR status < 400)").await?,
        ttft: by_model(w, "ttft_ms", "stream").await?,
        totals,
        groups,
    })
}
