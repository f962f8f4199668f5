//! The Spend Map section: spend by provider and model (with cache hits and
//! cost per 1k tokens), over time, by service, where it concentrates, per end
//! user and per conversation, and latency by model. Built once as blocks
//! (doc.rs) and rendered to Markdown and HTML.
use super::charts::{bars, columns};
use super::doc::{Block, Table};
use super::figures::{Percentiles, Spenders, CONCENTRATION_SHARE, TOP_SPENDERS};
use super::timeline::{self, duration_text};
use super::usd;
use crate::facts::{top_models, Facts};

/// Rows of the top-area table.
const TOP_AREAS: usize = 10;
/// Hex digits of a conversation hash shown: enough to tell them apart.
const SHORT_HASH: usize = 12;

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

fn share(part: f64, total: f64) -> String {
    if total > 0.0 {
        pct(part / total)
    } else {
        "-".into()
    }
}

/// Milliseconds, with a tenth below 10 ms (a local model or a cache answers that fast).
fn ms(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.1} ms")
    } else {
        format!("{x:.0} ms")
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The Spend Map's blocks, in reading order.
pub(super) fn blocks(facts: &Facts) -> Vec<Block> {
    let mut out = Vec::new();
    by_model(&mut out, facts);
    over_time(&mut out, facts);
    services(&mut out, facts);
    concentration(&mut out, facts);
    people(&mut out, facts);
    latency(&mut out, facts);
    out
}

fn by_model(out: &mut Vec<Block>, facts: &Facts) {
    let (lines, usage, total) = (&facts.lines, &facts.usage, &facts.usage_total);
    out.push(Block::Heading("By provider and model".into()));
    let models: Vec<(String, f64)> =
        lines.iter().take(10).map(|((p, m), l)| (format!("{m} ({p})"), l.cost_usd)).collect();
    out.push(Block::Chart(bars("spend-by-model", "Spend by model", &models)));
    let mut t = Table::new(&[
        "provider",
        "model",
        "calls>",
        "input tokens>",
        "cached>",
        "cache hit>",
        "output tokens>",
        "cost>",
        "per 1k tokens>",
    ]);
    for (key, l) in lines {
        let u = usage.get(key);
        t.row(vec![
            key.0.clone(),
            key.1.clone(),
            l.calls.to_string(),
            l.input_tokens.to_string(),
            l.cached_input_tokens.to_string(),
            u.and_then(|u| u.cache_hit()).map_or_else(|| "-".into(), pct),
            l.output_tokens.to_string(),
            usd(l.cost_usd),
            u.and_then(|u| u.per_1k()).map_or_else(|| "-".into(), usd),
        ]);
    }
    out.push(Block::Table(t));
    // The overall figures, or why there are none.
    let hit = total.cache_hit().map_or_else(
        || "No input tokens were counted, so there is no cache-hit ratio.".to_string(),
        |h| format!("{} of input tokens were read from the providers' prompt caches (cached / input tokens).", pct(h)),
    );
    let unit = total.per_1k().map_or_else(
        || "No priced call, so no cost per 1k tokens.".to_string(),
        |c| format!("Cost per 1k tokens (input + output, priced calls): {}.", usd(c)),
    );
    out.push(Block::Para(format!("{hit} {unit}")));
}

fn over_time(out: &mut Vec<Block>, facts: &Facts) {
    let mut series = top_models(&facts.lines);
    series.push("other".into());
    let ot = &facts.over_time;
    out.push(Block::Heading("Over time".into()));
    let title = format!("Spend over time by model ({} buckets, UTC)", duration_text(ot.step as f64));
    out.push(Block::Chart(columns("spend-over-time", &title, &ot.labels, &ot.buckets, &series)));
    let (Some(first), Some(last)) = (ot.labels.first(), ot.labels.last()) else {
        out.push(Block::Para("No call has a time.".into()));
        return;
    };
    let peak = ot.buckets.iter().map(|b| b.values().sum::<f64>()).fold(0.0, f64::max);
    out.push(Block::Terminal(format!(
        "Spend per {} bucket, {first} to {last} UTC ({}, the most in one {}):\n\n    {}",
        duration_text(ot.step as f64),
        plural(ot.buckets.len(), "bucket", "buckets"),
        usd(peak),
        timeline::sparkline(&ot.buckets)
    )));
}

fn services(out: &mut Vec<Block>, facts: &Facts) {
    let (by, total_cost) = (&facts.services, facts.total.cost_usd);
    out.push(Block::Heading("By service".into()));
    let top: Vec<(String, f64)> = by.iter().take(10).map(|(s, l)| (s.clone(), l.cost_usd)).collect();
    out.push(Block::Chart(bars("spend-by-service", "Spend by service", &top)));
    let mut t = Table::new(&["service", "calls>", "input tokens>", "output tokens>", "cost>", "share>"]);
    for (svc, l) in by {
        t.row(vec![
            svc.clone(),
            l.calls.to_string(),
            l.input_tokens.to_string(),
            l.output_tokens.to_string(),
            usd(l.cost_usd),
            share(l.cost_usd, total_cost),
        ]);
    }
    out.push(Block::Table(t));
}

fn concentration(out: &mut Vec<Block>, facts: &Facts) {
    let c = &facts.concentration;
    out.push(Block::Heading("Where spend concentrates".into()));
    if c.n == 0 {
        out.push(Block::Para("No priced spend to break down.".into()));
        return;
    }
    out.push(Block::Para(format!(
        "{} of {} (service x model x feature) {} {} of spend: the fewest areas reaching {}.",
        c.n,
        plural(c.areas.len(), "area", "areas"),
        if c.n == 1 { "holds" } else { "hold" },
        pct(c.share),
        pct(CONCENTRATION_SHARE)
    )));
    let top: Vec<(String, f64)> =
        c.areas.iter().take(8).map(|a| (format!("{} / {} / {}", a.service, a.model, a.feature), a.cost)).collect();
    out.push(Block::Chart(bars("spend-by-area", "Spend by area (service / model / feature)", &top)));
    let mut t = Table::new(&["#>", "service", "model", "feature", "calls>", "cost>", "share>", "cumulative>"]);
    let mut held = 0.0;
    for (i, a) in c.areas.iter().take(TOP_AREAS).enumerate() {
        held += a.cost;
        t.row(vec![
            (i + 1).to_string(),
            a.service.clone(),
            a.model.clone(),
            a.feature.clone(),
            a.calls.to_string(),
            usd(a.cost),
            share(a.cost, c.total),
            share(held, c.total),
        ]);
    }
    out.push(Block::Table(t));
}

/// A top-spenders table for end users or conversations.
fn spender_table(s: &Spenders, what: &'static str, total: f64, show: fn(&str) -> String) -> Table {
    let mut t = Table::new(&[what, "calls>", "cost>", "share of spend>"]);
    for i in s.items.iter().take(TOP_SPENDERS) {
        t.row(vec![show(&i.key), i.calls.to_string(), usd(i.cost), share(i.cost, total)]);
    }
    t
}

fn people(out: &mut Vec<Block>, facts: &Facts) {
    let (total_cost, calls) = (facts.total.cost_usd, facts.calls);
    out.push(Block::Heading("Per end user and per conversation".into()));
    let users = &facts.end_users;
    if users.items.is_empty() {
        out.push(Block::Para(
            "No call names an end user (OpenAI user or safety_identifier, Anthropic metadata.user_id, or a \
             configured header), so the cost per end user is not known."
                .into(),
        ));
    } else {
        out.push(Block::Para(format!(
            "{} made {} of {} calls, {} on average each; the top spenders:",
            plural(users.distinct as usize, "end user", "end users"),
            users.calls,
            calls,
            usd(users.mean())
        )));
        out.push(Block::Table(spender_table(users, "end user", total_cost, str::to_string)));
    }
    let convs = &facts.conversations;
    if convs.items.is_empty() {
        out.push(Block::Para(
            "No call carries a conversation hash (prompt features from an older agent, or none captured), \
             so the cost per conversation is not known."
                .into(),
        ));
    } else {
        out.push(Block::Para(format!(
            "{} (same system prompt and first user message) made {} of {} calls, {} calls and {} \
             on average each; the most expensive:",
            plural(convs.distinct as usize, "conversation", "conversations"),
            convs.calls,
            calls,
            format_args!("{:.1}", convs.calls as f64 / convs.distinct as f64),
            usd(convs.mean())
        )));
        let short = |h: &str| match h.char_indices().nth(SHORT_HASH) {
            Some((cut, _)) => format!("{}…", &h[..cut]),
            None => h.to_string(),
        };
        out.push(Block::Table(spender_table(convs, "conversation", total_cost, short)));
    }
}

fn percentile_table(what: &'static str, rows: &[(String, Percentiles)]) -> Table {
    let mut t = Table::new(&["model", what, "p50>", "p90>", "p99>"]);
    for (m, p) in rows {
        t.row(vec![m.clone(), p.n.to_string(), ms(p.p50), ms(p.p90), ms(p.p99)]);
    }
    t
}

fn latency(out: &mut Vec<Block>, facts: &Facts) {
    out.push(Block::Heading("Latency by model".into()));
    let durations = &facts.latency;
    if durations.is_empty() {
        out.push(Block::Para("No successful call has a duration.".into()));
    } else {
        out.push(Block::Para(
            "Request first byte to response last byte, successful calls; nearest-rank percentiles.".into(),
        ));
        out.push(Block::Table(percentile_table("calls>", durations)));
    }
    let ttft = &facts.ttft;
    out.push(Block::Heading("Time to first token by model".into()));
    if ttft.is_empty() {
        out.push(Block::Para("No streamed call has a time to first token.".into()));
    } else {
        out.push(Block::Para("Streamed calls: request first byte to the first content in the response.".into()));
        out.push(Block::Table(percentile_table("streamed calls>", ttft)));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{doc, figures};
    use super::*;
    use crate::{LlmCall, PromptFeatures};

    fn render(records: &[LlmCall]) -> (String, String) {
        let (mut md, mut h) = (String::new(), String::new());
        let facts = Facts::of(records);
        doc::markdown(&mut md, &blocks(&facts));
        doc::html(&mut h, &blocks(&facts));
        (md, h)
    }

    /// Ten calls a second apart: two models, a user on some, a conversation
    /// on some, cache reads and streamed TTFTs.
    fn calls(with_people: bool) -> Vec<LlmCall> {
        (0..10u64)
            .map(|i| LlmCall {
                ts: format!("2026-11-23T10:58:{:02}Z", 30 + i),
                provider: "openai".into(),
                request_model: Some(if i < 3 { "gpt-4o" } else { "gpt-4o-mini" }.into()),
                service: Some("svc".into()),
                input_tokens: Some(100 * (i + 1)),
                cached_input_tokens: Some(if i % 2 == 0 { 50 } else { 0 }),
                output_tokens: Some(10),
                cost_usd: Some(0.01 * (i + 1) as f64),
                end_user: (with_people && i % 2 == 0).then(|| "<eve|x>".to_string()),
                features: with_people.then(|| PromptFeatures {
                    conversation_hash: Some(format!("{:064x}", 0xabcdef1234567890u64 + i % 3)),
                    ..Default::default()
                }),
                stream: with_people,
                ttft_ms: with_people.then_some(100.0 + i as f64),
                duration_ms: Some(500.0 + i as f64),
                status: Some(200),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn every_part_in_both_renderings() {
        let rs = calls(true);
        let (md, h) = render(&rs);
        for part in [
            "By provider and model",
            "Over time",
            "By service",
            "Where spend concentrates",
            "Per end user and per conversation",
            "Latency by model",
            "Time to first token by model",
        ] {
            assert!(md.contains(&format!("### {part}\n")), "{part}:\n{md}");
            assert!(h.contains(&format!("<h3>{part}</h3>")), "{part}");
        }
        for chart in ["spend-over-time", "spend-by-service", "spend-by-model", "spend-by-area"] {
            assert!(h.contains(&format!("data-chart=\"{chart}\"")), "{chart}");
        }
        // One-second buckets over ten seconds: the caption says so, the
        // terminal gets one character per bucket.
        let step = duration_text(timeline::over_time(&rs, &[]).step as f64);
        assert!(h.contains(&format!("({step} buckets, UTC)")));
        let spark = timeline::sparkline(&timeline::over_time(&rs, &[]).buckets);
        assert_eq!(spark.chars().count(), rs.len());
        assert!(md.contains(&spark) && !h.contains(&spark));
        // The end user's value is shown, escaped for each; conversation
        // hashes are shortened.
        assert!(md.contains("| <eve\\|x> |") && h.contains("<td>&lt;eve|x&gt;</td>"), "{md}");
        let hash = rs[0].features.as_ref().unwrap().conversation_hash.clone().unwrap();
        assert!(!md.contains(&hash) && md.contains(&format!("{}…", &hash[..SHORT_HASH])));
        // Concentration as computed, in words.
        let c = figures::concentration(&rs);
        let verb = if c.n == 1 { "holds" } else { "hold" };
        let said = format!("{} of {} areas (service x model x feature) {verb} {}", c.n, c.areas.len(), pct(c.share));
        assert!(md.contains(&said), "{said}\n{md}");
        // The cache-hit ratio of a line, from its records.
        let mini: Vec<&LlmCall> = rs.iter().filter(|r| r.request_model.as_deref() == Some("gpt-4o-mini")).collect();
        let hit = mini.iter().map(|r| r.cached_input_tokens.unwrap()).sum::<u64>() as f64
            / mini.iter().map(|r| r.input_tokens.unwrap()).sum::<u64>() as f64;
        assert!(md
            .lines()
            .any(|l| l.starts_with("| openai | gpt-4o-mini |") && l.contains(&format!("| {} |", pct(hit)))));
    }

    #[test]
    fn what_is_not_known_is_said() {
        let (md, h) = render(&calls(false));
        for absent in [
            "so the cost per end user is not known",
            "so the cost per conversation is not known",
            "No streamed call has a time to first token.",
        ] {
            assert!(md.contains(absent) && h.contains(absent), "{absent}");
        }
        let (md, _) = render(&[]);
        for empty in ["No call has a time.", "No priced spend to break down.", "No successful call has a duration."] {
            assert!(md.contains(empty), "{empty}");
        }
    }
}
