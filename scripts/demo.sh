#!/usr/bin/env bash
# Set up and run the simulator end to end: a Qingdao day of taps through the real engine,
# then the settlement, checked against the simulator's ground truth.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh sim
exec .venv/bin/farecore sim --out "${FARECORE_RUN_DIR:-runs/demo}" "$@"
