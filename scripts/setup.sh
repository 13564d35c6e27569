#!/usr/bin/env bash
# Install what runner-fs needs on a fresh Debian or Ubuntu host (as root).
#   scripts/setup.sh          ./.venv with the runner-fs distribution (enough for the demo)
#   scripts/setup.sh test     also PostgreSQL, Prometheus and logrotate for the tests, tox with
#                             tox-uv in ./.venv-tox, and ./.venv synced from uv.lock with every
#                             dependency group (the charm's, the tests', the tools')
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}

need_apt=()
for tool in mkfs.ext4:e2fsprogs e2fsck:e2fsprogs losetup:mount; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || need_apt+=("${tool##*:}")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ "$mode" = test ]; then
  # tox runs on the system Python, so that the unprivileged unit run can use it too.
  /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
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

if [ "$mode" = test ]; then
  [ -x .venv-tox/bin/tox ] || /usr/bin/python3 -m venv .venv-tox
  .venv-tox/bin/python -m pip install -q --upgrade "tox>=4.20" "tox-uv>=1.11"
  .venv-tox/bin/uv sync --locked --all-groups --quiet
elif [ ! -x .venv/bin/runner-fs ]; then  # (`setup.sh test` made it already, from the lock)
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e .
fi
