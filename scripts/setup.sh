#!/usr/bin/env bash
# Install what runner-fs needs on a fresh Debian or Ubuntu host (as root) into ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for tool in mkfs.ext4:e2fsprogs e2fsck:e2fsprogs losetup:mount; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || need_apt+=("${tool##*:}")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
# The PostgreSQL backend's tests start a throw-away server of their own (never the system one).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,lint,cloudkitty]'
