#!/usr/bin/env bash
# Build a lean, portable llama-cpp-python wheel once and keep it in a wheelhouse.
# Why: PyPI ships only the sdist; a default build takes 20+ CPU-minutes and uses
# -march=native (SIGILL on another CPU). This recipe (FIELD-NOTES) takes minutes.
set -euo pipefail

VERSION="${LLAMA_CPP_VERSION:?set LLAMA_CPP_VERSION}"
WHEELHOUSE="${FABSTIR_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/fabstir-tui/wheelhouse}"
PYTHON="${PYTHON:-python3}"
EXTRA_CMAKE_ARGS="${LLAMA_EXTRA_CMAKE_ARGS:-}"

mkdir -p "$WHEELHOUSE"
if ls "$WHEELHOUSE"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "llama-cpp-python $VERSION: wheel already in $WHEELHOUSE"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "llama-cpp-python $VERSION: downloading sdist"
"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
  "llama-cpp-python==$VERSION" -d "$work/sdist"
tar xzf "$work"/sdist/llama_cpp_python-"$VERSION".tar.gz -C "$work"
src="$work/llama_cpp_python-$VERSION"

# The bindings never load libllama-common, but CMakeLists forces it ON.
sed -i 's/set(LLAMA_BUILD_COMMON ON CACHE BOOL/set(LLAMA_BUILD_COMMON OFF CACHE BOOL/' "$src/CMakeLists.txt"
grep -q 'set(LLAMA_BUILD_COMMON OFF CACHE BOOL "Build llama.cpp common library" FORCE)' "$src/CMakeLists.txt"

# A reproducible-build epoch makes ggml drop to baseline x86 unless features are named.
unset SOURCE_DATE_EPOCH
export CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF $EXTRA_CMAKE_ARGS"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
echo "llama-cpp-python $VERSION: compiling llama.cpp ($CMAKE_ARGS) — a few minutes"
start=$(date +%s)
"$PYTHON" -m pip wheel --no-cache-dir --no-deps "$src" -w "$work/out"
cp "$work"/out/llama_cpp_python-*.whl "$WHEELHOUSE"/
echo "llama-cpp-python $VERSION: built in $(( $(date +%s) - start )) s -> $WHEELHOUSE"
