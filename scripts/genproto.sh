#!/usr/bin/env bash
# Regenerates the Python code beside every .proto under proto/ (google.protobuf messages,
# grpcio stubs, connectrpc ASGI apps). Needs the test extras: pip install -e '.[test]'.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
files=$(find proto -name '*.proto' | sort)
"$PY" -m grpc_tools.protoc -I . \
  --python_out=. --pyi_out=. \
  --plugin=protoc-gen-connectrpc="$(dirname "$(command -v "$PY")")/protoc-gen-connectrpc" \
  --connectrpc_out=protobuf=google:. \
  $files
echo "generated code for: $files"
# gRPC is served for the lease API only.
grpc_files=$(find proto -path '*intrinsic*' -name '*.proto' | sort)
if [ -n "$grpc_files" ]; then
  "$PY" -m grpc_tools.protoc -I . --grpc_python_out=. $grpc_files
fi
