"""Logits that never reach full size (train.chunked): the student's cross-entropy and every logit term,
computed over chunks of positions from last hidden states, equal today's whole-logits computation in
value (1e-5) and gradient, and no tensor of the forward or backward pass grows with B·T·V."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import tiny_llama
from train.chunked import causal_ce, final_states, logit_head, over_chunks, scored_positions


def grads(params) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def assert_close_grads(a, b, atol=1e-6):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=atol, rtol=1e-5), (x - y).abs().max()


@pytest.mark.parametrize("chunk", [1, 7, 37, 100, 0])
def test_over_chunks_equals_the_whole_rows_in_value_and_gradient(chunk):
    g = torch.Generator().manual_seed(0)
    head, scale = nn.Linear(8, 50), nn.Parameter(torch.tensor(1.5))
    rows = torch.randn(37, 8, generator=g, requires_grad=True)
    targets, other = torch.randint(0, 50, (37,), generator=g), torch.randn(37, 50, generator=g)

    def fn(logits, part):  # a cross-entropy and a KL to fixed targets, with a parameter of its own
        q = torch.log_softmax(scale * logits, -1)
        p = torch.log_softmax(other[part], -1)
        return nn.functional.nll_loss(q, targets[part], reduction="sum") / 37 + (p.exp() * (p - q)).sum() / 37

    params = [rows, head.weight, head.bias, scale]
    whole = fn(head(rows), slice(None))
    (3 * whole).backward()
    want = grads(params)
    for p in params:
        p.grad = None
    got = over_chunks(rows, head, fn, chunk, extra=(scale,))
    (3 * got).backward()
    assert torch.allclose(got, whole, atol=1e-6)
    assert_close_grads(grads(params), want)
    with torch.no_grad():
        assert torch.allclose(over_chunks(rows, head, fn, chunk, extra=(scale,)), whole, atol=1e-6)


def gpt2(vocab=48, hidden=16, seed=0):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("gpt2", vocab_size=vocab, n_embd=hidden, n_layer=2, n_head=2, n_positions=32,
                               bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).eval()  # eval: no dropout, so two passes agree


@pytest.mark.parametrize("make", [lambda: tiny_llama(16, 2), gpt2], ids=["llama", "gpt2-tied"])
def test_the_causal_loss_equals_the_models_own_with_padding_and_a_token_count(make):
    model = make()
    head = logit_head(model)
    assert head is model.get_output_embeddings()
    ids = torch.randint(0, 48, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    count = torch.tensor(25)
    want = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=count).loss
    want.backward()
    want_grads = grads(model.parameters())
    model.zero_grad()
    _, final = final_states(model, model, head, input_ids=ids, attention_mask=mask)
    assert final.shape == (3, 11, 16)
    got = causal_ce(final, head, labels, count, 4)
    got.backward()
    assert torch.allclose(got, want, atol=1e-5)
    assert_close_grads(grads(model.parameters()), want_grads, atol=1e-6)


def test_the_trainer_takes_the_chunked_loss_and_returns_the_same_as_its_own(tmp_path):
    from transformers import TrainingArguments

    from train.trainer import BabyTrainer

    model = tiny_llama(16, 2)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=2)
    trainer = BabyTrainer(model=model, args=args)
    ids = torch.randint(0, 48, (2, 9), generator=torch.Generator().manual_seed(2))
    inputs = {"input_ids": ids, "labels": ids.clone()}
    want = trainer.compute_loss(model, dict(inputs), num_items_in_batch=torch.tensor(16))
    trainer.logit_head, trainer.logits_chunk = logit_head(model), 5
    seen = []
    handle = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    got, outputs = trainer.compute_loss(model, dict(inputs), return_outputs=True, num_items_in_batch=torch.tensor(16))
    handle.remove()
    assert torch.allclose(got, want, atol=1e-6) and set(outputs) == {"loss"}
    assert seen and max(s[0] for s in seen) <= 5  # the head saw chunks of at most 5 rows, never [2, 9, H]


def test_a_model_whose_logits_are_more_than_its_head_is_computed_whole():
    """Gemma 2 soft-caps its logits: the probe finds that, and the loss is the model's whole-logits one."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=8, final_logit_softcapping=2.0)
    model = Gemma2ForCausalLM(cfg).eval()
    assert logit_head(model) is None
    ids = torch.randint(0, 48, (2, 9), generator=torch.Generator().manual_seed(3))
    out, final = final_states(model, model, None, input_ids=ids)
    assert final.shape == (2, 9, 48)
    assert torch.allclose(causal_ce(final, None, ids, None, 4), model(input_ids=ids, labels=ids).loss, atol=1e-5)
    model.config.final_logit_softcapping = None
    assert logit_head(model) is model.get_output_embeddings()


