#!/usr/bin/env bash
# Regenerates the Python code for the .proto files under proto/ into src/hearth/_proto/:
# protobuf-py messages (*_pb.py, protoc-gen-py) and Connect stubs (*_connect.py,
# protoc-gen-connectrpc), one package per proto directory, e.g. proto/process/process.proto
# -> hearth._proto.process.process_pb. The plugins emit relative imports between generated
# files and import google.protobuf well-known types from protobuf.wkt, so no import option
# is needed. The output is checked in; rerun this after editing any .proto file.
set -euo pipefail
cd "$(dirname "$0")/.."

out=src/hearth/_proto
run=(uv run --quiet --group proto)
bin=$("${run[@]}" python -c 'import sysconfig; print(sysconfig.get_path("scripts"))')

mapfile -t protos < <(cd proto && find . -name '*.proto' -printf '%P\n' | sort)
((${#protos[@]})) || { echo "gen_proto: no .proto files under proto/" >&2; exit 1; }

# Everything under $out except its own __init__.py is generated: start from a clean slate.
find "$out" -mindepth 1 -maxdepth 1 ! -name __init__.py -exec rm -rf {} +

# grpc_tools' protoc adds its bundled include dir (google/protobuf/*.proto) by itself.
# init_files=false: protoc-gen-py would otherwise overwrite $out/__init__.py too; the
# package __init__.py files are written below instead.
"${run[@]}" python -m grpc_tools.protoc \
  --proto_path=proto \
  --plugin=protoc-gen-py="$bin/protoc-gen-py" \
  --plugin=protoc-gen-connectrpc="$bin/protoc-gen-connectrpc" \
  --py_out="$out" \
  --py_opt=init_files=false \
  --connectrpc_out="$out" \
  "${protos[@]}"

# Make every generated directory a regular package; keep $out/__init__.py as it is.
find "$out" -mindepth 1 -type d ! -name __pycache__ | while read -r dir; do
  echo "\"\"\"Generated from proto/${dir#"$out"/} by scripts/gen_proto.sh; do not edit.\"\"\"" \
    >"$dir/__init__.py"
done
echo "gen_proto: generated ${protos[*]} into $out" >&2
