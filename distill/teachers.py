"""Teachers: loaded from local folders, checked against the student, frozen, and run without gradients.

Checks, each a one-line error naming the teacher: the folder exists and holds a causal LM
(a masked-LM teacher cannot give next-token distributions to a causal student); its
tokenizer has the student's vocabulary and merges, unless `tokenizer: own` (then it must be a
fast tokenizer, and distill/align.py re-tokenises and aligns); every layer-map index exists.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from common.errors import UserError, reading
from eval.model import check_finite_weights, check_folder, load_config, load_model_folder
from train.chunked import final_states, logit_head


@dataclass
class Teacher:
    name: str
    model: torch.nn.Module | None  # None when its targets come from the teacher cache
    weight: float
    layer_map: list[tuple[int, int]]  # (teacher block, student block), 0-based
    hidden_size: int
    num_layers: int
    cross: object | None = None  # distill.align.CrossTokenizer when the teacher reads its own tokens (tokenizer: own)
    head: torch.nn.Module | None = None  # its output layer (train.chunked.logit_head): logits then come chunk by chunk
    compiled: torch.nn.Module | None = None  # torch.compile of `model` (train.compile), run in its place


class TeacherOutput(NamedTuple):
    """One teacher's outputs on a batch [B, T_teacher, ...]. With the student's tokenizer T_teacher = T and
    `index` is None; a teacher with its own tokenizer gives `index` [B, T]: for each student position,
    the aligned teacher position or -1 (distill/align.py; the wrapper moves the rows it reads).
    `final` is its last hidden state, which `head` maps to logits, or with `head` None its logits."""

    final: torch.Tensor
    hidden: tuple[torch.Tensor, ...] | None
    index: torch.Tensor | None = None
    head: torch.nn.Module | None = None

    @property
    def logits(self) -> torch.Tensor:
        """The whole logits [B, T_teacher, V] (the teacher cache reads them; training never does)."""
        if self.head is None:
            return self.final
        with torch.no_grad():
            return self.head(self.final)


def tokenizer_identity(folder: Path) -> dict:
    """What must agree between two tokenizers: the vocabulary (token -> id) and the BPE merges."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{folder}: no tokenizer.json; the teacher folder must hold the tokenizer it was trained with")
    with reading(path, "the tokenizer", "save the tokenizer again with tokenizer.save_pretrained"):
        model = json.loads(path.read_text(encoding="utf-8"))["model"]
        merges = [" ".join(m) if isinstance(m, list) else m for m in model.get("merges", [])]
    return {"vocab": model.get("vocab"), "merges": merges}


def check_same_tokenizer(teacher_dir: Path, student_tokenizer_dir: Path) -> None:
    t, s = tokenizer_identity(teacher_dir), tokenizer_identity(student_tokenizer_dir)
    if t != s:
        what = "vocabulary" if t["vocab"] != s["vocab"] else "merges"
        raise UserError(
            f"teacher {teacher_dir} and the student's tokenizer {student_tokenizer_dir} differ in their {what} "
            f"({len(t['vocab'] or {})} vs {len(s['vocab'] or {})} tokens); distillation needs one tokenizer: "
            f"train the student with the teacher's (tokenizer.type=pretrained tokenizer.name_or_path={teacher_dir})"
        )


def logit_width_problem(config, vocab_size: int, whose: str) -> str | None:
    """What is wrong when a teacher sharing its learners' tokenizer gives more or fewer logits a position than their
    `vocab_size` (a padded embedding), or None."""
    if config.vocab_size == vocab_size:
        return None
    return f"its config.json gives {config.vocab_size} logits a position, {whose} {vocab_size}"


def num_layers(config) -> int:
    return config.num_hidden_layers if hasattr(config, "num_hidden_layers") else config.n_layer


def resolve_layer_map(spec, teacher_layers: int, student_layers: int, where: str) -> list[tuple[int, int]]:
    """The (teacher block, student block) pairs of a layer map; 'uniform' pairs every student block
    j with teacher block round((j + 1) · L_t / L_s) − 1, so the last blocks meet."""
    if spec == "uniform":
        return [(round((j + 1) * teacher_layers / student_layers) - 1, j) for j in range(student_layers)]
    pairs = []
    for t, s in spec.items():
        try:
            t, s = int(t), int(s)
        except (TypeError, ValueError):
            raise UserError(f"{where}: layer map entries must be integers, got {t!r}: {s!r}") from None
        if not 0 <= t < teacher_layers:
            raise UserError(
                f"{where}: teacher block {t} is out of range: the teacher has {teacher_layers} blocks "
                f"(0..{teacher_layers - 1})"
            )
        if not 0 <= s < student_layers:
            raise UserError(
                f"{where}: student block {s} is out of range: the student has {student_layers} blocks "
                f"(0..{student_layers - 1})"
            )
        pairs.append((t, s))
    if not pairs:
        raise UserError(f"{where}: the layer map is empty; give {{teacher block: student block}} pairs or 'uniform'")
    return sorted(pairs)


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        setting = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    return torch.bfloat16 if setting == "bfloat16" else torch.float32


