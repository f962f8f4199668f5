//! Which outputs records go to, and with what settings.
//!
//! An output is a sink kind (`SINKS`) with a section of settings. It comes
//! from `--output SPEC` (repeatable), from the config file's
//! `output = ["SPEC", ..]` (an unnamed output), or from a named section of
//! the config file:
//!
//! ```toml
//! [outputs.fleet]
//! type = "collector"
//! url = "http://tokentap-collector:8787"
//! ```
//!
//! Outputs given with `--output` replace the file's; an empty entry of
//! `output = [..]` is skipped. Unnamed outputs also
//! take the shorthand keys (`SinkFlags`: the config file's top-level keys,
//! then the flags of the same names over them); named sections carry their
//! own keys. With no output at all, records go to stdout.
use std::collections::BTreeMap;
use std::io;
use std::str::FromStr;
use std::sync::Arc;

use thiserror::Error;

use super::registry::{find, SINKS};
use super::sink::{Sink, SinkContext};
use crate::stats::Stats;

/// One output: a kind of sink and its section.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputSpec {
    /// `[outputs.<name>]`'s name; for an unnamed output its SPEC.
    pub name: String,
    /// From an `[outputs.<name>]` section.
    pub named: bool,
    /// The sink kind (the section's `type`).
    pub kind: &'static str,
    /// The section's keys, without `type`.
    pub section: toml::Table,
}

impl OutputSpec {
    pub fn stdout() -> Self {
        Self { name: "stdout".into(), named: false, kind: "stdout", section: toml::Table::new() }
    }

    /// Append records to `path`.
    pub fn jsonl(path: &std::path::Path) -> Self {
        let section = toml::Table::from_iter([("path".to_owned(), path.display().to_string().into())]);
        Self { name: format!("jsonl:{}", path.display()), named: false, kind: "jsonl", section }
    }

    /// `[outputs.<name>]`: its `type` says which kind.
    pub fn from_section(name: &str, mut section: toml::Table) -> Result<Self, BadOutput> {
        let kind = match section.remove("type") {
            None => return Err(BadOutput::NoType(name.into())),
            Some(toml::Value::String(k)) => k,
            Some(other) => other.to_string(),
        };
        let kind = find(&kind).ok_or_else(|| BadOutput::UnknownType { name: name.into(), kind })?;
        Ok(Self { name: name.into(), named: true, kind: kind.name(), section })
    }
}

impl std::fmt::Display for OutputSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.named {
            write!(f, "[outputs.{}]", self.name)
        } else {
            write!(f, "output {:?}", self.name)
        }
    }
}

/// `--output NAME[:ARG]`.
impl FromStr for OutputSpec {
    type Err = BadOutput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        let kind = find(kind).ok_or_else(|| BadOutput::Spec(s.into()))?;
        let section = kind.section_from_spec(arg).ok_or_else(|| BadOutput::Spec(s.into()))?;
        Ok(Self { name: s.into(), named: false, kind: kind.name(), section })
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BadOutput {
    #[error("unknown output {0:?}: expected {specs}", specs = specs())]
    Spec(String),
    #[error("[outputs.{0}]: missing `type` (one of {kinds})", kinds = kinds())]
    NoType(String),
    #[error("[outputs.{name}]: unknown type {kind:?} (one of {kinds})", kinds = kinds())]
    UnknownType { name: String, kind: String },
    /// `output`: the output as [`OutputSpec`] shows itself.
    #[error("{output}: {reason}")]
    Invalid { output: String, reason: String },
}

/// "`jsonl:PATH`, `stdout` or `collector:http(s)://HOST:PORT`"
fn specs() -> String {
    let all: Vec<String> = SINKS.iter().map(|k| format!("`{}`", k.usage())).collect();
    match all.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => all.concat(),
    }
}

fn kinds() -> String {
    SINKS.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
}

