"""Distillation losses: properties, references computed here, golden values, and gradients through the wrapper."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill import losses as L


def tensors(n=12, v=30, h=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, v, generator=g) * 2, torch.randn(n, v, generator=g) * 2, torch.randn(n, v, generator=g) * 2,
            torch.randn(n, h, generator=g), torch.randn(n, h, generator=g), torch.randint(0, v, (n,), generator=g))


def ref_kl(student, teacher, T):
    """T² · Σ_rows KL(p_teacher ‖ q_student), via torch's own kl_div."""
    return (
        T
        * T
        * F.kl_div(F.log_softmax(student / T, -1), F.log_softmax(teacher / T, -1), log_target=True, reduction="sum")
    )


# ------------------------------------------------------------------ zero at identity, and references
def test_zero_when_student_equals_teacher():
    s, _, _, hs, _, _ = tensors()
    assert L.logit_kd(s, [s], 2.0, 12).abs() < 1e-6
    assert L.logit_kd(s, [s, s], 2.0, 12, "mean_probs").abs() < 1e-6
    assert L.logit_kd(s, [s, s], 2.0, 12, "per_teacher", [0.3, 0.7]).abs() < 1e-6
    assert L.hidden_mse([hs, hs], [hs, hs], 12).abs() < 1e-7
    assert L.aux_kd([s, s], [s], 2.0, 12).abs() < 1e-6


def test_contrastive_is_lowest_for_matching_tokens():
    """InfoNCE has no zero at identity (the softmax keeps mass on the negatives); it must prefer the matching token."""
    _, _, _, hs, ht, _ = tensors(n=64, h=16)
    same = L.contrastive(hs, hs, 0.1, 63, 64)
    shuffled = L.contrastive(hs, hs[torch.randperm(64, generator=torch.Generator().manual_seed(1))], 0.1, 63, 64)
    assert same < shuffled
    assert same < L.contrastive(hs, ht, 0.1, 63, 64)


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 4.0])
def test_logit_kd_equals_kl_div_reference(T):
    s, t1, t2, _, _, _ = tensors()
    n = 12
    assert torch.allclose(L.logit_kd(s, [t1], T, n), ref_kl(s, t1, T) / n, atol=1e-5)
    assert torch.allclose(L.logit_kd(s, [t1, t2], T, n, "mean_logits"), ref_kl(s, (t1 + t2) / 2, T) / n, atol=1e-5)
    assert torch.allclose(L.logit_kd(s, [t1, t2], T, n, "per_teacher", [0.25, 2.0]),
                          (0.25 * ref_kl(s, t1, T) + 2.0 * ref_kl(s, t2, T)) / n, atol=1e-5)
    p = (F.softmax(t1 / T, -1) + F.softmax(t2 / T, -1)) / 2
    ref = T * T * F.kl_div(F.log_softmax(s / T, -1), p, reduction="sum") / n
    assert torch.allclose(L.logit_kd(s, [t1, t2], T, n, "mean_probs"), ref, atol=1e-5)


def test_ce_and_hidden_mse_equal_references():
    s, _, _, hs, ht, y = tensors()
    assert torch.allclose(L.ce(s, y, 12), F.cross_entropy(s, y), atol=1e-6)
    assert torch.allclose(L.hidden_mse([hs], [ht], 12), F.mse_loss(hs, ht), atol=1e-6)
    assert torch.allclose(L.hidden_mse([hs, ht], [ht, ht], 12), F.mse_loss(hs, ht) / 2, atol=1e-6)


def test_contrastive_equals_infonce_reference():
    _, _, _, hs, ht, _ = tensors(n=10, h=6)
    sim = F.normalize(hs, dim=-1) @ F.normalize(ht, dim=-1).T / 0.5
    assert torch.allclose(L.contrastive(hs, ht, 0.5, 9, 10), F.cross_entropy(sim, torch.arange(10)), atol=1e-6)
    # bounded negatives: with M = 4, 10 rows form groups {0,2,4,6,8} and {1,3,5,7,9}
    ref = sum(
        F.cross_entropy(sim[g][:, g], torch.arange(5), reduction="sum")
        for g in (list(range(0, 10, 2)), list(range(1, 10, 2)))
    )
    assert torch.allclose(L.contrastive(hs, ht, 0.5, 4, 10), ref / 10, atol=1e-6)


