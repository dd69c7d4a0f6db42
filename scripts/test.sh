#!/usr/bin/env bash
# The whole test suite from a fresh machine: installs what it needs (a virtualenv with
# runstream[dev], Debian's chromium for the browser tests, Kafka and MinIO through
# scripts/services.sh), lints, starts the real services, runs pytest, and stops the services.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/unit -x`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${RUNSTREAM_VENV:-$root/.venv}
started=$(date +%s)

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e ".[dev]"
export PATH=$venv/bin:$PATH PYTHON=$venv/bin/python

if ! command -v chromium >/dev/null 2>&1; then
  echo "[test] installing Debian's chromium for the browser tests" >&2
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi
fi

echo "[test] ruff" >&2
ruff check .
ruff format --check .

# Kafka and MinIO only when some test that runs may need them: `bash scripts/test.sh tests/unit`
# starts nothing (unit tests cannot reach the service fixtures, see tests/integration/conftest.py).
needs_services=0 paths=0
for arg in "$@"; do
  case "$arg" in
    -*) ;;  # options (and their values, which name no existing path) say nothing about which tests run
    tests/unit | tests/unit/* | ./tests/unit | ./tests/unit/*) paths=1 ;;
    *) if [ -e "${arg%%::*}" ]; then paths=1 needs_services=1; fi ;;
  esac
done
[ "$paths" = 0 ] && needs_services=1  # no path given: the whole suite
if [ "$needs_services" = 1 ]; then
  bash scripts/services.sh up
  trap 'bash scripts/services.sh down' EXIT
  set -a
  eval "$(bash scripts/services.sh env)"
  set +a
fi

# helm for tests/unit/test_helm_chart.py: built once from the Go module proxy into the cache.
bash scripts/helm.sh install

# The Lightning / Transformers integration tests need a PyTorch venv (CUDA wheels from PyPI:
# ~4.5 min and 5.7 GB from nothing); made only on request, else those tests skip with the reason.
if [ "${RUNSTREAM_TORCH_TESTS:-0}" = 1 ]; then
  bash scripts/torch_venv.sh >/dev/null
fi

echo "[test] setup took $(( $(date +%s) - started )) s" >&2
python -m pytest "$@"
