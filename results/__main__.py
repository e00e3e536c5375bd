"""python -m results: Collecting run directories into tables, plots and significance tests.

Not built yet: the open issue "Cluster runs" adds its commands. Until then `--help` says so
and any command exits 2 rather than pretending to work.
"""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m results", description="Collecting run directories into tables, plots and significance tests.",
                                     epilog="Not implemented yet: see the issue \"Cluster runs\".")
    parser.add_argument("command", nargs="?", help="(none yet)")
    args, _ = parser.parse_known_args(argv)
    print("error: python -m results has no commands yet (issue \"Cluster runs\"); see README.md", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
