//! Certificates for the local servers: a throwaway CA and the providers' host names.
use super::*;

/// The providers' real host names the tests use; a private /etc/hosts maps them
/// to 127.0.0.1 (see [`in_mount_namespace`]).
pub const PROVIDER_HOSTS: &[&str] = &[
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "bedrock-runtime.us-east-1.amazonaws.com",
];

fn san() -> String {
    let mut names: Vec<String> = PROVIDER_HOSTS.iter().map(|h| format!("DNS:{h}")).collect();
    names.push("DNS:localhost".into());
    names.push("IP:127.0.0.1".into());
    names.join(",")
}

/// A throwaway CA and a server certificate for the providers' hosts and 127.0.0.1.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The files [`Certs::generate`] puts in a test's directory.
const FILES: [&str; 4] = ["ca.pem", "ca.key", "srv.pem", "srv.key"];

impl Certs {
    /// The CA and server certificate in `dir`: copies of one pair made once
    /// per test binary (two RSA keys take ~1 s, and every test wants them).
    pub fn generate(dir: &Path) -> Self {
        static MADE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        let made = MADE.get_or_init(|| {
            let d = std::env::temp_dir().join(format!("tokentap-e2e-certs-{}", std::process::id()));
            std::fs::create_dir_all(&d).expect("certs dir");
            Self::make(&d);
            d
        });
        for f in FILES {
            std::fs::copy(made.join(f), dir.join(f)).unwrap_or_else(|e| panic!("copy {f}: {e}"));
        }
        let p = |n: &str| dir.join(n);
        Self { ca: p("ca.pem"), cert: p("srv.pem"), key: p("srv.key") }
    }

    fn make(dir: &Path) {
        require_tool("openssl");
        let ext = dir.join("san.cnf");
        std::fs::write(&ext, format!("[ext]\nsubjectAltName={}\nbasicConstraints=CA:FALSE\n", san()))
            .expect("write san.cnf");
        let p = |n: &str| dir.join(n);
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"])
            .args([
                "-subj",
                "/CN=tokentap-test-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=keyCertSign",
                "-keyout",
            ])
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.pem")));
        run(Command::new("openssl")
            .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout"])
            .arg(p("srv.key"))
            .arg("-out")
            .arg(p("srv.csr")));
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-extensions", "ext", "-in"])
            .arg(p("srv.csr"))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-CAcreateserial")
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(p("srv.pem")));
    }

    /// A client certificate (for mutual TLS) signed by the same CA: (cert, key).
    pub fn client(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key, csr) = (dir.join("client.pem"), dir.join("client.key"), dir.join("client.csr"));
        let ext = dir.join("client.cnf");
        std::fs::write(&ext, "[ext]\nextendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n").expect("client.cnf");
        run(Command::new("openssl")
            .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=tokentap-agent", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&csr));
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-extensions", "ext", "-extfile"])
            .arg(&ext)
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&self.ca)
            .arg("-CAkey")
            .arg(self.ca.with_file_name("ca.key"))
            .arg("-CAcreateserial")
            .arg("-out")
            .arg(&cert));
        (cert, key)
    }
}
