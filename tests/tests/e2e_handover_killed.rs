//! An agent that does not leave gracefully: killed, its connections go to
//! its successor at once; hung and then killed, what its probes copied into
//! its pinned ring buffer and it never read is recorded by the agent after it.
use std::time::Duration;

use tokentap_e2e::upgrade::*;
use tokentap_e2e::*;

/// The old agent is killed (an OOM kill, a node drain gone wrong) while the
/// new one runs: the kernel sees it die and its connections go to the new
/// agent at their next call. A keep-alive HTTP/1.1 connection loses at most
/// the call in flight; an HTTP/2 one, with no state handed on, is joined
/// midway and counted.
#[test]
fn a_killed_agent_s_connections_go_to_its_successor_at_once() {
    let _g = serial();
    require_root();
    let Upgrade { dir, certs, server, fs, first: first_dir, second: second_dir } =
        Upgrade::new("handover-kill", Transport::Https);
    std::fs::create_dir_all(dir.join("h2")).unwrap();
    let h2 = Server::start_with(&dir.join("h2"), &certs, Transport::H2);
    let flag = fs.flag();
    let flag = [flag.as_str()];
    let mut first = Agent::start(&first_dir, &flag);
    let workload = |name: &str, port: u16, work: &[serde_json::Value], http2: bool| {
        let base = format!("https://api.openai.com:{port}/v1");
        let mut c = py_workload(&dir, &certs, &base, name, work);
        if http2 {
            c.arg("--http2");
        }
        spawn(c)
    };
    let (kept, multiplexed) = (calls(600, 0, 0.008, false), calls(150, 10_000, 0.02, false));
    let (a, b) = (workload("kept", server.port, &kept, false), workload("h2", h2.port, &multiplexed, true));
    let (pa, pb) = (a.id(), b.id());
    first.wait_records(&[pa], 20);
    first.wait_records(&[pb], 5);
    let mut second = Agent::start(&second_dir, &flag);
    first.kill();
    [a, b].into_iter().for_each(finish);
    second.wait_process_done(pa);
    second.wait_process_done(pb);
    assert!(second.stop().success());
    let prices = tokentap_event::PriceTable::shipped();
    let mut recorded = Vec::new();
    for (pid, srv) in [(pa, &server), (pb, &h2)] {
        let all: Vec<serde_json::Value> =
            first.records_of(&[pid]).into_iter().chain(second.records_of(&[pid])).collect();
        let served = srv.served();
        for (r, s) in pair_with_served(&all, &served) {
            assert_matches_served(r, s, &prices);
        }
        recorded.push(all.len());
    }
    let new = second.stats();
    let n = |k: &str| new[k].as_u64().unwrap_or(0);
    eprintln!(
        "old agent killed: keep-alive HTTP/1.1 {} of {}, HTTP/2 {} of {} recorded; the new agent took {} \
         connections from it, states missing {}, HTTP/2 joined midway {}",
        recorded[0],
        kept.len(),
        recorded[1],
        multiplexed.len(),
        n("kernel_handover_from_exited"),
        n("handoff_states_missing"),
        n("ignored_http2_joined")
    );
    assert!(n("kernel_handover_from_exited") >= 2, "both connections taken from the killed agent: {new}");
    assert!(recorded[0] + 1 >= kept.len(), "HTTP/1.1 loses at most the call in flight at the kill");
    // Killed, it handed nothing on: the HTTP/2 connection is joined midway,
    // counted, and its later calls are not decoded (none recorded twice):
    // from the first of its records the killed agent left unread, or else
    // from the new agent's first, with no state.
    assert!(n("ignored_http2_joined") >= 1, "{new}");
    assert!(n("handoff_states_missing") + n("handover_orphan_records") >= 1, "{new}");
    assert!(recorded[1] < multiplexed.len());
}

