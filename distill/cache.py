"""The teacher-logit cache: run the teacher ensemble once over the packed training blocks and
store, per token, its top-k tempered log-probabilities, their token ids and the remaining mass.

    python -m distill cache-teachers CONFIG [key=value ...] [--out FOLDER] [--overwrite]

Layout of a cache folder (written into a temporary sibling, renamed when complete):
    cache.json                         the fingerprint, the format and the shapes; written last
    shard-00000.<array>.npy  [S, T, …] one file per array of the format (distill/cache_format.py),
                                       e.g. for fp16: logp [S, T, k], ids [S, T, k], rest [S, T]
    shard-00000.crc32.npy    [S]       each block's CRC-32, over its rows of the arrays above in order
The format (`distill.cache_format`) is recorded in cache.json; a run reads a cache of any format.
Every block read is checked against its CRC-32, so a file damaged since it was written (a flipped
bit, a partial copy) is an error that names the block, never a silently wrong KD target; running
cache-teachers again on a finished cache checks every block. Caches written before the checksums
(no `checksums` in cache.json) are read unchecked.
The fingerprint covers the teachers' files, the tokenizer, the packed data, the block size,
the temperature and ensemble of the KD terms it serves (they must agree) and k: training with a cache whose
fingerprint differs from the run's config is an error that names what changed, never a silent reuse.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import zlib
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError, if_interrupted, reading, stop_if_swallowed, writing
from common.locks import FolderLock, holding
from common.paths import building, hash_files, model_hash, remove_ours
from distill import cache_format

MANIFEST = "cache.json"
PARTIAL = ".babydistill-partial"  # marks the temporary folder a cache is written into
SHARD_BLOCKS = 1024
VERSION = 1
CHECKSUM = "crc32"  # the array beside each shard's: one CRC-32 a block


def block_checksum(shard: dict, row: int, names) -> int:
    """The CRC-32 of one block: its rows of the shard's arrays `names`, in order, as stored (a row of a C-ordered
    array or memory map is one contiguous buffer: nothing is copied)."""
    crc = 0
    for name in names:
        crc = zlib.crc32(np.ascontiguousarray(shard[name][row]), crc)
    return crc


def served_terms(cfg) -> list[str]:
    """The active logit terms a cache serves, or logit_kd when none is active."""
    from distill.losses import REGISTRY

    return [k for k in cfg.distill.losses.active() if REGISTRY[k].needs.cache and REGISTRY[k].needs.teacher_logits] or [
        "logit_kd"
    ]


def cached_distribution(cfg) -> tuple[float, str]:
    """(temperature, ensemble) of the one teacher distribution a cache holds: that of the active logit
    terms it serves (they must agree), or logit_kd's settings when none is active."""
    from common.config import ConfigError

    losses = cfg.distill.losses
    served = served_terms(cfg)
    settings = {k: (getattr(losses, k).temperature, getattr(losses, k).ensemble) for k in served}
    if len(set(settings.values())) > 1:
        listed = ", ".join(f"{k} (T={t:g}, {e})" for k, (t, e) in settings.items())
        raise ConfigError(
            "distill.teacher_cache",
            f"holds one teacher distribution, but {listed} read different ones; "
            f"give them the same temperature and ensemble, or run the teachers online",
        )
    temperature, ensemble = settings[served[0]]
    if ensemble == "per_teacher":
        raise ConfigError(
            f"distill.losses.{served[0]}.ensemble",
            "is per_teacher, but the cache holds one ensemble distribution; "
            "use mean_logits or mean_probs, or train with the teachers online",
        )
    return temperature, ensemble


def fingerprint(cfg, tokenizer_dir: Path, data_key: str) -> dict:
    temperature, ensemble = cached_distribution(cfg)
    return {
        "version": VERSION,
        "teachers": [model_hash(Path(t.path)) for t in cfg.distill.teachers],
        "tokenizer": hash_files(Path(tokenizer_dir), ("tokenizer.json",)),
        "data": data_key,
        "block_size": cfg.data.block_size,
        "temperature": temperature,
        "ensemble": ensemble,
        "top_k": cfg.distill.cache_top_k,
    }


