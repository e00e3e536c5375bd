"""The teacher-logit cache: run the teacher ensemble once over the packed training blocks and
store, per token, its top-k tempered log-probabilities, their token ids and the remaining mass.

    python -m distill cache-teachers CONFIG [key=value ...] [--out FOLDER] [--overwrite]

Layout of a cache folder (written into a temporary sibling, renamed when complete):
    cache.json                         the fingerprint and the shapes; written last
    shard-00000.logp.npy  [S, T, k]    float16 log-probabilities, most likely first
    shard-00000.ids.npy   [S, T, k]    uint16 token ids (int32 when the vocabulary needs it)
    shard-00000.rest.npy  [S, T]       float16 probability mass outside the top k
The fingerprint covers the teachers' files, the tokenizer, the packed data, the block size,
the temperature and ensemble of the KD terms it serves (they must agree) and k: training with a cache whose fingerprint differs from
the run's config is an error that names what changed, never a silent reuse.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError, reading
from common.paths import remove_ours

MANIFEST = "cache.json"
PARTIAL = ".babydistill-partial"  # marks the temporary folder a cache is written into
SHARD_BLOCKS = 1024
VERSION = 1


def hash_files(folder: Path, patterns: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for pattern in patterns:
        for path in sorted(folder.glob(pattern)):
            h.update(path.name.encode())
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def cached_distribution(cfg) -> tuple[float, str]:
    """(temperature, ensemble) of the one teacher distribution a cache holds: that of the active logit
    terms it serves (they must agree), or logit_kd's settings when none is active."""
    from common.config import ConfigError
    from distill.losses import REGISTRY

    losses = cfg.distill.losses
    served = [k for k in losses.active() if REGISTRY[k].needs.cache and REGISTRY[k].needs.teacher_logits] or ["logit_kd"]
    settings = {k: (getattr(losses, k).temperature, getattr(losses, k).ensemble) for k in served}
    if len(set(settings.values())) > 1:
        listed = ", ".join(f"{k} (T={t:g}, {e})" for k, (t, e) in settings.items())
        raise ConfigError("distill.teacher_cache", f"holds one teacher distribution, but {listed} read different ones; "
                                                   f"give them the same temperature and ensemble, or run the teachers online")
    temperature, ensemble = settings[served[0]]
    if ensemble == "per_teacher":
        raise ConfigError(f"distill.losses.{served[0]}.ensemble", "is per_teacher, but the cache holds one ensemble distribution; "
                                                                  "use mean_logits or mean_probs, or train with the teachers online")
    return temperature, ensemble


def fingerprint(cfg, tokenizer_dir: Path, data_key: str) -> dict:
    temperature, ensemble = cached_distribution(cfg)
    return {
        "version": VERSION,
        "teachers": [hash_files(Path(t.path), ("config.json", "*.safetensors", "*.bin")) for t in cfg.distill.teachers],
        "tokenizer": hash_files(Path(tokenizer_dir), ("tokenizer.json",)),
        "data": data_key,
        "block_size": cfg.data.block_size,
        "temperature": temperature,
        "ensemble": ensemble,
        "top_k": cfg.distill.cache_top_k,
    }


EXPLAIN = {"teachers": "the teachers' weights or configs", "tokenizer": "the tokenizer", "data": "the packed training data",
           "block_size": "data.block_size", "temperature": "the KD terms' temperature (distill.losses.<term>.temperature)",
           "ensemble": "the KD terms' ensemble (distill.losses.<term>.ensemble)", "top_k": "distill.cache_top_k",
           "version": "the cache format"}


