#!/usr/bin/env bash
# Re-pin this wrapper module to another Kubernetes release.
#
# Why: k8s.io/kubernetes requires its staging modules at the nonexistent v0.0.0 and
# replaces them with ./staging/src/...; a consumer must replace each with the published
# v0.X.Y tag.  The list of staging modules changes per minor, so we derive it from the
# release's own go.mod (served by the module proxy) instead of maintaining it by hand.
# Usage: ./pin-k8s.sh v1.34.4   (then update `godebug` by hand if the printed value changed)
set -euo pipefail
V=$1; SV=v0.${V#v1.}
cd "$(dirname "$0")"
scratch=$(mktemp -d); trap 'rm -rf "$scratch"' EXIT
gomod=$(cd "$scratch" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$V" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
echo "upstream header:"; grep -E '^(go|godebug|toolchain) ' "$gomod" || true
go mod edit -dropreplace=k8s.io/kubernetes 2>/dev/null || true
for m in $(go mod edit -json | python3 -c 'import json,sys; print(" ".join(r["Old"]["Path"] for r in json.load(sys.stdin).get("Replace") or []))'); do
  go mod edit -dropreplace="$m"
done
sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/src/.*#\1#p' "$gomod" |
  while read -r m; do go mod edit -replace="$m=$m@$SV"; done
echo "non-staging replaces upstream (review):"
sed -n '/^replace/,/^)/p' "$gomod" | grep -v 'staging/src' || true
go mod edit -require="k8s.io/kubernetes@$V"
GOTOOLCHAIN=local go mod tidy
