//! Container id from a cgroup path, for the runtimes' usual layouts:
//! docker (`/docker/<id>`, `docker-<id>.scope`), containerd (`cri-containerd-<id>.scope`,
//! kubepods `/kubepods/.../<id>`), CRI-O (`crio-<id>.scope`), podman (`libpod-<id>.scope`).

/// The container id in `/proc/PID/cgroup` text (v2 `0::` line first, then v1 lines).
pub fn container_id_from_proc_cgroup(text: &str) -> Option<String> {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_by_key(|l| !l.starts_with("0::"));
    lines.iter().find_map(|l| container_id_from_path(l.splitn(3, ':').nth(2)?))
}

/// The last path component that holds a 64-hex-digit id.
pub fn container_id_from_path(path: &str) -> Option<String> {
    path.rsplit('/').find_map(|seg| {
        let seg = seg.strip_suffix(".scope").unwrap_or(seg);
        let id = seg.rsplit(['-', ':']).next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c0b1d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4";

    #[test]
    fn runtime_layouts() {
        for p in [
            format!("/docker/{ID}"),
            format!("/system.slice/docker-{ID}.scope"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{ID}.scope"
            ),
            format!("/kubepods/besteffort/pod1234/{ID}"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope"),
            format!("/system.slice/containerd.service/kubepods-pod1.slice:cri-containerd:{ID}"),
        ] {
            assert_eq!(container_id_from_path(&p).as_deref(), Some(ID), "{p}");
        }
        assert_eq!(container_id_from_path("/user.slice/user-0.slice/session-1.scope"), None);
        assert_eq!(container_id_from_path("/"), None);
    }

    #[test]
    fn proc_cgroup_text() {
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(container_id_from_proc_cgroup(&v2).as_deref(), Some(ID));
        let v1 = format!("12:cpu,cpuacct:/docker/{ID}\n11:memory:/docker/{ID}\n0::/\n");
        assert_eq!(container_id_from_proc_cgroup(&v1).as_deref(), Some(ID));
        assert_eq!(container_id_from_proc_cgroup("0::/init.scope\n"), None);
        // Read from an agent with a cgroup namespace of its own: relative to its root.
        let rel = format!("0::/../../kubepods-besteffort-pod1.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(container_id_from_proc_cgroup(&rel).as_deref(), Some(ID));
        assert_eq!(container_id_from_proc_cgroup("0::/../..\n"), None);
        assert_eq!(container_id_from_proc_cgroup("garbage"), None);
    }
}
