//! Kubernetes metadata for containers on this node: pod, namespace, owning
//! workload (ReplicaSet -> Deployment, Job -> CronJob, StatefulSet, DaemonSet),
//! labels and annotations, indexed by container id.
//!
//! A background thread lists the node's pods (`fieldSelector=spec.nodeName`),
//! then watches them from the list's resourceVersion, applying ADDED / MODIFIED /
//! DELETED; on any error or `410 Gone` it lists again after a back-off. Owners of
//! ReplicaSets and Jobs are looked up once and cached (bounded). RBAC needed:
//! get/list/watch pods, get replicasets (apps), get jobs (batch).
//!
//! The hot path only reads the shared index (one read lock, no syscalls).
use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

/// What a record gets from its pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub pod: String,
    pub namespace: String,
    /// Name of the top owner (Deployment, StatefulSet, DaemonSet, CronJob, Job,
    /// ...), or the pod itself when it has none.
    pub workload: String,
    pub workload_kind: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// container id -> pod metadata, shared with the pipeline.
pub type PodIndex = Arc<RwLock<HashMap<String, Arc<PodMeta>>>>;

#[derive(Debug, Error)]
pub enum KubeError {
    #[error("reading {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("bad CA certificate in {0}")]
    Ca(PathBuf),
    #[error("API request {path} failed: {reason}")]
    Http { path: String, reason: String },
    #[error("API request {path}: HTTP {status}")]
    Status { path: String, status: u16 },
    #[error("watch expired (410 Gone); relisting")]
    Gone,
}

/// Access to the API server; a trait so tests can replay recorded responses.
pub trait KubeApi: Send {
    fn get(&self, path: &str) -> Result<Value, KubeError>;
    /// Call `on_event` for each watch event until the stream ends or it returns false.
    fn watch(&self, path: &str, on_event: &mut dyn FnMut(Value) -> bool) -> Result<(), KubeError>;
}

/// Where the API server is and how to authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeConfig {
    pub api_url: String,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
    pub node_name: String,
    /// `Some(interval)`: `api_url` is the kubelet, polled (`GET /pods`) this often;
    /// owners are inferred from names (the kubelet serves no ReplicaSets or Jobs).
    pub kubelet_poll: Option<Duration>,
}

/// Where a pod's service account token and CA are mounted.
pub const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl KubeConfig {
    /// In-cluster settings (`KUBERNETES_SERVICE_HOST`), if this runs in a pod:
    /// the token and CA given, else the service account's (which must exist).
    pub fn in_cluster(
        node_name: Option<String>,
        token_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
    ) -> Option<Self> {
        let service = std::env::var("KUBERNETES_SERVICE_HOST").ok().filter(|h| !h.is_empty());
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        Self::at_service(service?, &port, node_name, token_file, ca_file)
    }

    /// [`Self::in_cluster`] with the service's address given.
    pub(crate) fn at_service(
        host: String,
        port: &str,
        node_name: Option<String>,
        token_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
    ) -> Option<Self> {
        let token_file = match token_file {
            Some(given) => given,
            None => Some(PathBuf::from(SA_DIR).join("token")).filter(|t| t.exists())?,
        };
        Some(Self {
            api_url: format!("https://{}:{port}", if host.contains(':') { format!("[{host}]") } else { host }),
            token_file,
            ca_file: ca_file.unwrap_or_else(|| PathBuf::from(SA_DIR).join("ca.crt")),
            node_name: node_name.or_else(node_name_from_env).unwrap_or_default(),
            kubelet_poll: None,
        })
    }
}

/// `NODE_NAME` (set from the downward API in the DaemonSet), else the host name.
pub fn node_name_from_env() -> Option<String> {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()))
}

pub struct HttpApi {
    agent: ureq::Agent,
    base: String,
    token_file: PathBuf,
}

