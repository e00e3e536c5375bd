"""python -m launch.where RECIPE [key=value ...]: print `<kind> <run directory>` of a run YAML with
overrides (kind: train, distill or wml), for the slurm/*.slurm templates. Exit 2 on a bad recipe."""
from __future__ import annotations

import sys

from common import config as cfglib
from common.errors import UserError, exit_on_user_error, leave
from launch.kinds import recipe_and_overrides, recipe_kind, schema


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise UserError("python -m launch.where RECIPE [key=value ...]: give a run YAML")
    recipe, overrides = recipe_and_overrides(argv)
    kind = recipe_kind(cfglib.read_yaml(recipe)[0])
    cfg = cfglib.load(schema(kind), recipe, overrides, check=False)
    print(kind, cfg.output.run_path)
    return 0


if __name__ == "__main__":
    leave(main())