EXPLAIN = {
    "teachers": "the teachers' weights or configs",
    "tokenizer": "the tokenizer",
    "data": "the packed training data",
    "block_size": "data.block_size",
    "temperature": "the KD terms' temperature (distill.losses.<term>.temperature)",
    "ensemble": "the KD terms' ensemble (distill.losses.<term>.ensemble)",
    "top_k": "distill.cache_top_k",
    "version": "the cache's layout version",
}


class TeacherCache:
    """Read side: cached targets for given block indices, after checking the fingerprint."""

    def __init__(self, folder: str | Path, expected: dict):
        self.folder = Path(folder)
        manifest = self.folder / MANIFEST
        if not manifest.is_file() or (self.folder / PARTIAL).is_file():
            raise UserError(f"distill.teacher_cache={folder}: no finished cache there (no {MANIFEST}, or one that a "
                            f"stopped cache-teachers left unfinished); run python -m distill cache-teachers with this "
                            f"config")
        fix = "write the cache again with python -m distill cache-teachers --overwrite"
        info = read_manifest(manifest, fix)
        for key, value in expected.items():
            if info["fingerprint"].get(key) != value:
                raise UserError(
                    f"distill.teacher_cache={folder}: stale cache: {EXPLAIN.get(key, key)} changed since it was "
                    "written "
                    f"({key}: cache {info['fingerprint'].get(key)!r}, run {value!r}); "
                    f"rerun python -m distill cache-teachers with --overwrite"
                )
        self.n_blocks, self.shard_blocks = info["n_blocks"], info["shard_blocks"]
        self.format, self.vocab = info["format"], info["vocab_size"]
        self.shards = []
        self.k, T = info["fingerprint"]["top_k"], info["fingerprint"]["block_size"]
        layout = cache_format.layout(self.format, self.k, self.vocab)
        self.arrays = list(layout)
        self.checked = info.get("checksums") == CHECKSUM  # caches written before the checksums are read unchecked
        tails = {name: (T, *tail) for name, (_, tail) in layout.items()} | ({CHECKSUM: ()} if self.checked else {})
        for i in range(info["n_shards"]):
            rows = min(self.shard_blocks, self.n_blocks - i * self.shard_blocks)
            shard = {}
            for name, tail in tails.items():
                shape = (rows, *tail)
                path = self.folder / f"shard-{i:05d}.{name}.npy"
                with reading(path, "a teacher-cache shard", fix):  # a truncated shard fails here, not mid-training
                    shard[name] = np.load(path, mmap_mode="r")
                if shard[name].shape != shape:
                    raise UserError(
                        f"{path}: holds {shard[name].shape}, not the {shape} of its manifest (damaged); {fix}"
                    )
            self.shards.append(shard)

    def damaged(self, block: int) -> bool:
        """Whether block `block` differs from what cache-teachers wrote (its CRC-32 differs); False for a cache
        without checksums."""
        s, o = divmod(block, self.shard_blocks)
        return self.checked and block_checksum(self.shards[s], o, self.arrays) != int(self.shards[s][CHECKSUM][o])

    def where(self, block: int) -> str:
        s, o = divmod(block, self.shard_blocks)
        return f"block {block} (row {o} of {self.folder}/shard-{s:05d}.*.npy)"

    def lookup(self, block_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-probs [B, T, k] float32, ids [B, T, k] long, rest [B, T] float32) for the given blocks, each checked
        against its CRC-32 first."""
        for block in block_index.tolist():
            if self.damaged(int(block)):
                raise UserError(f"distill.teacher_cache={self.folder}: {self.where(int(block))} differs from what "
                                f"cache-teachers wrote (its CRC-32 differs: the files were damaged since); write the "
                                f"cache again with python -m distill cache-teachers --overwrite")
        rows = [(int(i) // self.shard_blocks, int(i) % self.shard_blocks) for i in block_index.tolist()]
        arrays = {name: np.stack([self.shards[s][name][o] for s, o in rows]) for name in self.arrays}
        try:
            return cache_format.decode(self.format, arrays, self.k, self.vocab)
        except ValueError as exc:  # the s formats' sets check themselves
            raise UserError(f"distill.teacher_cache={self.folder}: blocks {block_index.tolist()}: {exc}; write the "
                            "cache again with python -m distill cache-teachers --overwrite") from None


@torch.no_grad()
def write_cache(out: Path, teachers, blocks, cfg, fp: dict, batch_size: int, device: torch.device, student=None,
                progress: bool = True) -> None:
    """Run the teachers over every block and write the shards, then the manifest, then rename into place.
    With `student`, the first batch also measures what the storage costs each served term (`storage_error`)."""
    tmp = out.with_name(out.name + ".partial")
    remove_ours(tmp, PARTIAL, "an unfinished teacher cache")  # left by a killed run; anything else is refused
    with building(tmp):  # a failure (a full disk, Ctrl-C) takes the unfinished cache with it, marked or not
        with writing(tmp):
            tmp.mkdir(parents=True)
            (tmp / PARTIAL).write_text("a teacher cache being written by python -m distill cache-teachers\n")
        manifest = write_shards(tmp, teachers, blocks, cfg, fp, batch_size, device, student, progress)
        with writing(tmp):
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    replace(out, tmp)


def write_shards(tmp: Path, teachers, blocks, cfg, fp: dict, batch_size: int, device: torch.device, student,
                 progress: bool) -> dict:
    """`write_cache`'s shards, written into `tmp`; returns the cache's manifest."""
    from tqdm import tqdm

    from distill.teachers import run_teachers

    k, fmt = cfg.distill.cache_top_k, cfg.distill.cache_format
    vocab = teachers[0].model.config.vocab_size
    n, T = len(blocks), cfg.data.block_size
    n_shards = -(-n // SHARD_BLOCKS)
    errors = None
    bar = tqdm(total=n, desc="caching teacher top-k", unit="block", disable=not progress)
    layout = cache_format.layout(fmt, k, vocab)
    stored = {**{name: (dtype, (T, *tail)) for name, (dtype, tail) in layout.items()}, CHECKSUM: (np.uint32, ())}
    for s in range(n_shards):
        lo, hi = s * SHARD_BLOCKS, min(n, (s + 1) * SHARD_BLOCKS)
        with writing(tmp), contextlib.ExitStack() as opened:  # closing (its last flush) may meet the full disk
            # appended batch by batch with plain writes: a full disk is then an OSError here (through a memory map it
            # was a SIGBUS that killed the process mid-copy)
            files = {name: opened.enter_context(open_array(tmp / f"shard-{s:05d}.{name}.npy", dtype, (hi - lo, *tail)))
                     for name, (dtype, tail) in stored.items()}
            for start in range(lo, hi, batch_size):
                stop = min(hi, start + batch_size)
                ids = blocks[start:stop]["input_ids"].to(device)
                logits = [o.logits for o in run_teachers(teachers, ids, None, hidden=False)]
                top, top_ids, rest = top_k(logits, fp, k)
                rows = {name: np.ascontiguousarray(values.reshape(stop - start, T, *values.shape[1:]), layout[name][0])
                        for name, values in cache_format.encode(fmt, top, top_ids, rest, vocab).items()}
                rows[CHECKSUM] = np.array([block_checksum(rows, row, layout) for row in range(stop - start)], np.uint32)
                for name, f in files.items():
                    f.write(rows[name].tobytes())
                if student is not None and errors is None:
                    errors = storage_error(cfg, student(ids).logits.flatten(0, 1), [x.flatten(0, 1) for x in logits],
                                           (top, top_ids, rest), vocab)
                bar.update(stop - start)
                stop_if_swallowed()  # a Ctrl-C a finalizer swallowed
    bar.close()
    shard_bytes = sum(p.stat().st_size for p in tmp.glob("shard-*.npy"))
    return {"fingerprint": fp, "format": fmt, "n_blocks": n, "shard_blocks": SHARD_BLOCKS, "n_shards": n_shards,
            "teachers": [t.path for t in cfg.distill.teachers], "vocab_size": vocab,
            "bytes_per_token": round(shard_bytes / max(1, n * T), 2),  # the shards' files, headers included
            "storage_error": errors, "checksums": CHECKSUM}


@contextlib.contextmanager
def open_array(path: Path, dtype, shape: tuple[int, ...]):
    """`path` opened for appending the rows of a .npy array of `dtype` and `shape`, its header written first."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                 "fortran_order": False, "shape": shape})
        yield f


