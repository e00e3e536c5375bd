#!/usr/bin/env bash
# Zero-shot evaluation of one model on BLiMP, its supplement and EWoK, as the BabyLM reference repos' eval-all.sh.
#   bash eval/eval-all.sh MODEL_DIR [python -m eval options, e.g. --backend mlm --data-dir DIR]   (any folder)
WRAPPER="$0" exec bash "$(dirname "${BASH_SOURCE[0]}")/run-tasks.sh" blimp_filtered,blimp_supplement,ewok_filtered "$@"
