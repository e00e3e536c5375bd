"""Universal logit distillation (ULD, Boizard et al. 2024): a teacher with another vocabulary, compared
through its sorted probabilities; optionally a KL over the tokens both vocabularies spell alike
(the hybrid of TRL's GOLD trainer)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.config import field
from distill.losses.base import LossTerm, Needs, register
from distill.losses.reverse_kl import kl_rows

__all__ = ["uld_rows", "shared_kl_rows", "shared_vocabulary"]


def uld_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Σ_i |p_(i) − q_(i)| per row, p = softmax(teacher_logits / T), q = softmax(student_logits / T): the
    Wasserstein-1 distance between the two probability vectors sorted in decreasing order, the shorter
    padded with zeros to the longer: the closed form of Boizard et al. 2024 ("Towards cross-tokenizer
    distillation: the universal logit distillation loss for LLMs", arXiv 2402.12030, sec. 3) under
    uniform support and unit cost.

    teacher_logits [N, V_teacher] (no gradient); student_logits [N, V_student]; returns [N]. Past rank
    m = min(V_teacher, V_student) one side is zero, so only the top m of each side's logits are taken
    (the order of the logits is that of the probabilities) and the larger side's remaining mass is
    added whole: the value of a full sort, without a full sort or a full softmax.
    """
    up = lambda x: x if x.dtype == torch.float64 else x.float()  # noqa: E731
    t, s = up(teacher_logits.detach()) / temperature, up(student_logits) / temperature
    m = min(t.shape[-1], s.shape[-1])
    p = (t.topk(m, dim=-1).values - t.logsumexp(-1, keepdim=True)).exp()
    q = (s.topk(m, dim=-1).values - s.logsumexp(-1, keepdim=True)).exp()
    return (p - q).abs().sum(-1) + (1 - p.sum(-1)) + (1 - q.sum(-1))


def shared_kl_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor, teacher_ids: torch.Tensor | None,
                   student_ids: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """KL(p_S ‖ q_S) per row over the S tokens both vocabularies hold, each model's probabilities
    renormalised over them (the exact-match part of TRL's GOLD hybrid loss).

    teacher_logits [N, V_t]; student_logits [N, V_s]; teacher_ids, student_ids [S] (the same token's
    id in each vocabulary), or None for both when the vocabulary is one (every token shared); returns [N].
    """
    t, s = teacher_logits.detach().float(), student_logits.float()
    if teacher_ids is not None:
        t, s = t.index_select(-1, teacher_ids), s.index_select(-1, student_ids)
    return kl_rows(F.log_softmax(t / temperature, dim=-1), F.log_softmax(s / temperature, dim=-1))


def shared_vocabulary(student_tokenizer, teacher_tokenizer) -> tuple[list[int], list[int]]:
    """(student ids, teacher ids) of the tokens spelled the same in both vocabularies (special tokens excluded)."""
    s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    skip = set(student_tokenizer.all_special_tokens) | set(teacher_tokenizer.all_special_tokens)
    both = sorted(tok for tok in s_vocab.keys() & t_vocab.keys() if tok not in skip)
    return [s_vocab[t] for t in both], [t_vocab[t] for t in both]


@dataclass
class ULDParams:
    weight: float = field(0.0, "weight of universal logit distillation (any teacher vocabulary); 0 = off", ge=0)
    temperature: float = field(1.0, "softmax temperature T of teachers and student (no T² factor)", gt=0)
    shared_kl: float = field(
        0.0, "weight of the added KL over tokens both vocabularies spell alike (GOLD's hybrid); 0 = ULD alone", ge=0
    )


@register
class ULD(LossTerm):
    """Σ_teachers w_k · Σ_aligned rows [ULD + shared_kl · KL_shared] / n_tokens. Rows without an aligned
    teacher position (distill/align.py) contribute 0; a teacher with the student's tokenizer is aligned everywhere."""

    key, title, Params, order = (
        "uld",
        "universal logit distillation across tokenizers (Boizard et al. 2024)",
        ULDParams,
        16,
    )
    needs = Needs(teacher_logits=True, any_tokenizer=True)
    rowwise = True

    def __init__(self, params, setup):
        super().__init__(params, setup)
        # per teacher: (teacher ids, student ids) of the shared tokens, or (None, None) when it has the student's
        # vocabulary
        self.shared = [
            (None, None)
            if t.cross is None or not params.shared_kl
            else tuple(torch.tensor(ids) for ids in reversed(shared_vocabulary(t.cross.student, t.cross.teacher)))
            for t in setup.teachers
        ]

    def describe(self, teachers):
        extra = f" + {self.params.shared_kl:g}*KL(shared tokens)" if self.params.shared_kl else ""
        return f"{self.weight:g}*uld(T={self.params.temperature:g}{extra})"

    def __call__(self, batch, parts):
        p, T = self.params, self.params.temperature
        aligned = batch.teacher_aligned or [None] * len(batch.teacher_logits)
        weights = batch.teacher_weights or (1.0,) * len(batch.teacher_logits)
        total = batch.logits.new_zeros((), dtype=torch.float32)
        for k, (logits, mask) in enumerate(zip(batch.teacher_logits, aligned)):
            student_logits = batch.logits
            if mask is not None:  # only the aligned rows carry a target
                keep = mask.nonzero().squeeze(1)
                logits, student_logits = logits[keep], student_logits[keep]
            rows = uld_rows(logits, student_logits, T)
            if p.shared_kl:
                self.shared[k] = tuple(
                    None if x is None else x.to(logits.device) for x in self.shared[k]
                )  # once per device
                rows = rows + p.shared_kl * shared_kl_rows(logits, student_logits, *self.shared[k], T)
            total = total + weights[k] * rows.sum()
        return total / batch.n_tokens
