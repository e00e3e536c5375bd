"""python -m distill: Distillation from teachers and weighted mutual learning (losses, loss registry, distillation trainer).

Not built yet: the open issue "Distillation from teachers" adds its commands. Until then `--help` says so
and any command exits 2 rather than pretending to work.
"""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill", description="Distillation from teachers and weighted mutual learning (losses, loss registry, distillation trainer).",
                                     epilog="Not implemented yet: see the issue \"Distillation from teachers\".")
    parser.add_argument("command", nargs="?", help="(none yet)")
    args, _ = parser.parse_known_args(argv)
    print("error: python -m distill has no commands yet (issue \"Distillation from teachers\"); see README.md", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
