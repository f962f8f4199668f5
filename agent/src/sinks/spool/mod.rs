//! A durable spool with retry, for any sink that sends batches somewhere:
//! records are buffered and sealed into zstd batch files on disk
//! ([`batcher`]), indexed in memory and bounded ([`index`]), and sent by
//! sender threads in runs of consecutive batches, settled by what the
//! receiver answered, with backoff ([`deliver`]). Batches left at exit are
//! sent by the next run, also one started beside it ([`shared`]).
//!
//! A sink brings its encoding (what one record appends to a batch) and a
//! [`Transport`] (how a run of batches is sent and what the answer means);
//! [`Delivery`] does the rest. The collector sink (`sinks/collector/`) is one.
pub mod batcher;
pub mod counters;
pub mod deliver;
pub mod index;
mod journal;
mod shared;

pub use batcher::BatchLimits;
pub use counters::SpoolCounters;
pub use deliver::{Delivery, Outcome, Request, RequestLimits, SpoolOptions, Transport};
pub use index::{batch_name, parse_name};
