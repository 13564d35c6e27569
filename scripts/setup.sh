#!/usr/bin/env bash
# Install what runner-fs needs on a fresh Debian or Ubuntu host (as root) into ./.venv.
#   scripts/setup.sh          the command line and its core (enough for the demo)
#   scripts/setup.sh test     also the test tools, CloudKitty, PostgreSQL and Prometheus
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}

need_apt=()
for tool in mkfs.ext4:e2fsprogs e2fsck:e2fsprogs losetup:mount; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || need_apt+=("${tool##*:}")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ "$mode" = test ]; then
  # The PostgreSQL backend's tests start a throw-away server of their own (never the system one).
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
  # promtool checks the alert rules and dashboard; a throw-away Prometheus scrapes the exporter.
  command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
  [ -x /usr/sbin/logrotate ] || need_apt+=(logrotate)  # checks the rendered logrotate file
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$mode" = test ]; then
  .venv/bin/python -m pip install -q -e '.[test,lint,cloudkitty]'
else
  .venv/bin/python -m pip install -q -e .
fi
