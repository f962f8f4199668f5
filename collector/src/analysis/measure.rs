//! A roadmap item's success metric on the window, and its target, from the
//! scratch table: `roadmap::measure` and `roadmap::target` as GROUP BYs over
//! the calls in the item's scope (its keys bound as one array parameter).
use clickhouse::Row;
use serde::Deserialize;
use tokentap_event::baseline::is_frontier;
use tokentap_event::opportunities::{Kind, Opportunity, Thresholds};
use tokentap_event::roadmap::{self, scope_of, Measured, Scoped};

use super::{Result, Window};

/// The calls of an item of `kind` (`in_scope` in roadmap.rs), its keys in the
/// table `{s}`; None: every call, no scope.
fn in_scope(kind: Kind, t: &Thresholds) -> Option<String> {
    let key = match kind {
        Kind::DuplicateCalls => "has_f AND prompt_hash IS NOT NULL AND concat(model, '|', assumeNotNull(prompt_hash))",
        Kind::PromptCaching => "has_f AND prefix_hash IS NOT NULL AND assumeNotNull(prefix_hash)",
        Kind::ModelDowngrade => {
            return Some(format!(
                "(ifNull(output <= {s}, 0) OR ifNull(max_tokens <= {s}, 0)) AND work_key IN (SELECT key FROM {{s}})",
                s = t.short_output
            ))
        }
        Kind::ContextBloat | Kind::AgentLoop => "has_f AND conv IS NOT NULL AND assumeNotNull(conv)",
        Kind::EmbeddingBatching => "has_f AND embedding_inputs IS NOT NULL AND concat(sender, '|', model)",
        Kind::SemanticCache | Kind::VerboseFormat => return None,
    };
    Some(format!("{key} IN (SELECT key FROM {{s}})"))
}

#[derive(Row, Deserialize)]
struct InScope {
    model: String,
    calls: u64,
    spend: f64,
    /// The metric's numerator and denominator over these calls.
    a: f64,
    b: f64,
}

fn share(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// `roadmap::measure` of `kind` with `scope` on the window.
pub(super) async fn measure(w: &Window, kind: Kind, scope: &[String]) -> Result<Measured> {
    let s = w.scope_table(scope).await?;
    let m = measure_in(w, kind, &s).await;
    w.drop_scope(&s).await?;
    m
}

/// [`measure`] with the scope in table `s`.
async fn measure_in(w: &Window, kind: Kind, s: &str) -> Result<Measured> {
    let t = Thresholds::default();
    let (a, b) = match kind {
        Kind::PromptCaching => ("ifNull(cached, 0)", "ifNull(input, 0)"),
        Kind::ContextBloat => ("ifNull(input, 0)", "1"),
        Kind::AgentLoop => ("max_repeat >= 2", "1"),
        Kind::VerboseFormat => ("if(has_f, ifNull(minify, 0), 0)", "ifNull(input, 0)"),
        Kind::EmbeddingBatching => ("ifNull(embedding_inputs, 0)", "1"),
        _ => ("0", "1"),
    };
    let filter = in_scope(kind, &t).unwrap_or_else(|| "1".into()).replace("{s}", s);
    let rows: Vec<InScope> = w
        .query(&format!(
            "SELECT model, count() AS calls, sum(ifNull(cost, 0)) AS spend, toFloat64(sum({a})) AS a, \
             toFloat64(sum({b})) AS b FROM {{t}} WHERE ok AND ({filter}) GROUP BY model ORDER BY model"
        ))
        .fetch_all()
        .await?;
    let calls: u64 = rows.iter().map(|r| r.calls).sum();
    let (sa, sb) = (rows.iter().map(|r| r.a).sum::<f64>(), rows.iter().map(|r| r.b).sum::<f64>());
    let value = match kind {
        Kind::DuplicateCalls => {
            let r: Ratio = w
                .query(
                    "SELECT toFloat64(count() - uniqExact((model, prompt_hash))) AS a, toFloat64(count()) AS b \
                     FROM {t} WHERE ok AND has_f AND prompt_hash IS NOT NULL AND embedding_inputs IS NULL",
                )
                .fetch_one()
                .await?;
            share(r.a, r.b)
        }
        Kind::SemanticCache => near_duplicate_share(w, &t).await?,
        Kind::ModelDowngrade => {
            let frontier: u64 = rows.iter().filter(|r| is_frontier(&r.model)).map(|r| r.calls).sum();
            share(frontier as f64, calls as f64)
        }
        _ => share(sa, sb),
    };
    Ok(Measured { value, scope_calls: calls, scope_spend_usd: rows.iter().map(|r| r.spend).sum() })
}

/// The semantic-cache detector's hit rate over the window, 0 when no prompt
/// clusters, None without any SimHash (`roadmap::near_duplicate_share`).
async fn near_duplicate_share(w: &Window, t: &Thresholds) -> Result<Option<f64>> {
    if let Some(o) = super::detect::semantic(w, 1.0, t).await?.first() {
        return Ok(Some(o.evidence["hit_rate"].as_f64().unwrap_or(0.0)));
    }
    let any: u64 = w.query("SELECT count() FROM {t} WHERE ok AND has_f AND simhash IS NOT NULL").fetch_one().await?;
    Ok((any > 0).then_some(0.0))
}

#[derive(Row, Deserialize)]
struct Ratio {
    a: f64,
    b: f64,
}

/// `roadmap::scoped`: the opportunity's metric on the window and its target.
pub(super) async fn scoped(w: &Window, o: &Opportunity) -> Result<Scoped> {
    let s = w.scope_table(&scope_of(o)).await?;
    let r = scoped_in(w, o, &s).await;
    w.drop_scope(&s).await?;
    r
}

/// [`scoped`] with the scope in table `s`.
async fn scoped_in(w: &Window, o: &Opportunity, s: &str) -> Result<Scoped> {
    let measured = measure_in(w, o.kind, s).await?;
    // What the scope can reach, for the two kinds whose target is a level (`roadmap::target_of`).
    let reach = match o.kind {
        Kind::PromptCaching => Some(format!(
            "SELECT sum((toFloat64(n) - 1) / n * p) AS a, toFloat64(sum(i)) AS b FROM \
             (SELECT count() AS n, sum(assumeNotNull(prefix_tokens)) AS p, sum(ifNull(input, 0)) AS i \
              FROM {{t}} WHERE ok AND has_f AND prefix_tokens IS NOT NULL AND prefix_hash IS NOT NULL \
              AND assumeNotNull(prefix_hash) IN (SELECT key FROM {s}) GROUP BY prefix_hash)"
        )),
        Kind::ContextBloat => Some(format!(
            "SELECT sum(arraySum(arrayMap(x -> least(x, inputs[1] * 2), inputs))) AS a, \
             toFloat64(sum(length(inputs))) AS b FROM \
             (SELECT arrayMap(x -> toFloat64(x.3), arraySort(x -> (x.1, x.2), \
                 groupArray((message_count, us, ifNull(input, 0))))) AS inputs \
              FROM {{t}} WHERE ok AND has_f AND conv IS NOT NULL \
              AND assumeNotNull(conv) IN (SELECT key FROM {s}) GROUP BY conv)"
        )),
        _ => None,
    };
    let reached = match reach {
        Some(sql) => {
            let r: Ratio = w.query(&sql).fetch_one().await?;
            (r.a, r.b)
        }
        None => (0.0, 0.0),
    };
    let target = roadmap::target_of(o.kind, measured.value, || reached);
    Ok(Scoped { measured, target })
}
