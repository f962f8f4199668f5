//! Where records go: a JSONL file (appended, one record per line), stdout, or a
//! tokentap collector ([`collector`]).
//! Records never contain prompt/completion text or credentials: the record type
//! has no field for them.
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;
use tokentap_event::LlmCall;

pub mod collector;

/// `--output` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputSpec {
    Jsonl(PathBuf),
    Stdout,
    /// A tokentap collector's base URL (`http://collector:8787`).
    Collector(String),
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("unknown output {0:?}: expected `jsonl:PATH`, `stdout` or `collector:http(s)://HOST:PORT`")]
pub struct BadOutput(String);

impl FromStr for OutputSpec {
    type Err = BadOutput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            _ if s == "stdout" => Ok(Self::Stdout),
            Some(("jsonl", path)) if !path.is_empty() => Ok(Self::Jsonl(path.into())),
            Some(("collector", url)) if url.starts_with("http://") || url.starts_with("https://") => {
                Ok(Self::Collector(url.to_owned()))
            }
            _ => Err(BadOutput(s.to_owned())),
        }
    }
}

pub trait Sink: Send {
    fn write(&mut self, record: &LlmCall) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

pub struct LineSink<W: Write + Send> {
    out: W,
}

impl<W: Write + Send> Sink for LineSink<W> {
    fn write(&mut self, record: &LlmCall) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

pub fn jsonl(path: &Path) -> io::Result<LineSink<BufWriter<File>>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    Ok(LineSink { out: BufWriter::new(f) })
}

pub fn stdout() -> LineSink<BufWriter<io::Stdout>> {
    LineSink { out: BufWriter::new(io::stdout()) }
}

pub fn open(
    spec: &OutputSpec,
    collector_cfg: impl FnOnce(String) -> collector::CollectorConfig,
    stats: &std::sync::Arc<crate::stats::Stats>,
) -> io::Result<Box<dyn Sink>> {
    Ok(match spec {
        OutputSpec::Jsonl(p) => Box::new(jsonl(p)?),
        OutputSpec::Stdout => Box::new(stdout()),
        OutputSpec::Collector(url) => {
            Box::new(collector::CollectorSink::new(collector_cfg(url.clone()), stats.clone())?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!("stdout".parse(), Ok(OutputSpec::Stdout));
        assert_eq!("jsonl:/tmp/x.jsonl".parse(), Ok(OutputSpec::Jsonl("/tmp/x.jsonl".into())));
        assert_eq!("collector:http://c:8787".parse(), Ok(OutputSpec::Collector("http://c:8787".into())));
        assert!("collector:c:8787".parse::<OutputSpec>().is_err());
        assert!("jsonl:".parse::<OutputSpec>().is_err());
        assert!("kafka:x".parse::<OutputSpec>().is_err());
    }

    #[test]
    fn jsonl_appends_one_line_per_record() {
        let dir = std::env::temp_dir().join(format!("tt-sink-{}", std::process::id()));
        let path = dir.join("sub/out.jsonl");
        let _ = std::fs::remove_file(&path);
        for _ in 0..2 {
            let mut s = jsonl(&path).unwrap();
            s.write(&LlmCall { provider: "openai".into(), ..Default::default() }).unwrap();
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
