//! End to end through JSSE: real JVMs (the installed JDK) running the JDK's own
//! `java.net.http.HttpClient` (SSLEngine; tests/clients/java/LlmClient.java),
//! HTTP/1.1 and HTTP/2, sync and streamed chat completions, and
//! `HttpsURLConnection` (SSLSocket), over real TLS to the local LLM server.
//! The agent loads its Java agent into each JVM through HotSpot's dynamic
//! attach: JVMs started before the agent, JVMs started after it (the bytecode
//! verifier on for JDK classes, so the patched JSSE classes must verify), and
//! container-style JVMs (pid 1 of their own pid namespace, their own mount
//! namespace, copy of the JDK and /tmp, user nobody, one in its own user
//! namespace as in a rootless container), the agent then holding only the
//! DaemonSet's capabilities. Every call must become exactly one record with
//! the served tokens and `tls_library` `java`. JVMs with attach disabled, and
//! every JVM under `--no-java-attach`, are not attached, are listed in
//! coverage with the reason, get no signal (no thread dump on their stdout)
//! and keep working. A JVM outlives the agent (its hooks run quietly) and the
//! next agent captures it through the library it already loaded, without
//! loading the Java agent twice. A JVM whose /tmp is mounted noexec, or that
//! disables dynamic agent loading, is left alone with the reason; a process
//! posing as a JVM whose attach socket never accepts is tried a bounded
//! number of times and holds up neither other JVMs nor the agent's exit.
//! Needs root.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tokentap_e2e::java::*;
use tokentap_e2e::*;
use tokentap_event::PriceTable;

const CALLS: u32 = 4;

/// The records of `pid`: one per served call, exact, captured through JSSE.
fn assert_captured(agent: &Agent, server: &Server, pid: u32, version: &str) -> Value {
    agent.wait_records(&[pid], CALLS as usize);
    let stats = agent.wait_process_done(pid);
    let records = agent.records_of(&[pid]);
    assert_eq!(records.len(), CALLS as usize, "one record per call, none doubled: {records:#?}");
    let served = server.served();
    let prices = PriceTable::shipped();
    for (r, s) in pair_with_served(&records, &served) {
        assert_matches_served(r, s, &prices);
        assert_eq!(r["tls_library"], "java", "{r}");
        assert_eq!(r["http_version"], version, "{r}");
        assert_eq!(r["provider"], "openai", "{r}");
        assert_eq!(r["server"], "api.openai.com", "{r}");
    }
    assert_eq!(records.iter().filter(|r| r["stream"] == true).count(), CALLS as usize / 2, "{records:#?}");
    let cov = coverage_of(&stats, pid);
    assert_eq!(cov["records"]["java"], CALLS, "{cov}");
    assert_eq!(blind_spots_of(&stats, &[pid.into()]), Vec::<Value>::new(), "its connections were read");
    assert!(cov["records"].get("socket").is_none(), "{cov}");
    cov
}

/// Nothing of the attach shows in the application's output but, from JDK 21
/// on, the JDK's own notice of a dynamically loaded agent (JEP 451), which
/// no agent can avoid (`-XX:+EnableDynamicAgentLoading` silences it).
fn assert_quiet(stderr: &str) {
    let jdk_notice = |l: &str| {
        l.starts_with("WARNING: ")
            && ["loaded dynamically", "EnableDynamicAgentLoading", "jdk.instrument.traceUsage", "will be disallowed"]
                .iter()
                .any(|w| l.contains(w))
    };
    assert!(stderr.lines().all(jdk_notice), "the JVM's stderr: {stderr}");
}

fn client(dir: &Path, certs: &Certs, base: &str, mode: &str, jvm_args: &[&str]) -> Command {
    with_provider_hosts(dir, "java", &client_args(jvm_args, &client_classes(), base, &certs.ca, mode, CALLS))
}

