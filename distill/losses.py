"""Distillation losses: pure functions over tensors, registered by key.

Conventions shared by every term (DESIGN.md, "Losses"):
- The inputs are already restricted to the valid positions of the batch, flattened to N
  rows: row n is one position whose next-token label is not -100 (the caller shifts).
- Each term returns (sum over those N rows) / `n_tokens`, where `n_tokens` counts the valid
  positions of the whole accumulated (and, across ranks, gathered) batch. So a weight means
  the same at any sequence length, batch size or accumulation, and never scales with T or V
  as `KLDivLoss(reduction="batchmean")` on [B, T, V] does.
- Temperatures are applied here, not by the caller.

`REGISTRY` maps the YAML key of each term to its function; `distill.objective` composes them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def ce(student_logits: torch.Tensor, labels: torch.Tensor, n_tokens: float) -> torch.Tensor:
    """Hard-label cross-entropy.

    student_logits [N, V], labels [N] (token ids); returns a scalar.
    """
    return F.cross_entropy(student_logits.float(), labels, reduction="sum") / n_tokens


def _kl_rows(target_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """Σ_rows KL(p ‖ q) with p, q given as log-probabilities [N, V]."""
    return (target_logp.exp() * (target_logp - student_logp)).sum()


def teacher_logprobs(teacher_logits: list[torch.Tensor], temperature: float, ensemble: str,
                     weights: list[float] | None = None) -> list[tuple[float, torch.Tensor]]:
    """The target distributions (weight, log p [N, V]) for an ensemble of teachers.

    mean_logits: one target, softmax of the mean of the teachers' logits / T (BabyLlama,
    Timiryasov & Tastet 2023). mean_probs: one target, the mean of the teachers'
    tempered softmaxes. per_teacher: one target per teacher with its own weight.
    """
    if ensemble == "mean_logits":
        mean = torch.stack([t.float() for t in teacher_logits]).mean(0)
        return [(1.0, F.log_softmax(mean / temperature, dim=-1))]
    if ensemble == "mean_probs":
        logps = torch.stack([F.log_softmax(t.float() / temperature, dim=-1) for t in teacher_logits])
        return [(1.0, torch.logsumexp(logps, dim=0) - torch.log(torch.tensor(float(len(teacher_logits)))))]
    if ensemble == "per_teacher":
        weights = weights or [1.0] * len(teacher_logits)
        return [(w, F.log_softmax(t.float() / temperature, dim=-1)) for w, t in zip(weights, teacher_logits)]
    raise ValueError(f"unknown ensemble {ensemble!r}")


def logit_kd(student_logits: torch.Tensor, teacher_logits: list[torch.Tensor], temperature: float, n_tokens: float,
             ensemble: str = "mean_logits", weights: list[float] | None = None) -> torch.Tensor:
    """T² · KL(teacher ‖ student) at temperature T (Hinton et al. 2015, "Distilling the
    knowledge in a neural network", sec. 2: the T² keeps gradient magnitudes comparable
    across temperatures).

    student_logits [N, V]; teacher_logits: one [N, V] per teacher (no gradient needed);
    returns a scalar. The teachers' targets come from `teacher_logprobs` (`ensemble`).
    """
    q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    total = sum(w * _kl_rows(p.detach(), q) for w, p in teacher_logprobs(teacher_logits, temperature, ensemble, weights))
    return temperature ** 2 * total / n_tokens


def cached_logit_kd(student_logits: torch.Tensor, top_logp: torch.Tensor, top_ids: torch.Tensor, rest: torch.Tensor,
                    temperature: float, n_tokens: float) -> torch.Tensor:
    """T² · KL(teacher ‖ student) with the teacher known only on its top-k support plus the rest.

    student_logits [N, V]; top_logp [N, k]: the teacher ensemble's tempered log-probabilities
    of its k most likely tokens; top_ids [N, k]; rest [N]: the teacher's mass outside them.
    The rest is matched against the student's mass outside the same k tokens, so the term is
    the KL between the two (k + 1)-way distributions: equal to the dense KL when the rest is
    0, and never above it otherwise (coarsening a partition cannot raise a KL).
    """
    z = student_logits.float() * (1.0 / temperature)
    q_top = F.log_softmax(z, dim=-1).gather(1, top_ids.long())  # one fused pass each way (a logsumexp takes several)
    rest_q = torch.log1p(-q_top.exp().sum(-1).clamp_max(1.0 - 1e-6))
    rest_p = rest.float().clamp_min(0.0)
    kl = (top_logp.float().exp() * (top_logp.float() - q_top)).sum(-1) + rest_p * (torch.log(rest_p.clamp_min(1e-12)) - rest_q)
    return temperature ** 2 * kl.sum() / n_tokens


def hidden_mse(student_states: list[torch.Tensor], teacher_states: list[torch.Tensor], n_tokens: float) -> torch.Tensor:
    """Deeply supervised hidden-state KD (DSKD, arXiv 2202.07846, eq. 3): the squared error
    between each mapped pair of student state (already projected to the teacher's width) and
    teacher state, averaged over the feature dimension and over the pairs.

    student_states, teacher_states: P pairs of [N, H_teacher] each (H may differ per pair);
    returns a scalar. The teacher states carry no gradient.
    """
    if len(student_states) != len(teacher_states) or not student_states:
        raise ValueError("hidden_mse needs the same positive number of student and teacher states")
    total = sum(((s.float() - t.detach().float()) ** 2).mean(-1).sum() for s, t in zip(student_states, teacher_states))
    return total / len(student_states) / n_tokens


def contrastive(student: torch.Tensor, teacher: torch.Tensor, tau: float, max_negatives: int, n_tokens: float) -> torch.Tensor:
    """InfoNCE between student and teacher states of the same token (van den Oord et al.
    2018, eq. 4; as contrastive representation distillation, Tian et al. 2020):
    −log( exp(cos(s_n, t_n)/τ) / Σ_m exp(cos(s_n, t_m)/τ) ), where the t_m are the teacher
    states of the other tokens in the same group.

    student [N, H] (projected to the teacher's width), teacher [N, H]; returns a scalar.
    Negatives are bounded: row n is grouped with the rows n' ≡ n (mod G), G = ⌈N / (M + 1)⌉,
    so each group holds at most M + 1 rows from different sequences and positions, and the
    similarity matrices hold at most N · (M + 1) entries whatever the batch size.
    """
    n = student.shape[0]
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.detach().float(), dim=-1)
    groups = max(1, -(-n // (max_negatives + 1)))
    total = student.new_zeros((), dtype=torch.float32)
    for g in range(groups):
        rows = torch.arange(g, n, groups, device=student.device)
        sim = s[rows] @ t[rows].T / tau  # [m, m]: diagonal = positives
        total = total + F.cross_entropy(sim, torch.arange(len(rows), device=student.device), reduction="sum")
    return total / n_tokens


def aux_kd(aux_logits: list[torch.Tensor], teacher_logits: list[torch.Tensor], temperature: float, n_tokens: float,
           ensemble: str = "mean_logits") -> torch.Tensor:
    """Auxiliary-classifier KD: each auxiliary head on a shallow student layer has its own
    T² · KL to the teachers, and the per-layer losses are combined with adaptive weights
    softmax(L_1 … L_A) (DSKD, arXiv 2202.07846, sec. 3.3), so the layer that is furthest
    from the teachers gets the most weight. The weights are computed from detached losses:
    they rescale the terms, and the heads cannot lower the loss by moving weight around.

    aux_logits: A heads' [N, V]; teacher_logits: one [N, V] per teacher; returns a scalar
    (the overall weight γ is the term's weight in the composite).
    """
    losses = torch.stack([logit_kd(a, teacher_logits, temperature, n_tokens, ensemble) for a in aux_logits])
    return (torch.softmax(losses.detach(), dim=0) * losses).sum()


REGISTRY = {"ce": ce, "logit_kd": logit_kd, "hidden_mse": hidden_mse, "contrastive": contrastive, "aux_kd": aux_kd}
