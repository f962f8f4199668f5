#!/usr/bin/env python3
"""Offline validation of the Helm chart and the plain manifests.

Renders deploy/helm/tokentap with its values.yaml (the templates use plain
`{{ .Values.x.y }}` / `{{ .Release.Namespace }}` substitutions only, so this
renderer and `helm template` agree; `helm template` is also run when helm is on
PATH), checks the rendering equals deploy/manifests/tokentap.yaml (the plain
manifests), validates every object against the Kubernetes OpenAPI schemas with
kubernetes-validate, and checks the security properties the docs promise.

Usage: validate.py [--update]   (--update rewrites deploy/manifests/tokentap.yaml)
"""
import os
import re
import shutil
import subprocess
import sys

import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "deploy", "helm", "tokentap")
MANIFESTS = os.path.join(ROOT, "deploy", "manifests", "tokentap.yaml")
NAMESPACE = "tokentap"
K8S_VERSION = "1.30.0"


def render(override=None):
    values = yaml.safe_load(open(os.path.join(CHART, "values.yaml")))
    for path, value in (override or {}).items():
        *parents, last = path.split(".")
        node = values
        for part in parents:
            node = node[part]
        node[last] = value
    chart = yaml.safe_load(open(os.path.join(CHART, "Chart.yaml")))

    def lookup(path):
        v = {"Values": values, "Release": {"Namespace": NAMESPACE, "Name": "tokentap"}, "Chart": chart}
        for part in path.split("."):
            v = v[part]
        return str(v)

    out = []
    tdir = os.path.join(CHART, "templates")
    for name in sorted(os.listdir(tdir)):
        text = open(os.path.join(tdir, name)).read()
        left = re.findall(r"\{\{(?!\s*\.(Values|Release|Chart)\.[\w.]+\s*\}\})", text)
        if left:
            sys.exit(f"{name}: only plain substitutions are allowed in templates")
        text = re.sub(r"\{\{\s*\.((?:Values|Release|Chart)\.[\w.]+)\s*\}\}", lambda m: lookup(m.group(1)), text)
        out.append(f"# Source: tokentap/templates/{name}\n" + text.strip() + "\n")
    return "---\n".join(out)


def values_budgets():
    return yaml.safe_load(open(os.path.join(CHART, "values.yaml")))["collector"]["budgets"]