fn expect_proto(out: &Value, mode: &str) {
    assert_eq!(out["calls"], CALLS, "{out}");
    assert_eq!(out["proto"], if mode == "h2" { "HTTP_2" } else { "HTTP_1_1" }, "{out}");
}

#[test]
fn jvms_started_before_the_agent_are_attached_at_start_and_captured() {
    let _g = serial();
    require_root();
    let dir = scratch("java-before");
    let certs = Certs::generate(&dir);
    let server = Server::start_with(&dir, &certs, Transport::H2);
    let base = format!("https://api.openai.com:{}/v1", server.port);
    // Both clients are up, their HttpClient built, before the agent starts.
    let jvms: Vec<(&str, Jvm)> =
        ["h1", "h2"].into_iter().map(|m| (m, Jvm::start(client(&dir, &certs, &base, m, &[])))).collect();
    let mut agent = Agent::start(&dir, &[]);
    for (_, j) in &jvms {
        let line = wait_jvm_attached(&agent, j.pid());
        assert!(line.contains("ok probed"), "{line}");
        for hook in ["AppInputStream.read", "AppOutputStream.write", "SSLEngineImpl.wrap", "SSLEngineImpl.unwrap"] {
            assert!(line.contains(&format!("{hook}=patched")), "{hook}: {line}");
        }
    }
    for (mode, j) in jvms {
        let pid = j.pid();
        let (out, stderr) = j.go();
        expect_proto(&out, mode);
        // Nothing of the attach shows in the application's output.
        assert_quiet(&stderr);
        assert_captured(&agent, &server, pid, if mode == "h1" { "1.1" } else { "2" });
        assert_eq!(log_lines(&agent, "java agent attached", pid).len(), 1, "one log line per JVM");
    }
    assert!(agent.stop().success());
    let out = agent.all_output();
    assert!(!out.contains(SECRET_KEY) && !out.contains("Bearer"), "a credential leaked into the agent's output");
    let stats = agent.stats();
    assert_eq!(stats["jvms_attached"], 2, "{stats}");
}

#[test]
fn a_jvm_started_after_the_agent_is_attached_on_discovery_and_its_patches_verify() {
    let _g = serial();
    let env = Env::start("java-after", Transport::H2, &[]);
    // HttpClient (SSLEngine) over both versions, and HttpsURLConnection (SSLSocket).
    for mode in ["h2", "h1", "url"] {
        // -XX:+BytecodeVerificationLocal: the JVM verifies JDK classes too, so
        // the patched JSSE classes must pass the verifier (or the load fails).
        let verify = ["-XX:+UnlockDiagnosticVMOptions", "-XX:+BytecodeVerificationLocal"];
        let j = Jvm::start(client(&env.dir, &env.certs, &env.openai_base(), mode, &verify));
        let pid = j.pid();
        let line = wait_jvm_attached(&env.agent, pid);
        assert!(line.contains("ok probed") && !line.contains("refused"), "{line}");
        let (out, stderr) = j.go();
        expect_proto(&out, mode);
        assert_quiet(&stderr);
        let cov = assert_captured(&env.agent, &env.server, pid, if mode == "h2" { "2" } else { "1.1" });
        if mode == "url" {
            // The client closed its socket: SSLSocketImpl.close reached the kernel.
            assert_eq!(cov["closed"]["java"], 1, "{cov}");
        }
    }
    env.finish();
}

/// Records of `pid` in `agent`: `n` of them, each one served call, exact.
fn assert_records(agent: &Agent, server: &Server, pid: u32, n: usize) {
    let records = agent.wait_records(&[pid], n);
    assert_eq!(records.len(), n, "{records:#?}");
    let served = server.served();
    for (r, s) in pair_with_served(&records, &served) {
        assert_matches_served(r, s, &PriceTable::shipped());
        assert_eq!(r["tls_library"], "java", "{r}");
    }
}