def replace(out: Path, tmp: Path) -> None:
    """Put the finished cache `tmp` (marked PARTIAL) at `out`, removing the cache there (--overwrite; never a folder
    of the user's). Stopped at any moment (Ctrl-C, a kill), this leaves at `out` the old cache whole, nothing, or a
    folder marked PARTIAL, which no training reads and the next cache-teachers removes: the old cache is marked
    before its files go, and the new one is unmarked only once it is in place. (The new cache used to lose its mark
    before the move, and a command stopped between the two left a `.partial` folder that every later one refused.)"""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if out.exists():
        check_target(out)  # again: a folder that is not ours must not be marked as ours
        (out / PARTIAL).write_text("a teacher cache being replaced by python -m distill cache-teachers\n")
        remove_ours(out, PARTIAL, "a teacher cache")
    tmp.rename(out)
    (out / PARTIAL).unlink()


def top_k(teacher_logits: list[torch.Tensor], fp: dict, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ensemble's tempered top-k: (log-probs [..., k], ids [..., k], rest [...]), flattened to rows."""
    from distill.losses import teacher_logprobs

    (_, logp), = teacher_logprobs(teacher_logits, fp["temperature"], fp["ensemble"])
    top, top_ids = logp.flatten(0, -2).topk(k, dim=-1)
    return top, top_ids, (1.0 - top.exp().sum(-1)).clamp_min(0.0)


def storage_error(
    cfg, student_logits: torch.Tensor, teacher_logits: list[torch.Tensor], targets: tuple, vocab: int
) -> dict:
    """Each served term on one batch [N, V], computed three ways: dense (the teachers online), from the
    top-k at full precision (`targets`: `top_k`'s (log-probs, ids, rest) of these teacher logits), and from
    the top-k as `distill.cache_format` stores it. Returns {term: {"dense", "top_k", "stored", "relative":
    |stored − top_k| / |dense|}}: the last is the error the storage adds, as a fraction of the loss the
    teachers give online."""
    from distill.losses import REGISTRY, Batch, Setup

    top, top_ids, rest = targets
    fmt = cfg.distill.cache_format
    stored = cache_format.decode(
        fmt, cache_format.encode(fmt, top, top_ids, rest, vocab), cfg.distill.cache_top_k, vocab
    )
    n = student_logits.shape[0]
    batch = lambda **kw: Batch(
        logits=student_logits.float(),
        targets=torch.zeros(n, dtype=torch.long),
        n_tokens=n,  # noqa: E731
        rows=lambda x: x,
        teacher_weights=tuple(t.weight for t in cfg.distill.teachers),
        **kw,
    )
    report = {}
    for key in served_terms(cfg):
        term = REGISTRY[key](getattr(cfg.distill.losses, key), Setup(0, 0, vocab, []))
        values = {"dense": float(term(batch(teacher_logits=[x.float() for x in teacher_logits]), None)),
                  "top_k": float(term(batch(cached=(top, top_ids, rest)), None)),
                  "stored": float(term(batch(cached=stored), None))}
        values["relative"] = abs(values["stored"] - values["top_k"]) / max(abs(values["dense"]), 1e-12)
        report[key] = values
    return report


def check_blocks(cache: TeacherCache) -> list[int]:
    """Every block of `cache` checked against its CRC-32 (one read of the whole cache, one progress bar): the damaged
    ones; empty for a cache without checksums."""
    from tqdm import tqdm

    if not cache.checked:
        return []
    return [block for block in tqdm(range(cache.n_blocks), desc="checking the teacher cache", unit="block")
            if cache.damaged(block)]


def check_cache(out: Path, fp: dict, overwrite: bool) -> str:
    """What is damaged in the finished cache at `out` of fingerprint `fp` ("" when nothing is). A shard that cannot
    be read at all is an error, unless `overwrite` is to write the cache again anyway."""
    try:
        cache = TeacherCache(out, fp)
    except UserError as exc:
        if not overwrite:
            raise
        return str(exc)
    damaged = check_blocks(cache)
    return (f"{len(damaged)} of its {cache.n_blocks} blocks differ from what was written (their CRC-32 differs; "
            f"first: {cache.where(damaged[0])})") if damaged else ""


def check_target(out: Path) -> None:
    """The cache folder may be new, empty, or a cache of ours; anything else is refused before any work."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; choose a folder for the teacher cache")
    if out.is_dir() and (out / PARTIAL).is_file():  # ours, unfinished or half replaced (`replace`): never a cache
        return
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise UserError(f"--out {out}: holds files but is not a teacher cache (no {MANIFEST}), so it is not replaced; "
                        f"choose another --out (an empty or new folder)")


def read_manifest(path: Path, fix: str) -> dict:
    """cache.json, checked for the fields the reader uses."""
    with reading(path, "the teacher cache's manifest", fix):
        info = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(info, dict) and isinstance(info.get("fingerprint"), dict)
                and all(isinstance(info.get(k), int) for k in ("n_blocks", "shard_blocks", "n_shards"))):
            raise ValueError("it lacks fingerprint, n_blocks, shard_blocks or n_shards")
        info.setdefault("format", "fp16")  # caches written before distill.cache_format existed
        if info["format"] not in cache_format.FORMATS:
            raise ValueError(
                f"its format {info['format']!r} is not one this version reads ({', '.join(cache_format.FORMATS)})"
            )
    return info


def default_folder(cfg) -> Path:
    return (
        Path(cfg.distill.teacher_cache)
        if cfg.distill.teacher_cache
        else Path(cfg.output.dir) / "cache" / cfg.output.name
    )


def main(argv: list[str]) -> int:
    from common import config as cfglib
    from distill.config import DistillRunConfig
    from eval.model import device_name, pick_device

    p = argparse.ArgumentParser(
        prog="python -m distill cache-teachers",
        description="Run the teachers once over the packed training blocks and store their top-k log-probabilities.",
    )
    p.add_argument(
        "config",
        help="the distillation run YAML whose teachers, data and KD terms' temperature and ensemble are cached",
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, as for python -m distill")
    p.add_argument("--out", help="cache folder (default: distill.teacher_cache, else runs/cache/<output.name>)")
    p.add_argument("--overwrite", action="store_true", help="replace a cache whose fingerprint differs")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu or cuda")
    args = p.parse_args(argv)
    cfg = cfglib.load(
        DistillRunConfig, args.config, [o for o in args.overrides if not o.startswith("distill.teacher_cache=")]
    )
    if not cfg.distill.teachers:
        raise UserError(f"{args.config}: distill.teachers is empty; there is nothing to cache")
    own = [i for i, t in enumerate(cfg.distill.teachers) if t.tokenizer == "own"]
    if own:
        raise UserError(
            f"distill.teachers[{own[0]}].tokenizer: is own; the cache holds ids of the student's vocabulary, "
            f"so a teacher with its own tokenizer is run online (train without cache-teachers)"
        )
    out = Path(args.out) if args.out else default_folder(cfg)
    check_target(out)
    # one writer a cache: a second one removed the first's unfinished folder and wrote its shards into the first's
    lock = FolderLock(out.parent, f".{out.name}.lock")
    with holding(lock, out, "python -m distill cache-teachers is writing this cache",
                 "let it end: the same command then finds the cache written"), \
            if_interrupted(out, "a cache there is whole once this command ends: run the same command again"):
        return build(cfg, out, args.overwrite, pick_device(args.device))


def build(cfg, out: Path, overwrite: bool, device: torch.device) -> int:
    """Write the teacher cache of `cfg` at `out`, unless it holds that cache already (`overwrite`: replace one of other
    inputs); then say what it costs."""
    from transformers import AutoTokenizer

    from distill.student import build_student
    from distill.teachers import load_teachers
    from tokenizer.prepare import load_blocks, prepare

    temperature, ensemble = cached_distribution(cfg)

    prepared = prepare(cfg.data, cfg.tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(prepared.tokenizer_dir)
    teachers = load_teachers(cfg, Path(prepared.tokenizer_dir), None, device)
    fp, fmt = fingerprint(cfg, Path(prepared.tokenizer_dir), prepared.fingerprint), cfg.distill.cache_format
    if (out / MANIFEST).is_file() and not (out / PARTIAL).is_file():  # a PARTIAL one is written again (`replace`)
        old = read_manifest(out / MANIFEST, "move the folder away, or pass --overwrite to write the cache again")
        if old["fingerprint"] == fp and old["format"] == fmt:
            damaged = check_cache(out, fp, overwrite)
            if not damaged:
                checked = "every block checked" if old.get("checksums") == CHECKSUM else (
                    "written before the checksums, so its blocks cannot be checked; --overwrite writes it again with "
                    "them")
                print(f"{out}: already holds this cache (same fingerprint and format; {checked}); nothing to do")
                return 0
            if not overwrite:
                raise UserError(f"{out}: holds this cache, but {damaged}; pass --overwrite to write it again")
        elif not overwrite:
            changed = next((EXPLAIN.get(k, k) for k in fp if old["fingerprint"].get(k) != fp[k]),
                           f"the format: {old['format']} there, distill.cache_format={fmt} here")
            raise UserError(f"{out}: holds a cache of different inputs ({changed} differ); "
                            f"pass --overwrite to replace it or --out another folder")
    blocks = load_blocks(prepared.train_blocks)
    torch.manual_seed(cfg.train.seed)
    student = build_student(cfg, tokenizer)
    print(
        f"caching top-{cfg.distill.cache_top_k} of {len(teachers)} teacher(s) at T={temperature:g} ({ensemble}) over "
        f"{len(blocks)} blocks of {cfg.data.block_size} tokens "
        f"(vocabulary {len(tokenizer)}) into {out}, as {fmt}"
    )
    write_cache(out, teachers, blocks, cfg, fp, cfg.train.batch_size, device, student=student.to(device).eval())
    info = read_manifest(out / MANIFEST, "write the cache again with --overwrite")
    print(
        f"{out}: done; {info['bytes_per_token']:g} bytes per token ({fmt}, k={cfg.distill.cache_top_k}, "
        f"{cache_format.bytes_per_token(fmt, cfg.distill.cache_top_k, info['vocab_size'])} without the files' headers)"
    )
    for key, e in info["storage_error"].items():
        print(
            f"  {key} on the first batch, student as initialised: dense {e['dense']:.5g}, "
            f"top-{cfg.distill.cache_top_k} "
            f"{e['top_k']:.5g}, as stored {e['stored']:.5g}; the storage changes it by {e['relative']:.1e} of the "
            "dense value"
        )
    return 0