def positions(config) -> int | None:
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def load_teachers(cfg, student_tokenizer_dir: Path, student_layers: int | None, device: torch.device,
                  weights: bool = True) -> list[Teacher]:
    """Every configured teacher, checked, frozen (requires_grad False), in eval mode, on `device`.
    Layer maps are resolved against `student_layers` (None: not needed, as when caching).
    `weights=False` checks the teachers without loading them (training from the teacher cache)."""
    from transformers import AutoModelForCausalLM

    d = cfg.distill
    dtype = pick_dtype(d.teacher_dtype, device)
    out = []
    for i, tc in enumerate(d.teachers):
        where = f"distill.teachers[{i}] ({tc.path})"
        try:
            folder = check_folder(tc.path)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        fix = f"save the teacher again with save_pretrained, or fix distill.teachers[{i}].path"
        config = load_config(folder, f"teacher {i}", fix)
        arch = (getattr(config, "architectures", None) or [""])[0]
        if "MaskedLM" in arch or not (
            arch.endswith(("ForCausalLM", "LMHeadModel")) or getattr(config, "is_decoder", False)
        ):
            raise UserError(
                f"{where}: is a {config.model_type} model, not a causal LM; a causal student needs causal teachers "
                f"(use the weighted mutual learning of python -m distill.wml for masked LMs)"
            )
        own = tc.tokenizer == "own"
        if not own and positions(config) is not None and positions(config) < cfg.data.block_size:
            raise UserError(
                f"{where}: has {positions(config)} positions, fewer than data.block_size={cfg.data.block_size}; "
                f"lower data.block_size or use a teacher with more positions"
            )
        cross = own_tokenizer(folder, student_tokenizer_dir, where, positions(config)) if own else None
        if cross is not None and len(cross.teacher) > config.vocab_size:  # its ids would index past the embedding
            raise UserError(
                f"{where}: its tokenizer has {len(cross.teacher)} tokens, its config.json only {config.vocab_size} "
                f"embedding rows; the folder holds another model's tokenizer: save the teacher's own tokenizer there"
            )
        if not own:
            check_same_tokenizer(folder, student_tokenizer_dir)
            problem = logit_width_problem(config, cfg.student.vocab_size, "the student's vocabulary")
            if problem:  # the logit terms compare the two distributions row by row
                raise UserError(
                    f"{where}: {problem} (student.vocab_size); with the student's tokenizer they must be equal: "
                    f"use a teacher trained with that vocabulary size, or set tokenizer: own for this teacher"
                )
        layer_map = (resolve_layer_map(tc.layer_map, num_layers(config), student_layers, f"{where}.layer_map")
                     if student_layers else [])
        model = (
            load_model_folder(folder, AutoModelForCausalLM, f"teacher {i}", fix, config, dtype=dtype).to(device).eval()
            if weights
            else None
        )
        if model is not None:
            check_finite_weights(dict(model.named_parameters()), where)
            model.requires_grad_(False)
        head = logit_head(model) if model is not None else None  # probed before compiling: eager and exact
        compiled = torch.compile(model) if model is not None and cfg.train.compile else None
        out.append(
            Teacher(
                name=folder.parent.name if folder.name == "model" else folder.name,
                model=model,
                weight=tc.weight,
                layer_map=layer_map,
                hidden_size=config.hidden_size,
                num_layers=num_layers(config),
                cross=cross,
                head=head,
                compiled=compiled,
            )
        )
    return out


def own_tokenizer(folder: Path, student_tokenizer_dir: Path, where: str, max_positions: int | None):
    """The aligner for a teacher that reads its own tokens: its tokenizer must be a fast one (offsets)."""
    from transformers import AutoTokenizer

    from distill.align import CrossTokenizer

    with reading(folder, "the teacher's tokenizer", f"save the teacher's tokenizer in {folder} with save_pretrained"):
        teacher_tok = AutoTokenizer.from_pretrained(str(folder))
    if not getattr(teacher_tok, "is_fast", False):
        raise UserError(
            f"{where}: its tokenizer ({type(teacher_tok).__name__}) is not a fast tokenizer; tokenizer: own needs "
            f"character offsets: save a fast tokenizer (tokenizer.json) in {folder}"
        )
    return CrossTokenizer(AutoTokenizer.from_pretrained(str(student_tokenizer_dir)), teacher_tok, where, max_positions)


def run_teachers(teachers: list[Teacher], input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 hidden: bool, inference: bool = True) -> list[TeacherOutput]:
    """Each teacher's last hidden state with its head, or its logits [B, T, V_k] where it has no head
    (TeacherOutput), and (only when a loss needs them) hidden states. A teacher with its own tokenizer
    reads the blocks re-tokenised, and its output carries the alignment (`index`).

    Under torch.inference_mode when `inference` and not `hidden` (cheaper than no_grad: no version counters),
    else no_grad: autograd cannot save inference tensors, and the hidden-state terms save what they read."""
    with torch.inference_mode() if inference and not hidden else torch.no_grad():
        return [_run(t, input_ids, attention_mask, hidden) for t in teachers]


def _run(t: Teacher, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, hidden: bool) -> TeacherOutput:
    runner = t.compiled if t.compiled is not None else t.model
    if t.model.training:  # the Trainer's model.train() never reaches the teachers, but be sure
        t.model.eval()
    if t.cross is None:
        o, final = final_states(runner, t.model, t.head, input_ids=input_ids, attention_mask=attention_mask,
                                output_hidden_states=hidden)
        return TeacherOutput(final, o.hidden_states if hidden else None, None, t.head)
    r = t.cross(input_ids)
    o, final = final_states(runner, t.model, t.head, input_ids=r.teacher_ids, attention_mask=r.teacher_mask,
                            output_hidden_states=hidden)
    return TeacherOutput(final, o.hidden_states if hidden else None, r.index, t.head)
