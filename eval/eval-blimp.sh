#!/usr/bin/env bash
# Zero-shot evaluation of one model on BLiMP (filtered) and the BLiMP supplement, as the BabyLM reference repos' eval-blimp.sh.
#   bash eval/eval-blimp.sh MODEL_DIR [more python -m eval options, e.g. --backend mlm --data-dir DIR]
# Runs from any folder. Data: --data-dir, else $BABYDISTILL_EVAL_DATA, else ./evaluation_data.
# EWoK's zip: --ewok-zip PATH (password: --ewok-password or $EWOK_PASSWORD).
set -euo pipefail
if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: bash $0 MODEL_DIR [python -m eval options]" >&2
  exit 2
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
MODEL="$1"
shift
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m eval "$MODEL" --tasks blimp_filtered,blimp_supplement "$@"
