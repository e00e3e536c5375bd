"""Task families as data: one YAML per family in `eval/tasks/`, read into items to score.

A family names where its JSONL files are (a glob under the data folder, optionally inside
a .tar.gz or a password-protected .zip), which fields hold the choices, and whether the
choices are whole sentences (no context) or continuations of a context field. Each file is
one subtask (a BLiMP paradigm, an EWoK domain) unless `subtask` names another; the first
choice is the correct one. For the 2025 convention a family also says, as templates over
the row's fields, which text is scored (`sentence`) and which suffix of it counts
(`completion`), exactly as the 2025 pipeline's `read_files.py` builds them.
A user adds a minimal-pair task by adding a YAML file here, or by passing its path.
"""
from __future__ import annotations

import fnmatch
import functools
import json
import math
import os
import string
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common.config import ConfigError, field, load, suggest
from common.errors import UserError
from common.paths import REPO, decode_utf8, local_folder
from eval import release

TASKS_DIR = REPO / "eval" / "tasks"
SUITES = {  # --suite: the 2025 pipeline's zero-shot tasks; the fast variant reads the *_fast folders and has no COMPS
    "babylm2025": [
        "blimp_filtered",
        "blimp_supplement",
        "ewok_filtered",
        "entity_tracking",
        "wug_adj",
        "wug_past",
        "comps",
        "reading",
    ],
    "babylm2025-fast": [
        "blimp_filtered",
        "blimp_supplement",
        "ewok_filtered",
        "entity_tracking",
        "wug_adj",
        "wug_past",
        "reading",
    ],
}
METRICS = ("accuracy", "spearman", "delta_r2")


@dataclass
class Source:
    """One place a family's files may be; the first source that exists is used."""

    files: str = field("", "glob of JSONL files, relative to the data folder (or inside `archive`)")
    archive: str | None = field(None, "a .tar.gz or .zip in the data folder that holds `files`")
    password: bool = field(False, "the zip is password-protected (EWoK): --ewok-password or $EWOK_PASSWORD")


@dataclass
class TaskSpec:
    """A task family: where its items are and how each item becomes choices."""

    description: str = field("", "one line shown in the summary")
    data_dir: str | None = field(
        None, "default data folder when --data-dir is not given (relative to the working folder or the repository)"
    )
    sources: list[Source] = field([], "where the files are, tried in order")
    choices: list[str] = field([], "fields that hold the choices, the correct one first")
    correct: int = field(0, "index in `choices` of the correct choice", ge=0)
    context: str | None = field(None, "field holding a context the choices continue; null scores whole sentences")
    share_text: bool = field(
        True, "write item text into pairs/<task>.jsonl (false for data under a sharing rule, as EWoK)"
    )
    kind: str = field(
        "pairs", "pairs: choices ranked by score; reading: word surprisal against reading times (eval/reading.py)"
    )
    fast_sources: list[Source] = field(
        [], "where the fast variant's files are (--suite babylm2025-fast); empty: no fast variant"
    )
    only_convention: str | None = field(
        None, "the one convention the task exists in (babylm2025 for the 2025-only tasks)"
    )
    choice_list: str | None = field(
        None, "a field holding all choices: a JSON list, or a string cut at `choice_separator`"
    )
    choice_separator: str = field("\t", "separator of the choices in a `choice_list` string (WUG: a tab)")
    sentence: str = field(
        "{choice}", "2025: the text scored for each choice, a template over the row's fields and {choice}"
    )
    completion: str = field("{choice}", "2025: the suffix of `sentence` whose tokens are scored (by character offsets)")
    subtask: str = field(
        "{file}", "the subtask (the 2025 pipeline's UID) of a row: a template over its fields and {file}"
    )
    subtask_names: dict[str, str] = field({}, "renames of subtask values (COMPS: comps_base -> base, ...)")
    average: str = field(
        "subtasks", "subtasks: mean over subtasks; files: mean over each file's subtasks, then over files"
    )
    metric: str = field("accuracy", "accuracy; spearman (rho of P(first choice) against `target`); delta_r2 (reading)")
    target: str | None = field(None, "the numeric field a spearman task correlates with (WUG: ratio)")
    required: list[str] = field([], "further fields every row must have (entity tracking: numops)")

    def check(self) -> None:
        if not self.sources:
            raise ConfigError("sources", "missing: list where the files are, e.g. [{files: blimp_filtered/*.jsonl}]")
        for key, sources in (("sources", self.sources), ("fast_sources", self.fast_sources)):
            for i, src in enumerate(sources):
                if not src.files:
                    raise ConfigError(
                        f"{key}[{i}].files", "missing: a glob of JSONL files, e.g. blimp_filtered/*.jsonl"
                    )
                if src.archive is None and Path(src.files).is_absolute():
                    raise ConfigError(f"{key}[{i}].files", f"must be a glob inside the data folder (--data-dir or "
                                                           f"data_dir), e.g. pairs/*.jsonl; got {src.files!r}")
        for key, allowed in (("kind", ("pairs", "reading")), ("metric", METRICS), ("average", ("subtasks", "files")),
                             ("only_convention", (None, "babylm2024", "babylm2025"))):
            if getattr(self, key) not in allowed:
                raise ConfigError(
                    key, f"must be one of {', '.join(str(a) for a in allowed)}, got {getattr(self, key)!r}"
                )
        if self.metric == "spearman" and not self.target:
            raise ConfigError(
                "target", "missing: a spearman task names the numeric field it correlates with (e.g. ratio)"
            )
        if self.kind == "reading" or self.choice_list:
            return
        if len(self.choices) < 2:
            raise ConfigError(
                "choices", "missing: list at least two fields that hold the choices, e.g. [sentence_good, sentence_bad]"
            )
        twice = next((c for i, c in enumerate(self.choices) if c in self.choices[:i]), None)
        if twice is not None:  # every item would tie, and a tie counts as correct
            raise ConfigError("choices", f"names field '{twice}' twice; list each field that holds a choice once")
        if not 0 <= self.correct < len(self.choices):
            raise ConfigError("correct", f"must index `choices` (0..{len(self.choices) - 1}), got {self.correct}")


