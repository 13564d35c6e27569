#!/usr/bin/env bash
# Set up, then run every check: format, lint, spelling, types, unit and functional tests.
# Functional tests need root and loop devices; RUNNER_FS_REQUIRE_FUNCTIONAL=1 makes their
# absence a failure instead of a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
export PATH="$PWD/.venv/bin:$PATH"

ruff format --check src lib tests bench
ruff check src lib tests bench
codespell src lib tests bench docs README.md
mypy --python-version 3.10  # Ubuntu 22.04's Python
mypy --python-version 3.12  # Ubuntu 24.04's
check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yaml
zizmor --offline --quiet .github/workflows/
# The integration tests collect, then skip without a Juju (pytest's exit 5: none ran).
pytest -p no:cacheprovider -q tests/integration || [ $? -eq 5 ]
pytest -p no:cacheprovider "$@"
