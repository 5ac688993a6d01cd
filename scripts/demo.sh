#!/usr/bin/env bash
# Set up and run the simulator end to end: a Qingdao day of taps through the real engine,
# then the settlement, checked against the simulator's ground truth.
# Each run gets a fresh directory under runs/ (or FARECORE_RUN_DIR); extra arguments go
# to `farecore sim`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh sim
run_dir="${FARECORE_RUN_DIR:-runs/demo-$(date -u +%Y%m%d-%H%M%S)}"
echo "== farecore sim --out $run_dir $*"
exec .venv/bin/farecore sim --out "$run_dir" "$@"
