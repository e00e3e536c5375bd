"""python -m eval: Zero-shot minimal-pair evaluation (BLiMP, BLiMP supplement, EWoK) of causal and masked LMs.

Not built yet: the open issue "Zero-shot evaluation" adds its commands. Until then `--help` says so
and any command exits 2 rather than pretending to work.
"""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval", description="Zero-shot minimal-pair evaluation (BLiMP, BLiMP supplement, EWoK) of causal and masked LMs.",
                                     epilog="Not implemented yet: see the issue \"Zero-shot evaluation\".")
    parser.add_argument("command", nargs="?", help="(none yet)")
    args, _ = parser.parse_known_args(argv)
    print("error: python -m eval has no commands yet (issue \"Zero-shot evaluation\"); see README.md", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
