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
mypy
pytest -p no:cacheprovider "$@"
