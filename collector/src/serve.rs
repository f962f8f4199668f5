//! Connections to the ingest endpoint: accepted up to a limit, TLS handshakes
//! within a deadline, HTTP/1.1 with a deadline for each request's headers
//! (which also closes idle keep-alive connections), and a graceful stop.
//!
//! At the connection limit a new connection is answered `503` with
//! `Retry-After` and closed (plain HTTP) or just closed (TLS), so a flood of
//! idle or slow clients costs a bounded number of file descriptors and ends
//! when their deadlines pass; agents retry with backoff and get in.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::server::Shared;

#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// A request's headers (and, between requests, the next request's first
    /// byte) must arrive within this.
    pub header_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    /// How long a stop waits for requests in flight.
    pub grace: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            grace: Duration::from_secs(30),
        }
    }
}

/// The answer at the connection limit (plain HTTP).
fn refused() -> Vec<u8> {
    let body = r#"{"error":"too many connections","reason":"connections"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serve `app` on `tcp` until `shutdown` resolves, then let requests in flight
/// finish (up to `limits.grace`).
pub async fn serve(
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    shared: Arc<Shared>,
    limits: ConnLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and the like: give descriptors a moment to free up.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
            let plain = tls.is_none();
            tokio::spawn(async move {
                let mut s = stream;
                if plain {
                    let _ = tokio::time::timeout(Duration::from_secs(1), s.write_all(&refused())).await;
                }
                let _ = s.shutdown().await;
            });
            continue;
        };
        let (app, shared, limits, tls, mut stop) =
            (app.clone(), shared.clone(), limits.clone(), tls.clone(), stop_rx.clone());
        tokio::spawn(async move {
            shared.metrics.connections.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            match tls {
                None => connection(stream, app, &limits, &mut stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => connection(s, app, &limits, &mut stop).await,
                        Ok(Err(e)) => {
                            shared.metrics.reject("tls_handshake");
                            tracing::info!(%peer, error = %e, "TLS handshake refused");
                        }
                        Err(_) => {
                            shared.metrics.reject("tls_handshake");
                            tracing::info!(%peer, "TLS handshake timed out");
                        }
                    }
                }
            }
            shared.metrics.connections.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    // Stop: no new connections; those open finish their request and close.
    let _ = stop_tx.send(true);
    let all = limits.max_connections.max(1) as u32;
    let _ = tokio::time::timeout(limits.grace, slots.acquire_many(all)).await;
}

async fn connection<IO>(io: IO, app: Router, limits: &ConnLimits, stop: &mut watch::Receiver<bool>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let stopping = async {
        // The guard wait_for returns must not live across an await.
        let _ = stop.wait_for(|s| *s).await.is_ok();
    };
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopping => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Raise the open-files limit to its hard maximum (each connection is one).
pub fn raise_fd_limit() -> Option<u64> {
    // SAFETY: getrlimit/setrlimit with a valid struct pointer.
    unsafe {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return None;
        }
        if l.rlim_cur < l.rlim_max {
            let want = libc::rlimit { rlim_cur: l.rlim_max, rlim_max: l.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return Some(l.rlim_max);
            }
        }
        Some(l.rlim_cur)
    }
}
