#!/usr/bin/env bash
# Regenerates embark_api/ (Python stubs and their type stubs) from proto/. `make proto` calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-.}
PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")
find "$OUT/embark_api" -name '*_pb2*.py*' -delete 2>/dev/null || true
mkdir -p "$OUT"
PATH="$BIN:$PATH" "$PY" -m grpc_tools.protoc -Iproto \
  --python_out="$OUT" --grpc_python_out="$OUT" \
  --mypy_out="$OUT" --mypy_grpc_out="$OUT" \
  proto/embark_api/v1/*.proto
touch "$OUT/embark_api/__init__.py" "$OUT/embark_api/v1/__init__.py"
