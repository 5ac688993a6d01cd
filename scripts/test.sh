#!/usr/bin/env bash
# Run every check and every test, setting up what they need first.
# The real-reader tests start their own pcscd (with the vpcd virtual card) and ptys.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/system-packages.sh
scripts/setup.sh "dev,pcsc,dask,nacl,sm,fleet"
export PATH="$PWD/.venv/bin:$PATH"
echo "== lint: ruff"
ruff check .
ruff format --check .
echo "== types: mypy --strict farecore readers sim"
mypy farecore readers sim
echo "== layering: import-linter"
lint-imports
echo "== vectors: the project's copy is the contract's (where ../shared is next to the checkout)"
if [ -f ../shared/card-vectors.json ]; then
  python -c 'import json, sys; sys.exit(json.load(open(sys.argv[1])) != json.load(open(sys.argv[2])))' \
    ../shared/card-vectors.json farecore/data/card-vectors.json \
    || { echo "farecore/data/card-vectors.json differs from ../shared/card-vectors.json" >&2; exit 1; }
fi
if [ -f ../shared/card-vectors-sm2.json ]; then
  python -c 'import json, sys; sys.exit(json.load(open(sys.argv[1])) != json.load(open(sys.argv[2])))' \
    ../shared/card-vectors-sm2.json farecore/data/card-vectors-sm2.json \
    || { echo "farecore/data/card-vectors-sm2.json differs from ../shared/card-vectors-sm2.json" >&2; exit 1; }
fi
echo "== tests"
# Workers: one per CPU and one more. The PC/SC tests share one worker (tests/conftest.py),
# which spends most of its time waiting for pcscd to poll its readers.
pytest -p no:cacheprovider -n "${FARECORE_TEST_WORKERS:-$(( $(nproc) + 1 ))}" --dist loadgroup "$@"
echo "== numba kernels again, interpreted (NUMBA_DISABLE_JIT=1)"
NUMBA_DISABLE_JIT=1 pytest -p no:cacheprovider -q -m kernels || [ $? -eq 5 ]
