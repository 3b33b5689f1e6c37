#!/usr/bin/env bash
# Create ./.venv and install S-SAM into it. `--dev` adds the test and lint tools.
# PyTorch is pinned first so that pip never swaps it for another build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".${extras}"
# The page's volume viewer (NiiVue, from npm); without npm everything else still works.
if command -v npm >/dev/null 2>&1; then
  bash scripts/build-web.sh || echo "setup.sh: the page's volume viewer did not build (above);" \
    "everything else is installed. Run scripts/build-web.sh again when npm can reach its registry" >&2
else
  echo "setup.sh: npm not found: the page's volume viewer is not built (see scripts/build-web.sh)" >&2
fi
echo "S-SAM installed in $(pwd)/.venv"
