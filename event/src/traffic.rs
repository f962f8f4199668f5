//! LLM traffic by whether tokentap could read it: one row per process,
//! provider host and verdict over an interval, beside the call records
//! (docs/record.md, "LLM traffic rows"). The agent counts every connection to
//! an LLM API host it sees at the socket layer (the TLS server name, or the
//! plaintext `Host`): those a capture method decoded, and those it could not
//! read, with the reason. Byte counts are the socket's (TLS framing included);
//! no token count is ever derived from them.
//!
//! Rows are deltas: summing `connections` and bytes over rows gives totals. A
//! connection counts once, in the row of the interval it was first judged in
//! (when it closed, its process exited, or it was open for a few seconds);
//! its later bytes go to later rows with `connections = 0`.
use serde::{Deserialize, Serialize};

/// Why a connection to an LLM API host was not read. The stable codes are what
/// the `reason` field, metrics labels and reports carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unread {
    /// No plaintext of this process was seen by any capture method: its TLS
    /// is not one tokentap reads (a JVM's JSSE, a pure-Python TLS, GnuTLS, NSS,
    /// a static binary whose TLS was not found).
    NoPlaintextSeen,
    /// The process maps a TLS library tokentap found but does not probe (the
    /// detail says which and why).
    TlsLibraryNotProbed,
    /// A TLS library of this process is probed and read other connections,
    /// not this one.
    PlaintextNotSeen,
    /// Its plaintext was read, but its HTTP was given up (the code is the
    /// agent's `ignored_*` reason: `http2_joined`, `desync`, `upgraded`, ...).
    NotDecoded(&'static str),
}

impl Unread {
    pub fn code(self) -> &'static str {
        match self {
            Self::NoPlaintextSeen => "no_plaintext_seen",
            Self::TlsLibraryNotProbed => "tls_library_not_probed",
            Self::PlaintextNotSeen => "plaintext_not_seen",
            Self::NotDecoded(why) => why,
        }
    }

    /// One sentence for reports.
    pub fn describe(self) -> String {
        match self {
            Self::NoPlaintextSeen => {
                "no TLS library this process uses is probed: tokentap saw none of its plaintext".into()
            }
            Self::TlsLibraryNotProbed => "a TLS library this process maps is not probed".into(),
            Self::PlaintextNotSeen => {
                "a TLS library of this process is probed, but this connection's plaintext was not seen".into()
            }
            Self::NotDecoded(why) => format!("plaintext seen, HTTP given up ({why})"),
        }
    }
}

/// One row: a process's connections to one provider host over an interval,
/// decoded or not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmTraffic {
    /// UUIDv7, the dedup key end to end.
    pub row_id: String,
    /// RFC 3339 UTC: the end of the interval (the last byte seen in it).
    pub ts: String,
    /// First and last activity of these connections within the interval.
    pub first_seen: String,
    pub last_seen: String,
    /// The TLS server name (SNI), or the plaintext request's `Host`.
    pub provider_host: String,
    /// The provider its host rule names (`openai`, `anthropic`, ...).
    pub provider: String,
    /// A capture method read and decoded these connections.
    pub decoded: bool,
    /// The capture method that read them (`openssl`, `go_tls`, `rustls`,
    /// `boringssl`, `socket`), when decoded.
    pub capture: Option<String>,
    /// Why they were not read ([`Unread::code`]), when not decoded.
    pub reason: Option<String>,
    /// More on the reason (the TLS library not probed and why), if any.
    pub reason_detail: Option<String>,
    /// Connections first judged in this interval.
    pub connections: u64,
    /// Socket bytes written and read in this interval.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub container_id: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub service: Option<String>,
}

/// A process's connections to one provider host that tokentap could not read,
/// for one reason: a line of "LLM traffic tokentap could not read" (the
/// agent's stats file `blind_spots`, the audit report). Totals since the
/// agent started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlindSpot {
    pub provider_host: String,
    pub provider: String,
    /// [`Unread::code`].
    pub reason: String,
    /// [`Unread::describe`], and the detail (which library is not probed and
    /// why) when there is one.
    pub reason_text: String,
    pub connections: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub first_seen: String,
    pub last_seen: String,
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub container_id: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub service: Option<String>,
    /// The agent handled the process's exit: these totals are final.
    #[serde(default)]
    pub exited: bool,
}

