#!/usr/bin/env bash
# Sets up a virtualenv (if needed) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if [ -z "${SUPSUP_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  export SUPSUP_DATA_DIR="$(cd ../shared/data && pwd)"
fi
exec .venv/bin/python -m pytest -q -n 2 --durations=15 tests "$@"
