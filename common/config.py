"""Strict, typed configs: dataclass defaults <- a YAML file <- dotted command-line overrides.

Unknown keys fail with the closest valid key, wrong types fail naming the key and the
expected type, and every error names where the value came from (`file:line` or
`command line`). Each field carries a one-line doc (`field(default, "doc")`) that
`describe()` prints for `--help`, and every number its range (`field(3e-4, "doc", gt=0)`):
a value outside it, or a float that is NaN, infinite or beyond float32's range, fails when
the config is built, before anything is written. A YAML mapping that names a key twice is refused (naming both lines).
"""
from __future__ import annotations

import contextvars
import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from common.errors import UserError
from common.paths import decode_utf8
from common.ranks import say


class ConfigError(UserError):
    """A config value that fails a check; `key` is its dotted name."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


def field(default: Any, doc: str, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
          lt: float | None = None, resume: bool = False) -> Any:
    """A dataclass field with a one-line doc and, for numbers (or lists of numbers), its range:
    ge/gt/le/lt are the bounds >=, >, <=, <. List and dict defaults are copied per instance.
    `resume=True`: the value may change when a run is resumed, because it changes how the run is carried out or
    recorded (logging, checkpoints, kernels, exports), not what it trains (`may_change_on_resume`)."""
    meta = {"doc": doc, "range": {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None},
            "resume": resume}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


FLOAT_MAX = 3.4028234663852886e38  # float32's largest: every float of a config or a flag ends in a tensor or beside one


def too_large(value: int | float) -> bool:
    """NaN, infinite, or larger in size than FLOAT_MAX (torch refuses 1e300 as a learning rate, Python's T**2
    overflows at 1e200): never a value a user means. A whole number is compared exactly (math.isfinite would
    overflow on one of 400 digits)."""
    if isinstance(value, int):
        return abs(value) > FLOAT_MAX
    return not math.isfinite(value) or abs(value) > FLOAT_MAX


RANGE_WORDS = {"ge": "at least", "gt": "above", "le": "at most", "lt": "below"}
RANGE_TESTS = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b, "lt": lambda v, b: v < b}


def shown(value: float) -> str:
    """A bound or value as a person reads it: whole numbers in full (4,294,967,295, not 4.29497e+09)."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else f"{value:g}"


def range_text(bounds: dict) -> str:
    """`at least 0 and below 1` for {ge: 0, lt: 1}."""
    return " and ".join(f"{RANGE_WORDS[k]} {shown(v)}" for k, v in bounds.items())


