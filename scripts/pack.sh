#!/usr/bin/env bash
# Pack the charm with the real `charmcraft pack --destructive-mode` on a host that is not the
# platform's Ubuntu release (this project's Debian CI machines): charmcraft runs in a private
# mount namespace where that release's os-release is bound over the host's. On Ubuntu itself,
# `charmcraft pack` (the snap, in its LXD build environment) needs none of this.
#
#   scripts/pack.sh [PLATFORM...]    default: every platform in charmcraft.yaml
#
# Each <name>_<platform>.charm lands in $RUNNER_FS_PACK_OUT (default: ./build). The project is
# packed from a copy of its tracked files, so the work tree gets no parts/, stage/ or prime/.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${RUNNER_FS_PACK_OUT:-$repo/build}
tools=${RUNNER_FS_PACK_VENV:-$repo/.venv-pack}
charmcraft_version=4.5.0

if [ "${RUNNER_FS_PACK_INNER:-}" = 1 ]; then  # inside the private mount namespace
  release=$1 workdir=$2 platform=$3
  fake=$(mktemp)
  cat > "$fake" <<OS
PRETTY_NAME="Ubuntu $release"
NAME="Ubuntu"
VERSION_ID="$release"
VERSION="$release"
ID=ubuntu
ID_LIKE=debian
UBUNTU_CODENAME=$([ "$release" = 22.04 ] && echo jammy || echo noble)
VERSION_CODENAME=$([ "$release" = 22.04 ] && echo jammy || echo noble)
OS
  mount --bind "$fake" /usr/lib/os-release
  [ -L /etc/os-release ] || mount --bind "$fake" /etc/os-release
  cd "$workdir"
  exec charmcraft pack --destructive-mode --platform "$platform" --verbosity brief
fi

# charmcraft's parts engine imports Debian's python3-apt: a venv on the system Python that
# sees its site packages; PyPI's pyOpenSSL, since Debian's clashes with PyPI's cryptography.
if ! "$tools/bin/charmcraft" version 2>/dev/null | grep -qx "charmcraft $charmcraft_version"; then
  if ! /usr/bin/python3 -c 'import apt_pkg, venv, ensurepip' 2>/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-apt python3-venv
  fi
  rm -rf "$tools"
  /usr/bin/python3 -m venv --system-site-packages "$tools"
  "$tools/bin/python" -m pip install -q --upgrade pip
  "$tools/bin/python" -m pip install -q "charmcraft==$charmcraft_version" uv
  "$tools/bin/python" -m pip install -q --upgrade pyopenssl
fi
export PATH="$tools/bin:$PATH"

platforms=("$@")
if [ ${#platforms[@]} -eq 0 ]; then
  mapfile -t platforms < <("$tools/bin/python" -c '
import sys, yaml
print(*yaml.safe_load(open(sys.argv[1]))["platforms"], sep="\n")' "$repo/charmcraft.yaml")
fi

mkdir -p "$out"
for platform in "${platforms[@]}"; do
  release=$(sed -E 's/^ubuntu@([0-9.]+):.*$/\1/' <<<"$platform")
  workdir=$(mktemp -d)
  trap 'rm -rf "$workdir"' EXIT
  git -C "$repo" ls-files -z --cached --others --exclude-standard \
    | (cd "$repo" && xargs -0 cp --parents -t "$workdir")
  echo "packing $platform (Ubuntu $release) ..." >&2
  RUNNER_FS_PACK_INNER=1 unshare --mount --propagation private \
    "$repo/scripts/pack.sh" "$release" "$workdir" "$platform"
  mv "$workdir"/*.charm "$out/"
  rm -rf "$workdir"
done
ls "$out"/*.charm
