//! The Opportunity Register: the detectors' findings, ranked by estimated
//! monthly saving per unit of effort (the ranking is `opportunities::detect`'s).
use std::fmt::Write;

use super::charts::bars;
use super::{esc, usd};
use crate::opportunities::{Effort, Opportunity};

fn effort_name(e: Effort) -> &'static str {
    match e {
        Effort::Low => "low",
        Effort::Medium => "medium",
        Effort::High => "high",
    }
}

pub(super) fn markdown(s: &mut String, opps: &[Opportunity]) {
    let _ = writeln!(s, "\n## Opportunity Register\n");
    if opps.is_empty() {
        let _ = writeln!(s, "No opportunities found in the observed calls.");
        return;
    }
    let _ = writeln!(s, "Ranked by estimated monthly saving per unit of effort.\n");
    let _ = writeln!(s, "| # | opportunity | kind | est. monthly saving | calls | effort |\n|--:|---|---|--:|--:|---|");
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

pub(super) fn html(s: &mut String, opps: &[Opportunity]) {
    s.push_str("<h2>Opportunity Register</h2>");
    if opps.is_empty() {
        s.push_str("<p>No opportunities found in the observed calls.</p>");
        return;
    }
    let top: Vec<(String, f64)> =
        opps.iter().take(8).map(|o| (o.title.clone(), o.estimated_monthly_savings_usd)).collect();
    s.push_str(&bars("top-opportunities", "Top opportunities (estimated monthly saving)", &top));
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
