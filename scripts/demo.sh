#!/usr/bin/env bash
# Run the demo on this machine (as root): install what it needs, then the whole flow with
# simulated runners on real loop devices. It leaves no mount, loop device or file behind.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/runner-fs demo "$@"