def check_number(value: Any, bounds: dict, key: str) -> None:
    """A number must be finite and inside `bounds`; lists are checked item by item."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_number(item, bounds, f"{key}[{i}]")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and too_large(value):
        raise ConfigError(key, f"must be a finite number of at most {FLOAT_MAX:.4g} in size (float32's largest), got "
                               f"{value}")
    for kind, bound in bounds.items():
        if not RANGE_TESTS[kind](value, bound):
            raise ConfigError(key, f"must be {range_text(bounds)}, got {shown(value)}")


# --------------------------------------------------------------------------- YAML reading


def read_yaml(path: str | Path) -> tuple[dict, dict[str, int]]:
    """Parse a YAML mapping; return it and a map from dotted key to its 1-based line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path}: config file not found; give the path to a YAML file such as config/runs/demo-teacher.yaml"
        )
    text = decode_utf8(path.read_bytes(), str(path))
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{where}: YAML syntax error: {problem}; fix the file") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise UserError(f"{path}:1: the top level must be a mapping of config sections, got {type(data).__name__}")
    lines: dict[str, int] = {}

    def walk(n: yaml.Node, prefix: str) -> None:
        if isinstance(n, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in n.value:
                key = f"{prefix}{key_node.value}"
                line = key_node.start_mark.line + 1
                if key_node.value in seen:  # YAML would keep the last one silently
                    raise UserError(
                        f"{path}:{line}: key '{key}' is given twice (lines {seen[key_node.value]} and {line}); keep one"
                    )
                seen[key_node.value] = line
                lines[key] = line
                walk(value_node, key + ".")
        elif isinstance(n, yaml.SequenceNode):
            for item in n.value:
                walk(item, prefix)

    walk(node, "")
    return data, lines


def parse_override(text: str) -> tuple[str, Any]:
    """`optim.lr=3e-4` -> ("optim.lr", "3e-4"-parsed-as-YAML)."""
    if "=" not in text:
        raise UserError(f"command line: '{text}' is not an override; write dotted.key=value, e.g. optim.lr=3e-4")
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


# --------------------------------------------------------------------------- building


def _field_names(cls: type, prefix: str = "") -> list[str]:
    names = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        names.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            names.extend(_field_names(hints[f.name], prefix + f.name + "."))
    return names


def suggest(key: str, candidates: list[str]) -> str:
    """' (did you mean ...?)' naming the closest candidate: the closest whole name when it ends as `key` does, else
    the closest of those that end so (`train.lr` -> `optim.lr`), else the closest whole name, else the closest last
    part; '' when none is close."""
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    same_leaf = [c for c in candidates if "." in key and "." in c and c.rsplit(".", 1)[-1] == leaf and c != key]
    if same_leaf and not (close and close[0].rsplit(".", 1)[-1] == leaf):
        close = difflib.get_close_matches(key, same_leaf, n=1, cutoff=0.0)
    if not close:  # a typo in the last part only: compare the leaf names
        leaves = {c.rsplit(".", 1)[-1]: c for c in candidates}
        close = [leaves[m] for m in difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)]
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    return "null" if tp is type(None) else tp.__name__


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming the key and expected type."""
    origin = get_origin(tp)
    wrong = ConfigError(key, f"expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):  # a list item that is itself a section (a task's `sources`)
        if not isinstance(value, dict):
            raise ConfigError(key, f"'{key}' is a section; expected a mapping of its keys, got {value!r}")
        return _build(tp, value, key + ".", _field_names(tp, key + "."))
    if origin in (typing.Union, types.UnionType):
        for option in get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise wrong
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(
            key,
            f"expected one of {', '.join(repr(a) for a in get_args(tp))}, got "
            f"{value!r}{suggest(str(value), [str(a) for a in get_args(tp)])}",
        )
    if tp is type(None):
        if value is None:
            return None
        raise wrong
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise wrong
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise wrong
    if tp is float:
        # YAML 1.1 reads `3e-4` as a string; accept any string that is a float literal.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise wrong
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise wrong
    if origin is list:
        if not isinstance(value, list):
            if isinstance(value, str):  # a comma list from the command line
                value = [v for v in value.split(",") if v]
            else:
                raise wrong
        (item,) = get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise wrong
    raise TypeError(f"unsupported config type {tp} for {key}")


def _renamed(cls: type, data: dict, prefix: str) -> dict:
    """A section's `RENAMED` maps an old key to (its new key, old value -> new value): the old spelling is read as the
    new one, with a `note:` line on stderr saying what to write instead; both spellings together are an error."""
    renamed = getattr(cls, "RENAMED", {})
    if not any(name in data for name in renamed):
        return data
    data = dict(data)
    for old, (new, values) in renamed.items():
        if old not in data:
            continue
        if new in data:
            raise ConfigError(
                prefix + old, f"is the old name of {prefix}{new}, and both are set; keep {prefix}{new} only"
            )
        value = data.pop(old)
        data[new] = values.get(value, value) if isinstance(value, str) else value
        say(f"note: {prefix}{old}: {value!r} is the old spelling; write {prefix}{new}: {data[new]!r}", err=True)
    return data


def _build(cls: type, data: dict, prefix: str, all_keys: list[str]) -> Any:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    data = _renamed(cls, data, prefix)
    kwargs = {}
    for name, value in data.items():
        key = prefix + str(name)
        if name not in fields:
            raise ConfigError(key, f"unknown key '{key}'{suggest(key, all_keys)}")
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(key, f"'{key}' is a section; expected a mapping of its keys, got {value!r}")
            kwargs[name] = _build(tp, value, key + ".", all_keys)
        else:
            kwargs[name] = _coerce(value, tp, key)
            check_number(kwargs[name], fields[name].metadata.get("range", {}), key)
    return cls(**kwargs)


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _pop_dotted(data: dict, key: str) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        data = data.get(part)
        if not isinstance(data, dict):
            return
    data.pop(leaf, None)


# A top-level section that makes a YAML another command's file, and that command (named here as text only: common
# imports nothing above it; launch/kinds.py holds the run kinds): a file given to the wrong command says which to use.
READ_BY = {
    "stages": ("a grid", "python launch_grid.py"),
    "student": ("a distillation recipe", "python -m distill"),
    "distill": ("a distillation recipe", "python -m distill"),
    "wml": ("a weighted-mutual-learning recipe", "python -m distill.wml train"),
    "model": ("a training recipe", "python -m train"),
}


def wrong_command(schema: type, data: dict) -> tuple[str, str] | None:
    """(the section, what to say) when `data` holds a section that marks another command's file, else None."""
    fields = {f.name for f in dataclasses.fields(schema)}
    for key, (what, command) in READ_BY.items():
        if key in data and key not in fields:
            return key, f"'{key}:' makes this file {what}, which this command does not read; run {command} on it"
    return None