impl HttpApi {
    pub fn new(cfg: &KubeConfig) -> Result<Self, KubeError> {
        use ureq::tls::{Certificate, RootCerts, TlsConfig};
        let pem =
            std::fs::read(&cfg.ca_file).map_err(|source| KubeError::File { path: cfg.ca_file.clone(), source })?;
        let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(KubeError::Ca(cfg.ca_file.clone()));
        }
        let tls = TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(certs))).build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        Ok(Self { agent, base: cfg.api_url.trim_end_matches('/').to_owned(), token_file: cfg.token_file.clone() })
    }

    fn request(&self, path: &str) -> Result<ureq::http::Response<ureq::Body>, KubeError> {
        // Re-read every time: projected service-account tokens rotate.
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|source| KubeError::File { path: self.token_file.clone(), source })?;
        let resp = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", token.trim()))
            .header("Accept", "application/json")
            .call()
            .map_err(|e| KubeError::Http { path: path.to_owned(), reason: e.to_string() })?;
        match resp.status().as_u16() {
            200 => Ok(resp),
            410 => Err(KubeError::Gone),
            status => Err(KubeError::Status { path: path.to_owned(), status }),
        }
    }
}

impl KubeApi for HttpApi {
    fn get(&self, path: &str) -> Result<Value, KubeError> {
        let mut resp = self.request(path)?;
        let text = resp
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .map_err(|e| KubeError::Http { path: path.to_owned(), reason: e.to_string() })?;
        serde_json::from_str(&text).map_err(|e| KubeError::Http { path: path.to_owned(), reason: e.to_string() })
    }

    fn watch(&self, path: &str, on_event: &mut dyn FnMut(Value) -> bool) -> Result<(), KubeError> {
        let resp = self.request(path)?;
        let reader = std::io::BufReader::new(resp.into_body().into_with_config().limit(u64::MAX).reader());
        for line in reader.lines() {
            let line = line.map_err(|e| KubeError::Http { path: path.to_owned(), reason: e.to_string() })?;
            if line.trim().is_empty() {
                continue;
            }
            let Ok(ev) = serde_json::from_str::<Value>(&line) else { continue };
            if !on_event(ev) {
                break;
            }
        }
        Ok(())
    }
}