# ------------------------------------------------------------------ every logit term through the wrapper
TERMS = ["ce", "logit_kd", "reverse_kl", "jsd", "tvd", "skew_kl", "skew_reverse_kl", "uld", "aux_kd"]


def whole_logits_reference(wrapper, key, ids, labels, mask, teachers, n_tokens, cached=None):
    """Today's path: the term on whole logits (the student's and the teachers' full [B, T, V])."""
    from distill.losses import Batch
    from distill.losses.aux_kd import aux_kd

    out = wrapper.student(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    rows, targets = scored_positions(labels)
    t_logits = [rows(t.model(input_ids=ids, attention_mask=mask).logits) for t in teachers]
    term = wrapper.term(key)
    p = term.params
    if key == "aux_kd":
        heads = [wrapper.aux_heads[f"block{b}"](rows(out.hidden_states[b + 1])) for b in term.layers]
        return aux_kd(heads, t_logits, p.temperature, n_tokens, p.ensemble, [t.weight for t in teachers])
    batch = Batch(logits=rows(out.logits), targets=targets, n_tokens=n_tokens, rows=rows, teacher_logits=t_logits,
                  teacher_weights=tuple(t.weight for t in teachers),
                  cached=tuple(rows(x) for x in cached) if cached is not None else None)
    return term(batch, None)


def build(key, ensemble, chunk):
    from distill.config import LossesConfig
    from distill.teachers import Teacher
    from distill.wrapper import DistillationWrapper

    models = [tiny_llama(24, 2, seed=1), tiny_llama(20, 3, seed=2)]
    teachers = [Teacher(f"t{i}", m.eval().requires_grad_(False), w, [], m.config.hidden_size, 2, head=logit_head(m))
                for i, (m, w) in enumerate(zip(models, (0.7, 0.3)))]
    losses = LossesConfig()
    getattr(losses, key).weight = 0.8
    if hasattr(getattr(losses, key), "ensemble"):
        getattr(losses, key).ensemble = ensemble
    if key == "aux_kd":
        losses.aux_kd.layers = [0, 1]
    return DistillationWrapper(tiny_llama(16, 2), teachers, losses, chunk=chunk), teachers


def batch_with_padding():
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 48, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    return ids, ids.masked_fill(mask == 0, -100), mask


CASES = [(key, "mean_logits") for key in TERMS] + [(key, "per_teacher") for key in TERMS if key not in ("ce", "uld")]


@pytest.mark.parametrize(("key", "ensemble"), CASES)  # ce and uld have no ensemble setting
def test_every_logit_term_over_chunks_equals_the_whole_logits_term(key, ensemble):
    from distill.teachers import run_teachers

    wrapper, teachers = build(key, ensemble, chunk=4)
    ids, labels, mask = batch_with_padding()
    params = [p for p in wrapper.parameters() if p.requires_grad]
    outs = run_teachers(teachers, ids, mask, hidden=False)
    assert all(o.head is not None and o.final.shape[-1] == t.hidden_size for o, t in zip(outs, teachers))
    got = wrapper(ids, attention_mask=mask, labels=labels, teacher_outputs=outs, n_tokens=21)
    got["loss"].backward()
    got_grads = grads(params)
    wrapper.zero_grad()
    want = whole_logits_reference(wrapper, key, ids, labels, mask, teachers, 21)
    (0.8 * want).backward()
    assert torch.allclose(got["terms"][key], want, atol=1e-5), (got["terms"][key], want)
    assert torch.allclose(got["loss"], 0.8 * want, atol=1e-5)
    assert_close_grads(got_grads, grads(params), atol=1e-6)


@pytest.mark.parametrize("key", ["logit_kd", "reverse_kl", "jsd", "tvd", "skew_kl", "skew_reverse_kl"])
def test_cached_terms_over_chunks_equal_the_whole_logits_terms(key):
    from distill.cache import top_k

    wrapper, teachers = build(key, "mean_logits", chunk=3)
    ids, labels, mask = batch_with_padding()
    logits = [t.model(input_ids=ids, attention_mask=mask).logits for t in teachers]
    top, top_ids, rest = top_k(logits, {"temperature": wrapper.term(key).params.temperature,
                                        "ensemble": "mean_logits"}, 5)
    cached = (top.view(3, 10, 5), top_ids.view(3, 10, 5), rest.view(3, 10))
    params = [p for p in wrapper.parameters() if p.requires_grad]
    got = wrapper(ids, attention_mask=mask, labels=labels, cached_targets=cached, n_tokens=21)
    got["loss"].backward()
    got_grads = grads(params)
    wrapper.zero_grad()
    want = whole_logits_reference(wrapper, key, ids, labels, mask, teachers, 21, cached=cached)
    (0.8 * want).backward()
    assert torch.allclose(got["terms"][key], want, atol=1e-5)
    assert_close_grads(got_grads, grads(params), atol=1e-6)


def test_evaluation_is_the_students_cross_entropy_over_chunks():
    wrapper, _ = build("logit_kd", "mean_logits", chunk=4)
    ids, labels, mask = batch_with_padding()
    with torch.no_grad():
        got = wrapper(ids, attention_mask=mask, labels=labels)
        want = wrapper.student(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert set(got) == {"loss"} and torch.allclose(got["loss"], want, atol=1e-5)


# ------------------------------------------------------------------ no tensor grows with B·T·V
class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any operation produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


VOCAB, HIDDEN, BLOCK, CHUNK = 512, 16, 32, 8


def largest_tensor_of_a_distillation_step(batch: int, chunk: int) -> int:
    """A training step's forward and backward: ce + logit_kd (two teachers, per_teacher) + reverse_kl."""
    from distill.config import LossesConfig
    from distill.teachers import Teacher, run_teachers
    from distill.wrapper import DistillationWrapper

    models = [tiny_llama(HIDDEN, 1, VOCAB, seed=s).eval().requires_grad_(False) for s in (1, 2)]
    teachers = [Teacher(f"t{i}", m, 0.5, [], HIDDEN, 1, head=logit_head(m)) for i, m in enumerate(models)]
    losses = LossesConfig()
    losses.ce.weight, losses.logit_kd.weight, losses.reverse_kl.weight = 1.0, 1.0, 0.5
    losses.logit_kd.ensemble = "per_teacher"
    wrapper = DistillationWrapper(tiny_llama(HIDDEN, 1, VOCAB), teachers, losses, chunk=chunk)
    ids = torch.randint(0, VOCAB, (batch, BLOCK), generator=torch.Generator().manual_seed(0))
    with LargestTensor() as seen:
        outs = run_teachers(teachers, ids, None, hidden=False)
        wrapper(ids, labels=ids, teacher_outputs=outs)["loss"].backward()
    return seen.largest


def largest_tensor_of_a_training_step(batch: int, chunk: int | None) -> int:
    """The plain causal LM's loss: chunked (`chunk`), or the model's own (None)."""
    model = tiny_llama(HIDDEN, 1, VOCAB)
    ids = torch.randint(0, VOCAB, (batch, BLOCK), generator=torch.Generator().manual_seed(0))
    with LargestTensor() as seen:
        if chunk is None:
            loss = model(input_ids=ids, labels=ids).loss
        else:
            head = logit_head(model)
            loss = causal_ce(final_states(model, model, head, input_ids=ids)[1], head, ids, None, chunk)
        loss.backward()
    return seen.largest


def test_no_tensor_of_a_step_grows_with_batch_times_length_times_vocabulary():
    whole = BLOCK * VOCAB  # one sequence's logits: the whole path makes batch times this
    for step in (largest_tensor_of_a_distillation_step, largest_tensor_of_a_training_step):
        small, large = step(2, CHUNK), step(8, CHUNK)
        assert small == large, (step.__name__, small, large)  # 4x the batch, not one element more at the peak
        assert large <= max(CHUNK * VOCAB, VOCAB * HIDDEN) < whole, (step.__name__, large)
    assert largest_tensor_of_a_training_step(8, None) >= 8 * (BLOCK - 1) * VOCAB  # the control: the model's own loss
    assert largest_tensor_of_a_distillation_step(8, 0) >= 8 * (BLOCK - 1) * VOCAB  # chunk 0: all rows at once


def test_a_teacher_with_its_own_tokens_gives_the_same_uld_from_its_last_hidden_state_as_from_its_logits():
    """The aligned rows are picked from the teacher's last hidden state and its head maps them chunk by chunk:
    the same term as picking them from its whole logits."""
    from distill.config import LossesConfig
    from distill.teachers import Teacher, TeacherOutput
    from distill.wrapper import DistillationWrapper

    teacher = gpt2(vocab=60, hidden=24, seed=1)
    head = logit_head(teacher)
    losses = LossesConfig()
    losses.uld.weight, losses.uld.shared_kl = 1.0, 0.0
    wrapper = DistillationWrapper(tiny_llama(16, 2), [Teacher("t", teacher, 1.0, [], 24, 2, head=head)], losses, 3)
    ids = torch.randint(0, 48, (2, 9), generator=torch.Generator().manual_seed(0))
    t_ids = torch.randint(0, 60, (2, 12), generator=torch.Generator().manual_seed(1))  # the teacher's own tokens
    index = torch.tensor([[0, -1, 2, 3, -1, 6, 7, 9, 11], [1, 2, -1, -1, 5, 8, 9, 10, 11]])
    with torch.no_grad():
        _, final = final_states(teacher, teacher, head, input_ids=t_ids)
        logits = teacher(input_ids=t_ids).logits
    by_head = wrapper(ids, labels=ids, teacher_outputs=[TeacherOutput(final, None, index, head)], n_tokens=16)
    whole = wrapper(ids, labels=ids, teacher_outputs=[TeacherOutput(logits, None, index)], n_tokens=16)
    assert final.shape == (2, 12, 24)
    assert torch.allclose(by_head["terms"]["uld"], whole["terms"]["uld"], atol=1e-6) and whole["terms"]["uld"] > 0


def test_the_wrapper_does_not_register_the_students_head_a_second_time():
    wrapper, _ = build("ce", "mean_logits", chunk=4)
    assert wrapper.head is wrapper.student.get_output_embeddings()
    assert [k for k in wrapper.state_dict() if "head" in k] == ["student.lm_head.weight"]
    assert wrapper._keys_to_ignore_on_save is None  # a Llama student ties nothing


def test_gradients_taken_in_the_forward_pass_survive_fp16():
    """The in-forward gradients come before any loss scaler; per position they are O(1 / tokens). Under fp16
    autocast (on this CPU) they stay within 1e-3 of fp32's; taken unscaled they were 2.3e-2 off (underflow)."""
    g = torch.Generator().manual_seed(0)
    head = nn.Linear(64, 2000, bias=False)
    rows = torch.randn(4096, 64, generator=g, requires_grad=True)
    targets = torch.randint(0, 2000, (4096,), generator=g)

    def ce(logits, part):  # per token of an accumulated batch of 8 such micro-batches
        return nn.functional.cross_entropy(logits.float(), targets[part], reduction="sum") / (8 * 4096)

    ce(head(rows), slice(None)).backward()
    want = grads([rows, head.weight])
    rows.grad, head.weight.grad = None, None
    with torch.autocast("cpu", dtype=torch.float16):
        loss = over_chunks(rows, head, ce, 1024)
    loss.backward()
    for got, ref in zip(grads([rows, head.weight]), want):
        assert (got - ref).norm() / ref.norm() < 1e-3
