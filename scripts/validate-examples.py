#!/usr/bin/env python3
"""Validate WebhookIntegration documents against the CRD's openAPIV3Schema.

kubernetes-validate checks built-in kinds and CRD objects but only warns on custom
resources, so example integrations would pass it however wrong they are. This script
checks each one against the schema the API server would use, translated to JSON Schema:

* `nullable: true` becomes a `null` alternative of the type;
* objects with declared properties reject unknown fields (as `kubectl apply` does with its
  default strict field validation), unless `x-kubernetes-preserve-unknown-fields`;
* `x-kubernetes-validations` (CEL rules) are NOT checked: Python has no evaluator for
  Kubernetes' CEL libraries (isCIDR and friends). The API server checks them on apply.

Usage: validate-examples.py --crd CRD.yaml PATH...   (files or directories of *.yaml)
Exit 0 when every WebhookIntegration is valid, 1 when any is not, 2 on usage errors.
Documents of other kinds are counted and left to kubernetes-validate.
"""

import argparse
import copy
import pathlib
import re
import sys

import jsonschema
import yaml

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def to_json_schema(node):
    """Translate a Kubernetes structural schema node into plain JSON Schema."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def load_crd(path):
    with open(path, encoding="utf-8") as f:
        crd = yaml.safe_load(f)
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    schemas = {}
    for version in spec["versions"]:
        if not version.get("served", False):
            continue
        root = copy.deepcopy(version["schema"]["openAPIV3Schema"])
        # The API server adds these to every object; the generated schema leaves them out.
        root.setdefault("properties", {})
        root["properties"]["apiVersion"] = {"type": "string"}
        root["properties"]["kind"] = {"type": "string"}
        root["properties"]["metadata"] = {"type": "object"}
        root.setdefault("required", [])
        root["required"] = sorted(set(root["required"]) | {"apiVersion", "kind", "metadata"})
        schemas[f"{group}/{version['name']}"] = to_json_schema(root)
    return group, kind, schemas


def yaml_files(paths):
    for p in map(pathlib.Path, paths):
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*") if q.suffix in (".yaml", ".yml"))
        elif p.exists():
            yield p
        else:
            raise FileNotFoundError(p)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crd", required=True)
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args()
    try:
        group, kind, schemas = load_crd(args.crd)
        files = list(yaml_files(args.paths))
    except (OSError, KeyError, yaml.YAMLError) as e:
        print(f"validate-examples: {e}", file=sys.stderr)
        return 2

    checked = failed = others = 0
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                docs = [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            print(f"FAIL {path}: not YAML: {e}")
            failed += 1
            continue
        for index, doc in enumerate(docs):
            api_version = doc.get("apiVersion", "") if isinstance(doc, dict) else ""
            if not (isinstance(doc, dict) and doc.get("kind") == kind and api_version.startswith(group + "/")):
                others += 1
                continue
            checked += 1
            name = (doc.get("metadata") or {}).get("name", "<no name>")
            where = f"{path} #{index} {kind}/{name}"
            errors = []
            schema = schemas.get(api_version)
            if schema is None:
                errors.append(f"apiVersion {api_version} is not served by the CRD (served: {', '.join(sorted(schemas))})")
            else:
                validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
                for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
                    location = "/".join(str(p) for p in err.absolute_path) or "(root)"
                    errors.append(f"{location}: {err.message}")
            if not isinstance(name, str) or not DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
                errors.append(f"metadata.name {name!r} is not a DNS-1123 subdomain")
            if errors:
                failed += 1
                print(f"FAIL {where}")
                for e in errors:
                    print(f"     {e}")
            else:
                print(f"ok   {where}")

    print(f"validate-examples: {checked} {kind} document(s) checked against {args.crd}, "
          f"{failed} invalid, {others} other document(s) left to kubernetes-validate; "
          f"CEL rules (x-kubernetes-validations) not evaluated")
    if checked == 0:
        print(f"validate-examples: no {kind} found in {' '.join(args.paths)}", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
