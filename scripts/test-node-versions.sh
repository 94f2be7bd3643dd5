#!/usr/bin/env bash
# Runs the compiled test suite under other Node.js versions, installed locally from npm's `node`
# package (nothing global changes). The addon is not rebuilt: one Node-API build serves them all.
#
#   scripts/test-node-versions.sh                      # Node 22 and 24, every test
#   scripts/test-node-versions.sh 22 -- dist/test/native/*.test.js
#
# Versions are npm specs for the `node` package (22, 24, 22.12.0, ...), installed once into
# ${VFIO_USER_NODE_CACHE:-~/.cache/vfio-user-node}/<spec>. Compile first (`npx tsc -p tsconfig.json`).
# Exit status: non-zero when any version fails; the last lines give each version's summary.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${VFIO_USER_NODE_CACHE:-$HOME/.cache/vfio-user-node}
versions=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do versions+=("$1"); shift; done
[ $# -gt 0 ] && shift
[ ${#versions[@]} -gt 0 ] || versions=(22 24)
if [ $# -gt 0 ]; then files=("$@"); else mapfile -t files < <(find dist/test -name '*.test.js' | sort); fi
[ ${#files[@]} -gt 0 ] || { echo "no compiled tests: run npx tsc -p tsconfig.json first" >&2; exit 1; }

status=0
summary=()
for spec in "${versions[@]}"; do
  prefix=$cache/$spec
  if [ ! -x "$prefix/node_modules/.bin/node" ]; then
    mkdir -p "$prefix"
    npm install --no-save --no-package-lock --prefix "$prefix" "node@$spec" >/dev/null
  fi
  node_bin=$prefix/node_modules/.bin/node
  version=$("$node_bin" --version)
  log=$(mktemp "${TMPDIR:-/tmp}/vfio-user-node-$version.XXXXXX.log")
  echo "== Node $version: ${#files[@]} test files (log: $log)"
  # the suite's children run process.execPath, so they use this version too
  if PATH="$(dirname "$(readlink -f "$node_bin")"):$PATH" "$node_bin" --test --test-reporter=tap "${files[@]}" >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
    grep -E '^not ok|^    not ok' "$log" | head -n 20 || true
  fi
  counts=$(grep -E '^# (tests|pass|fail|skipped|duration_ms) ' "$log" | sed 's/^# //' | tr '\n' ' ')
  summary+=("Node $version: $result ($counts)")
done
printf '%s\n' "${summary[@]}"
exit $status
