//! The assessment report from records and their opportunities: the Spend Map,
//! the Opportunity Register (ranked by saving per effort) and the Remediation
//! Roadmap (quick wins first), and, when the agent's stats are at hand, the
//! LLM traffic it could not read, as Markdown for a terminal and as one
//! self-contained HTML file with inline SVG charts (no scripts, no network).
use std::collections::BTreeMap;
use std::fmt::Write;

use crate::opportunities::{window, Effort, Opportunity};
use crate::summary::{by_service, summarize};
use crate::traffic::BlindSpot;
use crate::LlmCall;

pub(crate) fn usd(x: f64) -> String {
    if x >= 100.0 {
        format!("${x:.0}")
    } else if x >= 1.0 {
        format!("${x:.2}")
    } else {
        format!("${x:.4}")
    }
}

fn effort_name(e: Effort) -> &'static str {
    match e {
        Effort::Low => "low",
        Effort::Medium => "medium",
        Effort::High => "high",
    }
}

fn model_of(r: &LlmCall) -> String {
    r.response_model.clone().or_else(|| r.request_model.clone()).unwrap_or_else(|| "(unknown)".into())
}

/// Spend per time bucket and model (top models, the rest as "other").
fn over_time(records: &[LlmCall], models: &[String]) -> (Vec<String>, Vec<BTreeMap<String, f64>>) {
    let ts: Vec<(i64, &LlmCall)> = records
        .iter()
        .filter_map(|r| chrono::DateTime::parse_from_rfc3339(&r.ts).ok().map(|t| (t.timestamp(), r)))
        .collect();
    let (Some(lo), Some(hi)) = (ts.iter().map(|x| x.0).min(), ts.iter().map(|x| x.0).max()) else {
        return (Vec::new(), Vec::new());
    };
    // About 24 buckets over the window, at least a minute each.
    let step = ((hi - lo) / 24).max(60);
    let n = ((hi - lo) / step + 1) as usize;
    let mut buckets = vec![BTreeMap::new(); n];
    for (t, r) in &ts {
        let m = model_of(r);
        let key = if models.contains(&m) { m } else { "other".into() };
        *buckets[((t - lo) / step) as usize].entry(key).or_insert(0.0) += r.cost_usd.unwrap_or(0.0);
    }
    let labels = (0..n)
        .map(|i| {
            chrono::DateTime::from_timestamp(lo + i as i64 * step, 0)
                .map_or_else(String::new, |d| d.format("%m-%d %H:%M").to_string())
        })
        .collect();
    (labels, buckets)
}

/// Opportunities grouped for the roadmap: (phase, its items).
fn roadmap(opps: &[Opportunity]) -> Vec<(&'static str, Vec<&Opportunity>)> {
    let phase = |e: Effort| opps.iter().filter(|o| o.effort == e).collect::<Vec<_>>();
    vec![
        ("Quick wins (a setting or a cache)", phase(Effort::Low)),
        ("Next (code changes)", phase(Effort::Medium)),
        ("Later (design changes)", phase(Effort::High)),
    ]
}

pub fn markdown(records: &[LlmCall], opps: &[Opportunity]) -> String {
    markdown_with(records, opps, None)
}

/// The title of the section listing what could not be read.
pub const UNREAD_TITLE: &str = "LLM traffic tokentap could not read";

