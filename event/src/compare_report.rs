//! The Track report: a comparison (`compare`) as Markdown and as one
//! self-contained HTML file with inline SVG charts (baseline vs now), like
//! the assessment report. The JSON form is the `Comparison` itself.
use std::fmt::Write;

use crate::compare::{Comparison, Progress, Status};
use crate::report::{esc, usd, COLORS};
use crate::roadmap::Metric;

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

fn signed(x: f64) -> String {
    if x < 0.0 {
        format!("-{}", usd(-x))
    } else {
        format!("+{}", usd(x))
    }
}

fn value(m: Metric, v: Option<f64>) -> String {
    m.format(v)
}

fn target(p: &Progress) -> String {
    p.metric.target_text(p.target)
}

fn window(name: &str, since: &str, until: &str, hours: f64) -> String {
    format!("{name}: {} to {} ({})", since, until, crate::report::duration_text(hours * 3600.0))
}

fn spend_sentence(c: &Comparison) -> String {
    let sp = &c.spend;
    format!(
        "Spend per month went from {} to {} ({}): volume {}, mix {}, unit cost {}.",
        usd(sp.baseline_monthly_usd),
        usd(sp.now_monthly_usd),
        signed(sp.change_usd),
        signed(sp.volume_usd),
        signed(sp.mix_usd),
        signed(sp.unit_cost_usd)
    )
}

pub fn markdown(c: &Comparison) -> String {
    let mut s = String::new();
    let b = &c.baseline;
    let _ = writeln!(s, "# tokentap: now against baseline {}\n", b.name.as_deref().unwrap_or("(unnamed)"));
    let _ = writeln!(s, "- {}", window("baseline", &b.since, &b.until, b.window_hours));
    let _ = writeln!(s, "- {}\n", window("now", &c.now.since, &c.now.until, c.now.window_hours));
    let _ = writeln!(s, "{}\n", spend_sentence(c));
    let _ = writeln!(s, "## Key metrics\n\n| metric | baseline | now |\n|---|--:|--:|");
    let (x, y) = (&b.totals, &c.now.totals);
    let rows = [
        ("calls", x.calls.to_string(), y.calls.to_string()),
        ("cost per call", usd(x.cost_per_call), usd(y.cost_per_call)),
        ("cache-hit ratio", pct(x.cache_hit_ratio), pct(y.cache_hit_ratio)),
        ("duplicate share", pct(x.duplicate_share), pct(y.duplicate_share)),
        ("frontier share of spend", pct(x.frontier_spend_share), pct(y.frontier_spend_share)),
        ("frontier share of calls", pct(x.frontier_call_share), pct(y.frontier_call_share)),
        ("error rate", pct(x.error_rate), pct(y.error_rate)),
    ];
    for (name, a, n) in rows {
        let _ = writeln!(s, "| {name} | {a} | {n} |");
    }
    let _ = writeln!(s, "\n## Roadmap targets\n");
    if c.progress.is_empty() {
        let _ = writeln!(s, "The baseline had no opportunities, so there are no targets to check.");
    } else {
        let _ = writeln!(
            s,
            "| sprint | due | item | metric | baseline | now | target | estimated / month | realised / month | status |\n|--:|---|---|---|--:|--:|--:|--:|--:|---|"
        );
        for p in &c.progress {
            let _ = writeln!(
                s,
                "| {} | {} | {} (`{}`) | {} | {} | {} | {} | {} | {} | **{}** |",
                p.sprint,
                p.due,
                p.title.replace('|', "\\|"),
                serde_json::to_value(p.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
                p.metric.describe(),
                value(p.metric, p.baseline_value),
                value(p.metric, p.now_value),
                target(p),
                usd(p.estimated_monthly_savings_usd),
                usd(p.realised_monthly_savings_usd),
                p.status.as_str()
            );
        }
    }
    let _ = writeln!(s, "\n## New opportunities\n");
    if c.new_opportunities.is_empty() {
        let _ = writeln!(s, "None: every opportunity now was already in the baseline.");
    }
    for o in &c.new_opportunities {
        let _ = writeln!(s, "- {} — {} per month. {}", o.title, usd(o.estimated_monthly_savings_usd), o.action);
    }
    let t = &c.thresholds;
    let _ = writeln!(
        s,
        "\n## Regressions\n\nThresholds: cost per call +{:.0} %, cache-hit ratio -{:.0} points, duplicate share +{:.0} points, \
         frontier share of calls +{:.0} points; judged where both windows have at least {} calls.\n",
        t.cost_per_call_rise * 100.0,
        t.cache_hit_drop * 100.0,
        t.duplicate_share_rise * 100.0,
        t.frontier_share_rise * 100.0,
        t.min_calls
    );
    if c.regressions.is_empty() {
        let _ = writeln!(s, "Nothing regressed.");
    } else {
        let _ = writeln!(s, "| where | metric | baseline | now | threshold |\n|---|---|--:|--:|---|");
        for r in &c.regressions {
            let (a, n) =
                if r.metric == "cost_per_call" { (usd(r.baseline), usd(r.now)) } else { (pct(r.baseline), pct(r.now)) };
            let _ = writeln!(s, "| {} | {} | {a} | {n} | {} |", r.scope.replace('|', "\\|"), r.metric, r.threshold);
        }
    }
    s
}

/// Pairs of bars (baseline, now) per item.
fn paired(id: &str, title: &str, items: &[(String, f64, f64)], labels: (&str, &str)) -> String {
    let max = items.iter().map(|i| i.1.max(i.2)).fold(0.0, f64::max).max(1e-12);
    let h = 40 + items.len() * 34;
    let mut s = format!(
        "<figure><figcaption>{}</figcaption><svg class=\"chart\" data-chart=\"{id}\" viewBox=\"0 0 720 {h}\" width=\"720\" height=\"{h}\" role=\"img\">",
        esc(title)
    );
    for (i, (name, a, b)) in items.iter().enumerate() {
        let y = 10 + i * 34;
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{}\" font-size=\"11\">{}</text>",
            y + 14,
            esc(&name.chars().take(28).collect::<String>())
        );
        for (k, v) in [(0, a), (1, b)] {
            let w = (v / max * 420.0).max(if *v > 0.0 { 1.0 } else { 0.0 });
            let _ = write!(
                s,
                "<rect x=\"200\" y=\"{}\" width=\"{w:.1}\" height=\"13\" fill=\"{}\"><title>{}: {}</title></rect>\
                 <text x=\"{:.1}\" y=\"{}\" font-size=\"10\">{}</text>",
                y + k * 14,
                COLORS[k],
                if k == 0 { labels.0 } else { labels.1 },
                usd(*v),
                205.0 + w,
                y + k * 14 + 11,
                usd(*v)
            );
        }
    }
    let y = h - 16;
    let _ = write!(
        s,
        "<rect x=\"200\" y=\"{y}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"214\" y=\"{}\" font-size=\"10\">{}</text>\
         <rect x=\"320\" y=\"{y}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"334\" y=\"{}\" font-size=\"10\">{}</text></svg></figure>",
        COLORS[0],
        y + 9,
        labels.0,
        COLORS[1],
        y + 9,
        labels.1
    );
    s
}