@dataclass
class Item:
    """One minimal pair (or n-tuple): the choices to compare and where the item came from."""

    subtask: str
    index: int  # 0-based position within its subtask file (blank lines skipped)
    where: str  # file:line, for messages
    context: str  # "" for whole-sentence tasks
    choices: list[str]
    correct: int
    file: str = ""  # the file's stem
    sentences: list[str] | None = None  # 2025: the text scored per choice
    completions: list[str] | None = None  # 2025: the scored suffix of each sentence
    target: float | None = None  # spearman tasks: the human value (WUG's ratio)


@dataclass
class Task:
    name: str
    spec: TaskSpec
    spec_file: Path
    items: list[Item]
    origin: str  # the files the items came from, for the result file
    fast: bool = False  # read from the fast variant's files
    table: object = None  # reading: the pandas frame of the CSV

    @property
    def subtasks(self) -> list[str]:
        return sorted({item.subtask for item in self.items})

    @functools.cached_property
    def partial_release(self) -> str | None:
        """How the items differ from the BabyLM release's (`eval.release.gap`), or None; counted once per task."""
        return release.gap(self)


def task_names(text: str) -> list[str]:
    """The task names of a comma-separated `--tasks`, each once, in order (`a,b,a` scores a and b once each)."""
    return list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))


def available() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def unknown_task(name: str) -> str | None:
    """Why `name` is not a task (a family in eval/tasks/ or the path of a task YAML), or None."""
    if name.endswith((".yaml", ".yml")):
        return None if Path(name).is_file() else f"task file {name} does not exist"
    if (TASKS_DIR / f"{name}.yaml").is_file():
        return None
    return (f"unknown task '{name}'{suggest(name, available())}; known: {', '.join(available())} "
            f"(or give the path of a task YAML)")


def resolve_spec(name: str) -> tuple[str, Path]:
    """A family name from eval/tasks/, or the path of a task YAML; unknown names suggest the closest."""
    problem = unknown_task(name)
    if problem:
        raise UserError(f"--tasks: {problem}")
    if name.endswith((".yaml", ".yml")):
        return Path(name).stem, Path(name)
    return name, TASKS_DIR / f"{name}.yaml"


def data_dir_for(spec: TaskSpec, given: str | None, name: str) -> Path:
    if given is None and spec.data_dir is None:
        given = os.environ.get("BABYDISTILL_EVAL_DATA")
    if given is not None:
        if not Path(given).is_dir():
            raise UserError(f"--data-dir {given}: no such folder; give BabyLM's evaluation_data folder")
        return Path(given)
    if spec.data_dir is not None:
        if (found := local_folder(spec.data_dir)) is not None:
            return found
        hint = "run `python -m train config/runs/demo-teacher.yaml` (or `python -m tokenizer demo cache/demo`) first" \
            if name == "demo_pairs" else "or pass --data-dir"
        raise UserError(f"task {name}: its data folder {spec.data_dir} does not exist; {hint}")
    if (found := local_folder("evaluation_data")) is not None:
        return found
    raise UserError(f"task {name}: no data folder; pass --data-dir /path/to/evaluation_data (BabyLM's evaluation data; "
                    f"`python -m eval download` fetches it)")


