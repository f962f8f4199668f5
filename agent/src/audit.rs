//! `tokentap-agent audit` and `tokentap-agent report`: capture, then write the
//! assessment (events.jsonl, opportunities.json, report.md, report.html,
//! baseline.json) with the detectors and renderers of the event crate; or
//! compare records with a baseline (compare.md, compare.html, compare.json).
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tokentap_event::baseline::Baseline;
use tokentap_event::opportunities::{self, Thresholds};
use tokentap_event::traffic::BlindSpot;
use tokentap_event::{compare, compare_report, report, LlmCall, PriceTable};

use crate::config::Settings;
use crate::sinks::OutputSpec;
use crate::stats::StatsFile;

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
    // The stats file carries what could not be read (blind spots) to the report.
    let stats = settings.stats_file.get_or_insert_with(|| out.join("stats.json")).clone();
    let _ = std::fs::remove_file(&stats);
    eprintln!(
        "tokentap: auditing{}; Ctrl-C ends the capture early and still writes the report",
        settings.duration.map(|d| format!(" for {}s", d.as_secs())).unwrap_or_default()
    );
    crate::run::run(settings)?;
    let written = write_report(&events, out, prices.as_deref(), Some(&stats))?;
    eprintln!("tokentap: wrote {}", written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    Ok(())
}

/// Read records, detect opportunities, write opportunities.json, report.md and
/// report.html into `out`; print the Markdown. `stats`: the agent's stats file
/// of the same capture, whose blind spots become the report's section on LLM
/// traffic that could not be read (left out when there is none). Returns the
/// files written.
pub fn write_report(events: &Path, out: &Path, prices: Option<&Path>, stats: Option<&Path>) -> Result<Vec<PathBuf>> {
    let records = read_events(events)?;
    let unread = match stats {
        Some(p) => Some(read_blind_spots(p)?),
        None => None,
    };
    let mut table = PriceTable::shipped();
    if let Some(p) = prices {
        table = table.with_overrides(p)?;
    }
    let opps = opportunities::detect(&records, &table, &Thresholds::default());
    std::fs::create_dir_all(out)?;
    // The baseline is named after its directory (`audit/` -> "audit").
    let name: String = out
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "audit".into())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    let files = [
        (out.join("opportunities.json"), serde_json::to_string_pretty(&opps)? + "\n"),
        (out.join("report.md"), report::markdown_with(&records, &opps, unread.as_deref())),
        (out.join("report.html"), report::html_with(&records, &opps, unread.as_deref())),
        (out.join("baseline.json"), Baseline::build(&name, &records, &opps).to_json()),
    ];
    for (p, text) in &files {
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    print!("{}", files[1].1);
    let mut written = vec![events.to_path_buf()];
    written.extend(files.into_iter().map(|(p, _)| p));
    Ok(written)
}

/// Compare the records of `events` with the baseline file `baseline`; write
/// compare.md, compare.html and compare.json into `out`; print the Markdown.
pub fn write_comparison(events: &Path, baseline: &Path, out: &Path, prices: Option<&Path>) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(baseline).with_context(|| format!("reading {}", baseline.display()))?;
    let base = Baseline::from_json(&text).with_context(|| format!("parsing {}", baseline.display()))?;
    let records = read_events(events)?;
    let mut table = PriceTable::shipped();
    if let Some(p) = prices {
        table = table.with_overrides(p)?;
    }
    let opps = opportunities::detect(&records, &table, &Thresholds::default());
    let c = compare::compare(&base, &records, &opps, &compare::Thresholds::default());
    std::fs::create_dir_all(out)?;
    let files = [
        (out.join("compare.md"), compare_report::markdown(&c)),
        (out.join("compare.html"), compare_report::html(&c)),
        (out.join("compare.json"), serde_json::to_string_pretty(&c)? + "\n"),
    ];
    for (p, text) in &files {
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    print!("{}", files[0].1);
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

/// The blind spots of an agent's stats file.
pub fn read_blind_spots(path: &Path) -> Result<Vec<BlindSpot>> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file: StatsFile = serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(file.blind_spots)
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
