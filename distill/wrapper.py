"""The training wrapper: the student, the trainable parts of the loss, and the composite loss.

Projections (student width -> teacher width) and auxiliary classifiers are submodules here,
so the optimizer, the checkpoints and DeepSpeed see them and they train (a reference
implementation kept its projections in a plain dict and computed the hidden loss under
no_grad, so neither trained). They are applied inside `forward`, where DeepSpeed gathers
parameters. The exported model is `wrapper.student` alone, a plain Hugging Face model.

The composite is Σ_k weight_k · term_k over the active terms of `distill.losses`, each term
one function of `distill.losses.REGISTRY`, each normalised per valid token of the whole
accumulated batch (`n_tokens`).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from common.errors import UserError
from distill import losses as L
from distill.teachers import Teacher, num_layers


@dataclass
class Term:
    key: str
    weight: float
    params: object  # the term's config section

    def describe(self, teachers: list[Teacher], aux_layers: list[int]) -> str:
        p = self.params
        if self.key == "logit_kd":
            return f"{self.weight:g}*logit_kd(T={p.temperature:g}, {p.ensemble})"
        if self.key == "hidden_mse":
            maps = "; ".join(f"{t.name} {{" + ", ".join(f"{a}:{b}" for a, b in t.layer_map) + "}" for t in teachers)
            return f"{self.weight:g}*hidden_mse(map: {maps})"
        if self.key == "contrastive":
            return f"{self.weight:g}*contrastive(tau={p.tau:g}, negatives<={p.max_negatives})"
        if self.key == "aux_kd":
            return f"{self.weight:g}*aux_kd(layers={aux_layers}, T={p.temperature:g}, softmax-weighted)"
        return f"{self.weight:g}*{self.key}"


def scored_positions(labels, causal: bool = True):
    """(select, targets): `select` takes [B, T, ...] to [N, ...] at the N positions whose label is
    scored, and `targets` [N] are those labels. A causal LM's logits at position p predict label
    p + 1, so for it the positions shift by one; a masked LM predicts in place."""
    targets = labels[:, 1:] if causal else labels
    valid = targets != -100
    if causal and bool(valid.all()):  # packed blocks: a slice, whose backward is a copy (a mask's is a serial scatter)
        return (lambda x: x[:, :-1].reshape(-1, *x.shape[2:])), targets.reshape(-1)
    if causal:
        return (lambda x: x[:, :-1][valid]), targets[valid]
    return (lambda x: x[valid]), targets[valid]


def tied_duplicates(module: nn.Module) -> list[str] | None:
    """Names of state-dict entries that share storage with an earlier one (GPT-2's head and embedding).
    Checkpoints store them once; the Trainer, finding them missing on load, calls the wrapper's
    tie_weights() (when they are listed as `_keys_to_ignore_on_save`) instead of warning."""
    from train.rundir import state_groups

    tied = [name for group in state_groups(module) for name in group[1:]]
    return tied or None


def default_aux_layers(student_layers: int) -> list[int]:
    """Every other block of the first half (at least block 0)."""
    return list(range(0, max(1, student_layers // 2), 2))


class DistillationWrapper(nn.Module):
    """student + projections + auxiliary heads; forward returns the composite loss and its terms."""

    accepts_loss_kwargs = True  # the Trainer then counts num_items_in_batch over the accumulated batch
    loss_type = "ForCausalLM"   # ... over labels[..., 1:], the positions a causal LM predicts

    def __init__(self, student: nn.Module, teachers: list[Teacher], loss_cfg):
        super().__init__()
        self.student = student
        self.config = student.config
        self.terms = [Term(k, p.weight, p) for k, p in loss_cfg.active().items()]
        self.ensemble = loss_cfg.logit_kd.ensemble
        self.teacher_weights = [t.weight for t in teachers]
        hs, n_layers = student.config.hidden_size, num_layers(student.config)
        keys = {t.key for t in self.terms}
        self.projections = nn.ModuleDict()
        if "hidden_mse" in keys:
            for k, t in enumerate(teachers):
                for tb, sb in t.layer_map:
                    self.projections[f"hidden_t{k}_s{sb}_t{tb}"] = nn.Linear(hs, t.hidden_size, bias=False)
        if "contrastive" in keys:
            for k, t in enumerate(teachers):
                self.projections[f"contrastive_t{k}"] = nn.Linear(hs, t.hidden_size, bias=False)
        self.aux_heads = nn.ModuleDict()
        self.aux_layers = list(loss_cfg.aux_kd.layers) or default_aux_layers(n_layers)
        if "aux_kd" in keys:
            for b in self.aux_layers:
                if not 0 <= b < n_layers:
                    raise UserError(f"distill.losses.aux_kd.layers: student block {b} is out of range: the student has "
                                    f"{n_layers} blocks (0..{n_layers - 1})")
                self.aux_heads[f"block{b}"] = nn.Sequential(nn.LayerNorm(hs), nn.Linear(hs, student.config.vocab_size, bias=False))
        self.layer_maps = [t.layer_map for t in teachers]
        self._keys_to_ignore_on_save = tied_duplicates(self)
        self.needs_student_hidden = bool(keys & {"hidden_mse", "contrastive", "aux_kd"})
        self.needs_teacher_hidden = bool(keys & {"hidden_mse", "contrastive"})
        self.needs_teacher_logits = bool(keys & {"logit_kd", "aux_kd"})

    def tie_weights(self) -> None:
        self.student.tie_weights()

    def formula(self, teachers: list[Teacher]) -> str:
        return " + ".join(t.describe(teachers, self.aux_layers) for t in self.terms)

    def forward(self, input_ids, attention_mask=None, labels=None, teacher_outputs=None, cached_targets=None, n_tokens=None):
        """Without `teacher_outputs`/`cached_targets` (evaluation): the student's cross-entropy per
        valid token. With them: the composite loss. Returns {"loss", "terms", "logits"}."""
        training = teacher_outputs is not None or cached_targets is not None
        out = self.student(input_ids=input_ids, attention_mask=attention_mask,
                           output_hidden_states=training and self.needs_student_hidden)
        if labels is None:
            return {"logits": out.logits}
        rows, targets = scored_positions(labels)
        n = n_tokens if n_tokens is not None else max(targets.numel(), 1)
        logits = rows(out.logits)
        if not training:
            return {"loss": L.ce(logits, targets, n), "logits": out.logits}
        t_logits = [rows(lo) for lo, _ in teacher_outputs] if teacher_outputs is not None else None
        terms = {}
        for term in self.terms:
            p = term.params
            if term.key == "ce":
                value = L.ce(logits, targets, n)
            elif term.key == "logit_kd":
                if cached_targets is not None:
                    top_logp, top_ids, rest = (rows(x) for x in cached_targets)
                    value = L.cached_logit_kd(logits, top_logp, top_ids, rest, p.temperature, n)
                else:
                    value = L.logit_kd(logits, t_logits, p.temperature, n, p.ensemble, self.teacher_weights)
            elif term.key == "hidden_mse":
                s_states, t_states = [], []
                for k, (_, t_hidden) in enumerate(teacher_outputs):
                    for tb, sb in self.layer_maps[k]:
                        s_states.append(self.projections[f"hidden_t{k}_s{sb}_t{tb}"](rows(out.hidden_states[sb + 1])))
                        t_states.append(rows(t_hidden[tb + 1]))
                value = L.hidden_mse(s_states, t_states, n)
            elif term.key == "contrastive":
                last = rows(out.hidden_states[-1])
                value = sum(L.contrastive(self.projections[f"contrastive_t{k}"](last), rows(t_hidden[-1]), p.tau, p.max_negatives, n)
                            for k, (_, t_hidden) in enumerate(teacher_outputs)) / len(teacher_outputs)
            elif term.key == "aux_kd":
                aux = [self.aux_heads[f"block{b}"](rows(out.hidden_states[b + 1])) for b in self.aux_layers]
                value = L.aux_kd(aux, t_logits, p.temperature, n, self.ensemble)
            else:  # pragma: no cover - the config only knows registered keys
                raise KeyError(term.key)
            terms[term.key] = value
        loss = sum(t.weight * terms[t.key] for t in self.terms)
        return {"loss": loss, "terms": {k: v.detach() for k, v in terms.items()}, "logits": out.logits}
