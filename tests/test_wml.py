"""Weighted mutual learning: the inner loss and its detached side, the hypergradient against finite differences,
mirror descent on the simplex, and the peer search against an exhaustive search."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.wml import objective as W


def problem(k=3, n=40, d=5, v=7, seed=0):
    """A tiny float64 bi-level problem: K linear softmax peers on fixed features, train and validation batches."""
    g = torch.Generator().manual_seed(seed)
    x, xv = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    y, yv = torch.randint(0, v, (n,), generator=g), torch.randint(0, v, (n,), generator=g)
    params = [(torch.randn(d, v, generator=g, dtype=torch.float64) * (0.5 + i)).requires_grad_(True) for i in range(k)]
    return x, y, xv, yv, params


def test_wml_parts_formula_and_single_peer():
    x, y, _, _, params = problem(k=3)
    logits = [x @ p for p in params]
    alpha, n = 0.5, len(y)
    parts = W.wml_parts(logits, y, alpha, n)
    for j in range(3):
        ce = F.cross_entropy(logits[j], y)
        kl = sum(
            F.kl_div(F.log_softmax(logits[i], -1), F.log_softmax(logits[j], -1), log_target=True, reduction="sum") / n
            for i in range(3)
            if i != j
        )
        assert torch.allclose(parts[j], (1 - alpha) * ce + alpha * kl)
    assert torch.allclose(
        W.wml_parts(logits[:1], y, alpha, n), F.cross_entropy(logits[0], y)[None]
    )  # one peer: plain CE


def test_target_side_of_each_kl_is_detached():
    """In ℓ_j the KL terms teach the other peers: with α = 1, ℓ_j has no gradient on peer j and a nonzero one on the
    others."""
    x, y, _, _, params = problem(k=3)
    parts = W.wml_parts([x @ p for p in params], y, alpha=1.0, n_tokens=len(y))
    grads = torch.autograd.grad(parts[0], params)
    assert grads[0].abs().max() == 0
    assert grads[1].abs().max() > 1e-6 and grads[2].abs().max() > 1e-6


def test_mutual_kl_derivatives_match_the_formula_with_the_target_detached():
    """The hand-written backward and forward-mode derivative of the KL sums equal autograd's on the
    elementwise formula Σ_{i≠j} Σ P_j (log P_j − log P_i) with the target side P_j, log P_j detached."""
    x, y, _, _, params = problem(k=4)

    def reference(ps):
        logp = [F.log_softmax(x @ p, -1) for p in ps]
        return torch.stack(
            [
                sum((lp_j.detach().exp() * (lp_j.detach() - lp_i)).sum() for i, lp_i in enumerate(logp) if i != j)
                for j, lp_j in enumerate(logp)
            ]
        )

    def ours(ps):
        return (W.wml_parts([x @ p for p in ps], y, alpha=1.0, n_tokens=1.0))

    assert torch.allclose(ours(params), reference(params))
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((weights * ours(params)).sum(), params),
                    torch.autograd.grad((weights * reference(params)).sum(), params)):
        assert torch.allclose(a, b) and a.abs().max() > 1e-6
    tangents = tuple(torch.randn_like(p) for p in params)
    primals = tuple(p.detach() for p in params)
    _, jvp_ours = torch.func.jvp(lambda *ps: ours(list(ps)), primals, tangents)
    _, jvp_ref = torch.func.jvp(lambda *ps: reference(list(ps)), primals, tangents)
    assert torch.allclose(jvp_ours, jvp_ref) and jvp_ref.abs().max() > 1e-6


@pytest.mark.parametrize("k", [2, 4])
def test_hypergradient_matches_finite_differences(k):
    x, y, xv, yv, params = problem(k=k, seed=k)
    gamma, alpha = 10.0, 0.5  # a large inner step, so that the second term is far from negligible
    omega = torch.softmax(torch.randn(k, generator=torch.Generator().manual_seed(9), dtype=torch.float64), 0)

    def inner(ps):
        return W.wml_parts([x @ p for p in ps], y, alpha, len(y))

    def val(ps, w):
        return W.ensemble_loss([xv @ p for p in ps], yv, w, len(yv))

    def unrolled(w):  # L_val(θ − γ ∇_θ L(θ, w), w), computed directly
        grads = torch.autograd.grad((w * inner(params)).sum(), params)
        return val([p - gamma * g for p, g in zip(params, grads)], w)

    g = W.hypergradient(params, inner, val, omega, gamma)
    eps = 1e-6
    fd = torch.stack(
        [(unrolled(omega + eps * e) - unrolled(omega - eps * e)) / (2 * eps) for e in torch.eye(k, dtype=torch.float64)]
    )
    assert torch.linalg.norm(g - fd) / torch.linalg.norm(fd) < 1e-2, (g, fd)
    # the second term is real: without it the hypergradient is measurably off
    w = omega.clone().requires_grad_(True)
    grads = torch.autograd.grad((omega * inner(params)).sum(), params)
    first_only = torch.autograd.grad(val([(p - gamma * gr).detach() for p, gr in zip(params, grads)], w), w)[0]
    assert torch.linalg.norm(first_only - fd) / torch.linalg.norm(fd) > 5e-2


def test_mirror_step_stays_on_the_simplex_and_favours_low_gradients():
    omega = torch.full((4,), 0.25)
    for _ in range(50):
        omega = W.mirror_step(omega, torch.tensor([3.0, -1.0, 0.5, 100.0]), eta=0.5)
        assert torch.all(omega >= 0) and torch.isclose(omega.sum(), torch.tensor(1.0))
    assert omega.argmax() == 1 and omega[3] < 1e-6


def test_eta_schedule_warms_up_then_decays():
    values = [W.eta_at(s, 0.05, 0.005, 5, 200) for s in range(220)]
    assert values[0] == pytest.approx(0.01) and values[4] == pytest.approx(0.05)
    assert (
        values[5] == pytest.approx(0.05) and values[200] == pytest.approx(0.005) and values[219] == pytest.approx(0.005)
    )
    assert all(a >= b for a, b in zip(values[5:], values[6:]))


# ------------------------------------------------------------------ peer search
SMALL_SPACE = {"layers": list(range(2, 13)), "heads": [2, 4], "hidden": [64, 96, 128, 160, 192, 224, 256]}


def test_peer_search_hits_targets_and_agrees_with_exhaustive_search():
    from distill.wml.search import Reference, count_params, search_peers

    fields = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 8,
              "intermediate_size": 512, "max_position_embeddings": 128, "vocab_size": 512}
    ref = Reference("causal", fields, count_params(fields, "causal"))
    found = search_peers(ref, 4, SMALL_SPACE, init_points=10, n_iter=40, seed=0)  # 154 points; seeded, so deterministic
    exact = search_peers(ref, 4, SMALL_SPACE, init_points=0, n_iter=0, seed=0, exhaustive=True)
    assert [p["peer"] for p in found] == [0, 1, 2, 3]
    for p in found:
        assert abs(p["n_params"] - ref.n_params / (p["peer"] + 2)) / (ref.n_params / (p["peer"] + 2)) < 0.05, p
    assert len({(p["layers"], p["heads"], p["hidden"]) for p in found}) == 4  # distinct architectures
    for a, b in zip(found, exact):
        assert a["relative_error"] == pytest.approx(b["relative_error"], abs=1e-12), (a, b)
    # the counts are the real models' counts
    from transformers import AutoConfig, AutoModelForCausalLM
    f = dict(found[1]["fields"])
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(f.pop("model_type"), **f))
    assert sum(p.numel() for p in model.parameters()) == found[1]["n_params"]
