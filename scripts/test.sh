#!/usr/bin/env bash
# Set up, then run every check through tox, each environment built from uv.lock: lint (format,
# style, spelling, the workflow), static (types), integration (collects, skips without Juju),
# unit (as an unprivileged user, without PostgreSQL or host tools) and functional (root, real
# loop devices and servers). Arguments go to the functional run's pytest.
# RUNNER_FS_REQUIRE_FUNCTIONAL=1 makes missing root, loop devices or tools a failure, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
tox=.venv-tox/bin/tox

"$tox" run -e lint,static,integration
scripts/unit-unprivileged.sh
"$tox" run -e functional -- "$@"
