#!/usr/bin/env python3
"""Render the chart's values table (Markdown) from the `# --` comments in values.yaml.

Every documented key becomes a row: dotted name, default (compact JSON), description.
With --check FILE..., instead verify that each file holding the markers
`<!-- values-table:start -->` / `<!-- values-table:end -->` has the current table
between them, and that at least one file has them; exit 1 otherwise.
With --write FILE, replace the table between the markers in FILE.
"""

import argparse
import json
import re
import sys

import yaml

START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"
KEY = re.compile(r"^(\s*)([A-Za-z0-9_]+):(.*)$")


def rows(values_path):
    with open(values_path, encoding="utf-8") as f:
        text = f.read()
    data = yaml.safe_load(text)
    out, stack, pending = [], [], []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and pending:
            pending.append(stripped.lstrip("#").strip())
            continue
        m = KEY.match(line)
        if not m:
            if stripped:
                pending = []
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        if pending:
            path = [k for _, k in stack]
            value = data
            for k in path:
                value = value[k]
            out.append((".".join(path), json.dumps(value, separators=(", ", ": ")), " ".join(pending)))
            pending = []
    return out


def undocumented(values_path):
    """Leaf keys with neither their own `# --` comment nor a documented ancestor."""
    with open(values_path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    documented = {key for key, _, _ in rows(values_path)}
    missing = []

    def walk(node, path):
        name = ".".join(path)
        if path and name in documented:
            return
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, path + [k])
        else:
            missing.append(name)

    walk(data, [])
    return missing


def table(values_path):
    lines = ["| Key | Default | Description |", "|---|---|---|"]
    for key, default, desc in rows(values_path):
        default = default.replace("|", "\\|")
        desc = desc.replace("|", "\\|")
        lines.append(f"| `{key}` | `{default}` | {desc} |")
    return "\n".join(lines) + "\n"


def splice(doc, tbl):
    start, end = doc.index(START) + len(START), doc.index(END)
    return doc[:start] + "\n" + tbl + doc[end:]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--values", default="charts/hookwarden/values.yaml")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--check", nargs="+", metavar="FILE")
    g.add_argument("--write", metavar="FILE")
    a = p.parse_args()
    tbl = table(a.values)
    if a.write:
        with open(a.write, encoding="utf-8") as f:
            doc = f.read()
        with open(a.write, "w", encoding="utf-8") as f:
            f.write(splice(doc, tbl))
        return 0
    if a.check:
        missing = undocumented(a.values)
        for key in missing:
            print(f"{a.values}: {key} has no '# --' description", file=sys.stderr)
        found, stale = [], []
        for path in a.check:
            try:
                with open(path, encoding="utf-8") as f:
                    doc = f.read()
            except OSError:
                continue
            if START in doc and END in doc:
                found.append(path)
                if splice(doc, tbl) != doc:
                    stale.append(path)
        if not found:
            print(f"no file among {' '.join(a.check)} has the values table markers", file=sys.stderr)
            return 1
        for path in stale:
            print(f"{path}: values table is stale; run: scripts/values-table.py --write {path}", file=sys.stderr)
        if not stale:
            print(f"values table current in {', '.join(found)} ({len(rows(a.values))} keys)")
        return 1 if stale or missing else 0
    sys.stdout.write(tbl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
