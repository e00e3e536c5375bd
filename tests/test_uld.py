"""Universal logit distillation (distill/losses/uld.py): the formula against a reference written here,
its properties, its gradient, a golden value, the shared-vocabulary KL, and the aligned rows through the
wrapper with a teacher that reads GPT-2's tokenizer."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import shared, tiny_llama
from distill.losses import shared_kl_rows, uld_rows


def reference_uld(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Sort both in decreasing order, pad the shorter with zeros, sum the absolute differences."""
    V = max(p.shape[-1], q.shape[-1])
    ps = F.pad(p.sort(-1, descending=True).values, (0, V - p.shape[-1]))
    qs = F.pad(q.sort(-1, descending=True).values, (0, V - q.shape[-1]))
    return (ps - qs).abs().sum(-1)


def logits(n, v, scale, seed):
    return torch.randn(n, v, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


@pytest.mark.parametrize("vt,vs", [(700, 300), (300, 700), (48, 48)])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_uld_equals_the_padded_sorted_reference(vt, vs, T):
    t, s = logits(6, vt, 3, 0), logits(6, vs, 2, 1)
    assert torch.allclose(uld_rows(t, s, T), reference_uld(F.softmax(t / T, -1), F.softmax(s / T, -1)), atol=1e-9)
    assert torch.allclose(
        uld_rows(t.float(), s.float(), T).double(), uld_rows(t, s, T), atol=1e-5
    )  # float32 as in training


def test_uld_properties():
    t = logits(5, 100, 3, 0)
    assert uld_rows(t, t).abs().max() < 1e-9  # zero at identity
    assert (
        uld_rows(t, t[:, torch.randperm(100)]).abs().max() < 1e-9
    )  # blind to which token carries which mass (never sees ids)
    s = logits(5, 100, 1, 2)
    assert (uld_rows(t, s) > 0).all() and (uld_rows(t, s) <= 2).all()  # an L1 distance of two distributions
    assert torch.allclose(uld_rows(t, s), uld_rows(s, t))  # symmetric


def test_uld_gradient_matches_finite_differences():
    t = logits(3, 20, 2, 0)
    s = logits(3, 12, 1, 3).requires_grad_()
    torch.autograd.gradcheck(lambda x: uld_rows(t, x, 2.0), (s,))


def test_shared_kl_is_the_full_kl_when_every_token_is_shared_and_zero_at_identity():
    t = torch.randn(4, 30, generator=torch.Generator().manual_seed(0))
    s = torch.randn(4, 30, generator=torch.Generator().manual_seed(1))
    ids = torch.arange(30)
    full = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True, reduction="none").sum(-1)
    assert torch.allclose(shared_kl_rows(t, s, ids, ids, 2.0), full, atol=1e-5)
    # over a subset, each side renormalised there: a permuted subset of the same logits gives 0
    sub_t, sub_s = torch.tensor([3, 7, 1]), torch.tensor([0, 1, 2])
    assert shared_kl_rows(t, t[:, sub_t], sub_t, sub_s, 1.0).abs().max() < 1e-6


def test_golden_value():
    assert round(float(uld_rows(logits(4, 50, 2, 10), logits(4, 30, 1.5, 11)).sum()), 5) == 1.14864


def test_shared_vocabulary_of_the_demo_bpe_and_gpt2(tmp_path):
    from transformers import AutoTokenizer

    from distill.losses import shared_vocabulary
    from tokenizer.bpe import train_bpe

    student = train_bpe([shared("babylm_2023_partial", "dev", "aochildes.dev")], 600, 2, tmp_path / "tok")
    teacher = AutoTokenizer.from_pretrained(str(shared("hf_tiny_gpt2")))
    s_ids, t_ids = shared_vocabulary(student, teacher)
    assert 256 <= len(s_ids) < 600  # both are byte-level BPEs: the 256 byte tokens and many merges agree
    assert all(student.convert_ids_to_tokens(a) == teacher.convert_ids_to_tokens(b) for a, b in zip(s_ids, t_ids))
    assert student.bos_token_id not in s_ids


