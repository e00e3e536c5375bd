"""python -m eval: not built yet (issue "Zero-shot evaluation"); `--help` says so and any command exits 2."""
import sys

from common.placeholder import main

if __name__ == "__main__":
    sys.exit(main("eval", "Zero-shot minimal-pair evaluation (BLiMP, BLiMP supplement, EWoK) of causal and masked LMs.", "Zero-shot evaluation"))
