//! The assessment report from records and their opportunities: the Spend Map,
//! the Opportunity Register (ranked by saving per effort) and the Remediation
//! Roadmap (quick wins first), and, when the agent's stats are at hand, the
//! LLM traffic it could not read, as Markdown for a terminal and as one
//! self-contained HTML file with inline SVG charts (no scripts, no network).
//!
//! This file assembles the sections and writes the headline; each section
//! has its own module.
use std::fmt::Write;

use crate::facts::Facts;
use crate::opportunities::Opportunity;
use crate::roadmap::RoadmapItem;
use crate::traffic::BlindSpot;
use crate::LlmCall;

mod charts;
mod doc;
mod figures;
mod register;
mod roadmap;
mod spend_map;
mod timeline;
mod unread;

// Shared with the compare report (compare_report.rs), so both read alike.
pub(crate) use charts::COLORS;
pub use figures::{
    concentrate, rank_percentiles, Area, Concentration, Percentiles as ModelPercentiles, Spender, Spenders, Usage,
    CONCENTRATION_SHARE, TOP_SPENDERS,
};
pub(crate) use figures::{concentration, conversation, end_user, latency, percentiles_by_model, spenders, ttft, usage};
pub(crate) use timeline::duration_text;
pub(crate) use timeline::over_time;
pub use timeline::{no_time, observed_span, Frame, OverTime};
pub use unread::UNREAD_TITLE;

pub(crate) fn usd(x: f64) -> String {
    // An empty f64 sum is -0.0: show "$0.0000", not "$-0.0000".
    let x = x + 0.0;
    if x >= 100.0 {
        format!("${x:.0}")
    } else if x >= 1.0 {
        format!("${x:.2}")
    } else if x >= 1e-4 || x <= 0.0 {
        format!("${x:.4}")
    } else {
        // Two significant digits, so a cheap model's cost per 1k tokens is not "$0.0000".
        format!("${x:.*}", (-x.log10()).ceil() as usize + 1)
    }
}

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn model_of(r: &LlmCall) -> String {
    r.response_model.clone().or_else(|| r.request_model.clone()).unwrap_or_else(|| "(unknown)".into())
}

/// What was observed: the real window, first call to last, without the
/// extrapolation's one-hour floor.
fn observed_text(facts: &Facts) -> String {
    let calls = match facts.calls {
        1 => "1 LLM call".to_string(),
        n => format!("{n} LLM calls"),
    };
    match facts.first.as_ref().zip(facts.last.as_ref()).map(|(a, b)| (a.at, b.at)) {
        None => format!("{calls} observed"),
        Some((first, last)) if first == last => {
            format!("{calls} observed at {} UTC", first.format("%Y-%m-%d %H:%M:%S"))
        }
        Some((first, last)) => format!(
            "{calls} observed over {} ({})",
            timeline::duration_text(timeline::seconds(first, last)),
            timeline::span_text(first, last)
        ),
    }
}

/// How the monthly figures are reached, said apart from what was observed.
fn extrapolation_text(facts: &Facts, monthly: f64) -> String {
    let (hours, factor) = facts.window();
    format!(
        "Per month at this rate: {}, extrapolated to 30 days from the observed window counted as at least \
         one hour (here {}, x{factor:.0}); the opportunities' monthly savings are extrapolated the same way.",
        usd(monthly),
        timeline::duration_text(hours * 3600.0)
    )
}

pub fn markdown(records: &[LlmCall], opps: &[Opportunity]) -> String {
    markdown_with(records, opps, None)
}

/// `unread`: the connections to LLM API hosts the agent could not read
/// (its stats file's `blind_spots`), when known: a section of its own. None
/// (reports from ClickHouse rows alone) leaves the section out.
pub fn markdown_with(records: &[LlmCall], opps: &[Opportunity], unread: Option<&[BlindSpot]>) -> String {
    let facts = Facts::of(records);
    markdown_of(&facts, opps, &crate::roadmap::plan(records, opps, &facts.span().1), unread)
}

/// The report of a window's facts, its register and its roadmap.
pub fn markdown_of(facts: &Facts, opps: &[Opportunity], items: &[RoadmapItem], unread: Option<&[BlindSpot]>) -> String {
    let total = &facts.total;
    let (_, factor) = facts.window();
    let savings: f64 = opps.iter().map(|o| o.estimated_monthly_savings_usd).sum();
    let mut s = String::new();
    let _ = writeln!(s, "# tokentap assessment\n");
    let _ = writeln!(
        s,
        "{}; spend {}. {} opportunities worth an estimated {} per month.\n\n{}\n",
        observed_text(facts),
        usd(total.cost_usd),
        opps.len(),
        usd(savings),
        extrapolation_text(facts, total.cost_usd * factor)
    );
    if total.unpriced_calls > 0 {
        let _ = writeln!(
            s,
            "{} calls have no price (unknown model or no usage) and count as $0 here.\n",
            total.unpriced_calls
        );
    }
    let _ = writeln!(s, "## Spend Map\n");
    doc::markdown(&mut s, &spend_map::blocks(facts));
    if let Some(unread) = unread {
        unread::markdown(&mut s, unread);
    }
    register::markdown(&mut s, opps);
    roadmap::markdown(&mut s, items, opps);
    let _ = writeln!(
        s,
        "Savings are measured on the observed calls and extrapolated to 30 days from the observed window \
         (at least one hour). Prompt text was not stored: duplicates, prefixes and loops are found from \
         keyed hashes computed at capture."
    );
    s
}

