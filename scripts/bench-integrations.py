#!/usr/bin/env python3
"""Writes a standalone folder of N GitHub integrations for the start-up memory bench
(docs/bench.md, "Start-up: 10,000 integrations"): one Secret and N WebhookIntegrations
referencing it, all in DIR/all.yaml.

    scripts/bench-integrations.py 10000 /tmp/hw-10k
    hookwarden standalone --dir /tmp/hw-10k --listen 127.0.0.1:0
"""
import os
import sys


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    count, folder = int(sys.argv[1]), sys.argv[2]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "all.yaml"), "w", encoding="utf-8") as out:
        out.write(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: github-shared\n"
            "stringData:\n  secret: bench-shared-secret-0123456789abcdef\n"
        )
        for i in range(count):
            out.write(
                "---\napiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\n"
                f"metadata:\n  name: repo-{i:05d}\n"
                "spec:\n  provider: github\n"
                "  secretRef:\n    name: github-shared\n    key: secret\n"
                "  events:\n    exclude: [ping]\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