def main():
    rendered = render()
    header = "# Generated from deploy/helm/tokentap with its default values, namespace tokentap.\n" \
             "# Regenerate: python3 tests/deploy/validate.py --update\n"
    if "--update" in sys.argv:
        open(MANIFESTS, "w").write(header + rendered)
    plain = open(MANIFESTS).read()
    if plain != header + rendered:
        sys.exit("deploy/manifests/tokentap.yaml is not the chart's rendering: run validate.py --update")
    docs = [d for d in yaml.safe_load_all(plain) if d]
    kinds = {}
    for d in docs:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        kinds[d["kind"]] = d
    for k in ["DaemonSet", "Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Secret",
              "NetworkPolicy", "ClusterRole", "ClusterRoleBinding", "ServiceAccount", "ResourceQuota"]:
        if k not in kinds:
            sys.exit(f"missing {k}")
    ds = kinds["DaemonSet"]["spec"]["template"]["spec"]
    sc = ds["containers"][0]["securityContext"]
    assert ds["hostPID"] is True
    # Upgrades hand over (docs/operations.md): a surge, the host's bpffs, the pin directory.
    rolling = kinds["DaemonSet"]["spec"]["updateStrategy"]["rollingUpdate"]
    assert rolling == {"maxSurge": 1, "maxUnavailable": 0}, rolling
    # A stopped agent's exit: the 20 s drain, the detach, the outputs' last sends.
    assert ds["terminationGracePeriodSeconds"] >= 45, ds["terminationGracePeriodSeconds"]
    bpffs = [v for v in ds["volumes"] if v.get("hostPath", {}).get("path") == "/sys/fs/bpf"]
    assert bpffs and any(m["mountPath"] == "/sys/fs/bpf" for m in ds["containers"][0]["volumeMounts"]), ds
    assert sc["privileged"] is False and sc["capabilities"]["drop"] == ["ALL"], sc
    # SETUID, SETGID: the Java attach, as each JVM's own user (tests/tests/e2e_java.rs);
    # DAC_READ_SEARCH: a cgroup opened by its id (tests/tests/e2e_attribution.rs).
    caps = ["BPF", "DAC_READ_SEARCH", "PERFMON", "SETGID", "SETUID", "SYS_ADMIN", "SYS_PTRACE"]
    assert sorted(sc["capabilities"]["add"]) == caps, sc
    # The host's cgroups, read-only, beside the container's own (a cgroup namespace of its own).
    cgroup = [v["name"] for v in ds["volumes"] if v.get("hostPath", {}).get("path") == "/sys/fs/cgroup"]
    mounts = ds["containers"][0]["volumeMounts"]
    assert cgroup and {"name": cgroup[0], "mountPath": "/host/sys/fs/cgroup", "readOnly": True} in mounts, mounts
    # The collector's clients: the agents, and pods labelled as its clients in
    # any namespace (OTLP spans to /v1/traces, Prometheus): docs/operations.md.
    peers = kinds["NetworkPolicy"]["spec"]["ingress"][0]["from"]
    client = {"namespaceSelector": {}, "podSelector": {"matchLabels": {"tokentap.io/collector-client": "true"}}}
    assert peers == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "tokentap-agent"}}}, client], peers
    # The pods' priority class has a quota in the namespace (GKE admits system-node-critical
    # pods outside kube-system only where one exists).
    assert ds["priorityClassName"] == "system-node-critical"
    quota = kinds["ResourceQuota"]["spec"]
    assert quota["scopeSelector"]["matchExpressions"] == [
        {"operator": "In", "scopeName": "PriorityClass", "values": ["system-node-critical"]}], quota
    assert int(quota["hard"]["pods"]) >= 5000, quota
    col = kinds["Deployment"]["spec"]["template"]["spec"]
    assert col["securityContext"]["runAsNonRoot"] is True
    rules = kinds["ClusterRole"]["rules"]
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in rules), "RBAC is read-only"
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    agent_toml = next(d["data"]["agent.toml"] for d in config_maps.values() if "agent.toml" in d["data"])
    assert 'output = ["collector:http://tokentap-collector:8787", ""]' in agent_toml
    assert 'otlp_headers_file = "/etc/tokentap/otlp/headers"' in agent_toml
    assert 'handover_dir = "/sys/fs/bpf/tokentap"' in agent_toml
    secrets = [d for d in docs if d["kind"] == "Secret"]
    assert sorted(d["metadata"]["name"] for d in secrets) == ["tokentap-clickhouse", "tokentap-otlp", "tokentap-token"], secrets
    # The ClickHouse user and password (an empty password file: none).
    args = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--clickhouse-user=default" in args and "--clickhouse-password-file=/etc/tokentap/clickhouse/password" in args
    # Any character of a password stands as it is in the Secret.
    password = 'p"a\\s#s: w\'or{d}'
    secret = next(d for d in yaml.safe_load_all(render({"clickhouse.password": password}))
                  if d and d["kind"] == "Secret" and d["metadata"]["name"] == "tokentap-clickhouse")
    assert secret["stringData"]["password"] == password, secret
    # The collector reads its budgets from the ConfigMap (an empty list by default).
    budgets = config_maps["tokentap-budgets"]["data"]["budgets.toml"]
    assert budgets.strip() == values_budgets(), budgets
    assert "--budgets=/etc/tokentap/budgets/budgets.toml" in col["containers"][0]["args"]
    if shutil.which("helm"):
        h = subprocess.run(["helm", "template", "tokentap", CHART, "--namespace", NAMESPACE],
                           capture_output=True, text=True, check=True).stdout
        hd = [d for d in yaml.safe_load_all(h) if d]
        if hd != docs:
            sys.exit("helm template disagrees with the offline rendering")
    print(f"ok: {len(docs)} objects valid for Kubernetes {K8S_VERSION}")


if __name__ == "__main__":
    main()
