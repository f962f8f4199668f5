//! The section on LLM traffic tokentap could not read (the agent's stats
//! file's `blind_spots`), beside the Spend Map so its gaps are plain.
use std::fmt::Write;

use super::esc;
use crate::traffic::BlindSpot;

/// The title of the section listing what could not be read.
pub const UNREAD_TITLE: &str = "LLM traffic tokentap could not read";

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

fn intro(unread: &[BlindSpot]) -> String {
    if unread.is_empty() {
        return "Every connection to an LLM API host that tokentap saw was read.".into();
    }
    let n: u64 = unread.iter().map(|b| b.connections).sum();
    let sent: u64 = unread.iter().map(|b| b.bytes_sent).sum();
    let received: u64 = unread.iter().map(|b| b.bytes_received).sum();
    format!(
        "{n} connections to LLM API hosts ({sent} bytes sent, {received} bytes received) were not read: \
         the calls they carried are not in the Spend Map, and no token count or cost is estimated for them."
    )
}

pub(super) fn markdown(s: &mut String, unread: &[BlindSpot]) {
    let _ = writeln!(s, "\n## {UNREAD_TITLE}\n\n{}\n", intro(unread));
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

pub(super) fn html(s: &mut String, unread: &[BlindSpot]) {
    let _ = write!(s, "<h2>{}</h2><p>{}</p>", esc(UNREAD_TITLE), esc(&intro(unread)));
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
