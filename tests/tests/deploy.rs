//! The Helm chart and the plain manifests validate offline: rendered with the
//! chart's values they equal deploy/manifests/tokentap.yaml, every object is
//! valid for Kubernetes (kubernetes-validate), the agent is not privileged and
//! holds only its documented capabilities, RBAC is read-only.
use std::process::Command;

use tokentap_e2e::{require_tool, workspace_root};

#[test]
fn chart_and_manifests_validate() {
    require_tool("python3");
    let out =
        Command::new("python3").arg(workspace_root().join("tests/deploy/validate.py")).output().expect("validate.py");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{text}\n(kubernetes-validate is installed by `cargo xtask test`; see tests/clients/requirements.txt)"
    );
    assert!(text.contains("14 objects valid"), "{text}");
}