#[test]
fn a_jvm_outlives_the_agent_quietly_and_the_next_agent_captures_it_without_a_second_attach() {
    let _g = serial();
    require_root();
    let dir = scratch("java-restart");
    let certs = Certs::generate(&dir);
    let server = Server::start_with(&dir, &certs, Transport::Https);
    let base = format!("https://api.openai.com:{}/v1", server.port);
    let mut first = Agent::start(&dir, &[]);
    // HTTP/1.1 keep-alive: the next agent picks the connection up at a request.
    let mut j = Jvm::start(client(&dir, &certs, &base, "h1", &[]));
    let pid = j.pid();
    wait_jvm_attached(&first, pid);
    expect_proto(&j.round(), "h1");
    assert_records(&first, &server, pid, CALLS as usize);
    assert!(first.stop().success());
    // No agent: the hooks run, nothing probes their native function.
    expect_proto(&j.round(), "h1");
    assert!(j.alive());
    let later = dir.join("second");
    std::fs::create_dir_all(&later).unwrap();
    let second = Agent::start(&later, &[]);
    wait_for("the next agent to find the loaded Java agent", Duration::from_secs(30), || {
        log_lines(&second, "java agent already loaded", pid).into_iter().next()
    });
    wait_for("its library probed from the JVM's maps", Duration::from_secs(30), || {
        agent_log(&second).lines().any(|l| l.contains(" attached ") && l.contains("libtokentap_java")).then_some(())
    });
    let (out, stderr) = j.go();
    expect_proto(&out, "h1");
    assert_quiet(&stderr);
    // Its exit handled: every record it will ever have is written.
    second.wait_process_done(pid);
    assert_records(&second, &server, pid, CALLS as usize);
    assert!(log_lines(&second, "java agent attached", pid).is_empty(), "loaded once in the JVM's life");
    assert_eq!(first.records_of(&[pid]).len(), CALLS as usize, "the first agent saw only the first round");
}

/// A copy of the JDK's runtime parts (what a container image carries).
fn jdk_copy(dir: &Path) -> PathBuf {
    let home = jdk_home();
    let copy = dir.join("jdk");
    std::fs::create_dir_all(&copy).unwrap();
    for part in ["bin", "lib", "conf", "release"] {
        let st = Command::new("cp").arg("-a").arg(home.join(part)).arg(&copy).status().unwrap();
        assert!(st.success(), "copy {part} of the JDK");
    }
    copy
}

