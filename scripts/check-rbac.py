#!/usr/bin/env python3
"""Check that each component's pods get exactly the permissions it needs from the chart.

Follows the rendered chain workload -> ServiceAccount -> (Cluster)RoleBinding ->
(Cluster)Role and compares the effective grants with the table below, in both
directions: a missing grant breaks the component, an extra one widens what a stolen
token can do. Change the table only together with the code that needs the change.

Usage: check-rbac.py RENDERED.yaml      Exit 0 when both match, 1 otherwise.
"""

import sys

import yaml

# (scope, apiGroup, resource, resourceName, verbs). scope: "cluster" (ClusterRole via
# ClusterRoleBinding) or "namespace" (Role in the release namespace).
EXPECTED = {
    "controller": [
        ("cluster", "hookwarden.dev", "webhookintegrations", "", "get list watch patch update"),
        ("cluster", "hookwarden.dev", "webhookintegrations/status", "", "patch update"),
        ("cluster", "hookwarden.dev", "webhookintegrations/finalizers", "", "patch update"),
        ("cluster", "", "secrets", "", "get list watch create patch"),
        ("namespace", "", "secrets", "", "update delete"),
        ("cluster", "", "events", "", "create patch"),
        ("cluster", "events.k8s.io", "events", "", "create patch"),
        ("namespace", "coordination.k8s.io", "leases", "", "create"),
        ("namespace", "coordination.k8s.io", "leases", "hookwarden-controller", "get update patch"),
    ],
    "receiver": [
        ("namespace", "", "secrets", "", "get list watch"),
        ("cluster", "hookwarden.dev", "webhookintegrations/status", "", "get patch"),
        ("cluster", "", "events", "", "create patch"),
        ("cluster", "events.k8s.io", "events", "", "create patch"),
    ],
}


def expand(table):
    return {
        (scope, group, resource, name, verb)
        for scope, group, resource, name, verbs in table
        for verb in verbs.split()
    }


def grants(rules, scope):
    out = set()
    for rule in rules or []:
        if rule.get("nonResourceURLs"):
            out.add((scope, "<nonResourceURLs>", ",".join(rule["nonResourceURLs"]), "", ",".join(rule.get("verbs", []))))
            continue
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    for name in rule.get("resourceNames") or [""]:
                        out.add((scope, group, resource, name, verb))
    return out


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]

    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)

    accounts = {}
    for d in by_kind.get("Deployment", []) + by_kind.get("StatefulSet", []):
        component = d["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        if component in EXPECTED:
            accounts[component] = (d["metadata"]["namespace"], d["spec"]["template"]["spec"]["serviceAccountName"])

    roles = {("Role", r["metadata"]["namespace"], r["metadata"]["name"]): r for r in by_kind.get("Role", [])}
    roles.update({("ClusterRole", "", r["metadata"]["name"]): r for r in by_kind.get("ClusterRole", [])})

    failed = False
    for component, table in EXPECTED.items():
        if component not in accounts:
            print(f"FAIL {component}: no Deployment/StatefulSet with app.kubernetes.io/component={component}")
            failed = True
            continue
        namespace, account = accounts[component]
        have = set()
        for binding in by_kind.get("RoleBinding", []) + by_kind.get("ClusterRoleBinding", []):
            subjects = binding.get("subjects") or []
            if not any(s.get("kind") == "ServiceAccount" and s.get("name") == account
                       and s.get("namespace") == namespace for s in subjects):
                continue
            ref = binding["roleRef"]
            if binding["kind"] == "RoleBinding" and ref["kind"] == "Role":
                key, scope = ("Role", binding["metadata"]["namespace"], ref["name"]), "namespace"
            elif binding["kind"] == "RoleBinding":
                key, scope = ("ClusterRole", "", ref["name"]), "namespace"
            else:
                key, scope = ("ClusterRole", "", ref["name"]), "cluster"
            role = roles.get(key)
            if role is None:
                print(f"FAIL {component}: {binding['kind']}/{binding['metadata']['name']} refers to missing {key[0]}/{key[2]}")
                failed = True
                continue
            have |= grants(role.get("rules"), scope)
        want = expand(table)
        missing, extra = sorted(want - have), sorted(have - want)
        if missing or extra:
            failed = True
            print(f"FAIL {component} (ServiceAccount {namespace}/{account})")
            for g in missing:
                print(f"     missing: {g}")
            for g in extra:
                print(f"     extra:   {g}")
        else:
            print(f"ok   {component} (ServiceAccount {namespace}/{account}): {len(want)} grants, exactly as needed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
