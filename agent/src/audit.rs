//! `tokentap-agent audit` and `tokentap-agent report`: capture, then write the
//! assessment (events.jsonl, opportunities.json, report.md, report.html) with
//! the detectors and renderers of the event crate.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tokentap_event::opportunities::{self, Thresholds};
use tokentap_event::{report, LlmCall, PriceTable};

use crate::config::Settings;
use crate::sinks::OutputSpec;

/// Capture per `settings` with the records also going to `out/events.jsonl`,
/// then write the assessment there.
pub fn audit(mut settings: Settings, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let events = out.join("events.jsonl");
    // A fresh audit: the file holds this capture only.
    let _ = std::fs::remove_file(&events);
    settings.outputs.retain(|o| o.kind != "stdout");
    settings.outputs.push(OutputSpec::jsonl(&events));
    let prices = settings.prices.clone();
    eprintln!(
        "tokentap: auditing{}; Ctrl-C ends the capture early and still writes the report",
        settings.duration.map(|d| format!(" for {}s", d.as_secs())).unwrap_or_default()
    );
    crate::run::run(settings)?;
    let written = write_report(&events, out, prices.as_deref())?;
    eprintln!("tokentap: wrote {}", written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    Ok(())
}

/// Read records, detect opportunities, write opportunities.json, report.md and
/// report.html into `out`; print the Markdown. Returns the files written.
pub fn write_report(events: &Path, out: &Path, prices: Option<&Path>) -> Result<Vec<PathBuf>> {
    let records = read_events(events)?;
    let mut table = PriceTable::shipped();
    if let Some(p) = prices {
        table = table.with_overrides(p)?;
    }
    let opps = opportunities::detect(&records, &table, &Thresholds::default());
    std::fs::create_dir_all(out)?;
    let files = [
        (out.join("opportunities.json"), serde_json::to_string_pretty(&opps)? + "\n"),
        (out.join("report.md"), report::markdown(&records, &opps)),
        (out.join("report.html"), report::html(&records, &opps)),
    ];
    for (p, text) in &files {
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    print!("{}", files[1].1);
    let mut written = vec![events.to_path_buf()];
    written.extend(files.into_iter().map(|(p, _)| p));
    Ok(written)
}

/// Records of a JSONL file; lines that are not records are skipped and counted.
pub fn read_events(path: &Path) -> Result<Vec<LlmCall>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut bad = 0;
    let records: Vec<LlmCall> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).map_err(|_| bad += 1).ok())
        .collect();
    if bad > 0 {
        tracing::warn!(lines = bad, file = %path.display(), "lines that are not records were skipped");
    }
    Ok(records)
}