class TeacherCache:
    """Read side: cached targets for given block indices, after checking the fingerprint."""

    def __init__(self, folder: str | Path, expected: dict):
        self.folder = Path(folder)
        manifest = self.folder / MANIFEST
        if not manifest.is_file():
            raise UserError(f"distill.teacher_cache={folder}: no {MANIFEST} there (missing or unfinished); "
                            f"run python -m distill cache-teachers with this config first")
        fix = "write the cache again with python -m distill cache-teachers --overwrite"
        info = read_manifest(manifest, fix)
        for key, value in expected.items():
            if info["fingerprint"].get(key) != value:
                raise UserError(f"distill.teacher_cache={folder}: stale cache: {EXPLAIN.get(key, key)} changed since it was written "
                                f"({key}: cache {info['fingerprint'].get(key)!r}, run {value!r}); "
                                f"rerun python -m distill cache-teachers with --overwrite")
        self.n_blocks, self.shard_blocks = info["n_blocks"], info["shard_blocks"]
        self.shards = []
        k, T = info["fingerprint"]["top_k"], info["fingerprint"]["block_size"]
        for i in range(info["n_shards"]):
            rows = min(self.shard_blocks, self.n_blocks - i * self.shard_blocks)
            shard = {}
            for name, shape in (("logp", (rows, T, k)), ("ids", (rows, T, k)), ("rest", (rows, T))):
                path = self.folder / f"shard-{i:05d}.{name}.npy"
                with reading(path, "a teacher-cache shard", fix):  # a truncated shard fails here, not mid-training
                    shard[name] = np.load(path, mmap_mode="r")
                if shard[name].shape != shape:
                    raise UserError(f"{path}: holds {shard[name].shape}, not the {shape} of its manifest (damaged); {fix}")
            self.shards.append(shard)

    def lookup(self, block_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-probs [B, T, k] float32, ids [B, T, k] long, rest [B, T] float32) for the given blocks."""
        rows = [(int(i) // self.shard_blocks, int(i) % self.shard_blocks) for i in block_index.tolist()]
        get = lambda name: np.stack([self.shards[s][name][o] for s, o in rows])  # noqa: E731
        return (torch.from_numpy(get("logp").astype(np.float32)), torch.from_numpy(get("ids").astype(np.int64)),
                torch.from_numpy(get("rest").astype(np.float32)))


@torch.no_grad()
def write_cache(out: Path, teachers, blocks, cfg, fp: dict, batch_size: int, device: torch.device, progress: bool = True) -> None:
    """Run the teachers over every block and write the shards, then the manifest, then rename into place."""
    from tqdm import tqdm

    from distill.losses import teacher_logprobs
    from distill.teachers import run_teachers

    k = cfg.distill.cache_top_k
    vocab = teachers[0].model.config.vocab_size
    id_dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.int32
    n, T = len(blocks), cfg.data.block_size
    tmp = out.with_name(out.name + ".partial")
    remove_ours(tmp, PARTIAL, "an unfinished teacher cache")  # left by a killed run; anything else is refused
    tmp.mkdir(parents=True)
    (tmp / PARTIAL).write_text("a teacher cache being written by python -m distill cache-teachers\n")
    n_shards = -(-n // SHARD_BLOCKS)
    bar = tqdm(total=n, desc="caching teacher top-k", unit="block", disable=not progress)
    for s in range(n_shards):
        lo, hi = s * SHARD_BLOCKS, min(n, (s + 1) * SHARD_BLOCKS)
        arrays = {"logp": np.lib.format.open_memmap(tmp / f"shard-{s:05d}.logp.npy", "w+", np.float16, (hi - lo, T, k)),
                  "ids": np.lib.format.open_memmap(tmp / f"shard-{s:05d}.ids.npy", "w+", id_dtype, (hi - lo, T, k)),
                  "rest": np.lib.format.open_memmap(tmp / f"shard-{s:05d}.rest.npy", "w+", np.float16, (hi - lo, T))}
        for start in range(lo, hi, batch_size):
            stop = min(hi, start + batch_size)
            ids = blocks[start:stop]["input_ids"].to(device)
            logits = [lo_ for lo_, _ in run_teachers(teachers, ids, None, hidden=False)]
            (_, logp), = teacher_logprobs(logits, fp["temperature"], fp["ensemble"])
            top, top_ids = logp.topk(k, dim=-1)
            rest = (1.0 - top.exp().sum(-1)).clamp_min(0.0)
            arrays["logp"][start - lo:stop - lo] = top.cpu().numpy().astype(np.float16)
            arrays["ids"][start - lo:stop - lo] = top_ids.cpu().numpy().astype(id_dtype)
            arrays["rest"][start - lo:stop - lo] = rest.cpu().numpy().astype(np.float16)
            bar.update(stop - start)
        for a in arrays.values():
            a.flush()
        del arrays
    bar.close()
    shard_bytes = sum(p.stat().st_size for p in tmp.glob("shard-*.npy"))
    manifest = {"fingerprint": fp, "n_blocks": n, "shard_blocks": SHARD_BLOCKS, "n_shards": n_shards,
                "teachers": [t.path for t in cfg.distill.teachers], "vocab_size": vocab,
                "bytes_per_token": round(shard_bytes / max(1, n * T), 2)}  # the shards' files, headers included
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    (tmp / PARTIAL).unlink()
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    remove_ours(out, MANIFEST, "a teacher cache")  # the cache being replaced (--overwrite); never a folder of the user's
    tmp.rename(out)


def check_target(out: Path) -> None:
    """The cache folder may be new, empty, or a cache of ours; anything else is refused before any work."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; choose a folder for the teacher cache")
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
    return info