/// Container ids of a pod (`containerd://<id>` etc. without the scheme).
pub fn container_ids(pod: &Value) -> Vec<String> {
    let status = &pod["status"];
    ["containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"]
        .iter()
        .filter_map(|k| status[*k].as_array())
        .flatten()
        .filter_map(|c| c["containerID"].as_str())
        .filter_map(|id| id.rsplit("://").next())
        .filter(|id| !id.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default()
}

/// The controller owner reference of an object: (kind, name).
pub fn controller_of(obj: &Value) -> Option<(String, String)> {
    let refs = obj["metadata"]["ownerReferences"].as_array()?;
    let r = refs.iter().find(|r| r["controller"].as_bool() == Some(true)).or_else(|| refs.first())?;
    Some((r["kind"].as_str()?.to_owned(), r["name"].as_str()?.to_owned()))
}

const MAX_OWNERS: usize = 16384;

pub struct Watcher<A: KubeApi> {
    api: A,
    state: State,
}

/// Everything but the API, so a watch callback can update it while the API
/// streams.
struct State {
    node: String,
    /// Polling a kubelet: `GET /pods`, owners inferred, no API lookups.
    kubelet: bool,
    index: PodIndex,
    /// (namespace, kind, name) -> its controller (kind, name), if any.
    owners: HashMap<(String, String, String), Option<(String, String)>>,
    /// pod uid -> its container ids, to drop them when the pod goes.
    pods: HashMap<String, Vec<String>>,
}

impl<A: KubeApi> Watcher<A> {
    /// Watch the API server for `node`'s pods.
    pub fn new(api: A, node: &str, index: PodIndex) -> Self {
        let state =
            State { node: node.to_owned(), kubelet: false, index, owners: HashMap::new(), pods: HashMap::new() };
        Self { api, state }
    }

    /// Poll a kubelet's `/pods` (its own node's pods) instead.
    pub fn kubelet(api: A, index: PodIndex) -> Self {
        let state =
            State { node: "kubelet".into(), kubelet: true, index, owners: HashMap::new(), pods: HashMap::new() };
        Self { api, state }
    }

    /// Poll (kubelet mode) until `stop`.
    pub fn poll(mut self, interval: Duration, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = self.list() {
                tracing::warn!(error = %e, "kubelet pod list failed");
            }
            sleep_unless_stopped(interval, stop);
        }
    }

    /// List the node's pods and replace the index. Returns the resourceVersion.
    pub fn list(&mut self) -> Result<String, KubeError> {
        self.state.list(&self.api)
    }

    /// Apply one watch event; returns the new resourceVersion, if any.
    pub fn apply(&mut self, ev: &Value) -> Result<Option<String>, KubeError> {
        self.state.apply(&self.api, ev)
    }

    /// List, then watch, until `stop`; errors lead to a relist after a back-off
    /// (1 s doubling to 60 s).
    pub fn run(mut self, stop: &AtomicBool) {
        let mut backoff = Duration::from_secs(1);
        while !stop.load(Ordering::Relaxed) {
            let mut rv = match self.list() {
                Ok(rv) => {
                    backoff = Duration::from_secs(1);
                    rv
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_s = backoff.as_secs(), "kubernetes list failed");
                    sleep_unless_stopped(backoff, stop);
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    continue;
                }
            };
            while !stop.load(Ordering::Relaxed) {
                let path = format!(
                    "{}&watch=1&allowWatchBookmarks=true&timeoutSeconds=300&resourceVersion={rv}",
                    self.state.pods_path()
                );
                let Watcher { api, state } = &mut self;
                let mut failed = None;
                let streamed = api.watch(&path, &mut |ev| match state.apply(api, &ev) {
                    Ok(v) => {
                        if let Some(v) = v {
                            rv = v;
                        }
                        !stop.load(Ordering::Relaxed)
                    }
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                });
                if let Some(e) = failed.or(streamed.err()) {
                    tracing::info!(error = %e, "kubernetes watch ended; relisting");
                    sleep_unless_stopped(Duration::from_millis(500), stop);
                    break;
                }
            }
        }
    }
}

impl State {
    fn pods_path(&self) -> String {
        if self.kubelet {
            return "/pods".into();
        }
        format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{}", self.node)
    }

    fn list(&mut self, api: &dyn KubeApi) -> Result<String, KubeError> {
        let list = api.get(&self.pods_path())?;
        let mut index = HashMap::new();
        self.pods.clear();
        for pod in list["items"].as_array().into_iter().flatten() {
            let (uid, ids, meta) = self.describe(api, pod);
            let meta = Arc::new(meta);
            for id in &ids {
                index.insert(id.clone(), meta.clone());
            }
            self.pods.insert(uid, ids);
        }
        let n = index.len();
        if let Ok(mut w) = self.index.write() {
            *w = index;
        }
        tracing::info!(node = %self.node, containers = n, pods = self.pods.len(), "kubernetes pods listed");
        Ok(list["metadata"]["resourceVersion"].as_str().unwrap_or("").to_owned())
    }

    fn apply(&mut self, api: &dyn KubeApi, ev: &Value) -> Result<Option<String>, KubeError> {
        let kind = ev["type"].as_str().unwrap_or("");
        let obj = &ev["object"];
        match kind {
            "ADDED" | "MODIFIED" => {
                let (uid, ids, meta) = self.describe(api, obj);
                let meta = Arc::new(meta);
                if let Ok(mut w) = self.index.write() {
                    for old in self.pods.get(&uid).into_iter().flatten() {
                        w.remove(old);
                    }
                    for id in &ids {
                        w.insert(id.clone(), meta.clone());
                    }
                }
                self.pods.insert(uid, ids);
            }
            "DELETED" => {
                let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_owned();
                if let (Some(ids), Ok(mut w)) = (self.pods.remove(&uid), self.index.write()) {
                    for id in ids {
                        w.remove(&id);
                    }
                }
            }
            "ERROR" => {
                return Err(if obj["code"].as_u64() == Some(410) {
                    KubeError::Gone
                } else {
                    KubeError::Status { path: "watch".into(), status: obj["code"].as_u64().unwrap_or(0) as u16 }
                });
            }
            _ => {} // BOOKMARK and unknown types only move the resourceVersion.
        }
        Ok(obj["metadata"]["resourceVersion"].as_str().map(str::to_owned))
    }