/// Bytes per row and direction, at most: 2^50 (a petabyte) keeps sums of
/// billions of rows inside UInt64.
pub const MAX_BYTES: u64 = 1 << 50;
/// Connections per row, at most.
pub const MAX_CONNECTIONS: u64 = 1 << 40;

/// What a stored row must satisfy (the collector checks; agents check before
/// spooling): the shape, lengths the table is meant for, numbers it can sum.
pub fn validate(r: &LlmTraffic) -> Result<(), String> {
    if uuid::Uuid::parse_str(&r.row_id).is_err() {
        return Err("row_id is not a UUID".into());
    }
    for (field, v) in [("ts", &r.ts), ("first_seen", &r.first_seen), ("last_seen", &r.last_seen)] {
        if chrono::DateTime::parse_from_rfc3339(v).is_err() {
            return Err(format!("{field} is not RFC 3339"));
        }
    }
    if r.provider_host.is_empty() || r.provider_host.len() > 256 {
        return Err("provider_host must be 1-256 bytes".into());
    }
    if r.provider.is_empty() || r.provider.len() > 128 {
        return Err("provider must be 1-128 bytes".into());
    }
    if r.decoded != r.reason.is_none() {
        return Err("a row has a reason exactly when it is not decoded".into());
    }
    for (field, v, max) in [
        ("capture", r.capture.as_deref(), 64),
        ("reason", r.reason.as_deref(), 64),
        ("reason_detail", r.reason_detail.as_deref(), 1024),
        ("comm", r.comm.as_deref(), 64),
        ("exe", r.exe.as_deref(), 4096),
        ("container_id", r.container_id.as_deref(), 128),
        ("pod", r.pod.as_deref(), 256),
        ("namespace", r.namespace.as_deref(), 256),
        ("workload", r.workload.as_deref(), 256),
        ("service", r.service.as_deref(), 256),
    ] {
        if v.is_some_and(|s| s.len() > max) {
            return Err(format!("{field} is longer than {max} bytes"));
        }
    }
    if r.connections > MAX_CONNECTIONS || r.bytes_sent > MAX_BYTES || r.bytes_received > MAX_BYTES {
        return Err(format!("counts must be at most {MAX_CONNECTIONS} connections and {MAX_BYTES} bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn row() -> LlmTraffic {
        let ts = crate::LlmCall::format_ts(1_763_900_000_000_000_000);
        LlmTraffic {
            row_id: crate::LlmCall::new_event_id(),
            ts: ts.clone(),
            first_seen: ts.clone(),
            last_seen: ts,
            provider_host: "api.openai.com".into(),
            provider: "openai".into(),
            decoded: false,
            reason: Some(Unread::NoPlaintextSeen.code().into()),
            connections: 1,
            bytes_sent: 4000,
            bytes_received: 9000,
            pid: Some(7),
            comm: Some("java".into()),
            ..Default::default()
        }
    }

    #[test]
    fn rows_the_table_cannot_hold_are_refused() {
        assert_eq!(validate(&row()), Ok(()));
        type Case = (&'static str, fn(&mut LlmTraffic));
        let cases: &[Case] = &[
            ("id", |r| r.row_id = "x".into()),
            ("ts", |r| r.first_seen = "yesterday".into()),
            ("host", |r| r.provider_host.clear()),
            ("long host", |r| r.provider_host = "h".repeat(300)),
            ("decoded with a reason", |r| r.decoded = true),
            ("no reason", |r| r.reason = None),
            ("bytes", |r| r.bytes_sent = u64::MAX),
            ("long detail", |r| r.reason_detail = Some("d".repeat(2000))),
        ];
        for (what, spoil) in cases {
            let mut r = row();
            spoil(&mut r);
            assert!(validate(&r).is_err(), "{what}");
        }
        let decoded = LlmTraffic { decoded: true, reason: None, capture: Some("openssl".into()), ..row() };
        assert_eq!(validate(&decoded), Ok(()));
    }

    #[test]
    fn reasons_have_stable_codes() {
        assert_eq!(Unread::NotDecoded("http2_joined").code(), "http2_joined");
        assert_eq!(Unread::PlaintextNotSeen.code(), "plaintext_not_seen");
        assert!(Unread::NoPlaintextSeen.describe().contains("no TLS library"));
    }
}
