"""Teachers run as a GPU user expects (issue 19, part 1): compiled with train.compile, under inference_mode
when no term saves what they output, their output layer found and applied chunk by chunk; same targets."""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from conftest import tiny_llama
from train.chunked import logit_head


def save_teacher(folder):
    """A tiny Llama and a word-level fast tokenizer of its 48 ids, saved as a teacher folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = tiny_llama(24, 2, seed=1)
    model.save_pretrained(folder)
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(48)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0").save_pretrained(folder)
    return model


def test_load_teachers_compiles_with_train_compile_and_the_targets_stay_the_same(tmp_path):
    from distill.config import DistillRunConfig, TeacherConfig
    from distill.teachers import load_teachers, run_teachers

    save_teacher(tmp_path / "t")
    cfg = DistillRunConfig()
    cfg.distill.teachers = [TeacherConfig(path=str(tmp_path / "t"))]
    cfg.data.block_size = 16
    cfg.student.vocab_size = 48  # the teacher's: with the shared tokenizer the two vocabularies are one
    plain = load_teachers(cfg, tmp_path / "t", 2, torch.device("cpu"))
    assert plain[0].compiled is None and plain[0].head is plain[0].model.get_output_embeddings()
    cfg.train.compile = True
    compiled = load_teachers(cfg, tmp_path / "t", 2, torch.device("cpu"))
    assert compiled[0].compiled is not None
    counters.clear()
    for seed in range(3):  # three batches, one compiled graph: the last-hidden-state hook does not recompile
        ids = torch.randint(0, 48, (2, 9), generator=torch.Generator().manual_seed(seed))
        want, got = run_teachers(plain, ids, None, hidden=False)[0], run_teachers(compiled, ids, None, hidden=False)[0]
        assert torch.allclose(got.final, want.final, atol=1e-5) and torch.allclose(got.logits, want.logits, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1


def test_teachers_run_under_inference_mode_unless_a_term_saves_their_outputs():
    from distill.config import LossesConfig
    from distill.teachers import Teacher, run_teachers
    from distill.wrapper import DistillationWrapper

    model = tiny_llama(24, 2, seed=1).eval().requires_grad_(False)
    teachers = [Teacher("t", model, 1.0, [(1, 1)], 24, 2, head=logit_head(model))]
    ids = torch.randint(0, 48, (2, 9), generator=torch.Generator().manual_seed(0))
    logits_only = run_teachers(teachers, ids, None, hidden=False)[0]
    assert logits_only.final.is_inference() and not logits_only.final.requires_grad
    with_hidden = run_teachers(teachers, ids, None, hidden=True)[0]
    assert not with_hidden.final.is_inference() and not with_hidden.hidden[-1].is_inference()
    assert not run_teachers(teachers, ids, None, hidden=False, inference=False)[0].final.is_inference()
    losses = LossesConfig()
    losses.ce.weight, losses.logit_kd.weight, losses.hidden_mse.weight = 1.0, 1.0, 1.0
    wrapper = DistillationWrapper(tiny_llama(16, 2), teachers, losses, chunk=4)
    wrapper(ids, labels=ids, teacher_outputs=[with_hidden], n_tokens=16)["loss"].backward()  # hidden_mse saves them
    losses.hidden_mse.weight = 0.0
    wrapper = DistillationWrapper(tiny_llama(16, 2), teachers, losses, chunk=4)
    wrapper(ids, labels=ids, teacher_outputs=[logits_only], n_tokens=16)["loss"].backward()  # inference tensors: fine
    assert all(p.grad is not None for p in wrapper.student.parameters())


def test_a_bf16_teachers_targets_come_from_its_own_head_in_bf16():
    """A teacher held in bf16 gives its logits through its bf16 head, chunk by chunk: the same targets as its own
    whole bf16 logits."""
    from distill.losses import Batch
    from distill.teachers import Teacher, run_teachers

    model = tiny_llama(24, 2, seed=1).to(torch.bfloat16).eval().requires_grad_(False)
    head = logit_head(model)
    assert head is not None
    ids = torch.randint(0, 48, (2, 9), generator=torch.Generator().manual_seed(0))
    out = run_teachers([Teacher("t", model, 1.0, [], 24, 2, head=head)], ids, None, hidden=False)[0]
    rows = out.final[:, :-1].reshape(-1, 24)
    batch = Batch(logits=None, targets=ids[:, 1:].reshape(-1), n_tokens=16, rows=None, teacher_final=[rows],
                  teacher_heads=[head])
    chunk = batch.at(slice(3, 9), None)
    want = model(input_ids=ids).logits[:, :-1].reshape(-1, 48)[3:9]
    assert chunk.teacher_logits[0].dtype == torch.bfloat16 and torch.equal(chunk.teacher_logits[0], want)


def test_bf16_on_a_gpu_without_it_is_refused_for_training_and_for_teachers(monkeypatch, tmp_path):
    """No such GPU is here: torch.cuda is made to report one (an old GPU without bf16), the one piece of hardware
    this test cannot have. On this CPU, teachers in bf16 are allowed (a CPU computes bf16 in software)."""
    from common import config as cfglib
    from common.errors import UserError
    from common.paths import REPO
    from distill.config import DistillRunConfig

    import yaml

    recipe = yaml.safe_load((REPO / "config" / "runs" / "demo-kd.yaml").read_text())
    save_teacher(tmp_path / "t")  # the recipe's teachers, trained by the demo, are not in a clean clone
    recipe["distill"]["teachers"] = [{"path": str(tmp_path / "t")}]
    (tmp_path / "kd.yaml").write_text(yaml.safe_dump(recipe))
    recipe = tmp_path / "kd.yaml"
    cfglib.load(DistillRunConfig, recipe, ["distill.teacher_dtype=bfloat16"])  # checked on load: the CPU is fine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100")
    for override, key in (("distill.teacher_dtype=bfloat16", "distill.teacher_dtype"),
                          ("train.precision=bf16", "train.precision")):
        with pytest.raises(UserError) as info:
            cfglib.load(DistillRunConfig, recipe, [override])
        assert str(info.value).startswith(f"command line: {key}: is ") and "(Tesla V100) lacks" in str(info.value)
    cfglib.load(DistillRunConfig, recipe, ["distill.teacher_dtype=float32"])
