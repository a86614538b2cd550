#!/usr/bin/env bash
# Build the reference driver, kubernetes-csi/csi-driver-host-path's hostpathplugin, into
# benchmarks/.work/reference/ (git-ignored; its code and binary are never committed).
#
# Sources, first one that works:
#   1. REFERENCE_BIN=/path/to/hostpathplugin      a binary you built yourself
#   2. REFERENCE_SRC=/path/to/csi-driver-host-path a checkout (default: benchmarks/.work/src/
#                                                  csi-driver-host-path if it exists)
#   3. the Go module proxy: a throwaway module that requires the newest release tag,
#      copies the replace directives of the driver's own go.mod and builds
#      cmd/hostpathplugin.
#
# Writes benchmarks/.work/reference/reference.env with REFERENCE_BIN and REFERENCE_VERSION,
# or REFERENCE_UNAVAILABLE="<why>" when none of the three worked. Always exits 0 unless
# called with --strict: the benchmark then runs csi-py alone and says why.
set -uo pipefail
cd "$(dirname "$0")"
MOD=github.com/kubernetes-csi/csi-driver-host-path
WORK=$PWD/.work/reference
mkdir -p "$WORK/bin"
ENV_FILE=$WORK/reference.env
STRICT=${1:-}

write_env() {  # bin version source
  printf 'REFERENCE_BIN=%q\nREFERENCE_VERSION=%q\nREFERENCE_SOURCE=%q\n' "$1" "$2" "$3" >"$ENV_FILE"
  echo "setup_reference: $2 from $3 -> $1"
  exit 0
}
unavailable() {
  printf 'REFERENCE_UNAVAILABLE=%q\n' "$1" >"$ENV_FILE"
  echo "setup_reference: reference driver unavailable: $1" >&2
  [ "$STRICT" = "--strict" ] && exit 1
  exit 0
}

# The driver's block volumes need these (it runs them as subprocesses).
for tool in mount losetup fallocate; do
  command -v "$tool" >/dev/null 2>&1 || unavailable "the reference needs '$tool' (util-linux)"
done
command -v go >/dev/null 2>&1 || [ -n "${REFERENCE_BIN:-}" ] || unavailable "no go toolchain"

# 1. A given binary.
if [ -n "${REFERENCE_BIN:-}" ]; then
  [ -x "$REFERENCE_BIN" ] || unavailable "REFERENCE_BIN=$REFERENCE_BIN is not executable"
  write_env "$REFERENCE_BIN" "${REFERENCE_VERSION:-unknown}" "REFERENCE_BIN"
fi

# 2. A local checkout.
SRC=${REFERENCE_SRC:-$PWD/.work/src/csi-driver-host-path}
if [ -f "$SRC/go.mod" ] && [ -d "$SRC/cmd/hostpathplugin" ]; then
  version=$(cd "$SRC" && (git describe --tags --always 2>/dev/null || echo "checkout"))
  (cd "$SRC" && go build -o "$WORK/bin/hostpathplugin" \
      -ldflags "-X main.version=$version" ./cmd/hostpathplugin) \
    || unavailable "go build in $SRC failed"
  write_env "$WORK/bin/hostpathplugin" "$version" "checkout $SRC"
fi

# 3. The Go module proxy.
if ! versions=$(cd /tmp && go list -m -versions "$MOD" 2>&1); then
  unavailable "the Go module proxy did not list $MOD: $(echo "$versions" | tr '\n' ' ' | cut -c1-300)"
fi
latest=$(echo "$versions" | tr ' ' '\n' | grep -E '^v[0-9]+\.[0-9]+\.[0-9]+$' | sort -V | tail -1)
[ -n "$latest" ] || unavailable "no release tag of $MOD in: $versions"
if [ -x "$WORK/bin/hostpathplugin" ] && [ "$(cat "$WORK/bin/version" 2>/dev/null)" = "$latest" ]; then
  write_env "$WORK/bin/hostpathplugin" "$latest" "Go module proxy (cached build)"
fi

MODDIR=$WORK/module
rm -rf "$MODDIR" && mkdir -p "$MODDIR" && cd "$MODDIR" || exit 1
dir=$(go mod download -json "$MOD@$latest" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
  || unavailable "go mod download $MOD@$latest failed"
go_line=$(grep -E '^go [0-9.]+' "$dir/go.mod" | head -1)
{
  echo "module csi-py-bench/reference"
  echo
  echo "${go_line:-go 1.22}"
  echo
  # Its replace directives, single-line and block form alike.
  awk '/^replace[ \t]*\(/{b=1; print; next} b{print; if ($0 ~ /^\)/) b=0; next} /^replace /{print}' "$dir/go.mod"
} >go.mod
go get "$MOD/cmd/hostpathplugin@$latest" || unavailable "go get $MOD/cmd/hostpathplugin@$latest failed"
go build -o "$WORK/bin/hostpathplugin" -ldflags "-X main.version=$latest" "$MOD/cmd/hostpathplugin" \
  || unavailable "go build of $MOD/cmd/hostpathplugin@$latest failed"
echo "$latest" >"$WORK/bin/version"
write_env "$WORK/bin/hostpathplugin" "$latest" "Go module proxy"