def test_through_the_wrapper_only_aligned_rows_count():
    """Two copies of one teacher, one of them marked aligned nowhere: the term equals that of one teacher."""
    from distill.config import LossesConfig
    from distill.teachers import Teacher, TeacherOutput
    from distill.wrapper import DistillationWrapper

    teacher = tiny_llama(24, 2, seed=1).eval().requires_grad_(False)
    losses = LossesConfig()
    losses.ce.weight, losses.uld.weight, losses.uld.shared_kl = 0.5, 0.5, 0.3
    teachers = [Teacher("a", teacher, 1.0, [], 24, 2), Teacher("b", teacher, 1.0, [], 24, 2)]
    wrapper = DistillationWrapper(tiny_llama(16, 2), teachers, losses)
    assert "0.5*uld(T=1 + 0.3*KL(shared tokens))" in wrapper.formula(teachers)
    ids = torch.randint(0, 48, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = teacher(input_ids=ids).logits
    nowhere = torch.full((2, 9), -1)  # no student position has a teacher counterpart
    one = wrapper(ids, labels=ids, teacher_outputs=[TeacherOutput(logits, None)], n_tokens=16)["terms"]["uld"]
    both = wrapper(
        ids,
        labels=ids,
        teacher_outputs=[TeacherOutput(logits, None), TeacherOutput(logits, None, nowhere)],
        n_tokens=16,
    )
    assert torch.allclose(both["terms"]["uld"], one) and one > 0
    # by hand: ULD + 0.3 · KL over the whole (shared) vocabulary, per valid token
    s = wrapper.student(input_ids=ids).logits[:, :-1].reshape(-1, 48)
    t = logits[:, :-1].reshape(-1, 48)
    ref = (
        reference_uld(F.softmax(t, -1), F.softmax(s, -1))
        + 0.3 * F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
    ).sum() / 16
    assert torch.allclose(one, ref, atol=1e-5)
    both["loss"].backward()
    assert all(p.grad is not None for p in wrapper.student.parameters())


def test_hidden_mse_counts_only_aligned_rows():
    from distill.losses import hidden_mse

    s, t = torch.randn(6, 4), torch.randn(6, 4)
    mask = torch.tensor([1, 0, 1, 0, 0, 1], dtype=torch.bool)
    assert torch.allclose(hidden_mse([s], [t], 6, [mask]), hidden_mse([s[mask]], [t[mask]], 6))
    assert torch.allclose(hidden_mse([s], [t], 6, [None]), hidden_mse([s], [t], 6))


def test_hidden_mse_reads_a_teacher_at_its_aligned_positions():
    """A teacher output in its own positions with an alignment: hidden_mse equals the MSE computed by
    hand on the aligned rows, each student row against the teacher row it is aligned with."""
    from distill.config import LossesConfig
    from distill.teachers import Teacher, TeacherOutput
    from distill.wrapper import DistillationWrapper

    teacher = tiny_llama(24, 2, seed=1).eval().requires_grad_(False)
    losses = LossesConfig()
    losses.ce.weight, losses.hidden_mse.weight = 0.5, 0.5
    teachers = [Teacher("t", teacher, 1.0, [(1, 1)], 24, 2)]
    wrapper = DistillationWrapper(tiny_llama(16, 2), teachers, losses)
    ids = torch.randint(0, 48, (2, 9), generator=torch.Generator().manual_seed(0))
    t_ids = torch.randint(
        0, 48, (2, 12), generator=torch.Generator().manual_seed(1)
    )  # the teacher's own, longer tokens
    index = torch.tensor([[0, -1, 2, 3, -1, 6, 7, 9, 11], [1, 2, -1, -1, 5, 8, 9, 10, 11]])
    with torch.no_grad():
        o = teacher(input_ids=t_ids, output_hidden_states=True)
    got = wrapper(ids, labels=ids, teacher_outputs=[TeacherOutput(o.logits, o.hidden_states, index)], n_tokens=16)[
        "terms"
    ]["hidden_mse"]
    s = wrapper.projections["hidden_t0_s1_t1"](
        wrapper.student(input_ids=ids, output_hidden_states=True).hidden_states[2]
    )
    t = o.hidden_states[2]
    ref = sum(((s[b, i] - t[b, index[b, i]]) ** 2).mean() for b in range(2) for i in range(8) if index[b, i] >= 0) / 16
    assert torch.allclose(got, ref, atol=1e-5)


def test_contrastive_takes_positives_and_negatives_among_aligned_rows():
    from distill.config import LossesConfig
    from distill.losses import contrastive
    from distill.teachers import Teacher, TeacherOutput
    from distill.wrapper import DistillationWrapper

    teacher = tiny_llama(24, 2, seed=1).eval().requires_grad_(False)
    losses = LossesConfig()
    losses.ce.weight, losses.contrastive.weight = 0.5, 0.1
    wrapper = DistillationWrapper(tiny_llama(16, 2), [Teacher("t", teacher, 1.0, [], 24, 2)], losses)
    ids = torch.randint(0, 48, (2, 9), generator=torch.Generator().manual_seed(0))
    t_ids = torch.randint(0, 48, (2, 12), generator=torch.Generator().manual_seed(1))
    index = torch.tensor([[0, -1, 2, 3, -1, 6, 7, 9, 11], [1, 2, -1, -1, 5, 8, 9, 10, 11]])
    with torch.no_grad():
        o = teacher(input_ids=t_ids, output_hidden_states=True)
    got = wrapper(ids, labels=ids, teacher_outputs=[TeacherOutput(o.logits, o.hidden_states, index)], n_tokens=16)[
        "terms"
    ]["contrastive"]
    proj = next(m for name, m in wrapper.named_modules() if name.endswith("contrastive_t0"))
    last = wrapper.student(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    pairs = [(b, i) for b in range(2) for i in range(8) if index[b, i] >= 0]
    s = torch.stack([proj(last[b, i]) for b, i in pairs])
    t = torch.stack([o.hidden_states[-1][b, index[b, i]] for b, i in pairs])
    assert torch.allclose(
        got, contrastive(s, t, losses.contrastive.tau, losses.contrastive.max_negatives, 16), atol=1e-5
    )
    # a teacher aligned nowhere adds 0
    none = wrapper(
        ids, labels=ids, teacher_outputs=[TeacherOutput(o.logits, o.hidden_states, torch.full((2, 9), -1))], n_tokens=16
    )
    assert float(none["terms"]["contrastive"]) == 0.0