/// `unread`: the connections to LLM API hosts the agent could not read
/// (its stats file's `blind_spots`), when known: a section of its own. None
/// (reports from ClickHouse rows alone) leaves the section out.
pub fn markdown_with(records: &[LlmCall], opps: &[Opportunity], unread: Option<&[BlindSpot]>) -> String {
    let (lines, total) = summarize(records);
    let (hours, factor) = window(records);
    let savings: f64 = opps.iter().map(|o| o.estimated_monthly_savings_usd).sum();
    let mut s = String::new();
    let _ = writeln!(s, "# tokentap assessment\n");
    let _ = writeln!(
        s,
        "{} LLM calls observed over {:.1} h; spend {} ({} per month at this rate). \
         {} opportunities worth an estimated {} per month.\n",
        total.calls,
        hours,
        usd(total.cost_usd),
        usd(total.cost_usd * factor),
        opps.len(),
        usd(savings)
    );
    if total.unpriced_calls > 0 {
        let _ = writeln!(
            s,
            "{} calls have no price (unknown model or no usage) and count as $0 here.\n",
            total.unpriced_calls
        );
    }
    let _ = writeln!(s, "## Spend Map\n\n### By provider and model\n");
    let _ = writeln!(
        s,
        "| provider | model | calls | input tokens | cached | output tokens | cost |\n|---|---|--:|--:|--:|--:|--:|"
    );
    for ((p, m), l) in &lines {
        let _ = writeln!(
            s,
            "| {p} | {m} | {} | {} | {} | {} | {} |",
            l.calls,
            l.input_tokens,
            l.cached_input_tokens,
            l.output_tokens,
            usd(l.cost_usd)
        );
    }
    let _ = writeln!(s, "\n### By service\n\n| service | calls | input tokens | output tokens | cost | share |\n|---|--:|--:|--:|--:|--:|");
    for (svc, l) in by_service(records) {
        let share = if total.cost_usd > 0.0 { l.cost_usd / total.cost_usd * 100.0 } else { 0.0 };
        let _ = writeln!(
            s,
            "| {svc} | {} | {} | {} | {} | {share:.0}% |",
            l.calls,
            l.input_tokens,
            l.output_tokens,
            usd(l.cost_usd)
        );
    }
    if let Some(unread) = unread {
        unread_markdown(&mut s, unread);
    }
    let _ = writeln!(s, "\n## Opportunity Register\n");
    if opps.is_empty() {
        let _ = writeln!(s, "No opportunities found in the observed calls.");
    } else {
        let _ = writeln!(s, "Ranked by estimated monthly saving per unit of effort.\n");
        let _ =
            writeln!(s, "| # | opportunity | kind | est. monthly saving | calls | effort |\n|--:|---|---|--:|--:|---|");
        for (i, o) in opps.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | `{}` | {} | {} | {} |",
                i + 1,
                o.title,
                serde_json::to_value(o.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
                usd(o.estimated_monthly_savings_usd),
                o.affected_calls,
                effort_name(o.effort)
            );
        }
    }
    let _ = writeln!(s, "\n## Remediation Roadmap\n");
    for (phase, items) in roadmap(opps) {
        if items.is_empty() {
            continue;
        }
        let sum: f64 = items.iter().map(|o| o.estimated_monthly_savings_usd).sum();
        let _ = writeln!(s, "### {phase} — {} per month\n", usd(sum));
        for o in items {
            let _ = writeln!(s, "- {} ({} per month): {}", o.title, usd(o.estimated_monthly_savings_usd), o.action);
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "Savings are measured on the observed calls and extrapolated to 30 days from the observed window \
         (at least one hour). Prompt text was not stored: duplicates, prefixes and loops are found from \
         keyed hashes computed at capture."
    );
    s
}

/// Who a blind spot's process is, in one cell.
fn process_of(b: &BlindSpot) -> String {
    let mut who = format!("{} (pid {}", b.comm, b.pid);
    if let Some(exe) = &b.exe {
        who.push_str(&format!(", {exe}"));
    }
    if let Some(pod) = &b.pod {
        who.push_str(&format!(", pod {}/{pod}", b.namespace.as_deref().unwrap_or("")));
    } else if let Some(c) = &b.container_id {
        who.push_str(&format!(", container {}", &c[..c.len().min(12)]));
    }
    who.push(')');
    who
}

fn unread_intro(unread: &[BlindSpot]) -> String {
    if unread.is_empty() {
        return "Every connection to an LLM API host that tokentap saw was read.".into();
    }
    let n: u64 = unread.iter().map(|b| b.connections).sum();
    let sent: u64 = unread.iter().map(|b| b.bytes_sent).sum();
    let received: u64 = unread.iter().map(|b| b.bytes_received).sum();
    format!(
        "{n} connections to LLM API hosts ({sent} bytes sent, {received} bytes received) were not read:          the calls they carried are not in the Spend Map, and no token count or cost is estimated for them."
    )
}

fn unread_markdown(s: &mut String, unread: &[BlindSpot]) {
    let _ = writeln!(s, "\n## {UNREAD_TITLE}\n\n{}\n", unread_intro(unread));
    if unread.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "| host | process | service | connections | bytes sent | bytes received | reason |\n|---|---|---|--:|--:|--:|---|"
    );
    for b in unread {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} (`{}`) |",
            b.provider_host,
            process_of(b).replace('|', "\\|"),
            b.service.as_deref().unwrap_or("").replace('|', "\\|"),
            b.connections,
            b.bytes_sent,
            b.bytes_received,
            b.reason_text.replace('|', "\\|"),
            b.reason
        );
    }
}

