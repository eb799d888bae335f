#!/usr/bin/env python3
"""Validate WebhookIntegration documents against the CRD's openAPIV3Schema.

kubernetes-validate checks built-in kinds and CRD objects but only warns on custom
resources, so example integrations would pass it however wrong they are. This script
checks each one against the schema the API server would use, translated to JSON Schema:

* `nullable: true` becomes a `null` alternative of the type;
* objects with declared properties reject unknown fields (as `kubectl apply` does with its
  default strict field validation), unless `x-kubernetes-preserve-unknown-fields`;
* `x-kubernetes-validations` (CEL rules) are evaluated with cel-python after the schema's
  defaults are applied, as the API server does. Kubernetes adds CEL libraries of its own;
  of those only isCIDR is provided here. A rule that needs another one (or oldSelf, which
  only exists on update) is reported as not evaluated, never as passed.

Usage: validate-examples.py --crd CRD.yaml PATH...   (files or directories of *.yaml)
Exit 0 when every WebhookIntegration is valid, 1 when any is not, 2 on usage errors.
With --expect-invalid the opposite: every WebhookIntegration must be rejected, with an
error containing its annotation test.hookwarden.dev/expect (the check's own test).
Documents of other kinds are counted and left to kubernetes-validate.
"""

import argparse
import copy
import pathlib
import re
import sys

import ipaddress

import celpy
import jsonschema
import yaml
from celpy import celtypes

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


def _is_cidr(value):
    """Kubernetes' isCIDR(): an IPv4 or IPv6 prefix in CIDR notation."""
    text = str(value)
    if "/" not in text:
        return celtypes.BoolType(False)
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


CEL_FUNCTIONS = {"isCIDR": _is_cidr}
CEL_ENV = celpy.Environment()
_programs = {}


def _program(rule):
    if rule not in _programs:
        _programs[rule] = CEL_ENV.program(CEL_ENV.compile(rule), functions=CEL_FUNCTIONS)
    return _programs[rule]


def apply_defaults(schema, value):
    """Fill absent object properties from `default`, recursively (structural defaulting)."""
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                apply_defaults(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and not schema.get("properties"):
            for v in value.values():
                apply_defaults(extra, v)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for v in value:
            apply_defaults(schema["items"], v)


def check_cel(schema, value, path, errors, unevaluated):
    """Evaluate every x-kubernetes-validations rule whose field is present in value."""
    if value is None:
        return
    where = "/".join(str(p) for p in path) or "(root)"
    for rule in schema.get("x-kubernetes-validations") or []:
        text = rule["rule"]
        if "oldSelf" in text:
            unevaluated.append(f"{where}: {text} (transition rule: update only)")
            continue
        try:
            result = _program(text).evaluate({"self": celpy.json_to_cel(value)})
        except Exception as e:  # celpy raises its own types for unknown functions
            unevaluated.append(f"{where}: {text} ({type(e).__name__}: {e})")
            continue
        if isinstance(result, celpy.CELEvalError):
            if "no such" in str(result) and "overload" not in str(result):
                errors.append(f"{where}: CEL rule {text!r} could not be evaluated: {result}")
            else:
                unevaluated.append(f"{where}: {text} ({result})")
        elif result is not celtypes.BoolType(True) and result != celtypes.BoolType(True):
            field = rule.get("fieldPath", "")
            errors.append(f"{where}{field and ' ' + field}: {rule.get('message', text)} (CEL: {text})")
    if isinstance(value, dict):
        props = schema.get("properties")
        if props:
            for key, sub in props.items():
                if key in value:
                    check_cel(sub, value[key], path + [key], errors, unevaluated)
        elif isinstance(schema.get("additionalProperties"), dict):
            for key, v in value.items():
                check_cel(schema["additionalProperties"], v, path + [key], errors, unevaluated)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            check_cel(schema["items"], v, path + [i], errors, unevaluated)


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
        schemas[f"{group}/{version['name']}"] = (to_json_schema(root), root)
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
    parser.add_argument("--expect-invalid", action="store_true",
                        help="every document must be rejected for the reason in its test.hookwarden.dev/expect annotation")
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args()
    try:
        group, kind, schemas = load_crd(args.crd)
        files = list(yaml_files(args.paths))
    except (OSError, KeyError, yaml.YAMLError) as e:
        print(f"validate-examples: {e}", file=sys.stderr)
        return 2

    checked = failed = others = 0
    unevaluated = []
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
            schema, raw = schemas.get(api_version, (None, None))
            if schema is None:
                errors.append(f"apiVersion {api_version} is not served by the CRD (served: {', '.join(sorted(schemas))})")
            else:
                validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
                for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
                    location = "/".join(str(p) for p in err.absolute_path) or "(root)"
                    errors.append(f"{location}: {err.message}")
                if not errors:
                    defaulted = copy.deepcopy(doc)
                    apply_defaults(raw, defaulted)
                    check_cel(raw, defaulted, [], errors, unevaluated)
            if not isinstance(name, str) or not DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
                errors.append(f"metadata.name {name!r} is not a DNS-1123 subdomain")
            if args.expect_invalid:
                expect = ((doc.get("metadata") or {}).get("annotations") or {}).get("test.hookwarden.dev/expect", "")
                if not expect:
                    failed += 1
                    print(f"FAIL {where}: no test.hookwarden.dev/expect annotation")
                elif any(expect in e for e in errors):
                    print(f"ok   {where}: rejected ({expect})")
                else:
                    failed += 1
                    print(f"FAIL {where}: expected an error containing {expect!r}, got {errors or 'none'}")
            elif errors:
                failed += 1
                print(f"FAIL {where}")
                for e in errors:
                    print(f"     {e}")
            else:
                print(f"ok   {where}")

    for u in sorted(set(unevaluated)):
        print(f"     CEL rule not evaluated here: {u}")
    print(f"validate-examples: {checked} {kind} document(s) checked against {args.crd} "
          f"(schema and CEL rules), {failed} {'not rejected as expected' if args.expect_invalid else 'invalid'}, {others} other document(s) left to "
          f"kubernetes-validate, {len(set(unevaluated))} CEL rule(s) not evaluated")
    if checked == 0:
        print(f"validate-examples: no {kind} found in {' '.join(args.paths)}", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