def default_folder(cfg) -> Path:
    return Path(cfg.distill.teacher_cache) if cfg.distill.teacher_cache else Path(cfg.output.dir) / "cache" / cfg.output.name


def main(argv: list[str]) -> int:
    from transformers import AutoTokenizer

    from common import config as cfglib
    from distill.config import DistillRunConfig
    from distill.teachers import load_teachers
    from eval.model import pick_device
    from tokenizer.prepare import load_blocks, prepare

    p = argparse.ArgumentParser(prog="python -m distill cache-teachers",
                                description="Run the teachers once over the packed training blocks and store their top-k log-probabilities.")
    p.add_argument("config", help="the distillation run YAML whose teachers, data and KD terms' temperature and ensemble are cached")
    p.add_argument("overrides", nargs="*", help="dotted overrides, as for python -m distill")
    p.add_argument("--out", help="cache folder (default: distill.teacher_cache, else runs/cache/<output.name>)")
    p.add_argument("--overwrite", action="store_true", help="replace a cache whose fingerprint differs")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = p.parse_args(argv)
    cfg = cfglib.load(DistillRunConfig, args.config, [o for o in args.overrides if not o.startswith("distill.teacher_cache=")])
    if not cfg.distill.teachers:
        raise UserError(f"{args.config}: distill.teachers is empty; there is nothing to cache")
    temperature, ensemble = cached_distribution(cfg)
    out = Path(args.out) if args.out else default_folder(cfg)
    check_target(out)
    device = pick_device(args.device)

    prepared = prepare(cfg.data, cfg.tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(prepared.tokenizer_dir)
    teachers = load_teachers(cfg, Path(prepared.tokenizer_dir), None, device)
    fp = fingerprint(cfg, Path(prepared.tokenizer_dir), prepared.fingerprint)
    if (out / MANIFEST).is_file():
        old = read_manifest(out / MANIFEST, "move the folder away, or pass --overwrite to write the cache again")["fingerprint"]
        if old == fp:
            print(f"{out}: already holds this cache (same fingerprint); nothing to do")
            return 0
        if not args.overwrite:
            changed = next((k for k in fp if old.get(k) != fp[k]), "version")
            raise UserError(f"{out}: holds a cache of different inputs ({EXPLAIN.get(changed, changed)} differ); "
                            f"pass --overwrite to replace it or --out another folder")
    blocks = load_blocks(prepared.train_blocks)
    print(f"caching top-{cfg.distill.cache_top_k} of {len(teachers)} teacher(s) at T={temperature:g} ({ensemble}) over {len(blocks)} blocks of {cfg.data.block_size} tokens "
          f"(vocabulary {len(tokenizer)}) into {out}")
    write_cache(out, teachers, blocks, cfg, fp, cfg.train.batch_size, device)
    info = read_manifest(out / MANIFEST, "write the cache again with --overwrite")
    print(f"{out}: done; {info['bytes_per_token']:g} bytes per token (k={cfg.distill.cache_top_k}: float16 log-probabilities, "
          f"{'uint16' if info['vocab_size'] <= 65536 else 'int32'} ids, float16 rest)")
    return 0
