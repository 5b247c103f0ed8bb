#!/usr/bin/env bash
# Re-vendors the dashboard's third-party files from npm (versions pinned in
# package.json, tarballs checked by package-lock.json's integrity hashes),
# copies the few it serves into assets/vendor/ and checks each against
# assets/vendor/SHA256SUMS. cargo build never runs this: the files are
# committed, so a build needs no network.
#
#   bash crates/ui/vendor.sh           # fetch, copy, fail if a file differs from SHA256SUMS
#   bash crates/ui/vendor.sh --check   # no network: the committed files match SHA256SUMS
#   bash crates/ui/vendor.sh --update  # after bumping a version: rewrite SHA256SUMS
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
vendor=$here/assets/vendor
cd "$vendor"
if [ "${1:-}" = "--check" ]; then
  sha256sum --quiet -c SHA256SUMS
  echo "vendored files match SHA256SUMS"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here/package.json" "$here/package-lock.json" "$work/"
(cd "$work" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
m=$work/node_modules
cp "$m/preact/dist/preact.mjs" preact.mjs
# The hooks import "preact" by its bare name, which a browser resolves only
# through an import map (an inline script, which the dashboard's CSP
# forbids): point it at the file beside it instead.
sed 's|from"preact"|from"./preact.mjs"|' "$m/preact/hooks/dist/hooks.mjs" > hooks.mjs
grep -q 'from"./preact.mjs"' hooks.mjs || { echo "hooks.mjs: the preact import was not rewritten" >&2; exit 1; }
cp "$m/htm/dist/htm.mjs" htm.mjs
cp "$m/uplot/dist/uPlot.iife.min.js" uPlot.iife.min.js
cp "$m/uplot/dist/uPlot.min.css" uPlot.min.css
for p in preact htm uplot; do cp "$m/$p/LICENSE" "LICENSE-$p"; done

files=(preact.mjs hooks.mjs htm.mjs uPlot.iife.min.js uPlot.min.css LICENSE-preact LICENSE-htm LICENSE-uplot)
if [ "${1:-}" = "--update" ]; then
  sha256sum "${files[@]}" > SHA256SUMS
  echo "SHA256SUMS rewritten"
else
  sha256sum --quiet -c SHA256SUMS
  echo "re-vendored files match SHA256SUMS"
fi
