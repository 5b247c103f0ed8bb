#!/usr/bin/env bash
# Installs the third-party clients the compatibility tests drive (boto3,
# awslambdaric, the openwhisk npm client, aws-lambda-ric …) next to this
# script: a venv in .venv and node_modules here. Idempotent; a no-op when
# everything listed is already installed.
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  echo "$want" >"$stamp"
fi

if [ -s package.json ]; then
  stamp=node_modules/.package.sha
  want=$(cat package.json $(ls package-lock.json 2>/dev/null) | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    # cmake (for aws-lambda-ric's native part) comes from the venv.
    PATH="$PWD/.venv/bin:$PATH" npm install --no-audit --no-fund --loglevel=error
    mkdir -p node_modules && echo "$want" >"$stamp"
  fi
fi
