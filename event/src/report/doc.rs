//! A small document model (headings, paragraphs, tables, charts) rendered
//! to Markdown and to HTML, so a section is written once and the two reports
//! cannot drift apart.
use std::fmt::Write;

use super::esc;

pub(super) struct Table {
    pub head: Vec<&'static str>,
    /// Right-aligned columns (numbers).
    pub numeric: Vec<bool>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns named in `head`; those ending in '>' are numeric (the marker
    /// is stripped), e.g. `"calls>"`.
    pub fn new(head: &[&'static str]) -> Self {
        let numeric = head.iter().map(|h| h.ends_with('>')).collect();
        let head = head.iter().map(|h| h.strip_suffix('>').unwrap_or(h)).collect();
        Self { head, numeric, rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

pub(super) enum Block {
    Heading(String),
    Para(String),
    Table(Table),
    /// Inline SVG, HTML only.
    Chart(String),
    /// Text for a terminal only (e.g. a sparkline standing in for a chart).
    Terminal(String),
}

/// A Markdown table cell: pipes and line breaks would end the cell or row.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

pub(super) fn markdown(s: &mut String, blocks: &[Block]) {
    for b in blocks {
        match b {
            Block::Heading(h) => {
                let _ = writeln!(s, "### {h}\n");
            }
            Block::Para(p) | Block::Terminal(p) => {
                let _ = writeln!(s, "{p}\n");
            }
            Block::Table(t) => {
                let _ = writeln!(s, "| {} |", t.head.join(" | "));
                let rule: Vec<&str> = t.numeric.iter().map(|&n| if n { "--:" } else { "---" }).collect();
                let _ = writeln!(s, "|{}|", rule.join("|"));
                for r in &t.rows {
                    let cells: Vec<String> = r.iter().map(|c| cell(c)).collect();
                    let _ = writeln!(s, "| {} |", cells.join(" | "));
                }
                let _ = writeln!(s);
            }
            Block::Chart(_) => {}
        }
    }
}

pub(super) fn html(s: &mut String, blocks: &[Block]) {
    for b in blocks {
        match b {
            Block::Heading(h) => {
                let _ = write!(s, "<h3>{}</h3>", esc(h));
            }
            Block::Para(p) => {
                let _ = write!(s, "<p>{}</p>", esc(p));
            }
            Block::Table(t) => {
                s.push_str("<table><tr>");
                for h in &t.head {
                    let _ = write!(s, "<th>{}</th>", esc(h));
                }
                s.push_str("</tr>");
                for r in &t.rows {
                    s.push_str("<tr>");
                    for (c, &n) in r.iter().zip(t.numeric.iter().chain(std::iter::repeat(&false))) {
                        let class = if n { " class=\"n\"" } else { "" };
                        let _ = write!(s, "<td{class}>{}</td>", esc(c));
                    }
                    s.push_str("</tr>");
                }
                s.push_str("</table>");
            }
            Block::Chart(svg) => s.push_str(svg),
            Block::Terminal(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_two_renderings_both_escaped() {
        let mut t = Table::new(&["who", "calls>"]);
        t.row(vec!["a|b <c>".into(), "3".into()]);
        let blocks = vec![Block::Heading("H".into()), Block::Table(t), Block::Terminal("▁█".into())];
        let mut md = String::new();
        markdown(&mut md, &blocks);
        assert!(md.contains("| who | calls |\n|---|--:|\n| a\\|b <c> | 3 |"), "{md}");
        assert!(md.contains("▁█"));
        let mut h = String::new();
        html(&mut h, &blocks);
        assert!(h.contains("<td>a|b &lt;c&gt;</td><td class=\"n\">3</td>") && !h.contains('▁'), "{h}");
    }
}