    /// (uid, container ids, metadata) of a pod, resolving its owner chain.
    fn describe(&mut self, api: &dyn KubeApi, pod: &Value) -> (String, Vec<String>, PodMeta) {
        let m = &pod["metadata"];
        let ns = m["namespace"].as_str().unwrap_or("").to_owned();
        let name = m["name"].as_str().unwrap_or("").to_owned();
        let (workload_kind, workload) = self.top_owner(api, &ns, pod).unwrap_or_else(|| ("Pod".into(), name.clone()));
        let meta = PodMeta {
            pod: name,
            namespace: ns,
            workload,
            workload_kind,
            labels: string_map(&m["labels"]),
            annotations: string_map(&m["annotations"]),
        };
        (m["uid"].as_str().unwrap_or("").to_owned(), container_ids(pod), meta)
    }

    /// Follow controller references up: ReplicaSet -> Deployment, Job -> CronJob.
    fn top_owner(&mut self, api: &dyn KubeApi, ns: &str, pod: &Value) -> Option<(String, String)> {
        let mut cur = controller_of(pod)?;
        if self.kubelet {
            return Some(infer_owner(pod, cur));
        }
        for _ in 0..4 {
            let path = match cur.0.as_str() {
                "ReplicaSet" => format!("/apis/apps/v1/namespaces/{ns}/replicasets/{}", cur.1),
                "Job" => format!("/apis/batch/v1/namespaces/{ns}/jobs/{}", cur.1),
                _ => break,
            };
            let key = (ns.to_owned(), cur.0.clone(), cur.1.clone());
            let parent = match self.owners.get(&key) {
                Some(p) => p.clone(),
                None => {
                    let p = match api.get(&path) {
                        Ok(obj) => controller_of(&obj),
                        Err(e) => {
                            // Not cached: retried with the next event for this pod;
                            // meanwhile the owner is inferred from names.
                            tracing::debug!(error = %e, "owner lookup failed");
                            return Some(infer_owner(pod, cur));
                        }
                    };
                    if self.owners.len() >= MAX_OWNERS {
                        self.owners.clear();
                    }
                    self.owners.insert(key, p.clone());
                    p
                }
            };
            match parent {
                Some(p) => cur = p,
                None => break,
            }
        }
        Some(cur)
    }
}

/// The owner's owner guessed from names, for when it can't be looked up: a
/// ReplicaSet named `<deployment>-<pod-template-hash>` belongs to that
/// Deployment; a Job named `<cronjob>-<scheduled minute>` (8+ digits) to that
/// CronJob. Anything else stays as it is.
pub fn infer_owner(pod: &Value, owner: (String, String)) -> (String, String) {
    let (kind, name) = &owner;
    match kind.as_str() {
        "ReplicaSet" => {
            let hash = pod["metadata"]["labels"]["pod-template-hash"].as_str().unwrap_or("");
            match name.strip_suffix(hash).and_then(|n| n.strip_suffix('-')) {
                Some(dep) if !hash.is_empty() && !dep.is_empty() => ("Deployment".into(), dep.into()),
                _ => owner,
            }
        }
        "Job" => match name.rsplit_once('-') {
            Some((cron, ts)) if ts.len() >= 8 && ts.bytes().all(|b| b.is_ascii_digit()) && !cron.is_empty() => {
                ("CronJob".into(), cron.into())
            }
            _ => owner,
        },
        _ => owner,
    }
}

fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let end = std::time::Instant::now() + d;
    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests;