#[test]
fn containerised_jvms_with_their_own_jdk_tmp_pid_and_user_namespaces_are_captured_with_the_daemonset_capabilities() {
    let _g = serial();
    require_root();
    require_tool("setpriv");
    let dir = scratch("java-container");
    let certs = Certs::generate(&dir);
    let server = Server::start_with(&dir, &certs, Transport::H2);
    // The DaemonSet's list, as deploy/manifests/tokentap.yaml grants it.
    let manifest = std::fs::read_to_string(workspace_root().join("deploy/manifests/tokentap.yaml")).unwrap();
    let granted = manifest.lines().find_map(|l| l.trim().strip_prefix("add: [")).expect("the agent's capabilities");
    let mut granted: Vec<String> = granted.trim_end_matches(']').split(", ").map(|c| c.to_lowercase()).collect();
    let mut ours: Vec<String> = DAEMONSET_CAPS.split(",+").skip(1).map(str::to_owned).collect();
    granted.sort();
    ours.sort();
    assert_eq!(granted, ours, "the manifest's capabilities are the ones tested here");
    let wrapper = ["setpriv", "--inh-caps=-all", &format!("--bounding-set={DAEMONSET_CAPS}"), "--"];
    let mut agent = Agent::start_with(&dir, &[], &wrapper);
    let jdk = jdk_copy(&dir);
    // What the JVM needs, inside the copy (its /tmp is its own, empty tmpfs).
    let app = jdk.join("app");
    std::fs::create_dir_all(&app).unwrap();
    for e in std::fs::read_dir(client_classes()).unwrap().flatten() {
        std::fs::copy(e.path(), app.join(e.file_name())).unwrap();
    }
    std::fs::copy(&certs.ca, app.join("ca.pem")).unwrap();
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, format!("127.0.0.1 localhost {}\n", PROVIDER_HOSTS.join(" "))).unwrap();
    let home = jdk_home();
    let base = format!("https://api.openai.com:{}/v1", server.port);
    let args = client_args(&[], &home.join("app"), &base, &home.join("app/ca.pem"), "h2", CALLS);
    // Binds first (their sources live under the host's /tmp), then the private
    // /tmp; java runs as pid 1 of its pid namespace, as user nobody (a) or as
    // root of a user namespace that maps it to nobody (b: a rootless
    // container, where the agent's root is no one and creates nothing).
    let mounts = format!(
        "set -e\nmount --bind '{}' /etc/hosts\nmount --bind '{}' '{}'\nmount -t tmpfs -o mode=1777 tmpfs /tmp\n",
        hosts.display(),
        jdk.display(),
        home.display()
    );
    let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"];
    let ns = ["--mount", "--pid", "--fork", "--mount-proc", "--propagation", "private"];
    for userns in [false, true] {
        let mut cmd = Command::new(if userns { nobody[0] } else { "unshare" });
        if userns {
            cmd.args(&nobody[1..]).args(["unshare", "--user", "--map-root-user"]);
        }
        let script = if userns {
            format!("{mounts}exec \"$@\"\n")
        } else {
            format!("{mounts}exec {} \"$@\"\n", nobody.join(" "))
        };
        cmd.args(ns).args(["sh", "-c", &script, "sh"]).arg(home.join("bin/java")).args(&args);
        let j = Jvm::start(cmd);
        let pid = wait_for("the JVM under unshare", Duration::from_secs(10), || child_of(j.pid()));
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(status.lines().any(|l| l.starts_with("NStgid:") && l.ends_with("\t1")), "pid 1 inside: {status}");
        assert!(status.lines().any(|l| l.starts_with("Uid:\t65534")), "{status}");
        let own_userns = std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
        assert_eq!(own_userns != std::fs::read_link("/proc/self/ns/user").unwrap(), userns);
        let line = wait_jvm_attached(&agent, pid);
        assert!(line.contains("ok probed"), "{line}");
        // Its library was probed through its own root (not the host's /tmp).
        let lib = format!("/proc/{pid}/root/tmp/.tokentap-java-");
        wait_for("its library probed through its root", Duration::from_secs(10), || {
            agent_log(&agent).lines().any(|l| l.contains(" attached ") && l.contains(&lib)).then_some(())
        });
        let (out, stderr) = j.go();
        expect_proto(&out, "h2");
        assert_quiet(&stderr);
        assert_captured(&agent, &server, pid, "2");
    }
    assert!(agent.stop().success());
    assert!(!agent.all_output().contains(SECRET_KEY));
}

