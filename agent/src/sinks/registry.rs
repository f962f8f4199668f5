//! Every kind of sink, in one list. Adding a sink: one file implementing
//! [`SinkKind`] (and [`Sink`](super::sink::Sink)), one line in [`SINKS`]; a
//! sink with shorthand flags also adds its flags struct to [`SinkFlags`].
use toml::de::DeTable;
use toml::Spanned;

use super::collector::{self, CollectorFlags};
use super::line;
use super::otlp::{self, OtlpFlags};
use super::sink::SinkKind;
use crate::stats::Stats;

/// The order is the one `--output`'s error message lists them in.
pub static SINKS: &[&dyn SinkKind] = &[&line::Jsonl, &line::Stdout, &collector::Collector, &otlp::Otlp];

pub fn find(name: &str) -> Option<&'static dyn SinkKind> {
    SINKS.iter().copied().find(|k| k.name() == name)
}

/// Every kind's counters, created up front.
pub fn register_counters(stats: &Stats) {
    for k in SINKS {
        k.register_counters(stats);
    }
}

/// Flags that are shorthand for keys of the outputs given with `--output` or
/// the config file's `output = [..]` (not of `[outputs.<name>]` sections).
/// The config file's top-level keys of the same names are the same shorthand.
#[derive(clap::Args, Clone, Debug, Default, PartialEq)]
pub struct SinkFlags {
    #[command(flatten)]
    pub collector: CollectorFlags,
    #[command(flatten)]
    pub otlp: OtlpFlags,
}

impl SinkFlags {
    /// Take the shorthand keys out of a config file's top-level table and
    /// read them (`text`: the file, for error snippets).
    pub fn take_from_file(root: &mut DeTable<'_>, text: &str) -> Result<Self, toml::de::Error> {
        Ok(Self {
            collector: read(take(root, &CollectorFlags::FILE_KEYS), text)?,
            otlp: read(take(root, &OtlpFlags::FILE_KEYS), text)?,
        })
    }

    /// The section keys given, by kind name.
    pub fn sections(&self) -> Result<Vec<(&'static str, toml::Table)>, String> {
        Ok(vec![(collector::Collector.name(), self.collector.section()?), (otlp::Otlp.name(), self.otlp.section()?)])
    }
}

fn take<'i>(root: &mut DeTable<'i>, keys: &[&str]) -> Spanned<DeTable<'i>> {
    let mut taken = DeTable::new();
    for key in keys {
        if let Some((k, v)) = root.remove_entry(*key) {
            taken.insert(k, v);
        }
    }
    Spanned::new(0..0, taken)
}

fn read<T: serde::de::DeserializeOwned>(keys: Spanned<DeTable<'_>>, text: &str) -> Result<T, toml::de::Error> {
    T::deserialize(toml::de::Deserializer::from(keys)).map_err(|mut e| {
        e.set_input(Some(text));
        e
    })
}
