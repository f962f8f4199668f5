//! One JSON record per line: `type = "jsonl"` (`--output jsonl:PATH`, a file
//! appended to) and `type = "stdout"` (`--output stdout`).
//!
//! A file gets each line in one `write`, unbuffered: a line is on disk before
//! the ring buffer record that completed its call is released (an agent
//! killed loses none), and two agents appending to one file during an
//! upgrade never interleave parts of lines (`O_APPEND`).
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokentap_event::LlmCall;

use super::sink::{settings, Sink, SinkContext, SinkKind};

pub struct LineSink<W: Write + Send> {
    out: W,
    /// One line, encoded before it is written whole.
    line: Vec<u8>,
}

impl<W: Write + Send> Sink for LineSink<W> {
    fn write(&mut self, record: &LlmCall) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record)?;
        self.line.push(b'\n');
        self.out.write_all(&self.line)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Append to `path` (its directory created).
pub fn jsonl(path: &Path) -> io::Result<LineSink<File>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    Ok(LineSink { out: f, line: Vec::new() })
}

pub fn stdout() -> LineSink<BufWriter<io::Stdout>> {
    LineSink { out: BufWriter::new(io::stdout()), line: Vec::new() }
}

/// `[outputs.<name>]` with `type = "jsonl"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonlSettings {
    path: PathBuf,
}

impl JsonlSettings {
    fn from_section(section: &toml::Table) -> Result<Self, String> {
        let s: Self = settings(section)?;
        if s.path.as_os_str().is_empty() {
            return Err("path is empty".into());
        }
        Ok(s)
    }
}

/// `[outputs.<name>]` with `type = "stdout"`: no keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StdoutSettings {}

/// The registry's entry for `jsonl`.
pub struct Jsonl;

impl SinkKind for Jsonl {
    fn name(&self) -> &'static str {
        "jsonl"
    }

    fn usage(&self) -> &'static str {
        "jsonl:PATH"
    }

    fn section_from_spec(&self, arg: Option<&str>) -> Option<toml::Table> {
        let path = arg.filter(|p| !p.is_empty())?;
        Some(toml::Table::from_iter([("path".to_owned(), path.into())]))
    }

    fn check(&self, section: &toml::Table) -> Result<(), String> {
        JsonlSettings::from_section(section).map(drop)
    }

    fn open(&self, section: &toml::Table, _: &SinkContext<'_>) -> io::Result<Box<dyn Sink>> {
        let s = JsonlSettings::from_section(section).map_err(io::Error::other)?;
        Ok(Box::new(jsonl(&s.path)?))
    }
}

/// The registry's entry for `stdout`.
pub struct Stdout;

impl SinkKind for Stdout {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn usage(&self) -> &'static str {
        "stdout"
    }

    fn section_from_spec(&self, arg: Option<&str>) -> Option<toml::Table> {
        arg.is_none().then(toml::Table::new)
    }

    fn check(&self, section: &toml::Table) -> Result<(), String> {
        settings::<StdoutSettings>(section).map(drop)
    }

    fn open(&self, section: &toml::Table, _: &SinkContext<'_>) -> io::Result<Box<dyn Sink>> {
        settings::<StdoutSettings>(section).map_err(io::Error::other)?;
        Ok(Box::new(stdout()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_appends_one_line_per_record() {
        let dir = std::env::temp_dir().join(format!("tt-sink-{}", std::process::id()));
        let path = dir.join("sub/out.jsonl");
        let _ = std::fs::remove_file(&path);
        for _ in 0..2 {
            let mut s = jsonl(&path).unwrap();
            s.write(&LlmCall { provider: "openai".into(), ..Default::default() }).unwrap();
            // On disk before any flush: a killed agent loses no line.
            assert!(std::fs::read_to_string(&path).unwrap().ends_with("}\n"));
            s.flush().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        for l in text.lines() {
            let r: LlmCall = serde_json::from_str(l).unwrap();
            assert_eq!(r.provider, "openai");
        }
    }
}
