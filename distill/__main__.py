"""python -m distill: not built yet (issue "Distillation from teachers"); `--help` says so and any command exits 2."""
import sys

from common.placeholder import main

if __name__ == "__main__":
    sys.exit(main("distill", "Distillation from teachers and weighted mutual learning (losses, loss registry, distillation trainer).", "Distillation from teachers"))