fn unread_html(s: &mut String, unread: &[BlindSpot]) {
    let _ = write!(s, "<h2>{}</h2><p>{}</p>", esc(UNREAD_TITLE), esc(&unread_intro(unread)));
    if unread.is_empty() {
        return;
    }
    s.push_str("<table><tr><th>host</th><th>process</th><th>service</th><th>connections</th><th>bytes sent</th><th>bytes received</th><th>reason</th></tr>");
    for b in unread {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{} (<code>{}</code>)</td></tr>",
            esc(&b.provider_host),
            esc(&process_of(b)),
            esc(b.service.as_deref().unwrap_or("")),
            b.connections,
            b.bytes_sent,
            b.bytes_received,
            esc(&b.reason_text),
            esc(&b.reason)
        );
    }
    s.push_str("</table>");
}

/// A span of seconds in the unit a reader expects: `7 s`, `12 min`, `3.5 h`, `9.0 d`.
pub(crate) fn duration_text(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.0} s")
    } else if secs < 3600.0 {
        format!("{:.0} min", secs / 60.0)
    } else if secs < 86400.0 * 2.0 {
        format!("{:.1} h", secs / 3600.0)
    } else {
        format!("{:.1} d", secs / 86400.0)
    }
}

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub(crate) const COLORS: [&str; 8] =
    ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f"];

/// Horizontal bar chart.
pub(crate) fn bars(id: &str, title: &str, items: &[(String, f64)]) -> String {
    let max = items.iter().map(|x| x.1).fold(0.0, f64::max).max(1e-12);
    let row = 24;
    let h = 30 + row * items.len().max(1);
    let mut s = format!(
        "<figure><figcaption>{}</figcaption><svg class=\"chart\" data-chart=\"{id}\" viewBox=\"0 0 640 {h}\" width=\"640\" height=\"{h}\" role=\"img\">",
        esc(title)
    );
    for (i, (label, v)) in items.iter().enumerate() {
        let y = 10 + i * row;
        let w = (v / max * 360.0).max(1.0);
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text><rect x=\"220\" y=\"{y}\" width=\"{w:.1}\" height=\"18\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{}\" font-size=\"12\">{}</text>",
            y + 14,
            esc(&label.chars().take(32).collect::<String>()),
            COLORS[i % COLORS.len()],
            225.0 + w,
            y + 14,
            usd(*v)
        );
    }
    s.push_str("</svg></figure>");
    s
}

/// Stacked columns of spend per time bucket, one colour per model.
fn columns(id: &str, title: &str, labels: &[String], buckets: &[BTreeMap<String, f64>], series: &[String]) -> String {
    let max = buckets.iter().map(|b| b.values().sum::<f64>()).fold(0.0, f64::max).max(1e-12);
    let n = buckets.len().max(1);
    let cw = (560 / n).max(4);
    let mut s = format!(
        "<figure><figcaption>{}</figcaption><svg class=\"chart\" data-chart=\"{id}\" viewBox=\"0 0 640 300\" width=\"640\" height=\"300\" role=\"img\">",
        esc(title)
    );
    for (i, b) in buckets.iter().enumerate() {
        let mut y = 240.0;
        for (k, name) in series.iter().enumerate() {
            let v = b.get(name).copied().unwrap_or(0.0);
            if v <= 0.0 {
                continue;
            }
            let h = v / max * 220.0;
            y -= h;
            let _ = write!(
                s,
                "<rect x=\"{}\" y=\"{y:.1}\" width=\"{}\" height=\"{h:.1}\" fill=\"{}\"><title>{} {}: {}</title></rect>",
                40 + i * cw,
                cw.saturating_sub(2).max(1),
                COLORS[k % COLORS.len()],
                esc(&labels[i]),
                esc(name),
                usd(v)
            );
        }
        if i % (n / 6).max(1) == 0 {
            let _ = write!(s, "<text x=\"{}\" y=\"258\" font-size=\"10\">{}</text>", 40 + i * cw, esc(&labels[i]));
        }
    }
    let _ = write!(s, "<text x=\"0\" y=\"20\" font-size=\"10\">{}</text>", usd(max));
    for (k, name) in series.iter().enumerate() {
        let _ = write!(
            s,
            "<rect x=\"{}\" y=\"275\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"284\" font-size=\"10\">{}</text>",
            40 + k * 120,
            COLORS[k % COLORS.len()],
            54 + k * 120,
            esc(&name.chars().take(18).collect::<String>())
        );
    }
    s.push_str("</svg></figure>");
    s
}

