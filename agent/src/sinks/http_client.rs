//! The HTTP client the sinks that send over HTTP share (the collector's and
//! OTLP's): rustls, a CA file instead of the public roots when given, a client
//! certificate for mutual TLS, statuses read as answers rather than errors.
//! Bad certificate paths fail here, when the output opens, not per send.
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The TLS files of an output.
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsFiles<'a> {
    /// CA certificate(s) trusted instead of the public web PKI roots.
    pub ca: Option<&'a Path>,
    /// Client certificate chain and its key (mutual TLS).
    pub client: Option<(&'a Path, &'a Path)>,
}

/// An agent with these TLS files and timeouts.
pub fn agent(tls: TlsFiles<'_>, connect: Duration, global: Duration) -> io::Result<ureq::Agent> {
    use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
    let bad = |what: &str, p: &Path, e: String| io::Error::other(format!("{what} {}: {e}", p.display()));
    let certs = |p: &Path| -> io::Result<Vec<Certificate<'static>>> {
        let pem = std::fs::read(p).map_err(|e| bad("reading", p, e.to_string()))?;
        let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|i| match i {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(bad("no certificate in", p, String::new()));
        }
        Ok(certs)
    };
    let mut config = TlsConfig::builder();
    if let Some(ca) = tls.ca {
        config = config.root_certs(RootCerts::Specific(Arc::new(certs(ca)?)));
    }
    if let Some((cert, key)) = tls.client {
        let pem = std::fs::read(key).map_err(|e| bad("reading", key, e.to_string()))?;
        let key = PrivateKey::from_pem(&pem).map_err(|e| bad("key", key, e.to_string()))?;
        config = config.client_cert(Some(ClientCert::new_with_certs(&certs(cert)?, key)));
    }
    Ok(ureq::Agent::config_builder()
        .tls_config(config.build())
        .http_status_as_error(false)
        .timeout_connect(Some(connect))
        .timeout_global(Some(global))
        .build()
        .into())
}

/// `Retry-After` in seconds (the HTTP-date form is not honoured: backoff
/// applies), at most `max`.
pub fn retry_after(value: Option<&str>, max: Duration) -> Option<Duration> {
    value.and_then(|v| v.trim().parse::<u64>().ok()).map(|s| Duration::from_secs(s).min(max))
}
