//! Who made a call: process (pid, comm, exe), container (id from the cgroup
//! path), service and labels, end user, feature, and a fingerprint of the API
//! key. Per-process facts are read from /proc once, when the process's first
//! connection appears (it may be gone by the time its response completes), then
//! served from a bounded cache with no syscalls; a process's entry goes when it
//! exits.
//!
//! `service` is resolved in this order (first found wins):
//! 1. the pod's annotation or label named by `service_label` (default `tokentap.io/service`),
//! 2. `OTEL_SERVICE_NAME`, or the `service.name` resource attribute, of the process,
//! 3. the pod's `app.kubernetes.io/name` label,
//! 4. the pod's workload name (Deployment, StatefulSet, DaemonSet, CronJob, ...),
//! 5. the process's systemd unit (without `.service`),
//! 6. the executable's file name,
//! 7. the process name the kernel reported (`comm`), when /proc had nothing:
//!    the process was gone before the agent read its first connection.
pub mod cgroups;
pub mod container;
pub mod keys;
pub mod kubernetes;
pub mod process;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use tokentap_event::LlmCall;

use crate::capture::event::ConnMeta;
use crate::http::message::Head;
use kubernetes::{PodIndex, PodMeta};

/// What is known about one process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub exe: Option<String>,
    pub container_id: Option<String>,
    pub systemd_unit: Option<String>,
    /// OpenTelemetry service name from the environment.
    pub otel_service: Option<String>,
    /// OpenTelemetry resource attributes from the environment.
    pub resource_attributes: BTreeMap<String, String>,
}

impl ProcessInfo {
    /// The `service` of this process's calls, and where it came from.
    pub fn service(&self, pod: Option<&PodMeta>, service_label: &str) -> Option<(String, &'static str)> {
        if let Some(v) = pod.and_then(|p| p.annotations.get(service_label).or_else(|| p.labels.get(service_label))) {
            return Some((v.clone(), "pod_label"));
        }
        if let Some(s) = &self.otel_service {
            return Some((s.clone(), "otel"));
        }
        if let Some(p) = pod {
            if let Some(v) = p.labels.get("app.kubernetes.io/name") {
                return Some((v.clone(), "app_label"));
            }
            if !p.workload.is_empty() {
                return Some((p.workload.clone(), "workload"));
            }
        }
        if let Some(u) = &self.systemd_unit {
            return Some((u.trim_end_matches(".service").to_owned(), "systemd"));
        }
        let exe = self.exe.as_deref()?;
        let name = exe.rsplit('/').next().unwrap_or(exe).trim_end_matches(" (deleted)");
        (!name.is_empty()).then(|| (name.to_owned(), "exe"))
    }
}

/// Attribution settings (`[attribution]` in the config file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributionConfig {
    /// Pod annotation or label that names the service.
    pub service_label: String,
    /// Request header naming the end user (wins over the body's user fields).
    pub end_user_header: Option<String>,
    /// Request header naming the product feature.
    pub feature_header: Option<String>,
    /// Pod labels / resource attributes copied into the record's `labels`.
    pub labels: Vec<String>,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        Self {
            service_label: "tokentap.io/service".into(),
            end_user_header: None,
            feature_header: None,
            labels: Vec::new(),
        }
    }
}

/// Whether a call's container was found among the node's pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodFound {
    Yes,
    /// In a container the pod list does not name (not listed yet: the
    /// API server unreachable or refused; a container started moments ago;
    /// one no pod runs).
    Unknown,
    /// No Kubernetes metadata, or no container.
    NotLooked,
}

pub struct Attributor {
    proc_root: PathBuf,
    cache: HashMap<u32, ProcessInfo>,
    max: usize,
    cfg: AttributionConfig,
    keys: Option<keys::KeyHasher>,
    cgroups: cgroups::CgroupPaths,
    pods: Option<PodIndex>,
}

impl Attributor {
    pub fn new(proc_root: impl Into<PathBuf>, max: usize) -> Self {
        Self {
            proc_root: proc_root.into(),
            cache: HashMap::new(),
            max: max.max(1),
            cfg: AttributionConfig::default(),
            keys: None,
            cgroups: cgroups::CgroupPaths::discover(),
            pods: None,
        }
    }

    /// Keyed hash for prompt features (the installation secret; without one —
    /// tests, fuzzing — a fixed key).
    pub fn hash_prompt(&self, data: &[u8]) -> String {
        match &self.keys {
            Some(k) => k.hash(data),
            None => keys::KeyHasher::with_secret(b"tokentap-unkeyed").hash(data),
        }
    }

