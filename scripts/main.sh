#!/usr/bin/env bash
# Sets up .venv (if needed) and runs the main job: GG PermutedMNIST at its
# CPU-sized default (10 tasks, paper settings). Extra arguments go to the
# launcher, e.g. --config.num_tasks=3.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if [ -z "${SUPSUP_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  export SUPSUP_DATA_DIR="$(cd ../shared/data && pwd)"
fi
exec .venv/bin/python -m launch.main \
  --config=launch/configs/gg_permuted_mnist.py \
  --workdir="${WORKDIR:-runs/gg_permuted_mnist}" "$@"
