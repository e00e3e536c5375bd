"""The entry point of a package whose commands an open issue has not built yet: honest `--help`, exit 2 otherwise."""
from __future__ import annotations

import argparse
import sys


def main(package: str, doc: str, issue: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {package}", description=doc,
                                     epilog=f'Not implemented yet: see the issue "{issue}".')
    parser.add_argument("command", nargs="?", help="(none yet)")
    parser.parse_known_args(argv)
    print(f'error: python -m {package} has no commands yet (issue "{issue}"); see README.md', file=sys.stderr)
    return 2