    pub fn with_config(mut self, cfg: AttributionConfig, keys: Option<keys::KeyHasher>) -> Self {
        self.cfg = cfg;
        self.keys = keys;
        self
    }

    /// Kubernetes pod metadata by container id (kept current by the watcher).
    pub fn with_pods(mut self, pods: Option<PodIndex>) -> Self {
        self.pods = pods;
        self
    }

    /// Learn about `tgid` now if not known yet (`cgroup_id` from the kernel).
    pub fn observe(&mut self, tgid: u32, cgroup_id: u64) {
        if self.cache.contains_key(&tgid) {
            return;
        }
        if self.cache.len() >= self.max {
            // Rare (more live TLS-using processes than the cap): start over
            // rather than grow; entries are re-read on next sight.
            self.cache.clear();
        }
        let info = self.read(tgid, cgroup_id);
        self.cache.insert(tgid, info);
    }

    pub fn get(&mut self, tgid: u32, cgroup_id: u64) -> ProcessInfo {
        self.observe(tgid, cgroup_id);
        self.cache.get(&tgid).cloned().unwrap_or_default()
    }

    pub fn forget(&mut self, tgid: u32) {
        self.cache.remove(&tgid);
    }

    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Fill a call's who-fields: the process that made it (pid, comm, exe,
    /// container, pod, service, labels), its end user (the configured header,
    /// else what the request body said), feature and API key id. Whether its
    /// container is one the node's pods (watched) do not name.
    pub fn attribute(
        &mut self,
        record: &mut LlmCall,
        conn: &ConnMeta,
        request: &Head,
        body_user: Option<String>,
    ) -> PodFound {
        record.pid = Some(conn.tgid);
        record.comm = Some(conn.comm.to_string());
        record.end_user = body_user;
        self.fill(record, conn.tgid, conn.cgroup_id, request)
    }

    /// Containers the node's pods name (Kubernetes metadata on): 0 while the
    /// pod list has not been read.
    pub fn containers_known(&self) -> Option<usize> {
        self.pods.as_ref().map(|idx| idx.read().map_or(0, |m| m.len()))
    }

    /// Fill the record's who-fields from the process and the request head.
    pub fn fill(&mut self, record: &mut LlmCall, tgid: u32, cgroup_id: u64, request: &Head) -> PodFound {
        self.observe(tgid, cgroup_id);
        // Borrowed, not cloned: this runs for every call.
        let Some(info) = self.cache.get(&tgid) else { return PodFound::NotLooked };
        let pod = self
            .pods
            .as_ref()
            .zip(info.container_id.as_ref())
            .and_then(|(idx, id)| idx.read().ok().and_then(|m| m.get(id).cloned()));
        let found = match (&self.pods, &info.container_id, &pod) {
            (Some(_), Some(_), None) => PodFound::Unknown,
            (Some(_), Some(_), Some(_)) => PodFound::Yes,
            _ => PodFound::NotLooked,
        };
        match info.service(pod.as_deref(), &self.cfg.service_label) {
            Some((service, _)) => record.service = Some(service),
            None => record.service = record.comm.clone().filter(|c| !c.is_empty()),
        }
        if let Some(p) = &pod {
            record.pod = Some(p.pod.clone());
            record.namespace = Some(p.namespace.clone());
            record.workload = Some(p.workload.clone());
            record.workload_kind = Some(p.workload_kind.clone()).filter(|k| !k.is_empty());
        }
        for l in &self.cfg.labels {
            let v = pod.as_ref().and_then(|p| p.labels.get(l)).or_else(|| info.resource_attributes.get(l));
            if let Some(v) = v {
                record.labels.insert(l.clone(), v.clone());
            }
        }
        record.exe = info.exe.clone();
        record.container_id = info.container_id.clone();
        if let Some(v) = self.cfg.end_user_header.as_deref().and_then(|h| request.header(h)) {
            record.end_user = Some(v.to_owned());
        }
        if let Some(v) = self.cfg.feature_header.as_deref().and_then(|h| request.header(h)) {
            record.feature = Some(v.to_owned());
        }
        if let Some(k) = &self.keys {
            record.api_key_id = k.key_id(request);
        }
        found
    }