def test_aux_kd_weights_layers_by_softmax_of_their_losses():
    s, t1, t2, _, _, _ = tensors()
    per = torch.stack([L.logit_kd(a, [t1], 2.0, 12) for a in (s, t2)])
    expected = (torch.softmax(per, 0) * per).sum()
    assert torch.allclose(L.aux_kd([s, t2], [t1], 2.0, 12), expected, atol=1e-6)
    assert per[0] != per[1] and torch.softmax(per, 0).argmax() == per.argmax()  # the worse layer weighs more


# ------------------------------------------------------------------ T² scaling and normalisation
def test_t_squared_keeps_gradients_comparable_across_temperatures():
    """Hinton et al. 2015, sec. 2.1: at high T, ∂(T²·KL)/∂z ≈ (z − v)/V per row for zero-mean logits, whatever T."""
    s, t, _, _, _, _ = tensors(n=4, v=20)
    s, t = s - s.mean(-1, keepdim=True), t - t.mean(-1, keepdim=True)
    grads = []
    for T in (50.0, 100.0):
        z = s.clone().requires_grad_(True)
        L.logit_kd(z, [t], T, 1).backward()
        grads.append(z.grad)
    assert torch.allclose(grads[0], grads[1], rtol=0.05, atol=3e-3)
    assert torch.allclose(grads[1], (s - t) / 20, rtol=0.05, atol=3e-3)
    # and the value itself carries T²: at T = 3 it is 9 times the raw KL of the tempered distributions
    raw = F.kl_div(F.log_softmax(s / 3, -1), F.log_softmax(t / 3, -1), log_target=True, reduction="sum")
    assert torch.allclose(L.logit_kd(s, [t], 3.0, 4), 9 * raw / 4, atol=1e-6)


def test_per_token_normalisation_ignores_length_and_accumulation():
    s, t1, t2, hs, ht, y = tensors()
    terms = {
        "ce": lambda a, n: L.ce(s[a], y[a], n),
        "logit_kd": lambda a, n: L.logit_kd(s[a], [t1[a], t2[a]], 2.0, n),
        "hidden_mse": lambda a, n: L.hidden_mse([hs[a]], [ht[a]], n),
        "aux_kd": lambda a, n: L.aux_kd([s[a], t2[a]], [t1[a]], 2.0, n),
    }
    every = torch.arange(12)
    twice = torch.cat([every, every])  # the same per-token content in sequences twice as long
    halves = (torch.arange(6), torch.arange(6, 12))  # two accumulation steps, normalised by the whole batch
    for key, fn in terms.items():
        full = fn(every, 12)
        assert torch.allclose(fn(twice, 24), full, atol=1e-6), key
        if key != "aux_kd":  # adaptive weights are per micro-batch by design
            assert torch.allclose(fn(halves[0], 12) + fn(halves[1], 12), full, atol=1e-6), key


def test_cached_kd_equals_dense_kd_when_the_support_is_complete():
    s, t, _, _, _, _ = tensors(v=30)
    logp = F.log_softmax(t / 2.0, -1)
    top, ids = logp.topk(30, dim=-1)
    assert torch.allclose(
        L.cached_logit_kd(s, top, ids, torch.zeros(12), 2.0, 12), L.logit_kd(s, [t], 2.0, 12), atol=1e-4
    )
    top8, ids8 = logp.topk(8, dim=-1)
    rest8 = 1 - top8.exp().sum(-1)
    assert (
        L.cached_logit_kd(s, top8, ids8, rest8, 2.0, 12) <= L.logit_kd(s, [t], 2.0, 12) + 1e-5
    )  # coarser partition, smaller KL


# ------------------------------------------------------------------ golden values on fixed tensors
def golden_values():
    s, t1, t2, hs, ht, y = tensors(seed=123)
    return {
        "ce": L.ce(s, y, 10),
        "logit_kd": L.logit_kd(s, [t1, t2], 2.0, 10),
        "logit_kd_mean_probs": L.logit_kd(s, [t1, t2], 2.0, 10, "mean_probs"),
        "logit_kd_per_teacher": L.logit_kd(s, [t1, t2], 2.0, 10, "per_teacher", [1.0, 0.5]),
        "hidden_mse": L.hidden_mse([hs, ht * 0.5], [ht, hs], 10),
        "contrastive": L.contrastive(hs, ht, 0.2, 5, 10),
        "aux_kd": L.aux_kd([s, t2], [t1], 2.0, 10),
    }


def test_golden_values():
    got = {k: round(float(v), 5) for k, v in golden_values().items()}
    assert got == pytest.approx(GOLDEN_VALUES, abs=2e-5), got


