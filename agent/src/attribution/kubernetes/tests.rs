use super::*;
use std::sync::Mutex;

fn fixture(name: &str) -> Value {
    let p = format!("{}/tests/fixtures/kubernetes/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn events() -> Vec<Value> {
    let p = format!("{}/tests/fixtures/kubernetes/watch_events.jsonl", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Replays responses in the API server's format (no cluster runs here).
#[derive(Default)]
struct FakeApi {
    gets: HashMap<String, Value>,
    watch_events: Vec<Value>,
    calls: Arc<Mutex<Vec<String>>>,
    fail_once: Mutex<Option<String>>,
    stop_after_lists: Option<(usize, Arc<AtomicBool>)>,
}

impl KubeApi for FakeApi {
    fn get(&self, path: &str) -> Result<Value, KubeError> {
        let mut calls = self.calls.lock().unwrap();
        calls.push(path.to_owned());
        if let Some((n, stop)) = &self.stop_after_lists {
            if calls.iter().filter(|c| c.starts_with("/api/v1/pods") && !c.contains("watch")).count() >= *n {
                stop.store(true, Ordering::Relaxed);
            }
        }
        if self.fail_once.lock().unwrap().take_if(|p| p == path).is_some() {
            return Err(KubeError::Status { path: path.into(), status: 503 });
        }
        let key = path.split('?').next().unwrap();
        self.gets.get(key).cloned().ok_or(KubeError::Status { path: path.into(), status: 404 })
    }

    fn watch(&self, path: &str, on_event: &mut dyn FnMut(Value) -> bool) -> Result<(), KubeError> {
        self.calls.lock().unwrap().push(path.to_owned());
        for ev in &self.watch_events {
            if !on_event(ev.clone()) {
                break;
            }
        }
        Ok(())
    }
}

fn api() -> FakeApi {
    let mut gets = HashMap::new();
    gets.insert("/api/v1/pods".to_string(), fixture("pods_list.json"));
    gets.insert(
        "/apis/apps/v1/namespaces/shop/replicasets/checkout-7d9f8b6c5d".into(),
        fixture("replicaset_checkout.json"),
    );
    gets.insert("/apis/apps/v1/namespaces/shop/replicasets/search-5f6b7c8d9".into(), fixture("replicaset_search.json"));
    gets.insert("/apis/batch/v1/namespaces/batch/jobs/nightly-report-28977120".into(), fixture("job_report.json"));
    FakeApi { gets, watch_events: events(), ..Default::default() }
}

fn get(index: &PodIndex, id: &str) -> Option<Arc<PodMeta>> {
    index.read().unwrap().get(id).cloned()
}

#[test]
fn list_resolves_owner_chains() {
    let index = PodIndex::default();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut w = Watcher::new(FakeApi { calls: calls.clone(), ..api() }, "node-1", index.clone());
    assert_eq!(w.list().unwrap(), "1010");
    assert_eq!(index.read().unwrap().len(), 4);
    let checkout = get(&index, &"a1".repeat(32)).unwrap();
    assert_eq!((checkout.workload_kind.as_str(), checkout.workload.as_str()), ("Deployment", "checkout"));
    assert_eq!((checkout.pod.as_str(), checkout.namespace.as_str()), ("checkout-7d9f8b6c5d-x2x9q", "shop"));
    assert_eq!(checkout.labels.get("team").map(String::as_str), Some("payments"));
    let report = get(&index, &"b2".repeat(32)).unwrap();
    assert_eq!((report.workload_kind.as_str(), report.workload.as_str()), ("CronJob", "nightly-report"));
    assert_eq!(report.annotations.get("tokentap.io/service").map(String::as_str), Some("reporting"));
    let redis = get(&index, &"c3".repeat(32)).unwrap();
    assert_eq!((redis.workload_kind.as_str(), redis.workload.as_str()), ("StatefulSet", "redis"));
    let bare = get(&index, &"d4".repeat(32)).unwrap();
    assert_eq!((bare.workload_kind.as_str(), bare.workload.as_str()), ("Pod", "debug-shell"));
    // The node's pods only, and owners looked up once.
    w.list().unwrap();
    let calls = calls.lock().unwrap();
    assert!(calls[0].ends_with("fieldSelector=spec.nodeName%3Dnode-1"), "{calls:?}");
    assert_eq!(calls.iter().filter(|c| c.contains("replicasets/checkout")).count(), 1);
}

#[test]
fn watch_events_follow_pod_churn() {
    let index = PodIndex::default();
    let mut w = Watcher::new(api(), "node-1", index.clone());
    w.list().unwrap();
    let evs = events();
    // ADDED: a new pod of another Deployment.
    assert_eq!(w.apply(&evs[0]).unwrap().as_deref(), Some("1011"));
    assert_eq!(get(&index, &"e5".repeat(32)).unwrap().workload, "search");
    // MODIFIED: the container restarted with a new id; the old id is gone.
    w.apply(&evs[1]).unwrap();
    assert!(get(&index, &"a1".repeat(32)).is_none());
    assert_eq!(get(&index, &"f6".repeat(32)).unwrap().workload, "checkout");
    // DELETED.
    w.apply(&evs[2]).unwrap();
    assert!(get(&index, &"c3".repeat(32)).is_none());
    // BOOKMARK moves the resourceVersion only; 410 Gone asks for a relist.
    assert_eq!(w.apply(&evs[3]).unwrap().as_deref(), Some("1020"));
    assert!(matches!(w.apply(&evs[4]), Err(KubeError::Gone)));
    assert_eq!(index.read().unwrap().len(), 4);
}

#[test]
fn failed_owner_lookups_are_retried_not_cached() {
    let index = PodIndex::default();
    let rs = "/apis/apps/v1/namespaces/shop/replicasets/checkout-7d9f8b6c5d";
    let calls = Arc::new(Mutex::new(Vec::new()));
    let fake = FakeApi { fail_once: Mutex::new(Some(rs.into())), calls: calls.clone(), ..api() };
    let mut w = Watcher::new(fake, "node-1", index.clone());
    w.list().unwrap();
    // Inferred from the pod-template-hash meanwhile...
    assert_eq!(get(&index, &"a1".repeat(32)).unwrap().workload, "checkout");
    // ...and looked up again on the next sight of the pod, then cached.
    w.list().unwrap();
    w.list().unwrap();
    assert_eq!(get(&index, &"a1".repeat(32)).unwrap().workload, "checkout");
    assert_eq!(calls.lock().unwrap().iter().filter(|c| *c == rs).count(), 2);
}

#[test]
fn run_relists_after_gone_and_stops() {
    let index = PodIndex::default();
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let fake = FakeApi { calls: calls.clone(), stop_after_lists: Some((2, stop.clone())), ..api() };
    Watcher::new(fake, "node-1", index.clone()).run(&stop);
    let calls = calls.lock().unwrap();
    let watch = calls.iter().find(|c| c.contains("watch=1")).unwrap();
    assert!(watch.contains("resourceVersion=1010"), "{watch}");
    assert_eq!(calls.iter().filter(|c| c.starts_with("/api/v1/pods") && !c.contains("watch")).count(), 2);
}

#[test]
fn kubelet_mode_lists_pods_and_infers_owners() {
    let index = PodIndex::default();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut gets = HashMap::new();
    gets.insert("/pods".to_string(), fixture("pods_list.json"));
    let fake = FakeApi { gets, calls: calls.clone(), ..Default::default() };
    let mut w = Watcher::kubelet(fake, index.clone());
    w.list().unwrap();
    assert_eq!(get(&index, &"a1".repeat(32)).unwrap().workload, "checkout");
    assert_eq!(get(&index, &"a1".repeat(32)).unwrap().workload_kind, "Deployment");
    assert_eq!(get(&index, &"b2".repeat(32)).unwrap().workload, "nightly-report");
    assert_eq!(get(&index, &"c3".repeat(32)).unwrap().workload, "redis");
    assert_eq!(*calls.lock().unwrap(), vec!["/pods".to_string()], "no API lookups against a kubelet");
}

#[test]
fn owner_inference_from_names() {
    let pod = serde_json::json!({"metadata": {"labels": {"pod-template-hash": "5d9f"}}});
    let o = |k: &str, n: &str| (k.to_string(), n.to_string());
    assert_eq!(infer_owner(&pod, o("ReplicaSet", "web-api-5d9f")), o("Deployment", "web-api"));
    assert_eq!(infer_owner(&pod, o("ReplicaSet", "web-api-other")), o("ReplicaSet", "web-api-other"));
    assert_eq!(infer_owner(&serde_json::json!({}), o("ReplicaSet", "x-5d9f")), o("ReplicaSet", "x-5d9f"));
    assert_eq!(infer_owner(&pod, o("ReplicaSet", "-5d9f")), o("ReplicaSet", "-5d9f"));
    assert_eq!(infer_owner(&pod, o("Job", "backup-28977120")), o("CronJob", "backup"));
    assert_eq!(infer_owner(&pod, o("Job", "migrate-42")), o("Job", "migrate-42"));
    assert_eq!(infer_owner(&pod, o("DaemonSet", "node-agent")), o("DaemonSet", "node-agent"));
}

#[test]
fn container_ids_and_owners_tolerate_odd_objects() {
    assert!(container_ids(&serde_json::json!({})).is_empty());
    let p = serde_json::json!({"status": {"containerStatuses": [{"containerID": ""}, {"name": "x"}],
        "initContainerStatuses": [{"containerID": "containerd://ABC"}]}});
    assert_eq!(container_ids(&p), vec!["abc".to_string()]);
    assert_eq!(controller_of(&serde_json::json!({"metadata": {"ownerReferences": "x"}})), None);
    let o = serde_json::json!({"metadata": {"ownerReferences": [{"kind": "Node", "name": "n"}]}});
    assert_eq!(controller_of(&o), Some(("Node".into(), "n".into())));
}

#[test]
fn in_a_pod_a_token_and_ca_given_replace_the_service_accounts() {
    let (t, ca) = (PathBuf::from("/etc/tt/token"), PathBuf::from("/etc/tt/ca.pem"));
    let k = KubeConfig::at_service("fd00::1".into(), "6443", Some("n".into()), Some(t.clone()), Some(ca.clone()))
        .expect("a token given needs no service account");
    assert_eq!((k.api_url.as_str(), &k.token_file, &k.ca_file), ("https://[fd00::1]:6443", &t, &ca));
    // Without one, the service account's token must exist (it does not here).
    let sa = PathBuf::from(SA_DIR).join("token");
    assert_eq!(KubeConfig::at_service("10.0.0.1".into(), "443", None, None, Some(ca)).is_some(), sa.exists());
}
