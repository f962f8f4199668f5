//! Inline SVG charts for the HTML report: no scripts, no external files, so
//! the report opens anywhere. Every label is escaped.
use std::collections::BTreeMap;
use std::fmt::Write;

use super::{esc, usd};

pub(crate) const COLORS: [&str; 8] =
    ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f"];

/// Horizontal bar chart.
pub(super) fn bars(id: &str, title: &str, items: &[(String, f64)]) -> String {
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
pub(super) fn columns(
    id: &str,
    title: &str,
    labels: &[String],
    buckets: &[BTreeMap<String, f64>],
    series: &[String],
) -> String {
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