/// Where outputs come from.
pub struct Sources<'a> {
    /// `--output`: when given, the file's outputs are checked but not used.
    pub flags: &'a [OutputSpec],
    /// The config file's `output = [..]`.
    pub list: &'a [String],
    /// The config file's `[outputs.<name>]` sections.
    pub sections: &'a BTreeMap<String, toml::Table>,
    /// Shorthand keys for unnamed outputs, by kind; later entries win.
    pub shorthand: &'a [(&'static str, toml::Table)],
}

/// The outputs, their sections complete and checked.
pub fn resolve(src: Sources<'_>) -> Result<Vec<OutputSpec>, BadOutput> {
    // The file's outputs are checked even when flags replace them: a mistake
    // in the file must not hide behind an `-o` given while looking into it.
    // An empty entry is no output: a template can leave an optional output out
    // (the Helm chart's `agent.otlpOutput`).
    let list = src.list.iter().filter(|s| !s.trim().is_empty());
    let mut from_file: Vec<OutputSpec> = list.map(|s| s.parse()).collect::<Result<_, _>>()?;
    for (name, section) in src.sections {
        from_file.push(OutputSpec::from_section(name, section.clone())?);
    }
    for o in &mut from_file {
        complete(o, src.shorthand)?;
    }
    let mut outputs = if src.flags.is_empty() {
        from_file
    } else {
        let mut flags = src.flags.to_vec();
        for o in &mut flags {
            complete(o, src.shorthand)?;
        }
        flags
    };
    if outputs.is_empty() {
        let mut stdout = OutputSpec::stdout();
        complete(&mut stdout, src.shorthand)?;
        outputs.push(stdout);
    }
    Ok(outputs)
}

/// An output with the shorthand keys of its kind (unnamed ones), checked.
fn complete(o: &mut OutputSpec, shorthand: &[(&'static str, toml::Table)]) -> Result<(), BadOutput> {
    if !o.named {
        for (_, keys) in shorthand.iter().filter(|(kind, _)| *kind == o.kind) {
            o.section.extend(keys.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    let kind = find(o.kind).ok_or_else(|| BadOutput::Spec(o.name.clone()))?;
    kind.check(&o.section).map_err(|reason| BadOutput::Invalid { output: o.to_string(), reason })
}

#[derive(Debug, Error)]
#[error("opening {output}: {error}")]
pub struct OpenError {
    pub output: String,
    pub error: io::Error,
}

/// Open every output, in order.
pub fn open_all(outputs: &[OutputSpec], stats: &Arc<Stats>) -> Result<Vec<Box<dyn Sink>>, OpenError> {
    let mut sinks = Vec::new();
    for o in outputs {
        let fail = |error| OpenError { output: o.to_string(), error };
        let kind = find(o.kind).ok_or_else(|| fail(io::Error::other(format!("no sink kind {:?}", o.kind))))?;
        sinks.push(kind.open(&o.section, &SinkContext { name: &o.name, stats }).map_err(fail)?);
    }
    Ok(sinks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!("stdout".parse(), Ok(OutputSpec::stdout()));
        assert_eq!("jsonl:/tmp/x.jsonl".parse(), Ok(OutputSpec::jsonl("/tmp/x.jsonl".as_ref())));
        let c: OutputSpec = "collector:http://c:8787".parse().unwrap();
        assert_eq!((c.kind, c.section.get("url").and_then(|u| u.as_str())), ("collector", Some("http://c:8787")));
        assert!("collector:c:8787".parse::<OutputSpec>().is_err());
        assert!("jsonl:".parse::<OutputSpec>().is_err());
        assert!("kafka:x".parse::<OutputSpec>().is_err());
        assert!("stdout:x".parse::<OutputSpec>().is_err());
        let err = "kafka:x".parse::<OutputSpec>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown output \"kafka:x\": expected `jsonl:PATH`, `stdout`, `collector:http(s)://HOST:PORT` or \
             `otlp[:http(s)://HOST:4318]`"
        );
    }
}
