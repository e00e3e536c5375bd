"""python -m results: not built yet (issue "Cluster runs"); `--help` says so and any command exits 2."""
import sys

from common.placeholder import main

if __name__ == "__main__":
    sys.exit(main("results", "Collecting run directories into tables, plots and significance tests.", "Cluster runs"))
