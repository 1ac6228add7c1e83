#!/usr/bin/env bash
# Regenerate the committed Python (and .pyi type stubs) from protos/v1/*.proto.
# Run from anywhere; tests/wire/test_protos_fresh.py fails when the committed files are stale.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
python -m grpc_tools.protoc -I. \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  protos/v1/*.proto
