#!/usr/bin/env bash
# Zero-shot evaluation of one model on EWoK (filtered), as the BabyLM reference repos' eval-ewok.sh.
#   bash eval/eval-ewok.sh MODEL_DIR [python -m eval options, e.g. --backend mlm --data-dir DIR]   (any folder)
WRAPPER="$0" exec bash "$(dirname "${BASH_SOURCE[0]}")/run-tasks.sh" ewok_filtered "$@"