    fn read(&mut self, tgid: u32, cgroup_id: u64) -> ProcessInfo {
        let dir = self.proc_root.join(tgid.to_string());
        let exe = std::fs::read_link(dir.join("exe")).ok().map(|p| p.to_string_lossy().into_owned());
        let proc_cgroup = std::fs::read_to_string(dir.join("cgroup")).ok();
        // The kernel's cgroup id names the cgroup even if /proc is unreadable.
        let v2_path = self
            .cgroups
            .path_of(cgroup_id)
            .or_else(|| proc_cgroup.as_deref().and_then(process::cgroup_v2_path).map(str::to_owned));
        let container_id = v2_path
            .as_deref()
            .and_then(container::container_id_from_path)
            .or_else(|| proc_cgroup.as_deref().and_then(container::container_id_from_proc_cgroup));
        let systemd_unit = v2_path.as_deref().and_then(process::systemd_unit);
        let env = std::fs::read(dir.join("environ")).map(|e| process::otel_env(&e)).unwrap_or_default();
        ProcessInfo {
            exe,
            container_id,
            systemd_unit,
            otel_service: process::otel_service(&env),
            resource_attributes: process::resource_attributes(&env),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let mut a = Attributor::new("/proc", 4);
        let me = std::process::id();
        let info = a.get(me, 0);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(info.exe.as_deref(), Some(exe.to_str().unwrap()));
        // Bounded: more processes than the cap never grows the cache past it.
        for pid in 1..20 {
            a.observe(pid, 0);
        }
        assert!(a.cached() <= 4);
        a.forget(me);
        assert!(!a.cache.contains_key(&me));
    }

    #[test]
    fn cached_processes_need_no_proc_reads() {
        // A fake /proc that disappears after the first sight of the process:
        // everything later is served from the cache.
        let fake = std::env::temp_dir().join(format!("tt-attr-{}", std::process::id()));
        let dir = fake.join("42");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("environ"), b"OTEL_SERVICE_NAME=cached-svc\0").unwrap();
        std::fs::write(dir.join("cgroup"), format!("0::/system.slice/docker-{}.scope\n", "ab".repeat(32))).unwrap();
        let mut a = Attributor::new(&fake, 16);
        a.observe(42, 0);
        std::fs::remove_dir_all(&fake).unwrap();
        let mut r = LlmCall::default();
        a.fill(&mut r, 42, 0, &Head::default());
        assert_eq!(r.service.as_deref(), Some("cached-svc"));
        assert_eq!(r.container_id, Some("ab".repeat(32)));
    }

    #[test]
    fn a_container_the_pods_do_not_name_is_told_apart() {
        let fake = std::env::temp_dir().join(format!("tt-attr-pods-{}", std::process::id()));
        for (pid, id) in [(1, "a1"), (2, "b2")] {
            let dir = fake.join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            let path = format!("0::/kubepods.slice/cri-containerd-{}.scope\n", id.repeat(32));
            std::fs::write(dir.join("cgroup"), path).unwrap();
        }
        std::fs::create_dir_all(fake.join("3")).unwrap();
        let index = PodIndex::default();
        let meta = PodMeta { pod: "checkout-1".into(), ..Default::default() };
        index.write().unwrap().insert("a1".repeat(32), std::sync::Arc::new(meta));
        let mut without = Attributor::new(&fake, 16);
        assert_eq!(without.containers_known(), None);
        assert_eq!(without.fill(&mut LlmCall::default(), 2, 0, &Head::default()), PodFound::NotLooked);
        let mut a = Attributor::new(&fake, 16).with_pods(Some(index));
        assert_eq!(a.containers_known(), Some(1));
        let mut r = LlmCall::default();
        assert_eq!(a.fill(&mut r, 1, 0, &Head::default()), PodFound::Yes);
        assert_eq!(r.pod.as_deref(), Some("checkout-1"));
        assert_eq!(a.fill(&mut LlmCall::default(), 2, 0, &Head::default()), PodFound::Unknown);
        assert_eq!(a.fill(&mut LlmCall::default(), 3, 0, &Head::default()), PodFound::NotLooked, "a host process");
        std::fs::remove_dir_all(&fake).unwrap();
    }

    #[test]
    fn a_process_gone_before_its_first_sight_is_named_by_its_comm() {
        let empty = std::env::temp_dir().join(format!("tt-attr-gone-{}", std::process::id()));
        let mut a = Attributor::new(&empty, 16);
        let mut r = LlmCall { comm: Some("curl".into()), ..Default::default() };
        a.fill(&mut r, 4242, 0, &Head::default());
        assert_eq!((r.exe, r.service.as_deref()), (None, Some("curl")));
        let mut r = LlmCall::default();
        a.fill(&mut r, 4243, 0, &Head::default());
        assert_eq!(r.service, None, "nothing known, nothing invented");
    }

