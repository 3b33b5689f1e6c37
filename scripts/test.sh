#!/usr/bin/env bash
# Set up from scratch (see setup.sh), lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
bash scripts/install-browser.sh   # Debian's Chromium, for the web page's browser test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [[ $status -eq 5 ]]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit $status
