#!/usr/bin/env bash
# Build the browser libraries the page serves itself into src/ssam/web/static/vendor/.
# NiiVue (the page's volume viewer) comes from npm, pinned and integrity-checked by
# web/package-lock.json (`npm ci` refuses a tarball whose SHA-512 differs); only its
# self-contained ES module bundle is copied, so the page needs no network at run time.
# Run by setup.sh; run it again after changing web/package.json (then `npm install` there
# to update the lock).
set -euo pipefail
cd "$(dirname "$0")/.."
vendor=src/ssam/web/static/vendor
if ! command -v npm >/dev/null 2>&1; then
  echo "build-web.sh: npm not found; the page's volume viewer (NiiVue) is not built and" \
    "volumes show one plane. Install Node.js 18+ with npm, then run scripts/build-web.sh" >&2
  exit 1
fi
(cd web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
package=web/node_modules/@niivue/niivue
version=$(node -p "require('./$package/package.json').version")
license=$(node -p "require('./$package/package.json').license")
staging=$(mktemp -d "$vendor.XXXXXX")
trap 'rm -rf "$staging"' EXIT  # a failed build leaves no half-built folder behind
mkdir -p "$staging/niivue"
cp "$package/dist/index.js" "$staging/niivue/niivue.js"
printf 'NiiVue %s (%s), https://github.com/niivue/niivue\nFrom npm @niivue/niivue@%s, dist/index.js; built by scripts/build-web.sh.\n' \
  "$version" "$license" "$version" >"$staging/niivue/NOTICE.txt"
printf '%s\n' "$version" >"$staging/niivue/VERSION"
rm -rf "$vendor"
mv "$staging" "$vendor"
chmod 755 "$vendor"
echo "NiiVue $version built into $vendor/niivue"
