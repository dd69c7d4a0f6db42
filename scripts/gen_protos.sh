#!/usr/bin/env bash
# Regenerates the Python code of the v1 wire contract into client/runstream/v1/.
# The one command for it; tests/unit/test_protos_fresh.py fails when the committed code is stale.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
out="$root/client/runstream/v1"
# protoc-gen-mypy (mypy-protobuf) is installed next to the interpreter.
export PATH="$("$py" -c "import os, sys; print(os.path.dirname(sys.executable))"):$PATH"
rm -f "$out"/*_pb2.py "$out"/*_pb2.pyi "$out"/*_pb2_grpc.py
"$py" -m grpc_tools.protoc -I "$root/proto" \
  --python_out="$out/../.." --mypy_out="$out/../.." --grpc_python_out="$out/../.." \
  "$root"/proto/runstream/v1/*.proto
rm -f "$out"/types_pb2_grpc.py  # types.proto has no services
