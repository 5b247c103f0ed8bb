#!/usr/bin/env bash
# Installs the third-party clients the compatibility tests drive (boto3,
# awslambdaric, the openwhisk npm client, aws-lambda-ric …): a venv at .venv
# and node_modules here. Both are links into a cache outside the checkout
# (~/.cache/flick-compat/<hash of the lists>), so a fresh clone on the same
# machine (CI) reuses an earlier install instead of building native clients
# again; a change to a list makes a new one.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
cache=${FLICK_COMPAT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flick-compat}
python=${PYTHON:-python3}

# Python clients.
key=$( (cat requirements.txt; "$python" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)
venv=$cache/venv-$key
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt
  touch "$venv/.complete"
fi
ln -sfn "$venv" .venv

# Node clients (cmake, for aws-lambda-ric's native part, comes from the venv).
key=$( (cat package.json; node --version) | sha256sum | cut -c1-16)
modules=$cache/node-$key
if [ ! -f "$modules/.complete" ]; then
  rm -rf "$modules"
  mkdir -p "$modules/node_modules"
  cp package.json "$modules/"
  [ -f package-lock.json ] && cp package-lock.json "$modules/"
  (cd "$modules" && PATH="$venv/bin:$PATH" npm install --no-audit --no-fund --loglevel=error)
  touch "$modules/.complete"
fi
# The lock the first install resolved is kept beside package.json.
[ -f package-lock.json ] || cp "$modules/package-lock.json" . 2>/dev/null || true
ln -sfn "$modules/node_modules" node_modules
