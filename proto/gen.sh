#!/usr/bin/env bash
# The one command that (re)generates the Python code for the .proto files.
# Never hand-edit the *_pb2*.py(i) files; tests/unit/test_proto_drift.py fails
# when they differ from what this script produces.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
py=${PYTHON:-python3}
"$py" -m grpc_tools.protoc -I "$here" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$here"/gpuaudit/v1/*.proto
