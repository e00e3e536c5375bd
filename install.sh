#!/usr/bin/env bash
# One command from a fresh clone to a working install: .venv with the pinned CPU torch 2.13.0 (PIP_CONSTRAINT keeps
# any later install from swapping in a multi-GB CUDA build), every requirement and the project itself (editable).
# Safe to run again: it reuses .venv and pip skips what is installed. On a GPU node, install the torch build for
# your CUDA into .venv first and run with BABYDISTILL_NO_CONSTRAINT=1.
set -euo pipefail
cd "$(dirname "$0")"
[[ -x .venv/bin/python ]] || python3 -m venv .venv
if [[ -z "${BABYDISTILL_NO_CONSTRAINT:-}" ]]; then
  export PIP_CONSTRAINT="$PWD/constraints.txt"
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
if [[ -z "${BABYDISTILL_NO_CONSTRAINT:-}" ]]; then
  .venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
fi
echo "installed: . .venv/bin/activate, then python launch_grid.py config/grids/demo.yaml"