# Computed once by this implementation after the reference tests above passed; a change here is a change of the losses.
GOLDEN_VALUES = {"ce": 6.71281, "logit_kd": 3.39905, "logit_kd_mean_probs": 3.50215, "logit_kd_per_teacher": 6.40297,
                 "hidden_mse": 1.92539, "contrastive": 4.16313, "aux_kd": 4.11179}


# ------------------------------------------------------------------ the wrapper: gradients reach every trainable part
def tiny(model_type: str, hidden: int, layers: int, vocab: int = 64):
    from transformers import AutoConfig, AutoModelForCausalLM

    from conftest import tiny_llama

    if model_type != "gpt2":
        return tiny_llama(hidden, layers, vocab, seed=hidden * 31 + layers)
    cfg = AutoConfig.for_model("gpt2", vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=2, n_positions=32)
    torch.manual_seed(hidden * 31 + layers)
    return AutoModelForCausalLM.from_config(cfg)


def all_terms_config(**aux):
    from distill.config import LossesConfig

    losses = LossesConfig()
    for key, w in (("ce", 1.0), ("logit_kd", 0.5), ("hidden_mse", 0.5), ("contrastive", 0.1), ("aux_kd", 0.3)):
        getattr(losses, key).weight = w
    losses.contrastive.max_negatives = 7
    for k, v in aux.items():
        setattr(losses.aux_kd, k, v)
    return losses


def test_gradients_reach_student_projections_and_aux_heads_not_teachers():
    from distill.teachers import Teacher, resolve_layer_map, run_teachers
    from distill.wrapper import DistillationWrapper

    student = tiny("llama", 16, 4)
    t_models = [tiny("gpt2", 32, 6), tiny("llama", 24, 3)]
    for t in t_models:
        t.eval().requires_grad_(False)
    teachers = [Teacher("gpt2", t_models[0], 1.0, resolve_layer_map({0: 0, 3: 2, 5: 3}, 6, 4, "t0"), 32, 6),
                Teacher("llama", t_models[1], 1.0, resolve_layer_map("uniform", 3, 4, "t1"), 24, 3)]
    wrapper = DistillationWrapper(student, teachers, all_terms_config(layers=[0, 1]))
    assert len(wrapper.projections) == 3 + 4 + 2 and len(wrapper.aux_heads) == 2
    ids = torch.randint(0, 64, (3, 10), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, 7:] = -100  # padding: no loss there
    out = wrapper(
        ids,
        labels=labels,
        teacher_outputs=run_teachers(teachers, ids, None, hidden=True),
        n_tokens=(labels[:, 1:] != -100).sum(),
    )
    assert set(out["terms"]) == {"ce", "logit_kd", "hidden_mse", "contrastive", "aux_kd"}
    assert torch.allclose(
        out["loss"],
        sum(
            w * out["terms"][k]
            for k, w in (("ce", 1.0), ("logit_kd", 0.5), ("hidden_mse", 0.5), ("contrastive", 0.1), ("aux_kd", 0.3))
        ),
    )
    out["loss"].backward()
    assert wrapper.every_parameter_used  # DDP is told so (find_unused_parameters=False)
    for name, p in wrapper.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"
    for t in t_models:
        assert all(p.grad is None and not p.requires_grad for p in t.parameters())
    assert "loss" in wrapper(ids, labels=labels) and "terms" not in wrapper(
        ids, labels=labels
    )  # evaluation: student CE only
    formula = wrapper.formula(teachers)
    assert formula.startswith(
        "1*ce + 0.5*logit_kd(T=2, mean_logits) + 0.5*hidden_mse(map: gpt2 {0:0, 3:2, 5:3}; llama {"
    )
    assert "0.1*contrastive(tau=0.1" in formula and "0.3*aux_kd(layers=[0, 1]" in formula


def test_uniform_and_palenka_layer_maps():
    from common.errors import UserError
    from distill.teachers import resolve_layer_map

    assert resolve_layer_map("uniform", 24, 16, "x")[-1] == (23, 15)
    assert resolve_layer_map("uniform", 24, 16, "x")[0] == (1, 0)
    palenka_gpt2 = {0: 0, 3: 2, 6: 4, 9: 6, 12: 8, 15: 10, 18: 12, 21: 14, 23: 15}
    assert resolve_layer_map(palenka_gpt2, 24, 16, "x") == sorted(palenka_gpt2.items())
    with pytest.raises(UserError, match=r"x: teacher block 24 is out of range: the teacher has 24 blocks \(0..23\)"):
        resolve_layer_map({24: 15}, 24, 16, "x")
    with pytest.raises(UserError, match="student block 16 is out of range"):
        resolve_layer_map({23: 16}, 24, 16, "x")


