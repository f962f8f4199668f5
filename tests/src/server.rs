//! The local LLM server (tests/server/llm_server.py) and how it talks.
use super::*;

/// The local LLM server (tests/server/llm_server.py).
pub struct Server {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

/// How the test server talks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// HTTPS, HTTP/1.1 only.
    Https,
    /// HTTPS offering HTTP/2 by ALPN (then HTTP/1.1).
    H2,
    /// Plaintext HTTP/1.1.
    Plain,
}

impl Server {
    /// HTTPS/1.1.
    pub fn start(dir: &Path, certs: &Certs) -> Self {
        Self::start_with(dir, certs, Transport::Https)
    }

    pub fn start_with(dir: &Path, certs: &Certs, transport: Transport) -> Self {
        require_tool("python3");
        let port_file = dir.join("server.port");
        let log = dir.join("served.jsonl");
        // A port file left by an earlier run in the same directory would be read first.
        let _ = std::fs::remove_file(&port_file);
        let child = Command::new("python3")
            .arg(workspace_root().join("tests/server/llm_server.py"))
            .arg("--cert")
            .arg(&certs.cert)
            .arg("--key")
            .arg(&certs.key)
            .arg("--port-file")
            .arg(&port_file)
            .arg("--log")
            .arg(&log)
            .args(match transport {
                Transport::Https => None,
                Transport::H2 => Some("--h2"),
                Transport::Plain => Some("--plain"),
            })
            .stderr(std::fs::File::create(dir.join("server.stderr")).expect("server log"))
            .spawn()
            .expect("start llm_server.py");
        let port = wait_for("the test server's port file", Duration::from_secs(20), || {
            std::fs::read_to_string(&port_file).ok()?.trim().parse().ok()
        });
        Self { child, port, log }
    }

    /// What the server served so far.
    pub fn served(&self) -> Vec<Value> {
        read_jsonl(&self.log)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
