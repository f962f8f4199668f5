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
pub mod attribution;
pub mod audit;
pub mod blind_spots;
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
pub mod pipeline;
pub mod probes;
pub mod program_misses;
pub mod providers;
pub mod run;
pub mod sinks;
pub mod socket_hooks;
pub mod stats;
pub mod uninstall;

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
