#!/usr/bin/env bash
# The prepared GPU check (issue 19): bash bench/gpu_check.sh [--cpu]. One markdown report: $OUT/gpu_check.md on the
# device machine (its files come back), else bench/gpu_check.md. Needs only the working tree and the installed venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[[ -x $PY ]] || PY=python3
exec "$PY" bench/gpu_check.py --out "${OUT:-bench}/gpu_check.md" "$@"