def _fill(template: str, row: dict, extra: dict, where: str, key: str, name: str) -> str:
    """`template` with {field} replaced by the row's values (and {choice}, {file}); a missing field is one line."""
    values = {**row, **extra}
    for _, fieldname, _, _ in string.Formatter().parse(template):
        if fieldname is not None and fieldname not in values:
            raise UserError(f"{where}: no field '{fieldname}' (task {name}'s `{key}` template {template!r} reads it)"
                            f"{suggest(fieldname, list(row))}")
    return template.format_map({k: ("" if v is None else v) for k, v in values.items()})


def _choices(row: dict, spec: TaskSpec, where: str, name: str) -> list[str]:
    if not spec.choice_list:
        return [row[c] for c in spec.choices]
    value = row[spec.choice_list]
    if isinstance(value, str):
        parts = value.split(spec.choice_separator)
        if len(parts) < 2:
            raise UserError(f"{where}: field '{spec.choice_list}' must hold at least two choices separated by "
                            f"{spec.choice_separator!r}, got {value[:80]!r}")
        return parts
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(v, str) and v for v in value):
        raise UserError(
            f"{where}: field '{spec.choice_list}' must be a list of at least two non-empty strings, got "
            f"{str(value)[:80]}"
        )
    return value


def _read_jsonl(text: str, where: str, subtask: str, spec: TaskSpec, name: str) -> list[Item]:
    items = []
    needed = ([spec.context] if spec.context else []) + ([spec.choice_list] if spec.choice_list else spec.choices) \
        + ([spec.target] if spec.target else []) + spec.required
    counts: dict[str, int] = {}
    for at, row in jsonl_rows(text, where, needed):
        for key in needed:
            if key not in row:
                raise UserError(f"{at}: no field '{key}' (task {name} reads {needed}){suggest(key, list(row))}")
            if key == spec.choice_list or key in spec.required:
                continue
            if key == spec.target:
                if isinstance(row[key], bool) or not isinstance(row[key], (int, float)) or not math.isfinite(row[key]):
                    raise UserError(f"{at}: field '{key}' must be a finite number, got {row[key]!r}")
                continue
            if not isinstance(row[key], str) or not row[key].strip():
                raise UserError(f"{at}: field '{key}' must be a non-empty string, got {row[key]!r}")
        choices = _choices(row, spec, at, name)
        sub = _fill(spec.subtask, row, {"file": subtask}, at, "subtask", name)
        sub = spec.subtask_names.get(sub, sub)
        context = row[spec.context] if spec.context else ""
        sentences = [_fill(spec.sentence, row, {"choice": c, "context": context, "file": subtask}, at, "sentence", name)
                     for c in choices]
        completions = [
            _fill(spec.completion, row, {"choice": c, "context": context, "file": subtask}, at, "completion", name)
            for c in choices
        ]
        for s_, c_ in zip(sentences, completions):
            if not s_.endswith(c_):
                raise UserError(f"{at}: the completion {c_[:60]!r} is not the end of the sentence {s_[-60:]!r} "
                                f"(task {name}'s `sentence` and `completion` templates disagree)")
        items.append(Item(subtask=sub, index=counts.get(sub, 0), where=at, context=context, choices=choices,
                          correct=spec.correct, file=subtask, sentences=sentences, completions=completions,
                          target=float(row[spec.target]) if spec.target else None))
        counts[sub] = counts.get(sub, 0) + 1
    return items


def jsonl_rows(text: str, where: str, fields: list[str]) -> Iterator[tuple[str, dict]]:
    """("file:line", object) for every non-empty line of a JSONL text; a line that is not a JSON object is one error
    line naming it. Lines are split at \\n only: JSON strings may hold U+2028, U+0085 and the like."""
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        at = f"{where}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{at}: not valid JSON ({exc.msg}, column {exc.colno}); fix or delete the line") from None
        if not isinstance(row, dict):
            raise UserError(f"{at}: expected a JSON object with fields {fields}, got {type(row).__name__}")
        yield at, row


def _from_archive(archive: Path, pattern: str, password: str | None, needs_password: bool) -> list[tuple[str, str]]:
    """(member name, text) for archive members matching `pattern`, read in memory: nothing is extracted to disk.
    A damaged archive (truncated, a broken deflate stream, a bad CRC) is one error line naming it."""
    from common.errors import reading

    out = []
    if archive.suffix == ".zip":
        if needs_password and not password:
            raise UserError(f"{archive}: the zip is password-protected; pass --ewok-password (or set EWOK_PASSWORD)")
        with reading(archive, "the zip", "download it again"), zipfile.ZipFile(archive) as zf:
            for member in sorted(zf.namelist()):
                if fnmatch.fnmatch(member, pattern):
                    try:
                        data = zf.read(member, pwd=password.encode() if password else None)
                    except RuntimeError as exc:
                        if "password" in str(exc).lower():
                            raise UserError(f"{archive}: wrong password for {member}; check --ewok-password") from None
                        raise
                    except zipfile.BadZipFile as exc:  # a wrong ZipCrypto password can also fail the CRC
                        raise UserError(
                            f"{archive}: cannot read {member} ({exc}); wrong --ewok-password or a damaged zip"
                        ) from None
                    out.append((member, decode_utf8(data, f"{archive}!{member}")))
    else:
        with reading(archive, "the archive", "download it again"), tarfile.open(archive) as tf:
            for member in sorted(tf.getmembers(), key=lambda m: m.name):
                if member.isfile() and fnmatch.fnmatch(member.name, pattern):
                    out.append((member.name, decode_utf8(tf.extractfile(member).read(), f"{archive}!{member.name}")))
    return out