#[test]
fn jvms_that_disable_attach_are_listed_not_signalled_and_keep_working() {
    let _g = serial();
    let env = Env::start("java-disabled", Transport::H2, &[]);
    // Read from the JVM's perf data file; with -XX:-UsePerfData there is none,
    // and the command line says it. -XX:-EnableDynamicAgentLoading (JDK 21+:
    // every agent load fails) is treated alike (older JDKs ignore it here);
    // given in an argument file, only the perf data's JVM arguments show it.
    let argfile = env.dir.join("jvm.args");
    std::fs::write(&argfile, "-XX:+IgnoreUnrecognizedVMOptions\n-XX:-EnableDynamicAgentLoading\n").unwrap();
    let argfile = format!("@{}", argfile.display());
    let dynamic = "-XX:-EnableDynamicAgentLoading";
    let cases = [
        (vec!["-XX:+DisableAttachMechanism"], "DisableAttachMechanism", "per its perf data"),
        (vec!["-XX:-UsePerfData", "-XX:+DisableAttachMechanism"], "DisableAttachMechanism", "on its command line"),
        (vec![argfile.as_str()], "EnableDynamicAgentLoading", "per its perf data"),
        (
            vec!["-XX:+IgnoreUnrecognizedVMOptions", "-XX:-UsePerfData", dynamic],
            "EnableDynamicAgentLoading",
            "on its command line",
        ),
    ];
    let n = cases.len() as u64;
    for (flags, flag, how) in cases {
        let mut j = Jvm::start(client(&env.dir, &env.certs, &env.openai_base(), "h2", &flags));
        let pid = j.pid();
        let stats = env.agent.wait_stats("the JVM listed as not probed", |s| {
            coverage_of(s, pid)["not_probed"].as_object().is_some_and(|m| !m.is_empty())
        });
        let np = coverage_of(&stats, pid)["not_probed"].clone();
        let (what, reason) = np.as_object().unwrap().iter().next().unwrap();
        assert!(what.starts_with("java: ") && what.ends_with("/libjvm.so"), "{np}");
        let reason = reason.as_str().unwrap();
        assert!(reason.contains(flag) && reason.contains(how), "{reason}");
        assert_eq!(log_lines(&env.agent, "JVM not attached", pid).len(), 1, "one log line per JVM");
        assert!(j.alive(), "the JVM keeps running");
        let (out, stderr) = j.go();
        expect_proto(&out, "h2");
        // No SIGQUIT reached it: HotSpot would have printed a thread dump.
        assert!(!stderr.contains("Full thread dump"), "{stderr}");
        let stats = env.agent.wait_process_done(pid);
        assert!(env.agent.records_of(&[pid]).is_empty(), "not attached: nothing captured");
        assert!(coverage_of(&stats, pid)["records"].as_object().is_none_or(|m| m.is_empty()));
        // Its LLM connection is a blind spot, with the reason.
        let stats = env.agent.wait_stats("the JVM's connection listed as not read", |s| {
            blind_spots_of(s, &[pid.into()]).iter().any(|e| e["exited"] == true)
        });
        let spots = blind_spots_of(&stats, &[pid.into()]);
        assert_eq!(spots.len(), 1, "{spots:?}");
        assert_eq!(
            (spots[0]["reason"].as_str(), spots[0]["connections"].as_u64()),
            (Some("tls_library_not_probed"), Some(1))
        );
        assert!(spots[0].to_string().contains(flag), "{}", spots[0]);
    }
    let stats = env.finish();
    assert_eq!(stats["jvms_not_attached"], n, "{stats}");
    assert_eq!(stats["jvms_attached"], 0, "{stats}");
}

#[test]
fn no_java_attach_leaves_every_jvm_alone_and_says_so() {
    let _g = serial();
    let env = Env::start("java-off", Transport::H2, &["--no-java-attach"]);
    let mut j = Jvm::start(client(&env.dir, &env.certs, &env.openai_base(), "h1", &[]));
    let pid = j.pid();
    let stats = env.agent.wait_stats("the JVM listed as not probed", |s| {
        coverage_of(s, pid)["not_probed"].as_object().is_some_and(|m| !m.is_empty())
    });
    let np = coverage_of(&stats, pid)["not_probed"].to_string();
    assert!(np.contains("--no-java-attach"), "{np}");
    assert!(j.alive());
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(!maps.contains("tokentap"), "nothing loaded into the JVM");
    let (out, _) = j.go();
    expect_proto(&out, "h1");
    env.agent.wait_process_done(pid);
    assert!(env.agent.records_of(&[pid]).is_empty());
    let stats = env.finish();
    assert_eq!(stats["jvms_not_attached"], 1, "{stats}");
}

