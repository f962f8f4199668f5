//! Attribution end to end: clients started by the test inside new cgroups named
//! the way docker, containerd and CRI-O name theirs (v2, and v1 where mounted),
//! in new mount and pid namespaces, with OpenTelemetry environment variables and
//! attribution headers. Real probes, real TLS. Needs root.
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tokentap_e2e::*;

/// A cgroup directory made for one test; the directories it created are removed
/// when dropped (deepest first).
struct Cgroup(PathBuf, Vec<PathBuf>);

impl Cgroup {
    fn create(path: PathBuf) -> Self {
        let mut created = Vec::new();
        let mut cur = PathBuf::new();
        for c in path.components() {
            cur.push(c);
            if !cur.exists() {
                std::fs::create_dir(&cur).unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", cur.display()));
                created.push(cur.clone());
            }
        }
        Self(path, created)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for d in self.1.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn cgroup2_root() -> PathBuf {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mi.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| PathBuf::from(pre.split_whitespace().nth(4).unwrap()))
        })
        .expect("no cgroup2 mount: the attribution tests need cgroup v2 (unified or hybrid)")
}

fn hex_id(seed: u32) -> String {
    format!("{:08x}", seed).repeat(8)
}

/// Run `program args` inside `cgroup` (moved there before exec; pid kept).
fn in_cgroup(cgroup: &Path, program: &str, args: &[String]) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", r#"echo $$ > "$0" && exec "$@""#]).arg(cgroup.join("cgroup.procs")).arg(program).args(args);
    c
}

