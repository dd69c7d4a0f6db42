#!/usr/bin/env bash
# The virtualenv of the PyTorch-based integration tests (runstream.integrations.lightning and
# .transformers): torch, lightning, transformers and accelerate at pinned versions, plus this
# checkout's SDK installed editable without extras (grpcio, protobuf). Kept apart from .venv because
# torch on PyPI is the CUDA build (~900 MB wheel + ~2.5 GB of nvidia-* wheels), too heavy for the
# `dev` extra; made once per machine and reused while the pins are unchanged.
#
#   bash scripts/torch_venv.sh          # make or refresh it; prints its python
#   bash scripts/torch_venv.sh path     # print its python without making anything
#
# Where: $RUNSTREAM_TORCH_VENV, default ${RUNSTREAM_CACHE_DIR:-~/.cache/runstream}/torch-venv.
# tests/integration/test_integrations_{lightning,transformers}.py use it when it is there and skip
# (naming this script) when it is not. scripts/test.sh makes it when RUNSTREAM_TORCH_TESTS=1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${RUNSTREAM_CACHE_DIR:-$HOME/.cache/runstream}
venv=${RUNSTREAM_TORCH_VENV:-$cache/torch-venv}
python=$venv/bin/python

# the pins: change one and the next run rebuilds the venv
requirements=(
  "torch==2.15.0"
  "lightning==2.6.6"
  "transformers==5.25.0"
  "accelerate==1.16.0"
)

if [ "${1:-}" = path ]; then
  echo "$python"
  exit 0
fi

stamp=$venv/.runstream-torch-venv
want="${requirements[*]}"
started=$(date +%s)
if [ ! -x "$python" ] || [ "$(sed -n 1p "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[torch-venv] making $venv with ${requirements[*]} (once per machine; ~3.5 GB of wheels)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$python" -m pip install -q --upgrade pip
  "$python" -m pip install -q "${requirements[@]}"
  printf '%s\n' "$want" >"$stamp"
fi
# the SDK of this checkout, editable (a fresh clone elsewhere re-points it; seconds)
if [ "$(sed -n 2p "$stamp" 2>/dev/null)" != "$root" ]; then
  "$python" -m pip install -q -e "$root"
  printf '%s\n%s\n' "$want" "$root" >"$stamp"
fi
echo "[torch-venv] ready in $(($(date +%s) - started)) s: $python" >&2
echo "$python"
