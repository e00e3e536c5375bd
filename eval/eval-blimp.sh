#!/usr/bin/env bash
# Zero-shot evaluation of one model on BLiMP (filtered) and the BLiMP supplement, as the BabyLM reference repos' eval-blimp.sh.
#   bash eval/eval-blimp.sh MODEL_DIR [python -m eval options, e.g. --backend mlm --data-dir DIR]   (any folder)
WRAPPER="$0" exec bash "$(dirname "${BASH_SOURCE[0]}")/run-tasks.sh" blimp_filtered,blimp_supplement "$@"
