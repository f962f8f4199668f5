//! tokentap agent: eBPF capture of LLM API calls.
//!
//! Data flows one way: [`probes`] (load and attach eBPF, [`discovery`] of TLS
//! libraries) -> [`capture`] (ring-buffer records -> per-connection streams) ->
//! [`http`] (requests paired with responses) -> [`providers`] (model, usage, ids)
//! -> [`attribution`] (who made the call) -> [`sinks`] (JSONL, stdout, collector).
//! Beside it, [`blind_spots`] accounts for every connection to an LLM API host
//! the socket hooks name: read by a capture method, or listed with the reason.
//! [`pipeline`] wires the stages; [`run`] is the running agent; [`java`] loads
//! tokentap's Java agent into JVMs (JSSE has no native TLS library to probe).
pub mod attach_failure;
pub mod attribution;
pub mod audit;
pub mod blind_spots;
pub mod blocked_calls;
pub mod caps;
pub mod capture;
pub mod config;
pub mod coverage;
pub mod discovery;
pub mod handoffs;
pub mod handover;
pub mod http;
pub mod java;
pub mod metrics;
pub mod open_sockets;
pub mod orphan_rings;
pub mod peers;
pub mod pipeline;
pub mod probes;
pub mod program_misses;
pub mod providers;
pub mod return_probes;
pub mod run;
pub mod run_only;
pub mod sinks;
pub mod socket_hooks;
pub mod stats;
pub mod uninstall;

/// An error and its causes on one line, `a: b: c`, without a cause the text
/// before it already ends with (errors that print their source, wrapped by
/// ones that chain it, said it twice).
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !part.is_empty() && !text.ends_with(&part) {
            text = format!("{text}: {part}");
        }
        cause = c.source();
    }
    text
}

/// Deterministic garbage for the tests that feed parsers arbitrary bytes.
#[cfg(test)]
pub(crate) struct Noise(pub u64);

#[cfg(test)]
impl Noise {
    /// The next xorshift64 state.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `len` bytes, the low byte of each next state.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

#[cfg(test)]
mod error_text_tests {
    #[test]
    fn a_cause_already_said_is_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = crate::handover::HandoverError::Io { dir: "/x".into(), cause: io() };
        let wrapped = anyhow::Error::new(e).context("starting");
        assert_eq!(super::error_text(wrapped.as_ref()), "starting: --handover-dir /x: No such file");
        // An error that prints its source and chains it too.
        #[derive(Debug, thiserror::Error)]
        #[error("reading /y: {0}")]
        struct Both(#[from] std::io::Error);
        let wrapped = anyhow::Error::new(Both(io())).context("loading");
        assert_eq!(super::error_text(wrapped.as_ref()), "loading: reading /y: No such file");
        // A cause said nowhere before is kept.
        let wrapped = anyhow::Error::new(io()).context("reading /z");
        assert_eq!(super::error_text(wrapped.as_ref()), "reading /z: No such file");
    }
}
