#!/usr/bin/env bash
# Sets up a virtualenv (if needed) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export SUPSUP_DATA_DIR="${SUPSUP_DATA_DIR:-$(cd .. && pwd)/shared/data}"
exec .venv/bin/python -m pytest -q -n 2 --durations=15 tests "$@"