#[test]
fn what_a_hung_agent_copied_and_never_read_is_recorded_by_the_agent_after_it_once_it_is_killed() {
    let _g = serial();
    require_root();
    let Upgrade { dir, certs, server, fs, first: first_dir, second: second_dir } =
        Upgrade::new("handover-hung", Transport::Https);
    let flag = fs.flag();
    let flag = [flag.as_str()];
    let mut first = Agent::start(&first_dir, &flag);
    let kept = calls(500, 0, 0.008, false);
    let base = format!("https://api.openai.com:{}/v1", server.port);
    let client = spawn(py_workload(&dir, &certs, &base, "kept", &kept));
    let pid = client.id();
    first.wait_records(&[pid], 20);
    // The old agent's reader hangs (stopped): its probes go on copying each
    // call into its ring buffer, which nobody reads. A new agent starts and
    // the keep-alive connection moves to it at a request; then the hung
    // agent is killed (a liveness probe, a grace period run out).
    signal(first.pid(), libc::SIGSTOP);
    let hung_at = server.served().len();
    wait_for("calls made while the old agent hangs", Duration::from_secs(30), || {
        (server.served().len() >= hung_at + 60).then_some(())
    });
    let mut second = Agent::start(&second_dir, &flag);
    first.kill();
    finish(client);
    second.wait_process_done(pid);
    assert!(second.stop().success());
    let by_old = first.records_of(&[pid]);
    let all: Vec<serde_json::Value> = by_old.iter().cloned().chain(second.records_of(&[pid])).collect();
    let prices = tokentap_event::PriceTable::shipped();
    for (r, s) in pair_with_served(&all, &server.served()) {
        assert_matches_served(r, s, &prices);
    }
    let new = second.stats();
    let n = |k: &str| new[k].as_u64().unwrap_or(0);
    eprintln!(
        "hung, then killed: {} of {} calls recorded, {} by the old agent; the new one read {} records from {} ring \
         it left, joined midway {}",
        all.len(),
        kept.len(),
        by_old.len(),
        n("handover_orphan_records"),
        n("handover_orphan_rings"),
        n("joined_mid_stream")
    );
    // Each call made while it hung is two records (request, response) at least.
    assert_eq!(n("handover_orphan_rings"), 1, "{new}");
    assert!(n("handover_orphan_records") >= 120, "{new}");
    assert_eq!(n("handover_orphan_records_unreadable"), 0);
    // The hung agent may have held one call half read, and one pass's
    // records decoded and not yet written, when it stopped.
    assert!(all.len() + 2 >= kept.len(), "{} of {} recorded", all.len(), kept.len());
    // The last agent took every pin with it, the ring it read too.
    assert!(!fs.pins().exists(), "pins removed by the last agent");
}

/// Parts of handed-on states left in the pinned `CONN_STATES` map without
/// their first part: a writer killed midway, the kernel dropping a state's
/// first part alone when its connection ends before the agent that took it
/// copied a call, an agent of an earlier release that reads at most 1,024
/// parts of a larger state. The running agent, with no agent before it
/// still running, removes them when two of its looks 10 s apart found them
/// so; a state whole (its first part there, one an agent may still take)
/// stays.
#[test]
fn parts_of_a_state_left_without_their_first_part_are_removed() {
    let _g = serial();
    require_root();
    require_tool("bpftool");
    let dir = scratch("handover-tidy");
    let fs = BpfFs::mount(&dir);
    let mut agent = Agent::start(&dir, &[fs.flag().as_str()]);
    let map = fs.pins().join("CONN_STATES").display().to_string();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>();
    let key = |part: u32, conn: u64| [&4242u32.to_le_bytes()[..], &part.to_le_bytes(), &conn.to_le_bytes()].concat();
    let put = |k: Vec<u8>| {
        let value = [&8u32.to_le_bytes()[..], &[7; 1020]].concat();
        let mut args =
            vec!["map".to_owned(), "update".into(), "pinned".into(), map.clone(), "key".into(), "hex".into()];
        args.extend(hex(&k));
        args.extend(["value".into(), "hex".into()]);
        args.extend(hex(&value));
        let out = std::process::Command::new("bpftool").args(&args).output().expect("bpftool");
        assert!(out.status.success(), "bpftool map update: {}", String::from_utf8_lossy(&out.stderr));
    };
    // The keys in the map, as bytes.
    let keys = || {
        let out = std::process::Command::new("bpftool").args(["-j", "map", "dump", "pinned", &map]).output().unwrap();
        let entries: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool's JSON");
        let byte = |b: &serde_json::Value| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok();
        let mut keys: Vec<Vec<u8>> = entries
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| e["key"].as_array().expect("a key").iter().map(|b| byte(b).expect("a byte")).collect())
            .collect();
        keys.sort();
        keys
    };
    // A whole state of two parts (its first part written first here, so it
    // is never without it), and three parts of one whose first part is gone.
    put(key(0, 9));
    put(key(1, 9));
    for part in 1..=3 {
        put(key(part, 7));
    }
    let mut whole = vec![key(0, 9), key(1, 9)];
    whole.sort();
    let left = wait_for("the parts without their first part removed", Duration::from_secs(45), || {
        let k = keys();
        (k.len() <= whole.len()).then_some(k)
    });
    assert_eq!(left, whole, "the whole state stays");
    assert!(agent.stop().success());
}