fn curl_args(env_certs: &Certs, url: &str, headers: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["-sS", "--fail", "-o", "/dev/null", "--cacert"].iter().map(|s| s.to_string()).collect();
    a.push(env_certs.ca.display().to_string());
    for h in headers {
        a.push("-H".into());
        a.push(h.to_string());
    }
    a.push(url.into());
    a.push("-d".into());
    a.push(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#.into());
    a
}

fn records_where(agent: &Agent, f: impl Fn(&Value) -> bool) -> Vec<Value> {
    agent.records().into_iter().filter(|r| f(r)).collect()
}

#[test]
fn container_ids_from_runtime_cgroup_layouts() {
    let _g = serial();
    require_root();
    require_tool("curl");
    let dir = scratch("attr-cgroups");
    let certs = Certs::generate(&dir);
    let server = Server::start(&dir, &certs);
    let mut agent = Agent::start(&dir, &[]);
    let url = format!("https://127.0.0.1:{}/v1/chat/completions", server.port);
    let root = cgroup2_root();
    let pid = std::process::id();
    let layouts = [
        ("docker", format!("tokentap-test-{pid}.slice/docker-{}.scope", hex_id(pid))),
        (
            "containerd",
            format!(
                "tokentap-test-{pid}-kubepods.slice/kubepods-burstable-pod1.slice/cri-containerd-{}.scope",
                hex_id(pid + 1)
            ),
        ),
        ("crio", format!("tokentap-test-{pid}-crio.slice/crio-{}.scope", hex_id(pid + 2))),
        ("podman", format!("tokentap-test-{pid}-machine.slice/libpod-{}.scope", hex_id(pid + 3))),
    ];
    for (i, (runtime, rel)) in layouts.iter().enumerate() {
        let cg = Cgroup::create(root.join(rel));
        let want = hex_id(pid + i as u32);
        let (client, _) = run_client(in_cgroup(&cg.0, "curl", &curl_args(&certs, &url, &[])));
        let recs = agent.wait_records(&[client], 1);
        assert_eq!(recs[0]["container_id"], want.as_str(), "{runtime}: {}", recs[0]);
        assert_eq!(recs[0]["comm"], "curl");
    }

    // A new pid namespace too (the agent still sees host pids): found by container id.
    let id = hex_id(pid + 9);
    let cg = Cgroup::create(root.join(format!("tokentap-test-{pid}-pidns.slice/docker-{id}.scope")));
    let mut args = vec!["--pid".to_string(), "--fork".into(), "--mount-proc".into(), "curl".into()];
    args.extend(curl_args(&certs, &url, &[]));
    run_client(in_cgroup(&cg.0, "unshare", &args));
    let recs = wait_for("a record from the pid namespace", std::time::Duration::from_secs(30), || {
        let r = records_where(&agent, |r| r["container_id"] == id.as_str());
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["comm"], "curl");
    assert_ne!(recs[0]["pid"], 1, "pids are the host's");

    // cgroup v1 docker layout (hybrid hosts): the id comes from the v1 line.
    // Only /proc/PID/cgroup has it (the kernel's cgroup id is v2's), and the
    // agent reads it while the process lives: this curl is kept alive after its
    // call (`HeldCurl`) until its record is in. A v1 process that exits within
    // a moment of its first call has no id (docs/record.md).
    let v1 = PathBuf::from("/sys/fs/cgroup/memory");
    assert!(v1.exists(), "this test expects the v1 memory hierarchy of a hybrid host at {}", v1.display());
    let id1 = hex_id(pid + 20);
    let cg1 = Cgroup::create(v1.join(format!("tokentap-test-{pid}/docker/{id1}")));
    let mut client = HeldCurl::spawn(in_cgroup(&cg1.0, "curl", &curl_args(&certs, &url, &[])));
    let recs = agent.wait_records(&[client.pid()], 1);
    assert_eq!(recs[0]["status"], 200, "{}", recs[0]);
    assert_eq!(recs[0]["container_id"], id1.as_str(), "{}", recs[0]);
    assert!(recs[0]["exe"].as_str().is_some_and(|e| e.ends_with("curl")), "{}", recs[0]);
    assert!(client.running(), "curl is held in its last transfer");
    client.release();

    // A plain host process has no container.
    let mut c = Command::new("curl");
    c.args(curl_args(&certs, &url, &[]));
    let (host, _) = run_client(c);
    assert!(agent.wait_records(&[host], 1)[0]["container_id"].is_null());
    assert!(agent.stop().success());
}

#[test]
fn service_labels_end_user_feature_and_key_ids() {
    let _g = serial();
    require_root();
    require_tool("curl");
    let dir = scratch("attr-service");
    let certs = Certs::generate(&dir);
    let server = Server::start(&dir, &certs);
    let mut agent =
        Agent::start(&dir, &["--label", "team", "--end-user-header", "x-end-user", "--feature-header", "x-feature"]);
    let url = format!("https://127.0.0.1:{}/v1/chat/completions", server.port);

    // OTEL_SERVICE_NAME and resource attributes of the Python SDK process.
    let mut py = py_client(
        &dir,
        &certs,
        &format!("https://api.openai.com:{}/v1", server.port),
        &format!("https://api.anthropic.com:{}", server.port),
        "chat",
    );
    py.env("OTEL_SERVICE_NAME", "checkout-api").env("OTEL_RESOURCE_ATTRIBUTES", "team=payments,env=prod");
    let (p, _) = run_client(py);
    let r = &agent.wait_records(&[p], 1)[0];
    assert_eq!(r["service"], "checkout-api", "{r}");
    assert_eq!(r["labels"]["team"], "payments", "{r}");
    assert!(r["labels"].get("env").is_none(), "only configured labels are copied: {r}");

    // A systemd-style unit cgroup names the service when OTel does not.
    let root = cgroup2_root();
    let cg = Cgroup::create(root.join(format!("tokentap-test-{}.slice/llm-worker.service", std::process::id())));
    let (p, _) = run_client(in_cgroup(&cg.0, "curl", &curl_args(&certs, &url, &[])));
    let r = &agent.wait_records(&[p], 1)[0];
    assert_eq!(r["service"], "llm-worker", "{r}");

    // Otherwise the executable's name.
    let key_a = format!("Authorization: Bearer {SECRET_KEY}");
    let key_b = "Authorization: Bearer sk-other-key-123";
    let headers = ["x-end-user: alice@example.com", "x-feature: summarize", key_a.as_str()];
    let mut pids = Vec::new();
    for h in [&headers[..], &headers[..], &[key_b][..]] {
        let mut c = Command::new("curl");
        c.args(curl_args(&certs, &url, h));
        pids.push(run_client(c).0);
    }
    let recs: Vec<Value> = pids.iter().map(|p| agent.wait_records(&[*p], 1).remove(0)).collect();
    assert_eq!(recs[0]["service"], "curl");
    assert_eq!(recs[0]["end_user"], "alice@example.com");
    assert_eq!(recs[0]["feature"], "summarize");
    assert!(recs[2]["feature"].is_null());
    let ids: Vec<&str> = recs.iter().map(|r| r["api_key_id"].as_str().expect("api_key_id")).collect();
    assert_eq!(ids[0], ids[1], "same key, same id");
    assert_ne!(ids[0], ids[2], "other key, other id");
    assert!(agent.stop().success());
    let out = agent.all_output();
    assert!(!out.contains(SECRET_KEY) && !out.contains("sk-other-key-123"), "a key leaked");
    // The secret behind the ids is private to the installation.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("key-secret")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// Kubernetes metadata from the API server (a stand-in serving responses in the
/// API's format over HTTPS: no cluster runs here) joined to a process in a
/// containerd-style cgroup whose container id is one of the node's pods.
#[test]
fn kubernetes_pod_metadata_reaches_records() {
    kube_e2e(false);
}

/// The same through the kubelet's /pods (polled; owners inferred from names).
#[test]
fn kubelet_pod_metadata_reaches_records() {
    kube_e2e(true);
}

fn kube_e2e(kubelet: bool) {
    let _g = serial();
    require_root();
    require_tool("curl");
    let dir = scratch(if kubelet { "attr-kubelet" } else { "attr-kube" });
    let certs = Certs::generate(&dir);
    let server = Server::start(&dir, &certs);
    let token = dir.join("token");
    std::fs::write(&token, "test-token-123\n").unwrap();
    let port_file = dir.join("kube.port");
    let kube_log = dir.join("kube-requests.log");
    let mut kube = Command::new("python3")
        .arg(workspace_root().join("tests/server/kube_api.py"))
        .args(["--cert", &certs.cert.display().to_string(), "--key", &certs.key.display().to_string()])
        .args(["--token", "test-token-123", "--fixtures"])
        .arg(workspace_root().join("agent/tests/fixtures/kubernetes"))
        .arg("--port-file")
        .arg(&port_file)
        .arg("--log")
        .arg(&kube_log)
        .spawn()
        .expect("start kube_api.py");
    let port: u16 = wait_for("the API stand-in's port", std::time::Duration::from_secs(20), || {
        std::fs::read_to_string(&port_file).ok()?.trim().parse().ok()
    });
    let api = format!("https://127.0.0.1:{port}");
    let mut agent = Agent::start(
        &dir,
        &[
            if kubelet { "--kubelet-url" } else { "--kube-api-url" },
            &api,
            "--kube-token-file",
            &token.display().to_string(),
            "--kube-ca-file",
            &certs.ca.display().to_string(),
            "--node-name",
            "node-1",
            "--label",
            "team",
        ],
    );
    // The list and the watch reached the API, and the ReplicaSet was resolved
    // (the kubelet: its /pods only).
    wait_for("the pod list, the watch and the owner lookup", std::time::Duration::from_secs(30), || {
        let log = std::fs::read_to_string(&kube_log).unwrap_or_default();
        // The watch's ADDED pod has been applied once its owner was looked up.
        let api_server = log.contains("watch=1")
            && log.contains("replicasets/checkout-7d9f8b6c5d")
            && log.contains("replicasets/search-5f6b7c8d9");
        let kubelet_ok = log.lines().any(|l| l == "/pods");
        (if kubelet { kubelet_ok } else { api_server }).then_some(())
    });

    let url = format!("https://127.0.0.1:{}/v1/chat/completions", server.port);
    let root = cgroup2_root();
    let pid = std::process::id();
    // The checkout pod's container (see pods_list.json), and the one a watch ADDED.
    let mut pods = vec![
        ("a1".repeat(32), "checkout-7d9f8b6c5d-x2x9q", ("checkout", "Deployment"), "checkout", Some("payments")),
        (
            "b2".repeat(32),
            "nightly-report-28977120-7xk2p",
            ("nightly-report", "CronJob"),
            "reporting",
            Some("analytics"),
        ),
    ];
    if !kubelet {
        pods.push(("e5".repeat(32), "search-5f6b7c8d9-abcde", ("search", "Deployment"), "search", None));
    }
    for (id, pod, (workload, kind), service, team) in pods {
        let cg =
            Cgroup::create(root.join(format!(
                "tokentap-test-{pid}-k8s.slice/kubepods-pod{}.slice/cri-containerd-{id}.scope",
                &id[..8]
            )));
        let (client, _) = run_client(in_cgroup(&cg.0, "curl", &curl_args(&certs, &url, &[])));
        let r = &agent.wait_records(&[client], 1)[0];
        assert_eq!(r["container_id"], id.as_str(), "{r}");
        assert_eq!(r["pod"], pod, "{r}");
        assert_eq!((&r["workload"], &r["workload_kind"]), (&workload.into(), &kind.into()), "{r}");
        assert_eq!(r["service"], service, "{r}");
        assert_eq!(r["labels"]["team"].as_str(), team, "{r}");
    }
    let shop = agent.records().into_iter().filter(|r| r["namespace"] == "shop").count();
    assert_eq!(shop, if kubelet { 1 } else { 2 });
    assert_eq!(agent.stats_from_now()["records_pod_unknown"], 0, "every container so far is a pod's");
    // A container no pod of the node names (a runtime's own): counted.
    let stray = "f0".repeat(32);
    let cg = Cgroup::create(root.join(format!("tokentap-test-{pid}-k8s.slice/cri-containerd-{stray}.scope")));
    let (client, _) = run_client(in_cgroup(&cg.0, "curl", &curl_args(&certs, &url, &[])));
    let r = &agent.wait_records(&[client], 1)[0];
    assert_eq!((&r["container_id"], &r["pod"]), (&stray.as_str().into(), &Value::Null), "{r}");
    assert_eq!(agent.wait_stat("records_pod_unknown", 1)["records_pod_unknown"], 1);
    // The gauge, set on each 1 s tick: the list's four containers, and the
    // watch's one more (kube_api.py's ADDED pod).
    let containers = if kubelet { 4 } else { 5 };
    agent.wait_stats(&format!("kubernetes_containers {containers}"), |s| s["kubernetes_containers"] == containers);
    assert!(agent.stop().success());
    let _ = kube.kill();
    let _ = kube.wait();
    let log = std::fs::read_to_string(&agent.stderr).unwrap();
    assert!(!log.contains("test-token-123"), "the API token leaked into the log");
}

/// As the chart runs the agent on a cgroup v2 node: in a cgroup namespace of
/// its own, whose /sys/fs/cgroup (mounted from inside it) shows only its own
/// cgroups, with the host's cgroup filesystem mounted beside it (the chart's
/// /host/sys/fs/cgroup) and the DaemonSet's capabilities. A client that exits
/// before the agent reads its call (the agent frozen meanwhile) is gone from
/// /proc: its container is found from the kernel's cgroup id in the host's
/// hierarchy, by the id itself (`CAP_DAC_READ_SEARCH`, as the chart grants)
/// and, without that capability, by walking the hierarchy for a cgroup newer
/// than the last walk. Without the host's mount the agent says at start what
/// it cannot do.
#[test]
fn a_client_gone_from_proc_is_placed_by_an_agent_in_a_cgroup_namespace_of_its_own() {
    let _g = serial();
    require_root();
    require_tool("curl");
    require_tool("setpriv");
    let dir = scratch("attr-cgroupns");
    let certs = Certs::generate(&dir);
    let server = Server::start(&dir, &certs);
    let root = cgroup2_root();
    let pid = std::process::id();
    let agent_cg =
        Cgroup::create(root.join(format!("tokentap-test-{pid}-agent.slice/cri-containerd-{}.scope", hex_id(7))));
    let id = hex_id(pid + 30);
    let client_cg = Cgroup::create(
        root.join(format!("tokentap-test-{pid}-pods.slice/kubepods-besteffort-pod1.slice/cri-containerd-{id}.scope")),
    );
    // In the agent's cgroup, then new cgroup and mount namespaces: the
    // namespace's own cgroup2 mounted first (as a runtime's /sys/fs/cgroup),
    // the host's hierarchy bound beside it, the original mount gone.
    let script = r#"echo $$ > "$1/cgroup.procs" && root="$2" own="$3" host="$4" && shift 4 &&
        exec unshare --cgroup --mount --propagation private sh -c '
            mount -t cgroup2 none "$2" && { [ -z "$3" ] || mount --bind "$1" "$3"; } && umount -l "$1" &&
            shift 3 && exec setpriv --inh-caps=-all --bounding-set="$CAPS" -- "$@"
        ' sh "$root" "$own" "$host" "$@""#;
    let chart = DAEMONSET_CAPS;
    let start = |name: &str, with_host: bool, caps: &str| {
        let at = dir.join(name);
        let (own, host) = (at.join("own-cgroup"), at.join("host-cgroup"));
        for d in [&own, &host] {
            std::fs::create_dir_all(d).unwrap();
        }
        let host = if with_host { host.display().to_string() } else { String::new() };
        let args = [agent_cg.0.display().to_string(), root.display().to_string(), own.display().to_string(), host];
        let caps = format!("CAPS={caps}");
        let mut wrapper = vec!["env", &caps, "sh", "-c", script, "sh"];
        wrapper.extend(args.iter().map(String::as_str));
        Agent::start_with(&at, &[], &wrapper)
    };
    let warning = "sees only its own cgroups";

    let freeze = |on: bool| {
        std::fs::write(agent_cg.0.join("cgroup.freeze"), if on { "1" } else { "0" }).unwrap();
        wait_for("the agent's cgroup frozen or thawed", std::time::Duration::from_secs(10), || {
            let events = std::fs::read_to_string(agent_cg.0.join("cgroup.events")).ok()?;
            events.lines().any(|l| l == if on { "frozen 1" } else { "frozen 0" }).then_some(())
        })
    };
    let url = format!("https://127.0.0.1:{}/v1/chat/completions", server.port);
    for (name, caps) in [("by-id", chart), ("by-walk", "-all,+bpf,+perfmon,+sys_ptrace,+sys_admin")] {
        let mut agent = start(name, true, caps);
        let ns = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/cgroup")).unwrap();
        assert_ne!(ns(agent.pid()), ns(pid), "the agent has a cgroup namespace of its own");
        let log = std::fs::read_to_string(&agent.stderr).unwrap();
        assert!(!log.contains(warning), "{log}");
        freeze(true);
        // run_client reaps it: gone from /proc before the agent reads a byte of it.
        let (client, _) = run_client(in_cgroup(&client_cg.0, "curl", &curl_args(&certs, &url, &[])));
        assert!(!Path::new(&format!("/proc/{client}")).exists());
        freeze(false);
        let r = &agent.wait_records(&[client], 1)[0];
        assert_eq!(r["status"], 200, "{name}: {r}");
        assert!(r["exe"].is_null(), "{name}: read after the process was gone: {r}");
        assert_eq!(r["container_id"], id.as_str(), "{name}: placed by its cgroup id: {r}");
        assert!(agent.stop().success());
        let walked = std::fs::read_to_string(&agent.stderr).unwrap().contains("cgroups are not opened by their id");
        assert_eq!(walked, name == "by-walk", "{name}: how the cgroup was found");
    }

    // Without the host's hierarchy: said at start.
    let mut agent = start("own-only", false, chart);
    let log = std::fs::read_to_string(&agent.stderr).unwrap();
    assert!(log.contains(warning) && log.contains("/host/sys/fs/cgroup"), "{log}");
    assert!(agent.stop().success());
}
