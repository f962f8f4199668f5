//! A reqwest + rustls client for the end-to-end tests: N OpenAI chat
//! completions at once (every other one streamed with `include_usage`), over
//! HTTP/1.1 or HTTP/2 (ALPN). Prints {"pid": PID, "calls": N, "proto": "..."}.
//!
//! Usage: rust_client BASE CA.pem KEY N h1|h2 [BIG]
//! With BIG, the first call's prompt is BIG bytes long (a request rustls
//! sends as many records).
//! With N = 0 it makes no call and waits for its stdin to close (a process to
//! probe before the real run).
//!
//! `rust_client BASE CA.pem KEY 0 paced|paced-fresh PAUSE_MS`: calls one
//! after another over one keep-alive HTTP/1.1 connection (`paced-fresh`: a
//! new connection each), PAUSE_MS apart, every other one streamed, until
//! stdin closes (a steady rate across an agent upgrade).
//! `rust_client BASE CA.pem KEY 0 each-line`: one such call over one
//! keep-alive connection for each line read from stdin, until it closes.
//!
//! `rust_client URL CA.pem KEY N bench WARM` (for `cargo xtask bench`): WARM
//! untimed then N timed sequential keep-alive POSTs of ~1 KB of JSON to URL;
//! prints {"pid", "cpu_us" (the process's user + system CPU over the timed
//! calls), "secs"}.
use std::io::Read;

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (base, ca, key, n, mode) = (&a[1], &a[2], &a[3], a[4].parse::<usize>().unwrap(), a[5].as_str());
    if mode == "bench" {
        return bench(base, ca, n, a[6].parse().unwrap()).await;
    }
    if mode == "download" {
        return download(base, ca, n).await;
    }
    if mode == "each-line" {
        return each_line(base, ca, key).await;
    }
    if mode == "paced" || mode == "paced-fresh" {
        return paced(base, ca, key, a[6].parse().unwrap(), mode == "paced-fresh").await;
    }
    if n == 0 {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        return;
    }
    let client = client(ca, if mode == "h1" { Conns::Http1 } else { Conns::Any });
    let big: usize = a.get(6).map_or(0, |b| b.parse().unwrap());
    let mut tasks = Vec::new();
    for i in 0..n {
        let (client, url, key) = (client.clone(), format!("{base}/chat/completions"), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut body = serde_json::json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": if i == 0 && big > 0 { "x".repeat(big) } else { format!("call {i}") }}],
            });
            if i % 2 == 1 {
                body["stream"] = true.into();
                body["stream_options"] = serde_json::json!({"include_usage": true});
            }
            let r = client.post(url).bearer_auth(key).json(&body).send().await.expect("send");
            let proto = format!("{:?}", r.version());
            assert!(r.status().is_success(), "status {}", r.status());
            let bytes = r.bytes().await.expect("body");
            assert!(!bytes.is_empty());
            proto
        }));
    }
    let mut proto = String::new();
    for t in tasks {
        proto = t.await.expect("call");
    }
    println!("{}", serde_json::json!({"pid": std::process::id(), "calls": n, "proto": proto}));
}

/// How a client's connections are made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Conns {
    /// HTTP/2 where ALPN agrees, else HTTP/1.1, kept alive.
    Any,
    /// HTTP/1.1 only, kept alive.
    Http1,
    /// HTTP/1.1 only, none kept idle: a new connection per call.
    Http1Fresh,
}

fn client(ca: &str, conns: Conns) -> reqwest::Client {
    let pem = std::fs::read(ca).expect("CA file");
    let b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    let b = if conns == Conns::Any { b } else { b.http1_only() };
    let b = if conns == Conns::Http1Fresh { b.pool_max_idle_per_host(0) } else { b };
    b.build().unwrap()
}

/// User + system CPU of this process so far, in µs (/proc/self/stat, in the
/// kernel's 100 Hz clock ticks).
fn cpu_us() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = after_comm.split(' ').skip(11).take(2).map(|v| v.parse().unwrap()).collect();
    (f[0] + f[1]) * 10_000
}

async fn bench(url: &str, ca: &str, n: usize, warm: usize) {
    let client = client(ca, Conns::Any);
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "x".repeat(950)}],
    });
    let call = || async {
        let r = client.post(url).json(&body).send().await.expect("send");
        assert_eq!(r.status(), 200);
        assert!(r.text().await.expect("body").len() >= 900);
    };
    for _ in 0..warm {
        call().await;
    }
    let (c0, t0) = (cpu_us(), std::time::Instant::now());
    for _ in 0..n {
        call().await;
    }
    let (cpu, secs) = (cpu_us() - c0, t0.elapsed().as_secs_f64());
    println!("{}", serde_json::json!({"pid": std::process::id(), "cpu_us": cpu, "secs": secs}));
}

/// One keep-alive HTTP/1.1 call for each line read from stdin.
async fn each_line(base: &str, ca: &str, key: &str) {
    use tokio::io::AsyncBufReadExt;
    let client = client(ca, Conns::Http1);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut i = 0;
    while lines.next_line().await.expect("stdin").is_some() {
        call(&client, base, key, i).await;
        i += 1;
    }
    println!("{}", serde_json::json!({"pid": std::process::id(), "calls": i}));
}

/// One chat completion, streamed when `i` is odd, read whole.
async fn call(client: &reqwest::Client, base: &str, key: &str, i: usize) {
    let mut body = serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": format!("call {i}")}],
    });
    if i % 2 == 1 {
        body["stream"] = true.into();
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let r = client.post(format!("{base}/chat/completions")).bearer_auth(key).json(&body).send().await.expect("send");
    assert!(r.status().is_success(), "status {}", r.status());
    assert!(!r.bytes().await.expect("body").is_empty());
}

async fn paced(base: &str, ca: &str, key: &str, pause_ms: u64, fresh: bool) {
    let client = client(ca, if fresh { Conns::Http1Fresh } else { Conns::Http1 });
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let closed = done.clone();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut tokio::io::sink()).await;
        closed.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let mut i = 0;
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        call(&client, base, key, i).await;
        i += 1;
        tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
    }
    println!("{}", serde_json::json!({"pid": std::process::id(), "calls": i}));
}

async fn download(url: &str, ca: &str, times: usize) {
    let client = client(ca, Conns::Http1);
    let (c0, mut bytes) = (cpu_us(), 0u64);
    for _ in 0..times {
        let mut r = client.get(url).send().await.expect("send");
        assert_eq!(r.status(), 200);
        while let Some(chunk) = r.chunk().await.expect("body") {
            bytes += chunk.len() as u64;
        }
    }
    let cpu = cpu_us() - c0;
    println!("{}", serde_json::json!({"pid": std::process::id(), "bytes": bytes, "cpu_us": cpu}));
}