def absolute(origin: str) -> str:
    """`origin` (task files: a path or glob, or archive!member) with its path made absolute, as a result file
    records it."""
    path, sep, member = origin.partition("!")
    return os.path.abspath(path) + sep + member


def same_files(recorded: str, origin: str) -> bool:
    """Whether a result file's recorded task files are `origin`'s. Both are resolved, so that a folder written another
    way (relative, with `..`, through a symlink) is the same files; a relative record (written before 2026-12-03) is
    read from the working folder."""
    def key(text: str) -> str:
        path, sep, member = text.partition("!")
        return str(Path(path).resolve()) + sep + member

    return key(recorded) == key(origin)


def _check_correlatable(items: list[Item], target: str, origin: str, name: str) -> None:
    """A spearman task's items can give a rho: at least two items, and not every `target` the same."""
    if len(items) < 2:
        raise UserError(f"task {name}: the files at {origin} hold 1 item, and Spearman's rho needs at least 2; "
                        "check the download")
    if len({it.target for it in items}) == 1:
        raise UserError(f"task {name}: every item at {origin} has {target} {items[0].target!r}, so Spearman's rho "
                        "against it is undefined; check the download")


def load_task(name: str, data_dir: str | None = None, password: str | None = None,
              archive_override: Path | None = None, fast: bool = False) -> Task:
    """Read a family's spec and all its items. `archive_override` replaces the archive of the first archive source;
    `fast` reads the fast variant's files (`fast_sources`)."""
    name, spec_file = resolve_spec(name)
    spec = load(TaskSpec, spec_file)
    sources = spec.fast_sources if fast else spec.sources
    if fast and not sources:
        raise UserError(
            f"task {name} has no fast variant (no fast_sources in {spec_file}); drop it from the fast suite"
        )
    root = data_dir_for(spec, data_dir, name) if archive_override is None else None  # --ewok-zip needs no data folder
    if spec.kind == "reading":
        from eval.reading import read_table

        for src in sources:
            paths = sorted(p for p in root.glob(src.files) if p.is_file())
            if paths:
                table = read_table(paths[0])
                return Task(
                    name=name, spec=spec, spec_file=spec_file, items=[], origin=absolute(str(paths[0])), fast=fast,
                    table=table
                )
        raise UserError(f"task {name}: no files found (looked for {', '.join(str(root / s.files) for s in sources)}); "
                        f"pass --data-dir with BabyLM's evaluation_data (its full_eval or fast_eval folder)")
    tried = []
    for src in sources:
        if archive_override is not None and src.archive is None:
            continue  # an explicit archive (--ewok-zip) wins over plain files in the data folder
        if src.archive is not None:
            archive = archive_override if archive_override is not None else root / src.archive
            tried.append(f"{archive}!{src.files}")
            if not archive.is_file():
                continue
            files = _from_archive(archive, src.files, password, src.password)
            origin = absolute(f"{archive}!{src.files}")
            where = lambda member, a=archive: f"{a}!{member}"  # noqa: E731
        else:
            tried.append(str(root / src.files))
            paths = sorted(p for p in root.glob(src.files) if p.is_file())
            if not paths:
                continue
            files = [(str(p), decode_utf8(p.read_bytes(), str(p))) for p in paths]
            origin = absolute(str(root / src.files))
            where = lambda member: member  # noqa: E731
        if not files:
            continue
        items = []
        for member, text in files:
            items.extend(_read_jsonl(text, where(member), Path(member).stem, spec, name))
        if not items:
            raise UserError(
                f"task {name}: the files at {origin} hold no items (every line is empty); check the download"
            )
        odd = next((it for it in items if len(it.choices) != len(items[0].choices)), None)
        if odd is not None:
            raise UserError(
                f"{odd.where}: {len(odd.choices)} choices, but {items[0].where} has {len(items[0].choices)}; "
                f"every item of task {name} needs the same number of choices"
            )
        if spec.metric == "spearman":
            _check_correlatable(items, spec.target, origin, name)
        return Task(name=name, spec=spec, spec_file=spec_file, items=items, origin=origin, fast=fast)
    raise UserError(
        f"task {name}: no files found (looked for {', '.join(tried)}); pass --data-dir with BabyLM's evaluation_data"
    )
