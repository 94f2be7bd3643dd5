#!/usr/bin/env bash
# Builds the Node-API addon for each architecture into prebuilds/linux-<arch>/, where node-gyp-build
# (the package's loader and install step) finds it, so that installing the package compiles nothing.
# Run by `npm pack` / `npm publish` (prepack); prebuilds/ is not committed.
#
#   scripts/prebuild.sh               # x64 and arm64 (default)
#   VFIO_USER_PREBUILD_ARCHS=x64 scripts/prebuild.sh
#
# One build serves every Node version: the addon uses Node-API (NAPI_VERSION in binding.gyp) and
# libuv 1.x only. arm64 is cross-compiled with Debian's gcc-aarch64-linux-gnu/g++-aarch64-linux-gnu;
# each result's ELF machine is checked. Builds happen in a scratch copy, so build/ is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
archs=${VFIO_USER_PREBUILD_ARCHS:-x64 arm64}
name=vfio_user_native
# node-gyp: npm puts its own on PATH for scripts; otherwise use the one npm bundles.
if command -v node-gyp >/dev/null 2>&1; then
  node_gyp=(node-gyp)
else
  node_gyp=(node "$(dirname "$(readlink -f "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js")
fi
# Node's headers: npm's `nodedir` setting, else the running node's own include/node (present in Debian's
# and nodejs.org's installs), else node-gyp downloads them.
nodedir=${npm_config_nodedir:-$(npm config get nodedir 2>/dev/null || true)}
if [ -z "$nodedir" ] || [ "$nodedir" = undefined ] || [ "$nodedir" = null ]; then
  nodedir=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")
  [ -f "$nodedir/include/node/node_api.h" ] || nodedir=
fi
node_gyp+=(${nodedir:+--nodedir="$nodedir"})

# The ELF e_machine of a file: 62 = x86-64, 183 = AArch64.
elf_machine() { od -An -t u2 -j 18 -N 2 "$1" | tr -d ' '; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp binding.gyp "$work/"
cp -r native "$work/"
rm -rf prebuilds

host=$(node -p process.arch)
for arch in $archs; do
  case $arch in
    x64) triple=x86_64-linux-gnu machine=62 ;;
    arm64) triple=aarch64-linux-gnu machine=183 ;;
    *) echo "prebuild: unsupported architecture $arch (x64, arm64)" >&2; exit 1 ;;
  esac
  if [ "$arch" = "$host" ]; then
    cc=${CC:-cc} cxx=${CXX:-c++} strip=strip
  else
    cc=$triple-gcc cxx=$triple-g++ strip=$triple-strip
    for tool in "$cc" "$cxx" "$strip"; do
      command -v "$tool" >/dev/null 2>&1 || {
        echo "prebuild: $tool not found; install gcc-$triple g++-$triple (Debian), or set VFIO_USER_PREBUILD_ARCHS=$host" >&2
        exit 1
      }
    done
  fi
  rm -rf "$work/build"
  (cd "$work" && CC=$cc CXX=$cxx LINK=$cxx "${node_gyp[@]}" rebuild --arch="$arch" --loglevel=warn)
  out=prebuilds/linux-$arch/$name.napi.uv1.glibc.node
  mkdir -p "$(dirname "$out")"
  "$strip" --strip-unneeded -o "$out" "$work/build/Release/$name.node"
  got=$(elf_machine "$out")
  [ "$got" = "$machine" ] || { echo "prebuild: $out has ELF machine $got, expected $machine" >&2; exit 1; }
  glibc=$(objdump -T "$out" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1 || true)
  echo "prebuild: $out ($(stat -c %s "$out") bytes${glibc:+, needs $glibc})"
done
echo "prebuild: done in $root/prebuilds"
