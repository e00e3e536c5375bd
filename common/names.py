"""A grid point's folder name: written by the grid (grid/plan.py), read back by the results (results/seeds.py)."""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

NAME_BYTES = 200  # a point's folder name, hash included, stays well under the 255 bytes of one path component
SAFE = re.compile(r"[^A-Za-z0-9._+=,-]+")


def _fmt(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _short(key: str) -> str:
    return ".".join(key.split(".")[-2:])


def point_name(base: str, values: dict[str, Any]) -> str:
    """`<base>__<key>=<value>...`, one safe folder name: characters outside [A-Za-z0-9._+=,-] become '-'
    (a path value's '/' never nests folders, '..' never climbs out), and a name that had to change or is
    long gets a hash of the exact values (grid.json keeps them whole)."""
    readable = base + "".join(f"__{_short(k)}={_fmt(v)}" for k, v in values.items())
    name = SAFE.sub("-", readable).strip("-") or "point"
    if name.startswith("."):
        name = "p" + name
    if name == readable and len(name.encode()) <= NAME_BYTES:
        return name
    digest = hashlib.sha256(json.dumps([base, values], sort_keys=True, default=str).encode()).hexdigest()[:10]
    return name.encode()[:NAME_BYTES - 12].decode(errors="ignore").rstrip("-") + f"__{digest}"


def without_axis(name: str, key: str) -> str:
    """`name` (a `point_name`) without the part axis `key` wrote: the name a setting has across that axis's values
    (its runs from several seeds: `kd__train.seed=7` -> `kd`). A hashed name keeps what it has."""
    return re.sub(re.escape(f"__{_short(key)}=") + r"(?:(?!__).)*", "", name)