pub fn html(records: &[LlmCall], opps: &[Opportunity]) -> String {
    html_with(records, opps, None)
}

/// [`html`] with the section on what could not be read (see [`markdown_with`]).
pub fn html_with(records: &[LlmCall], opps: &[Opportunity], unread: Option<&[BlindSpot]>) -> String {
    let facts = Facts::of(records);
    html_of(&facts, opps, &crate::roadmap::plan(records, opps, &facts.span().1), unread)
}

/// The HTML report of a window's facts, its register and its roadmap.
pub fn html_of(facts: &Facts, opps: &[Opportunity], items: &[RoadmapItem], unread: Option<&[BlindSpot]>) -> String {
    let total = &facts.total;
    let (_, factor) = facts.window();
    let savings: f64 = opps.iter().map(|o| o.estimated_monthly_savings_usd).sum();
    let mut s = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>tokentap assessment</title><style>\
         body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}\
         table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}\
         td.n{text-align:right}figure{margin:1em 0}figcaption{font-weight:600;margin-bottom:.3em}\
         .kpi{display:inline-block;margin-right:2em}.kpi b{font-size:1.6em;display:block}</style></head><body>",
    );
    let _ = write!(
        s,
        "<h1>tokentap assessment</h1><p>{}.</p>\
         <div class=\"kpi\"><b>{}</b>spend observed</div><div class=\"kpi\"><b>{}</b>per month at this rate</div>\
         <div class=\"kpi\"><b>{}</b>estimated savings per month</div><p>{}</p>",
        esc(&observed_text(facts)),
        usd(total.cost_usd),
        usd(total.cost_usd * factor),
        usd(savings),
        esc(&extrapolation_text(facts, total.cost_usd * factor))
    );
    if total.unpriced_calls > 0 {
        let _ = write!(
            s,
            "<p>{} calls have no price (unknown model or no usage) and count as $0 here.</p>",
            total.unpriced_calls
        );
    }
    s.push_str("<h2>Spend Map</h2>");
    doc::html(&mut s, &spend_map::blocks(facts));
    if let Some(unread) = unread {
        unread::html(&mut s, unread);
    }
    register::html(&mut s, opps);
    roadmap::html(&mut s, items, opps);
    let md = markdown_of(facts, opps, items, unread);
    let _ =
        writeln!(s, "<details><summary>Report as Markdown</summary><pre>{}</pre></details></body></html>", esc(&md));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::opportunities::{detect, Thresholds};
    use crate::{PriceTable, PromptFeatures};

    fn records() -> Vec<LlmCall> {
        let prices = PriceTable::shipped();
        (0..40)
            .map(|i| {
                let mut r = LlmCall {
                    event_id: LlmCall::new_event_id(),
                    ts: format!("2026-11-23T10:{:02}:00Z", i),
                    provider: "openai".into(),
                    operation: "chat".into(),
                    request_model: Some(if i % 2 == 0 { "gpt-4o" } else { "gpt-4o-mini" }.into()),
                    status: Some(200),
                    input_tokens: Some(1000),
                    output_tokens: Some(if i % 2 == 0 { 2 } else { 300 }),
                    service: Some(if i % 3 == 0 { "search" } else { "checkout<svc>" }.into()),
                    features: Some(PromptFeatures {
                        prompt_hash: Some(format!("p{}", i % 30)),
                        message_count: 1,
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                r.apply_cost(&prices);
                r
            })
            .collect()
    }

    #[test]
    fn markdown_has_the_three_parts() {
        let rs = records();
        let opps = detect(&rs, &PriceTable::shipped(), &Thresholds::default());
        assert!(!opps.is_empty());
        let md = markdown(&rs, &opps);
        for part in
            ["## Spend Map", "## Opportunity Register", "## Remediation Roadmap", "| search |", "`duplicate_calls`"]
        {
            assert!(md.contains(part), "missing {part}:\n{md}");
        }
        // The roadmap: dated sprints, each item with its metric and target.
        let items = crate::roadmap::plan(&rs, &opps, "2026-11-23T10:39:00Z");
        let first = &items[0];
        assert!(md.contains("### Quick wins: sprint 1, settings and caches (2026-11-24 to 2026-12-07)"), "{md}");
        let line = format!(
            "Success metric: {}: {} now, target {} by {}.",
            first.metric.describe(),
            first.metric.format(first.baseline_value),
            first.metric.target_text(first.target),
            first.due
        );
        assert!(md.contains(&line), "{line}\n{md}");
        assert_eq!(md.matches("Success metric:").count(), opps.len());
    }

    #[test]
    fn html_is_self_contained_with_charts_and_escaped() {
        let rs = records();
        let opps = detect(&rs, &PriceTable::shipped(), &Thresholds::default());
        let h = html(&rs, &opps);
        for chart in ["spend-over-time", "spend-by-service", "spend-by-model", "top-opportunities"] {
            assert!(h.contains(&format!("data-chart=\"{chart}\"")), "{chart}");
        }
        assert!(!h.contains("<script") && !h.contains("http://") && !h.contains("https://"));
        assert!(h.contains("checkout&lt;svc&gt;") && !h.contains("checkout<svc>"));
        let empty = html(&[], &[]);
        assert!(empty.contains("No opportunities"));
        assert!(!empty.contains(UNREAD_TITLE), "left out when not known");
    }

    #[test]
    fn what_could_not_be_read_has_its_own_section() {
        let b = BlindSpot {
            provider_host: "api.openai.com".into(),
            provider: "openai".into(),
            reason: "no_plaintext_seen".into(),
            reason_text: "no TLS library | probed".into(),
            connections: 2,
            bytes_sent: 3002,
            bytes_received: 8324,
            pid: 42,
            comm: "java".into(),
            exe: Some("/usr/bin/java".into()),
            service: Some("<billing>".into()),
            ..Default::default()
        };
        let rs = records();
        let md = markdown_with(&rs, &[], Some(std::slice::from_ref(&b)));
        let row = "| api.openai.com | java (pid 42, /usr/bin/java) | <billing> | 2 | 3002 | 8324 | no TLS library \\| probed (`no_plaintext_seen`) |";
        assert!(md.contains(&format!("## {UNREAD_TITLE}")) && md.contains(row), "{md}");
        assert!(md.contains("2 connections to LLM API hosts (3002 bytes sent, 8324 bytes received) were not read"));
        assert!(md.find(UNREAD_TITLE) < md.find("## Opportunity Register"), "beside the Spend Map");
        assert!(markdown_with(&rs, &[], Some(&[]))
            .contains("Every connection to an LLM API host that tokentap saw was read."));
        let h = html_with(&rs, &[], Some(&[b]));
        assert!(
            h.contains(&format!("<h2>{UNREAD_TITLE}</h2>"))
                && h.contains("&lt;billing&gt;")
                && !h.contains("<billing>")
        );
    }

    #[test]
    fn small_amounts_keep_two_significant_digits() {
        assert_eq!(usd(-0.0), "$0.0000");
        assert_eq!(usd(0.00002), "$0.000020");
        assert_eq!(usd(0.000028), "$0.000028");
        assert_eq!(usd(0.5), "$0.5000");
        assert_eq!(usd(1234.0), "$1234");
    }

    #[test]
    fn the_headline_says_the_real_window_and_the_extrapolation_apart() {
        let rs = records();
        let times: Vec<i64> =
            rs.iter().map(|r| chrono::DateTime::parse_from_rfc3339(&r.ts).unwrap().timestamp()).collect();
        let (lo, hi) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
        assert!(hi - lo < 3600, "the fixture spans less than the extrapolation's floor");
        let observed = format!("{} LLM calls observed over {} min (", rs.len(), (hi - lo) / 60);
        let fmt = |t: i64, f: &str| chrono::DateTime::from_timestamp(t, 0).unwrap().format(f).to_string();
        let when = format!("{}-{} UTC)", fmt(lo, "%Y-%m-%d %H:%M:%S"), fmt(hi, "%H:%M:%S"));
        let factor = format!("(here 1 h, x{:.0})", 720.0 / ((hi - lo) as f64 / 3600.0).max(1.0));
        let md = markdown(&rs, &[]);
        let h = html(&rs, &[]);
        for text in [&md, &h] {
            assert!(text.contains(&format!("{observed}{when}")), "{text}");
            assert!(text.contains("Per month at this rate: ") && text.contains(&factor), "{text}");
            assert!(!text.contains("observed over 1.0 h"));
        }
        // The headline paragraph names the window, the next one the extrapolation.
        let first_para = md.split("\n\n").nth(1).unwrap();
        assert!(first_para.contains(&observed) && !first_para.contains("extrapolated"), "{first_para}");
        let one = format!("1 LLM call observed at {} UTC;", fmt(times[0], "%Y-%m-%d %H:%M:%S"));
        assert!(markdown(&rs[..1], &[]).contains(&one));
        assert!(markdown(&[], &[]).contains("0 LLM calls observed; spend $0.0000. 0 opportunities"));
    }
}