    #[test]
    fn service_resolution_order() {
        const L: &str = "tokentap.io/service";
        let exe = ProcessInfo { exe: Some("/usr/bin/python3.11".into()), ..Default::default() };
        assert_eq!(exe.service(None, L), Some(("python3.11".into(), "exe")));
        let unit = ProcessInfo { systemd_unit: Some("llm-worker.service".into()), ..exe.clone() };
        assert_eq!(unit.service(None, L), Some(("llm-worker".into(), "systemd")));
        let mut pod = PodMeta { workload: "checkout-deploy".into(), ..Default::default() };
        assert_eq!(unit.service(Some(&pod), L), Some(("checkout-deploy".into(), "workload")));
        pod.labels.insert("app.kubernetes.io/name".into(), "checkout-app".into());
        assert_eq!(unit.service(Some(&pod), L), Some(("checkout-app".into(), "app_label")));
        let otel = ProcessInfo { otel_service: Some("checkout".into()), ..unit.clone() };
        assert_eq!(otel.service(Some(&pod), L), Some(("checkout".into(), "otel")));
        pod.labels.insert(L.into(), "from-label".into());
        assert_eq!(otel.service(Some(&pod), L), Some(("from-label".into(), "pod_label")));
        pod.annotations.insert(L.into(), "from-annotation".into());
        assert_eq!(otel.service(Some(&pod), L), Some(("from-annotation".into(), "pod_label")));
        assert_eq!(ProcessInfo::default().service(None, L), None);
    }

    #[test]
    fn fill_uses_headers_labels_and_keys() {
        let mut a = Attributor::new("/nonexistent", 4).with_config(
            AttributionConfig {
                end_user_header: Some("x-end-user".into()),
                feature_header: Some("x-feature".into()),
                labels: vec!["team".into()],
                ..Default::default()
            },
            Some(keys::KeyHasher::with_secret(b"0123456789abcdef")),
        );
        a.cache.insert(
            7,
            ProcessInfo {
                otel_service: Some("search".into()),
                resource_attributes: [("team".to_string(), "discovery".to_string())].into(),
                ..Default::default()
            },
        );
        let head = Head {
            headers: vec![
                ("x-end-user".into(), b"alice".to_vec()),
                ("x-feature".into(), b"summarize".to_vec()),
                ("authorization".into(), b"Bearer sk-abc".to_vec()),
            ],
            ..Default::default()
        };
        let mut r = LlmCall { end_user: Some("from-body".into()), ..Default::default() };
        a.fill(&mut r, 7, 0, &head);
        assert_eq!(r.service.as_deref(), Some("search"));
        assert_eq!(r.end_user.as_deref(), Some("alice"));
        assert_eq!(r.feature.as_deref(), Some("summarize"));
        assert_eq!(r.labels.get("team").map(String::as_str), Some("discovery"));
        assert!(r.api_key_id.as_deref().is_some_and(|k| k.starts_with("k_")));
        assert!(!serde_json::to_string(&r).unwrap().contains("sk-abc"));
    }

    #[test]
    fn attribute_fills_the_process_and_prefers_the_end_user_header_over_the_body() {
        use crate::capture::event::{Comm, ConnMeta};
        use tokentap_agent_common::Source;
        let conn =
            ConnMeta { tgid: 7, cgroup_id: 0, comm: Comm(*b"python3\0\0\0\0\0\0\0\0\0"), source: Source::OpenSsl };
        let mut a = Attributor::new("/nonexistent", 4)
            .with_config(AttributionConfig { end_user_header: Some("x-end-user".into()), ..Default::default() }, None);
        let head = Head { headers: vec![("x-end-user".into(), b"alice".to_vec())], ..Default::default() };
        let mut r = LlmCall::default();
        a.attribute(&mut r, &conn, &head, Some("from-body".into()));
        assert_eq!((r.pid, r.comm.as_deref(), r.end_user.as_deref()), (Some(7), Some("python3"), Some("alice")));
        let mut r = LlmCall::default();
        a.attribute(&mut r, &conn, &Head::default(), Some("from-body".into()));
        assert_eq!(r.end_user.as_deref(), Some("from-body"));
        let mut r = LlmCall::default();
        a.attribute(&mut r, &conn, &Head::default(), None);
        assert_eq!((r.end_user, r.api_key_id), (None, None));
    }
}
