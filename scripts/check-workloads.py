#!/usr/bin/env python3
"""Check the hardening every rendered hookwarden workload must keep.

The restricted Pod Security Standard plus what the chart promises: non-root, read-only
root filesystem, no privilege escalation, all capabilities dropped, seccomp
RuntimeDefault, resource requests, liveness on /healthz and readiness on /readyz, and the
receiver's journal on a volume (emptyDir or a claim template). A values change that
loosens any of these fails here rather than in a cluster's admission controller.

Usage: check-workloads.py RENDERED.yaml     Exit 0 when all hold, 1 otherwise.
"""

import sys

import yaml


def effective(pod_ctx, ctr_ctx, key):
    """A container setting wins over the pod's, as in the kubelet."""
    if key in (ctr_ctx or {}):
        return ctr_ctx[key]
    return (pod_ctx or {}).get(key)


def check_workload(doc):
    problems = []
    kind, name = doc["kind"], doc["metadata"]["name"]
    component = doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")
    pod = doc["spec"]["template"]["spec"]
    psc = pod.get("securityContext") or {}
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        problems.append("uses host namespaces")
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        csc = c.get("securityContext") or {}
        where = f"container {c['name']}"
        if effective(psc, csc, "runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if effective(psc, csc, "runAsUser") in (0, None):
            problems.append(f"{where}: runAsUser is root or unset")
        if csc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if csc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if csc.get("privileged"):
            problems.append(f"{where}: privileged")
        caps = csc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []) or caps.get("add"):
            problems.append(f"{where}: capabilities must drop ALL and add none")
        seccomp = (effective(psc, csc, "seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile is {seccomp!r}, not RuntimeDefault")
        requests = (c.get("resources") or {}).get("requests") or {}
        if "cpu" not in requests or "memory" not in requests:
            problems.append(f"{where}: no cpu and memory requests")
        if "memory" not in ((c.get("resources") or {}).get("limits") or {}):
            problems.append(f"{where}: no memory limit")
        live = ((c.get("livenessProbe") or {}).get("httpGet") or {}).get("path")
        ready = ((c.get("readinessProbe") or {}).get("httpGet") or {}).get("path")
        if live != "/healthz":
            problems.append(f"{where}: liveness probe path is {live!r}, not /healthz")
        if ready != "/readyz":
            problems.append(f"{where}: readiness probe path is {ready!r}, not /readyz")
        if component == "receiver":
            mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
            volumes = {v["name"] for v in pod.get("volumes", [])}
            claims = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
            if "journal" not in mounts:
                problems.append(f"{where}: journal volume not mounted")
            elif "journal" not in volumes | claims:
                problems.append(f"{where}: journal volume has no source")
            args = c.get("args", [])
            if f"--journal-dir={mounts.get('journal')}" not in args:
                problems.append(f"{where}: --journal-dir does not point at the journal mount")
    if pod.get("terminationGracePeriodSeconds") is None:
        problems.append("terminationGracePeriodSeconds unset")
    return kind, name, problems


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
    workloads = [d for d in docs if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet")]
    if not workloads:
        print("FAIL no workloads rendered")
        return 1
    failed = False
    for doc in workloads:
        kind, name, problems = check_workload(doc)
        if problems:
            failed = True
            print(f"FAIL {kind}/{name}")
            for p in problems:
                print(f"     {p}")
        else:
            print(f"ok   {kind}/{name}: hardened, probed, resourced")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
