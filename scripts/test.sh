#!/usr/bin/env bash
# Run every check and every test, setting up what they need first.
# The real-reader tests start their own pcscd (with the vpcd virtual card) and ptys.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/system-packages.sh
scripts/setup.sh "dev,pcsc,dask,nacl"
export PATH="$PWD/.venv/bin:$PATH"
echo "== lint: ruff"
ruff check .
ruff format --check .
echo "== types: mypy --strict farecore"
mypy farecore
echo "== layering: import-linter"
lint-imports
echo "== tests"
pytest -p no:cacheprovider "$@"
echo "== numba kernels again, interpreted (NUMBA_DISABLE_JIT=1)"
NUMBA_DISABLE_JIT=1 pytest -p no:cacheprovider -q -m kernels || [ $? -eq 5 ]
