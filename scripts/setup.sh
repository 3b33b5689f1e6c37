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
echo "S-SAM installed in $(pwd)/.venv"
