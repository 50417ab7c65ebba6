#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` once, from the llama.cpp sources inside the
# llama-cpp-python sdist we pin, with the same CPU flags as our wheel: the bench's baseline.
# Cached outside the repository; never committed. Prints the binary's path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)"
PYTHON="${PYTHON:-python3}"
CACHE="${FABSTIR_LLAMA_SERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fabstir-tui/llama-server/$VERSION-cpu}"
BIN="$CACHE/llama-server"
if [ -x "$BIN" ]; then
  echo "llama-server $VERSION: already built" >&2
  echo "$BIN"
  exit 0
fi

mkdir -p "$CACHE"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "llama-server $VERSION: downloading the llama-cpp-python sdist" >&2
"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
  "llama-cpp-python==$VERSION" -d "$work/sdist" >&2
tar xzf "$work"/sdist/llama_cpp_python-"$VERSION".tar.gz -C "$work"
src="$work/llama_cpp_python-$VERSION/vendor/llama.cpp"

# Same CPU flags as scripts/build-llama-wheel.sh (no -march=native; no reproducible epoch).
unset SOURCE_DATE_EPOCH
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
echo "llama-server $VERSION: compiling llama.cpp's server (about 15 minutes on 2 cores)" >&2
start=$(date +%s)
cmake -S "$src" -B "$work/build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_COMMON=ON \
  -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
cp "$work/build/bin/llama-server" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "llama-server $VERSION: built in $(( $(date +%s) - start )) s -> $BIN" >&2
echo "$BIN"