#[test]
fn a_jvm_whose_tmp_is_noexec_is_listed_not_signalled_and_keeps_working() {
    let _g = serial();
    let env = Env::start("java-noexec", Transport::H2, &[]);
    // Its own mount namespace, where /tmp (the host's files, so its paths
    // still resolve) is mounted noexec: a library placed there cannot load.
    let hosts = env.dir.join("hosts");
    std::fs::write(&hosts, format!("127.0.0.1 localhost {}\n", PROVIDER_HOSTS.join(" "))).unwrap();
    let script = "set -e\nmount --bind \"$0\" /etc/hosts\nmount --bind /tmp /tmp\n\
                  mount -o remount,bind,noexec /tmp\nexec \"$@\"\n";
    let args = client_args(&[], &client_classes(), &env.openai_base(), &env.certs.ca, "h2", CALLS);
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", script]).arg(&hosts).arg("java").args(&args);
    let mut j = Jvm::start(cmd);
    let pid = j.pid();
    let stats = env.agent.wait_stats("the JVM listed as not probed", |s| {
        coverage_of(s, pid)["not_probed"].as_object().is_some_and(|m| !m.is_empty())
    });
    let np = coverage_of(&stats, pid)["not_probed"].to_string();
    assert!(np.contains("the JVM's /tmp is mounted noexec"), "{np}");
    assert_eq!(log_lines(&env.agent, "JVM not attached", pid).len(), 1, "one log line per JVM");
    assert!(j.alive(), "the JVM keeps running");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(!maps.contains("tokentap"), "nothing loaded into the JVM");
    let (out, stderr) = j.go();
    expect_proto(&out, "h2");
    assert!(!stderr.contains("Full thread dump"), "never signalled: {stderr}");
    env.agent.wait_process_done(pid);
    assert!(env.agent.records_of(&[pid]).is_empty(), "not attached: nothing captured");
    let stats = env.finish();
    assert_eq!((stats["jvms_not_attached"].as_u64(), stats["jvms_attached"].as_u64()), (Some(1), Some(0)), "{stats}");
}

#[test]
fn a_process_posing_as_a_jvm_that_never_accepts_holds_up_neither_other_jvms_nor_the_exit() {
    let _g = serial();
    require_tool("python3");
    let mut env = Env::start("java-fake", Transport::H2, &[]);
    // Maps a file named libjvm.so, catches SIGQUIT, keeps its attach socket's
    // queue full (tests/clients/java/fake/fake_jvm.py).
    let fake_dir = env.dir.join("fake");
    std::fs::create_dir_all(&fake_dir).unwrap();
    std::fs::copy("/bin/true", fake_dir.join("libjvm.so")).unwrap();
    let script = workspace_root().join("tests/clients/java/fake/fake_jvm.py");
    let mut fake = Command::new("python3")
        .arg(&script)
        .arg(fake_dir.join("libjvm.so"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let fake_pid = fake.id();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(fake.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // Once the agent has tried the fake (no perf data: at 3 s of age) and
    // failed, a real JVM.
    env.agent.wait_stats("the fake tried once", |s| s["jvm_attach_retries"].as_u64() >= Some(1));
    let j = Jvm::start(client(&env.dir, &env.certs, &env.openai_base(), "h2", &[]));
    let pid = j.pid();
    let attached = wait_jvm_attached(&env.agent, pid);
    assert!(attached.contains("ok probed"), "{attached}");
    let (out, _) = j.go();
    expect_proto(&out, "h2");
    assert_captured(&env.agent, &env.server, pid, "2");
    // The fake: tried again (transient), then listed with the reason.
    let stats = env.agent.wait_stats("the fake listed as not probed", |s| {
        coverage_of(s, fake_pid)["not_probed"].as_object().is_some_and(|m| !m.is_empty())
    });
    let np = coverage_of(&stats, fake_pid)["not_probed"].to_string();
    assert!(np.contains("accepted no connection") && np.contains("tried 4 times"), "{np}");
    assert_eq!(stats["jvm_attach_retries"], 3, "{stats}");
    let started = std::time::Instant::now();
    assert!(env.agent.stop().success());
    assert!(started.elapsed() < Duration::from_secs(10), "exit took {:?}", started.elapsed());
    drop(fake.stdin.take());
    let _ = fake.wait();
}