pub fn html(records: &[LlmCall], opps: &[Opportunity]) -> String {
    html_with(records, opps, None)
}

/// [`html`] with the section on what could not be read (see [`markdown_with`]).
pub fn html_with(records: &[LlmCall], opps: &[Opportunity], unread: Option<&[BlindSpot]>) -> String {
    let (lines, total) = summarize(records);
    let services: Vec<(String, f64)> = by_service(records).into_iter().take(10).map(|(s, l)| (s, l.cost_usd)).collect();
    let models: Vec<(String, f64)> =
        lines.iter().take(10).map(|((p, m), l)| (format!("{m} ({p})"), l.cost_usd)).collect();
    let top_models: Vec<String> = lines.iter().take(5).map(|((_, m), _)| m.clone()).collect();
    let mut series = top_models.clone();
    series.push("other".into());
    let (labels, buckets) = over_time(records, &top_models);
    let opp_bars: Vec<(String, f64)> =
        opps.iter().take(8).map(|o| (o.title.clone(), o.estimated_monthly_savings_usd)).collect();
    let md = markdown_with(records, opps, unread);
    let mut s = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>tokentap assessment</title><style>\
         body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}\
         table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}\
         td.n{text-align:right}figure{margin:1em 0}figcaption{font-weight:600;margin-bottom:.3em}\
         .kpi{display:inline-block;margin-right:2em}.kpi b{font-size:1.6em;display:block}</style></head><body>",
    );
    let (hours, factor) = window(records);
    let savings: f64 = opps.iter().map(|o| o.estimated_monthly_savings_usd).sum();
    let _ = write!(
        s,
        "<h1>tokentap assessment</h1><p>{} LLM calls observed over {hours:.1} h.</p>\
         <div class=\"kpi\"><b>{}</b>spend observed</div><div class=\"kpi\"><b>{}</b>per month at this rate</div>\
         <div class=\"kpi\"><b>{}</b>estimated savings per month</div>",
        total.calls,
        usd(total.cost_usd),
        usd(total.cost_usd * factor),
        usd(savings)
    );
    s.push_str("<h2>Spend Map</h2>");
    s.push_str(&columns("spend-over-time", "Spend over time by model", &labels, &buckets, &series));
    s.push_str(&bars("spend-by-service", "Spend by service", &services));
    s.push_str(&bars("spend-by-model", "Spend by model", &models));
    if let Some(unread) = unread {
        unread_html(&mut s, unread);
    }
    s.push_str("<h2>Opportunity Register</h2>");
    if opps.is_empty() {
        s.push_str("<p>No opportunities found in the observed calls.</p>");
    } else {
        s.push_str(&bars("top-opportunities", "Top opportunities (estimated monthly saving)", &opp_bars));
        s.push_str("<table><tr><th>#</th><th>opportunity</th><th>est. monthly saving</th><th>calls</th><th>effort</th><th>action</th></tr>");
        for (i, o) in opps.iter().enumerate() {
            let _ = write!(
                s,
                "<tr><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
                i + 1,
                esc(&o.title),
                usd(o.estimated_monthly_savings_usd),
                o.affected_calls,
                effort_name(o.effort),
                esc(&o.action)
            );
        }
        s.push_str("</table>");
    }
    s.push_str("<h2>Remediation Roadmap</h2>");
    for (phase, items) in roadmap(opps) {
        if items.is_empty() {
            continue;
        }
        let _ = write!(s, "<h3>{}</h3><ol>", esc(phase));
        for o in items {
            let _ = write!(
                s,
                "<li><b>{}</b> — {} per month. {}</li>",
                esc(&o.title),
                usd(o.estimated_monthly_savings_usd),
                esc(&o.action)
            );
        }
        s.push_str("</ol>");
    }
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
}
