#!/usr/bin/env bash
# Checks what can be checked of the container image without a container runtime:
#   1. the Dockerfile's shape: multi-stage, distroless/static (or scratch) runtime,
#      numeric non-root USER, exec-form ENTRYPOINT, Rust version >= Cargo.toml rust-version;
#   2. the binary builds for the Dockerfile's target (x86_64-unknown-linux-musl) with the
#      same linker setup, is statically linked, runs, and prints the committed CRD.
# The image itself (base image pull, `docker build`) is not built here: no engine runs on
# this machine. Step 2 needs the Rust target and musl-gcc; when they cannot be installed
# (rustup's download or apt unavailable) it is skipped with the reason, in CI too, since
# neither comes from the project's package registries.
set -uo pipefail
cd "$(dirname "$0")/.."

failed=0
fail() { echo "FAILED: $*"; failed=1; }
ok() { echo "ok   $*"; }
skip() { echo "SKIPPED: $*"; }

arg() { sed -n "s/^ARG $1=\(.*\)$/\1/p" Dockerfile | head -n1; }
TARGET="$(arg RUST_TARGET)"
RUST_VERSION="$(arg RUST_VERSION)"

echo "--- Dockerfile"
[[ -n "$TARGET" ]] || fail "Dockerfile has no 'ARG RUST_TARGET=' default"
[[ -n "$RUST_VERSION" ]] || fail "Dockerfile has no 'ARG RUST_VERSION=' default"
[[ "$(grep -c '^FROM ' Dockerfile)" -ge 2 ]] && ok "multi-stage build" || fail "Dockerfile is not multi-stage"
final_from="$(grep '^FROM ' Dockerfile | tail -n1)"
if grep -Eq 'distroless/static|^FROM scratch' <<<"$final_from"; then ok "runtime base: ${final_from#FROM }"
else fail "runtime stage must be distroless/static or scratch (a static binary needs no more): $final_from"; fi
final_user="$(awk '/^FROM /{u=""} /^USER /{u=$2} END{print u}' Dockerfile)"
if [[ "$final_user" =~ ^[1-9][0-9]*(:[1-9][0-9]*)?$ ]]; then ok "runs as numeric non-root user $final_user"
else fail "the runtime stage needs a numeric non-root USER (runAsNonRoot), found '${final_user:-none}'"; fi
grep -q 'ln -s hookwarden /out/kubectl-hookwarden' Dockerfile && grep -q '^COPY --from=builder /out/ /usr/local/bin/' Dockerfile \
  && ok "ships kubectl-hookwarden (the kubectl plugin) beside hookwarden" \
  || fail "the image must ship the kubectl plugin: ln -s hookwarden /out/kubectl-hookwarden, COPY --from=builder /out/ /usr/local/bin/"
grep -Eq '^ENTRYPOINT \["' Dockerfile && ok "exec-form ENTRYPOINT (signals reach the binary)" \
  || fail "ENTRYPOINT must be exec form so SIGTERM reaches hookwarden (drain on shutdown)"
uid="${final_user%%:*}"
chart_uid="$(sed -n 's/^  runAsUser: \([0-9]*\)$/\1/p' charts/hookwarden/values.yaml | sort -u)"
[[ "$chart_uid" == "$uid" ]] && ok "chart runAsUser ($chart_uid) matches the image user" \
  || fail "chart runAsUser '$chart_uid' differs from the image USER '$uid'"
msrv="$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)"
if [[ -n "$msrv" && -n "$RUST_VERSION" ]]; then
  lowest="$(printf '%s\n%s\n' "$msrv" "$RUST_VERSION" | sort -V | head -n1)"
  [[ "$lowest" == "$msrv" ]] && ok "builder Rust $RUST_VERSION >= rust-version $msrv" \
    || fail "Dockerfile RUST_VERSION $RUST_VERSION is older than Cargo.toml rust-version $msrv"
fi

echo "--- static binary for $TARGET"
have_target() { rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; }
reason=""
if [[ -z "$TARGET" ]]; then
  reason="no target in the Dockerfile"
elif ! command -v rustup >/dev/null; then
  reason="rustup is not installed, so the $TARGET standard library cannot be added"
elif ! have_target && ! rustup target add "$TARGET" >/dev/null 2>&1; then
  reason="'rustup target add $TARGET' failed (its download is not reachable from here)"
fi
if [[ -z "$reason" ]] && ! command -v musl-gcc >/dev/null; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "installing musl-tools (musl-gcc) with apt-get" >&2
    apt-get install -y -q musl-tools >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q musl-tools >/dev/null 2>&1; }
  fi
  command -v musl-gcc >/dev/null || reason="musl-gcc is missing (Debian package musl-tools could not be installed)"
fi

if [[ -n "$reason" ]]; then
  skip "building for $TARGET: $reason. Checked only the Dockerfile above."
else
  ok "Rust target $TARGET installed ($(rustc --version))"
  # Build from a copy of what `docker build` would send (the work tree minus
  # .dockerignore), so a file the build needs but the context lacks fails here too.
  context="$(mktemp -d)"
  trap 'rm -rf "$context"' EXIT
  git ls-files -co --exclude-standard -z | python3 -c '
import fnmatch, sys
patterns = [l.strip() for l in open(".dockerignore") if l.strip() and not l.startswith("#")]
for path in sys.stdin.read().split("\0"):
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    if path and not any(fnmatch.fnmatch(p, pat) for p in prefixes for pat in patterns):
        print(path)
' | tar -cf - -T - | tar -xf - -C "$context"
  ok "build context: $(find "$context" -type f | wc -l) files after .dockerignore"
  # Debug profile: the same target, linker and static linking as the image's release
  # build, at a fraction of the compile time. Dependencies are shared with the target dir.
  target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
  if (cd "$context" && TARGET_CC=musl-gcc CARGO_TARGET_DIR="$target_dir" \
        cargo build --locked --quiet --target "$TARGET" --bin hookwarden); then
    bin="$target_dir/$TARGET/debug/hookwarden"
    ok "cargo build --locked --target $TARGET in the build context"
    if readelf -l "$bin" 2>/dev/null | grep -q 'INTERP'; then
      fail "$bin is dynamically linked; distroless/static has no libc"
    else
      ok "statically linked ($(file -b "$bin" 2>/dev/null | grep -oE 'static(-pie)? linked|statically linked' || echo "no ELF interpreter"))"
    fi
    if diff -q <("$bin" crdgen) crds/webhookintegrations.yaml >/dev/null; then
      ok "the static binary runs: 'hookwarden crdgen' prints crds/webhookintegrations.yaml"
    else
      fail "the static binary's 'hookwarden crdgen' differs from crds/webhookintegrations.yaml or did not run"
    fi
    plugin="$context/kubectl-hookwarden"
    ln -sf "$bin" "$plugin"
    if "$plugin" --help 2>/dev/null | grep -q '^Usage: kubectl hookwarden'; then
      ok "linked as kubectl-hookwarden it is the kubectl plugin"
    else
      fail "the static binary linked as kubectl-hookwarden does not answer as the kubectl plugin"
    fi
  else
    fail "cargo build --locked --target $TARGET failed in the build context (does .dockerignore drop a file the build needs?)"
  fi
fi
echo "not checked here: pulling the base images and 'docker build' (no container engine on this machine)"
exit $failed
