#!/usr/bin/env bash
# Build the charm's venv for the Python of the Ubuntu release being packed, without needing
# that Python: the locked dependencies are installed as wheels for its version and glibc.
# Run by charmcraft as the charm part's build step (charmcraft.yaml), in the base's build
# environment (its LXD instance, or the host in destructive mode, where pack.sh binds that
# release's os-release):
#
#   scripts/charm-venv.sh INSTALL_DIR
#
# INSTALL_DIR gets venv/ (pyvenv.cfg, lib/pythonX.Y/site-packages), src/, lib/ and `version`.
# charmcraft's dispatch links venv/bin/python to the base's python3 at the first hook.
set -euo pipefail
install=$1
project=$(cd "$(dirname "$0")/.." && pwd)

release=$(. /etc/os-release && echo "${VERSION_ID:-}")
case "$release" in  # the base's CPython and glibc (manylinux tag)
  22.04) python=3.10 glibc=2_35 ;;
  24.04) python=3.12 glibc=2_39 ;;
  *) echo "charm-venv.sh: no Python known for Ubuntu '$release'; add it here" >&2; exit 1 ;;
esac
case "$(uname -m)" in
  x86_64|aarch64) arch=$(uname -m) ;;
  *) echo "charm-venv.sh: no wheels known for $(uname -m)" >&2; exit 1 ;;
esac

venv=$install/venv
site=$venv/lib/python$python/site-packages
rm -rf "$venv"
mkdir -p "$site"
requirements=$(mktemp)
trap 'rm -f "$requirements"' EXIT
# The lock's pins of the project's dependencies and the charm group, less the project itself
# (src/ is copied as it is).
uv export --project "$project" --frozen --no-default-groups --group charm --no-emit-project \
  --format requirements-txt --quiet --output-file "$requirements"
# Wheels only, each for the base's CPython and glibc; charmhelpers ships an sdist only,
# which builds to a pure-Python wheel. Bytecode is left to the base's own interpreter.
uv pip install --target "$site" --python-version "$python" \
  --python-platform "$arch-manylinux_$glibc" --no-deps --require-hashes \
  --only-binary :all: --no-binary charmhelpers --no-compile --quiet -r "$requirements"
rm -rf "$site/bin"  # console scripts, with this build machine's interpreter in their shebangs

cat > "$venv/pyvenv.cfg" <<CFG
home = /usr/bin
implementation = CPython
version_info = $python
include-system-site-packages = false
CFG
mkdir -p "$install/lib"
cp --archive --recursive "$project/src" "$install/"
cp --archive --recursive "$project/lib/charms" "$install/lib/"
find "$install/src" "$install/lib" -name __pycache__ -prune -exec rm -rf {} +
version=$(sed -nE 's/^__version__ = "(.*)"$/\1/p' "$project/src/runner_fs/__init__.py")
echo "$version+$(date -u +%Y%m%d%H%M%S)" > "$install/version"
