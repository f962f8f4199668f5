//! `api_key_id`: a keyed fingerprint of the credential a call used, so spend per
//! key can be shown without ever storing a key. HMAC-SHA256 with a secret per
//! installation (a file created on first run, mode 0600); without the secret a
//! fingerprint cannot be tested against a guessed key.
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::http::h1::Head;

pub struct KeyHasher {
    secret: Vec<u8>,
}

impl KeyHasher {
    pub fn with_secret(secret: &[u8]) -> Self {
        Self { secret: secret.to_vec() }
    }

    /// Read the installation secret, creating it (32 random bytes) if missing.
    /// On failure, a random in-memory secret: ids are stable for this run only.
    pub fn load_or_create(path: &Path) -> Self {
        match std::fs::read(path) {
            Ok(s) if s.len() >= 16 => return Self::with_secret(&s),
            _ => {}
        }
        let secret = random_bytes();
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path))
            .and_then(|mut f| f.write_all(&secret));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e,
                "cannot store the api_key_id secret; key ids will change when the agent restarts");
        }
        Self::with_secret(&secret)
    }

    /// Keyed hash of prompt material (`h_` + 24 hex digits): equal inputs give
    /// equal ids on this installation, and nothing can be tested against a
    /// guessed prompt without the secret.
    pub fn hash(&self, data: &[u8]) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.secret) else {
            return String::new();
        };
        mac.update(b"prompt\0");
        mac.update(data);
        let tag = mac.finalize().into_bytes();
        format!("h_{}", tag[..12].iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    /// Fingerprint of the credential in a request's headers (or `key=` query
    /// parameter), if any: `k_` + 24 hex digits.
    pub fn key_id(&self, head: &Head) -> Option<String> {
        let cred = credential(head)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).ok()?;
        mac.update(cred.as_bytes());
        let tag = mac.finalize().into_bytes();
        Some(format!("k_{}", tag[..12].iter().map(|b| format!("{b:02x}")).collect::<String>()))
    }
}

fn credential(head: &Head) -> Option<String> {
    if let Some(a) = head.header("authorization") {
        let tok = a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("bearer ")).unwrap_or(a).trim();
        if !tok.is_empty() {
            return Some(tok.to_owned());
        }
    }
    for h in ["x-api-key", "api-key", "x-goog-api-key"] {
        if let Some(v) = head.header(h).filter(|v| !v.is_empty()) {
            return Some(v.to_owned());
        }
    }
    let query = head.path.as_deref()?.split_once('?')?.1;
    query.split('&').find_map(|kv| kv.strip_prefix("key=")).filter(|k| !k.is_empty()).map(str::to_owned)
}

fn random_bytes() -> Vec<u8> {
    let mut buf = vec![0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        if f.read_exact(&mut buf).is_ok() {
            return buf;
        }
    }
    // Last resort: time and pid (still keyed, just weaker).
    let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
    seed.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)], path: &str) -> Head {
        Head {
            method: Some("POST".into()),
            path: Some(path.into()),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn same_key_same_id_never_the_key() {
        let h = KeyHasher::with_secret(b"installation-secret-0123456789");
        let a = h.key_id(&head(&[("authorization", "Bearer sk-live-abc")], "/v1/x")).unwrap();
        let b = h.key_id(&head(&[("x-api-key", "sk-live-abc")], "/v1/x")).unwrap();
        let c = h.key_id(&head(&[("api-key", "other")], "/v1/x")).unwrap();
        let d = h.key_id(&head(&[], "/v1beta/models/g:generateContent?alt=sse&key=sk-live-abc")).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, d);
        assert_ne!(a, c);
        assert!(a.starts_with("k_") && a.len() == 26 && !a.contains("abc"));
        assert_eq!(h.key_id(&head(&[], "/v1/x")), None);
        // Another installation's secret gives another id.
        let other = KeyHasher::with_secret(b"another-secret-0123456789");
        assert_ne!(other.key_id(&head(&[("x-api-key", "sk-live-abc")], "/")).unwrap(), a);
    }

    #[test]
    fn secret_is_created_once_with_private_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tt-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = dir.join("sub/key-secret");
        let h1 = KeyHasher::load_or_create(&p);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let h2 = KeyHasher::load_or_create(&p);
        let hd = head(&[("x-api-key", "k")], "/");
        assert_eq!(h1.key_id(&hd), h2.key_id(&hd));
    }
}
