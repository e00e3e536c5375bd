#!/usr/bin/env bash
# Shared body of eval-blimp.sh, eval-ewok.sh and eval-all.sh:
#   bash eval/run-tasks.sh TASKS MODEL_DIR [python -m eval options]
# Runs from any folder. Data: --data-dir, else $BABYDISTILL_EVAL_DATA, else ./evaluation_data.
# EWoK's zip: --ewok-zip PATH (password: --ewok-password or $EWOK_PASSWORD).
set -euo pipefail
TASKS="$1"
shift
if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: bash ${WRAPPER:-$0} MODEL_DIR [python -m eval options]" >&2
  exit 2
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
MODEL="$1"
shift
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m eval "$MODEL" --tasks "$TASKS" "$@"