fn status_color(s: Status) -> &'static str {
    match s {
        Status::Done => "#59a14f",
        Status::Partial => "#edc948",
        Status::NotStarted | Status::NotSeen => "#bab0ac",
        Status::Regressed => "#e15759",
    }
}

pub fn html(c: &Comparison) -> String {
    let md = markdown(c);
    let mut s = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>tokentap: now against baseline</title><style>\
         body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}\
         table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}\
         td.n{text-align:right}figure{margin:1em 0}figcaption{font-weight:600;margin-bottom:.3em}\
         .status{padding:2px 6px;border-radius:3px;color:#fff}</style></head><body>",
    );
    let b = &c.baseline;
    let _ = write!(
        s,
        "<h1>tokentap: now against baseline {}</h1><p>{}<br>{}</p><p>{}</p>",
        esc(b.name.as_deref().unwrap_or("(unnamed)")),
        esc(&window("baseline", &b.since, &b.until, b.window_hours)),
        esc(&window("now", &c.now.since, &c.now.until, c.now.window_hours)),
        esc(&spend_sentence(c))
    );
    let svc: Vec<(String, f64, f64)> = c.services.iter().take(12).cloned().collect();
    s.push_str(&paired("spend-by-service-baseline-vs-now", "Spend per month by service", &svc, ("baseline", "now")));
    let opp: Vec<(String, f64, f64)> = c
        .progress
        .iter()
        .map(|p| (p.title.clone(), p.estimated_monthly_savings_usd, p.realised_monthly_savings_usd.max(0.0)))
        .collect();
    if !opp.is_empty() {
        s.push_str(&paired(
            "savings-estimated-vs-realised",
            "Savings per month: estimated vs realised",
            &opp,
            ("estimated", "realised"),
        ));
        s.push_str("<h2>Roadmap targets</h2><table><tr><th>sprint</th><th>due</th><th>item</th><th>metric</th><th>baseline</th><th>now</th><th>target</th><th>estimated</th><th>realised</th><th>status</th></tr>");
        for p in &c.progress {
            let _ = write!(
                s,
                "<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td><span class=\"status\" style=\"background:{}\">{}</span></td></tr>",
                p.sprint,
                esc(&p.due),
                esc(&p.title),
                esc(p.metric.describe()),
                esc(&value(p.metric, p.baseline_value)),
                esc(&value(p.metric, p.now_value)),
                esc(&target(p)),
                usd(p.estimated_monthly_savings_usd),
                usd(p.realised_monthly_savings_usd),
                status_color(p.status),
                p.status.as_str()
            );
        }
        s.push_str("</table>");
    }
    s.push_str("<h2>Regressions</h2>");
    if c.regressions.is_empty() {
        s.push_str("<p>Nothing regressed.</p>");
    } else {
        s.push_str("<table><tr><th>where</th><th>metric</th><th>baseline</th><th>now</th><th>threshold</th></tr>");
        for r in &c.regressions {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{:.4}</td><td class=\"n\">{:.4}</td><td>{}</td></tr>",
                esc(&r.scope),
                esc(&r.metric),
                r.baseline,
                r.now,
                esc(&r.threshold)
            );
        }
        s.push_str("</table>");
    }
    let _ = write!(s, "<details><summary>Report as Markdown</summary><pre>{}</pre></details></body></html>", esc(&md));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::Baseline;
    use crate::compare::{compare, Thresholds};
    use crate::opportunities::{detect, Thresholds as Detect};
    use crate::{LlmCall, PriceTable, PromptFeatures};

    fn calls(model: &str, repeats: usize) -> Vec<LlmCall> {
        (0..repeats + 10)
            .map(|i| {
                let mut r = LlmCall {
                    event_id: LlmCall::new_event_id(),
                    ts: format!("2026-11-23T10:00:{:02}Z", i),
                    provider: "openai".into(),
                    operation: "chat".into(),
                    request_model: Some(model.into()),
                    status: Some(200),
                    input_tokens: Some(500),
                    output_tokens: Some(50),
                    service: Some("<checkout>".into()),
                    features: Some(PromptFeatures {
                        prompt_hash: Some(if i < repeats { "same".into() } else { format!("p{i}") }),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                r.apply_cost(&PriceTable::shipped());
                r
            })
            .collect()
    }

    fn comparison(base: &[LlmCall], now: &[LlmCall]) -> Comparison {
        let p = PriceTable::shipped();
        let b = Baseline::build("q3 <audit>", base, &detect(base, &p, &Detect::default()));
        compare(&b, now, &detect(now, &p, &Detect::default()), &Thresholds::default())
    }

    #[test]
    fn markdown_states_the_split_targets_and_regressions() {
        let c = comparison(&calls("gpt-4o-mini", 6), &calls("gpt-4o-mini", 1));
        let md = markdown(&c);
        assert!(md.contains("# tokentap: now against baseline q3 <audit>"), "{md}");
        assert!(md.contains("volume") && md.contains("mix") && md.contains("unit cost"));
        assert!(md.contains("| 1 | 2026-12-07 | 5 calls repeat an identical prompt"), "{md}");
        assert!(md.contains("**done**") && md.contains("Nothing regressed."), "{md}");
        let worse = markdown(&comparison(&calls("gpt-4o-mini", 1), &calls("gpt-4o", 6)));
        assert!(
            worse.contains("| all calls | cost_per_call |") && worse.contains("| all calls | duplicate_share |"),
            "{worse}"
        );
        assert!(worse.contains("identical prompt") && worse.contains("## New opportunities"));
    }

    #[test]
    fn html_is_self_contained_escaped_with_both_charts() {
        let c = comparison(&calls("gpt-4o-mini", 6), &calls("gpt-4o-mini", 1));
        let h = html(&c);
        for chart in ["spend-by-service-baseline-vs-now", "savings-estimated-vs-realised"] {
            assert!(h.contains(&format!("data-chart=\"{chart}\"")), "{chart}");
        }
        assert!(!h.contains("<script") && !h.contains("http://") && !h.contains("https://"));
        assert!(h.contains("&lt;checkout&gt;") && !h.contains("<checkout>") && !h.contains("q3 <audit>"));
        assert!(h.contains(">done</span>"));
    }
}