@dataclasses.dataclass(frozen=True)
class Plan:
    """A grid planning its points: every check runs now except those the point can only pass when it runs. The
    folders of other runs (teachers, references) may be an earlier stage's output; and `elsewhere` (a SLURM
    executor), the point runs on another machine, whose GPU and compiler are checked there."""

    elsewhere: bool


_PLAN: contextvars.ContextVar[Plan | None] = contextvars.ContextVar("plan", default=None)


def planning() -> bool:
    """True while a grid plans its points: a check of another run's folder waits for the point to run."""
    return _PLAN.get() is not None


def planned_elsewhere() -> bool:
    """True while a grid plans points that run on other machines: a check of this machine's GPU or compiler waits."""
    plan = _PLAN.get()
    return plan is not None and plan.elsewhere


def load(schema: type, path: str | Path | None, overrides: list[str] = (), sections: tuple[str, ...] | None = None,
         check: bool = True, plan: Plan | None = None):
    """Build `schema` from its defaults, then the YAML at `path`, then `overrides`.

    `sections`, when given, restricts strict checking to those top-level sections; the
    others are left to the program that owns them (a run YAML read by `tokenizer prepare`).
    A schema's `ALTERNATIVES` lists groups of keys of which a config sets one (a run's budget:
    steps, epochs or words): one of them overridden on the command line replaces whichever
    the YAML set, so `train.max_steps=20` works on a recipe budgeted in epochs.
    Runs `check()` on the result if the schema defines it (and `check`), under `plan` when a grid plans
    the run (`Plan`). Errors name file:line or `command line` and the key.
    """
    data, lines = read_yaml(path) if path is not None else ({}, {})
    source = {k: f"{path}:{line}" for k, line in lines.items()}
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
        source[key] = "command line"
    for group in getattr(schema, "ALTERNATIVES", ()):  # one key of the group on the command line replaces the YAML's
        if any(source.get(key) == "command line" for key in group):
            for key in group:
                if source.get(key) != "command line":
                    _pop_dotted(data, key)
    if sections is not None:
        data = {k: v for k, v in data.items() if k in sections}
    other = wrong_command(schema, data)
    if other is not None:
        raise UserError(f"{source.get(other[0], path)}: {other[1]}")

    def where(key: str) -> str:
        """The source of `key` or of its nearest parent (`a.b[0].c` -> `a.b[0]` -> `a.b` -> `a`)."""
        while key:
            if key in source:
                return source[key]
            key, cut = re.subn(r"(\[\d+\]|\.[^.\[]*)$", "", key)
            key = key if cut else ""
        return str(path) if path is not None else "config"

    try:
        cfg = _build(schema, data, "", _field_names(schema))
        if check and hasattr(cfg, "check"):
            token = _PLAN.set(plan)
            try:
                cfg.check()
            finally:
                _PLAN.reset(token)
    except ConfigError as exc:
        raise UserError(f"{where(exc.key)}: {exc.key}: {exc.message}" if not exc.message.startswith("unknown key")
                        else f"{where(exc.key)}: {exc.message}") from None
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def may_change_on_resume(cfg: Any, prefix: str = "") -> set[str]:
    """Dotted keys of `cfg`'s fields declared with `field(..., resume=True)`, sections walked."""
    keys = set()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys |= may_change_on_resume(value, f"{prefix}{f.name}.")
        elif f.metadata.get("resume"):
            keys.add(prefix + f.name)
    return keys


def describe(schema: type, prefix: str = "") -> list[str]:
    """One line per field: `key (type, default X): doc`, for `--help`."""
    out = []
    hints = get_type_hints(schema)
    for f in dataclasses.fields(schema):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.append(f"{prefix}{f.name}:  {f.metadata.get('doc', '')}")
            out.extend(describe(tp, prefix + f.name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        bounds = f.metadata.get("range")
        out.append(
            f"  {prefix}{f.name} ({_type_name(tp)}, default {default!r}{', ' + range_text(bounds) if bounds else ''}): "
            f"{f.metadata.get('doc', '')}" + (" [may change on --resume]" if f.metadata.get("resume") else "")
        )
        item = get_args(tp)[0] if get_origin(tp) is list and get_args(tp) else None
        if item is not None and dataclasses.is_dataclass(item):  # a list of sections: describe one item's keys
            out.extend("  " + line for line in describe(item, f"{prefix}{f.name}[]."))
    return out
