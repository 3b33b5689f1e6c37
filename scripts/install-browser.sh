#!/usr/bin/env bash
# Install Debian's Chromium for the browser test (tests/web/test_browser.py) if it is missing.
# Playwright drives this browser (executable_path=/usr/bin/chromium); never run
# `playwright install`, which downloads browsers of its own.
set -euo pipefail
if [[ -x /usr/bin/chromium ]]; then
  echo "chromium present: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser.sh: apt-get not found; install Chromium as /usr/bin/chromium by hand" >&2
  exit 1
fi
sudo=""
[[ "$(id -u)" -ne 0 ]] && sudo="sudo"
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
echo "installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
