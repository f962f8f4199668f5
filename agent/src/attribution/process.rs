//! What a process says about itself in /proc: its OpenTelemetry service name and
//! resource attributes (environment), and its systemd unit (cgroup path).
use std::collections::BTreeMap;

/// The variables read from `/proc/PID/environ` (nothing else is kept: the
/// environment often holds credentials).
const WANTED: [&str; 2] = ["OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"];

/// `OTEL_*` variables from NUL-separated `environ` bytes.
pub fn otel_env(environ: &[u8]) -> BTreeMap<String, String> {
    environ
        .split(|&b| b == 0)
        .filter_map(|kv| {
            let kv = std::str::from_utf8(kv).ok()?;
            let (k, v) = kv.split_once('=')?;
            WANTED.contains(&k).then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// `OTEL_RESOURCE_ATTRIBUTES` (`k=v,k2=v2`, values percent-encoded) as pairs.
pub fn resource_attributes(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let Some(attrs) = env.get("OTEL_RESOURCE_ATTRIBUTES") else {
        return BTreeMap::new();
    };
    attrs
        .split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let (k, v) = (k.trim(), percent_decode(v.trim()));
            (!k.is_empty() && !v.is_empty()).then(|| (k.to_owned(), v))
        })
        .collect()
}

/// The service name OpenTelemetry would report: `OTEL_SERVICE_NAME`, else the
/// `service.name` resource attribute.
pub fn otel_service(env: &BTreeMap<String, String>) -> Option<String> {
    env.get("OTEL_SERVICE_NAME")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| resource_attributes(env).remove("service.name"))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The systemd unit a cgroup path belongs to (the deepest `*.service`).
pub fn systemd_unit(cgroup_path: &str) -> Option<String> {
    cgroup_path.rsplit('/').find(|seg| seg.ends_with(".service") && !seg.starts_with("user@")).map(str::to_owned)
}

/// The v2 cgroup path in `/proc/PID/cgroup` text (the `0::` line).
pub fn cgroup_v2_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_otel_variables() {
        let env = otel_env(b"PATH=/bin\0OPENAI_API_KEY=sk-x\0OTEL_SERVICE_NAME=checkout\0OTEL_RESOURCE_ATTRIBUTES=team=pay%20ments,service.name=ignored\0");
        assert_eq!(env.len(), 2);
        assert!(!format!("{env:?}").contains("sk-x"));
        assert_eq!(otel_service(&env).as_deref(), Some("checkout"));
        assert_eq!(resource_attributes(&env).get("team").map(String::as_str), Some("pay ments"));
    }

    #[test]
    fn service_name_from_resource_attributes() {
        for (environ, want) in [
            (&b"OTEL_RESOURCE_ATTRIBUTES=service.name=search,team=x\0"[..], Some("search")),
            (b"OTEL_SERVICE_NAME= \0OTEL_RESOURCE_ATTRIBUTES=service.name=a%2Cb\0", Some("a,b")),
            (b"OTEL_RESOURCE_ATTRIBUTES=,=,bad,%\0", None),
            (b"\xff\xfe\0", None),
            (b"", None),
        ] {
            assert_eq!(otel_service(&otel_env(environ)).as_deref(), want, "{environ:?}");
        }
    }

    #[test]
    fn systemd_units_from_cgroup_paths() {
        assert_eq!(systemd_unit("/system.slice/nginx.service").as_deref(), Some("nginx.service"));
        assert_eq!(
            systemd_unit("/user.slice/user-1000.slice/user@1000.service/app.slice/llm-worker.service").as_deref(),
            Some("llm-worker.service")
        );
        assert_eq!(systemd_unit("/user.slice/user-1000.slice/session-2.scope"), None);
        assert_eq!(cgroup_v2_path("1:cpu:/\n0::/system.slice/x.service\n"), Some("/system.slice/x.service"));
        assert_eq!(cgroup_v2_path("1:cpu:/\n"), None);
    }
}
