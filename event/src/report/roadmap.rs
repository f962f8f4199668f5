//! The Remediation Roadmap section: each opportunity as a roadmap item
//! (`crate::roadmap::plan`) with its success metric, baseline value and
//! target, sequenced into dated sprints: quick wins first, structural
//! changes last. The compare report checks exactly these targets.
use std::fmt::Write;

use super::{esc, usd};
use crate::opportunities::Opportunity;
use crate::roadmap::RoadmapItem;

/// Items grouped by sprint: (heading, items), in sprint order.
fn sprints(plan: &[RoadmapItem]) -> Vec<(String, Vec<RoadmapItem>)> {
    let mut out: Vec<(String, Vec<RoadmapItem>)> = Vec::new();
    for item in plan.iter().cloned() {
        match out.last_mut() {
            Some((_, v)) if v[0].sprint == item.sprint => v.push(item),
            _ => {
                let kind = if item.track == "quick_win" { "Quick wins" } else { "Structural changes" };
                let what = item.sprint_name.split_once('(').map_or("", |(_, w)| w.trim_end_matches(')'));
                let head = format!("{kind}: sprint {}, {what} ({} to {})", item.sprint, item.start, item.due);
                out.push((head, vec![item]));
            }
        }
    }
    out
}

fn metric_line(i: &RoadmapItem) -> String {
    format!(
        "{}: {} now, target {} by {}",
        i.metric.describe(),
        i.metric.format(i.baseline_value),
        i.metric.target_text(i.target),
        i.due
    )
}

fn action<'a>(opps: &'a [Opportunity], i: &RoadmapItem) -> &'a str {
    opps.iter().find(|o| o.kind == i.kind).map_or("", |o| o.action.as_str())
}

pub(super) fn markdown(s: &mut String, plan: &[RoadmapItem], opps: &[Opportunity]) {
    let _ = writeln!(s, "\n## Remediation Roadmap\n");
    for (head, items) in sprints(plan) {
        let sum: f64 = items.iter().map(|i| i.estimated_monthly_savings_usd).sum();
        let _ = writeln!(s, "### {head} — {} per month\n", usd(sum));
        for i in &items {
            let _ = writeln!(
                s,
                "- {} ({} per month): {} Success metric: {}.",
                i.title,
                usd(i.estimated_monthly_savings_usd),
                action(opps, i),
                metric_line(i)
            );
        }
        let _ = writeln!(s);
    }
    if !opps.is_empty() {
        let _ = writeln!(
            s,
            "Each target is checked against this window by `report --baseline` (baseline.json; docs/track.md).\n"
        );
    }
}

pub(super) fn html(s: &mut String, plan: &[RoadmapItem], opps: &[Opportunity]) {
    s.push_str("<h2>Remediation Roadmap</h2>");
    for (head, items) in sprints(plan) {
        let _ = write!(s, "<h3>{}</h3><ol>", esc(&head));
        for i in &items {
            let _ = write!(
                s,
                "<li><b>{}</b> — {} per month. {}<br><i>Success metric:</i> {}.</li>",
                esc(&i.title),
                usd(i.estimated_monthly_savings_usd),
                esc(action(opps, i)),
                esc(&metric_line(i))
            );
        }
        s.push_str("</ol>");
    }
}
