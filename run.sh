#!/usr/bin/env bash
# Fresh machine to results: install (idempotent), run the default pipeline with DVC, print the results table.
set -euo pipefail
cd "$(dirname "$0")"
make --no-print-directory install
export PATH="$PWD/.venv/bin:$PATH" DVC_NO_ANALYTICS=1 DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
dvc repro "$@"
bridgeflow summary