def test_aux_layers_out_of_range_is_a_clear_error():
    from common.errors import UserError
    from distill.wrapper import DistillationWrapper

    with pytest.raises(
        UserError, match=r"distill.losses.aux_kd.layers: student block 4 is out of range: the student has 4 blocks"
    ):
        DistillationWrapper(tiny("llama", 16, 4), [], all_terms_config(layers=[0, 4]))
    assert DistillationWrapper(tiny("llama", 16, 4), [], all_terms_config()).term("aux_kd").layers == [
        0
    ]  # default: the first half, every other block


@pytest.mark.parametrize("causal", [True, False])
def test_scored_positions_take_the_labelled_rows_with_and_without_padding(causal):
    """Packed causal blocks take the slice path, padded ones the mask path; both give the rows whose label is
    scored (shifted by one when causal) and pass gradients back to exactly those rows."""
    from train.chunked import scored_positions

    x = torch.randn(2, 5, 3, requires_grad=True)
    labels = torch.arange(10).reshape(2, 5)
    for padded in (False, True):
        lab = labels.clone()
        if padded:
            lab[1, 3:] = -100
        rows, targets = scored_positions(lab, causal)
        expect = [(b, p) for b in range(2) for p in range(5 - causal) if lab[b, p + causal] != -100]
        assert targets.tolist() == [int(lab[b, p + causal]) for b, p in expect]
        picked = rows(x)
        assert torch.equal(picked, torch.stack([x[b, p] for b, p in expect]))
        grad, = torch.autograd.grad(picked.sum(), x)
        assert {(b, p) for b in range(2) for p in range(5) if grad[b, p].abs().sum() > 0} == set(expect)


def test_without_a_term_on_the_logits_ddp_keeps_searching_for_unused_parameters():
    """hidden_mse alone reads the student's blocks up to the deepest one mapped: the head and the blocks above get no
    gradient, so the wrapper says so and DDP keeps find_unused_parameters=True (False would stop the run)."""
    from distill.config import LossesConfig
    from distill.teachers import Teacher, resolve_layer_map, run_teachers
    from distill.wrapper import DistillationWrapper

    losses = LossesConfig()
    losses.hidden_mse.weight = 1.0
    teacher = tiny("llama", 24, 2).eval().requires_grad_(False)
    teachers = [Teacher("t", teacher, 1.0, resolve_layer_map({0: 0, 1: 1}, 2, 4, "t"), 24, 2)]
    wrapper = DistillationWrapper(tiny("llama", 16, 4), teachers, losses)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    out = wrapper(ids, labels=ids, teacher_outputs=run_teachers(teachers, ids, None, hidden=True), n_tokens=14)
    out["loss"].backward()
    assert not wrapper.every_parameter_used
    unused = [n for n, p in wrapper.named_parameters() if p.grad is None]
    assert unused and all(n.startswith("student.") for n in unused)  # the rule is not looser than the truth


def test_a_batch_without_aligned_rows_keeps_every_part_in_the_graph():
    """A teacher with another tokenizer may align no row of a micro-batch: the terms that read it add 0 there, with
    their parts still in the loss's graph, so each gets a (zero) gradient and DDP (find_unused_parameters=False)
    does not stop the run. contrastive skipped its projection there."""
    from distill.losses import REGISTRY, Batch, Setup
    from distill.teachers import Teacher

    teacher = Teacher("t", None, 1.0, [], 12, 2)
    term = REGISTRY["contrastive"](REGISTRY["contrastive"].Params(weight=1.0), Setup(8, 2, 64, [teacher]))
    parts = torch.nn.ModuleDict(term.parts())
    student_hidden = (torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8))
    teacher_hidden = [(torch.randn(2, 5, 12),) * 3]
    rows = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    for aligned, nonzero in ((torch.zeros(10, dtype=torch.bool), False), (torch.ones(10, dtype=torch.bool), True)):
        parts.zero_grad(set_to_none=True)
        batch = Batch(logits=None, targets=torch.zeros(10, dtype=torch.long), n_tokens=10.0, rows=rows,
                      student_hidden=student_hidden, teacher_hidden=teacher_hidden, teacher_aligned=[aligned])
        value = term(batch, parts)
        value.backward()
        grad = parts["contrastive_t0"].weight.grad
        assert grad is not None and bool(grad.abs().sum() > 0) == nonzero and (nonzero or float(value.detach()) == 0.0)
