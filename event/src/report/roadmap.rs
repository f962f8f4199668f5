//! The Remediation Roadmap section: the register's opportunities grouped by
//! effort, quick wins first. Kept apart from the rest of the report so its
//! rendering can be replaced without touching the Spend Map or the register.
use std::fmt::Write;

use super::{esc, usd};
use crate::opportunities::{Effort, Opportunity};

/// Opportunities grouped for the roadmap: (phase, its items).
fn phases(opps: &[Opportunity]) -> Vec<(&'static str, Vec<&Opportunity>)> {
    let phase = |e: Effort| opps.iter().filter(|o| o.effort == e).collect::<Vec<_>>();
    vec![
        ("Quick wins (a setting or a cache)", phase(Effort::Low)),
        ("Next (code changes)", phase(Effort::Medium)),
        ("Later (design changes)", phase(Effort::High)),
    ]
}

pub(super) fn markdown(s: &mut String, opps: &[Opportunity]) {
    let _ = writeln!(s, "\n## Remediation Roadmap\n");
    for (phase, items) in phases(opps) {
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
}

pub(super) fn html(s: &mut String, opps: &[Opportunity]) {
    s.push_str("<h2>Remediation Roadmap</h2>");
    for (phase, items) in phases(opps) {
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
}
