#!/usr/bin/env bash
# Shared set-up for the two README commands: a project virtualenv with farecore installed.
# Usage: scripts/setup.sh EXTRAS   (e.g. "sim" or "dev,pcsc,dask,nacl")
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-sim}"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($py --version)"
  "$py" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
stamp=".venv/.farecore-installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "== installing farecore[$extras] into .venv"
  .venv/bin/python -m pip install --quiet -e ".[$extras]"
  touch "$stamp"
fi
