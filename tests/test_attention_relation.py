"""attention_relation (MiniLMv2): the captured queries, keys and values are the blocks' own, the term equals
a reference written here, it is zero at identity, gradients reach the student's projections (not the
teachers'), it works with SDPA attention and with teachers of other widths, and its bad inputs."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_llama
from distill import losses as L


def tiny_gpt2(hidden: int, layers: int, heads: int = 2, vocab: int = 48, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(
        AutoConfig.for_model("gpt2", vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=32)
    )


def reference(student, teacher, heads, relations, mask, n_tokens):
    """MiniLMv2 eq. 5-7 one query at a time: softmax over the keys j <= i that are real tokens, KL teacher -> student,
    averaged over relation heads, summed over relation types and over queries i < T - 1 (those with a next token)."""
    B, T, _ = student["q"].shape
    total = 0.0
    for rel in relations:
        x = rel[0]
        for b in range(B):
            for i in range(T - 1):
                if mask is not None and not mask[b, i + 1]:
                    continue  # its label is padding: not scored
                keys = [j for j in range(i + 1) if mask is None or mask[b, j]]
                per_head = []
                for r in range(heads):
                    def rel_probs(t):
                        d = t.shape[-1] // heads
                        part = t[b, :, r * d:(r + 1) * d].double()
                        return torch.softmax(torch.stack([part[i] @ part[j] / math.sqrt(d) for j in keys]), 0)
                    pt, ps = rel_probs(teacher[x]), rel_probs(student[x])
                    per_head.append(float((pt * (pt.log() - ps.log())).sum()))
                total += sum(per_head) / heads
    return total / n_tokens


def qkv(widths, seed, B=2, T=6):
    g = torch.Generator().manual_seed(seed)
    return {x: torch.randn(B, T, w, generator=g) for x, w in zip("qkv", widths)}


def test_equal_to_the_reference_and_zero_at_identity():
    from train.chunked import scored_positions

    s, t = qkv((8, 8, 4), 0), qkv((12, 12, 12), 1)  # other widths, and narrower keys/values (grouped-query attention)
    labels = torch.ones(2, 6, dtype=torch.long)
    rows, _ = scored_positions(labels)
    got = L.attention_relation(s, [t], 2, ["qq", "kk", "vv"], rows, 7.0)
    assert got.item() == pytest.approx(reference(s, t, 2, ["qq", "kk", "vv"], None, 7.0), rel=1e-5)
    assert L.attention_relation(s, [s, s], 2, ["qq", "kk", "vv"], rows, 7.0).abs() < 1e-6
    t2 = qkv((16, 8, 8), 2)
    both = L.attention_relation(s, [t, t2], 2, ["qq", "kk", "vv"], rows, 7.0)
    assert both.item() == pytest.approx((reference(s, t, 2, ["qq", "kk", "vv"], None, 7.0)
                                         + reference(s, t2, 2, ["qq", "kk", "vv"], None, 7.0)) / 2, rel=1e-5)
    # padding: masked keys take no part, padded queries are not scored
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    labels[1, 4:] = -100
    rows, targets = scored_positions(labels)
    got = L.attention_relation(s, [t], 4, ["qq", "vv"], rows, float(targets.numel()), mask)
    assert got.item() == pytest.approx(reference(s, t, 4, ["qq", "vv"], mask, float(targets.numel())), rel=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_captured_projections_are_the_blocks_own_under_sdpa(arch):
    from distill.attention import capture_qkv

    model = tiny_llama(16, 3) if arch == "llama" else tiny_gpt2(16, 3)
    assert model.config._attn_implementation == "sdpa"  # no eager attention needed
    ids = torch.randint(0, 48, (2, 7), generator=torch.Generator().manual_seed(0))
    with capture_qkv(model, [1]) as captured:
        out = model(input_ids=ids, output_hidden_states=True)
    h = out.hidden_states[1]  # the input of block 1
    if arch == "llama":
        block = model.model.layers[1]
        x = block.input_layernorm(h)
        expected = {n: getattr(block.self_attn, f"{n}_proj")(x) for n in "qkv"}
    else:
        block = model.transformer.h[1]
        expected = dict(zip("qkv", block.attn.c_attn(block.ln_1(h)).chunk(3, dim=-1)))
    for n in "qkv":
        assert torch.allclose(captured[1][n], expected[n], atol=1e-5), n
    with torch.no_grad():
        model(input_ids=ids)
    assert captured[1]["q"].requires_grad  # the hooks are gone: the no-grad forward did not overwrite them


def test_gradients_reach_the_students_projections_through_the_wrapper_and_the_formula():
    from distill.config import LossesConfig
    from distill.teachers import Teacher
    from distill.wrapper import DistillationWrapper

    teachers_m = [
        tiny_gpt2(24, 3, heads=4, seed=1).eval().requires_grad_(False),
        tiny_llama(32, 2, seed=2).eval().requires_grad_(False),
    ]
    teachers = [Teacher("gpt2", teachers_m[0], 1.0, [], 24, 3), Teacher("llama", teachers_m[1], 1.0, [], 32, 2)]
    losses = LossesConfig()
    losses.ce.weight, losses.attention_relation.weight = 1.0, 0.5
    losses.attention_relation.teacher_layer, losses.attention_relation.student_layer = 1, 0
    student = tiny_llama(16, 2)
    wrapper = DistillationWrapper(student, teachers, losses)
    assert wrapper.student_qkv == [0] and wrapper.teacher_qkv == [[1], [1]]
    assert "0.5*attention_relation(qq+kk+vv, student block 0 <- teacher blocks [1, 1], 2 heads)" in wrapper.formula(
        teachers
    )

    from distill.attention import capture_qkv
    from distill.teachers import TeacherOutput

    ids = torch.randint(0, 48, (2, 9), generator=torch.Generator().manual_seed(0))
    with capture_qkv(teachers_m[0], [1]) as q0, capture_qkv(teachers_m[1], [1]) as q1, torch.no_grad():
        outs = [TeacherOutput(m(input_ids=ids).logits, None) for m in teachers_m]
    out = wrapper(ids, labels=ids, teacher_outputs=outs, teacher_qkv=[q0, q1], n_tokens=16)
    assert out["terms"]["attention_relation"] > 0
    out["loss"].backward()
    attn = student.model.layers[0].self_attn
    assert all(getattr(attn, f"{n}_proj").weight.grad.abs().sum() > 0 for n in "qkv")
    assert all(p.grad is None for m in teachers_m for p in m.parameters())


def test_layers_out_of_range_and_heads_that_do_not_divide_are_one_line_errors():
    from common.errors import UserError
    from distill.config import LossesConfig
    from distill.teachers import Teacher
    from distill.wrapper import DistillationWrapper

    teacher = Teacher("gpt2", tiny_gpt2(24, 3, heads=4, seed=1), 1.0, [], 24, 3)

    def build(**params):
        losses = LossesConfig()
        losses.attention_relation.weight = 1.0
        for k, v in params.items():
            setattr(losses.attention_relation, k, v)
        return DistillationWrapper(tiny_llama(16, 2), [teacher], losses)

    with pytest.raises(
        UserError, match=r"attention_relation.student_layer: block 2 is out of range: the student has 2 blocks"
    ):
        build(student_layer=2)
    with pytest.raises(
        UserError, match=r"attention_relation.teacher_layer: block -4 is out of range: teacher gpt2 has 3 blocks"
    ):
        build(teacher_layer=-4)
    with pytest.raises(
        UserError, match=r"attention_relation.heads: 5 relation heads do not divide the 16-wide q of the student"
    ):
        build(heads=5)
    assert build(student_layer=-2, teacher_layer=-1).term("attention_relation").qkv_layers() == ([0], [[2]])


def test_golden_value():
    from train.chunked import scored_positions

    s, t = qkv((8, 8, 8), 3), qkv((12, 12, 12), 4)
    rows, _ = scored_positions(torch.ones(2, 6, dtype=torch.long))
    assert round(float(L.attention_relation(s, [t], 2, ["qq", "kk", "vv"], rows, 10.0)), 5) == pytest.approx(
        GOLDEN, abs=2e-5
    )


# computed once by this implementation after the reference test passed; a change here is a change of the loss
GOLDEN = 1.01375
