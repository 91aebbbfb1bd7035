#!/usr/bin/env bash
# Regenerates the Python code for protos/ (committed). Tools are pinned through the dev extras;
# `scripts/gen_protos.sh --check` fails if the committed code differs from a fresh generation.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PATH="$(dirname "$PY"):$PATH"
out=.
if [ "${1:-}" = "--check" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
"$PY" -m grpc_tools.protoc -I . \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  protos/hub/v1/control.proto
if [ "${1:-}" = "--check" ]; then
  status=0
  for f in control_pb2.py control_pb2.pyi control_pb2_grpc.py control_pb2_grpc.pyi; do
    if ! cmp -s "$out/protos/hub/v1/$f" "protos/hub/v1/$f"; then
      echo "generated code is stale: protos/hub/v1/$f (run scripts/gen_protos.sh)" >&2
      status=1
    fi
  done
  [ $status -eq 0 ] && echo "generated code matches protos/hub/v1/control.proto"
  exit $status
fi
