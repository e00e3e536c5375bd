"""Run lm-evaluation-harness (0.4.x, its own environment) on local BLiMP-style JSONL files; print JSON.

Called by bench/eval_speed.py with the harness environment's python:
    python bench/harness_driver.py MODEL DATA_GLOB BATCH_SIZE
Each file becomes a harness task written as BabyLM's blimp_filtered YAMLs are: empty context,
choices [sentence_good, sentence_bad], target 0, metric acc. Only the loglikelihood phase is
timed (tokenization, batching, forward passes), so dataset loading does not count against it.
"""
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

model, pattern, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = sorted(glob.glob(pattern))
include = Path(tempfile.mkdtemp())
names = []
for f in files:
    name = "bd_" + Path(f).stem
    names.append(name)
    (include / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {Path(f).resolve()}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"\"\ndoc_to_target: 0\n"
        "doc_to_choice: \"{{[sentence_good, sentence_bad]}}\"\nnum_fewshot: 0\nmetric_list:\n  - metric: acc\n")
# add_bos_token=False as BabyLM's 2024 fork has it (upstream 0.4.13's default puts BOS before EWoK contexts)
lm = HFLM(pretrained=model, batch_size=batch, device="cpu", dtype="float32", add_bos_token=False)
timed = {"seconds": 0.0, "requests": 0}
scores: dict[str, dict[int, list]] = {}  # paradigm -> doc id -> [log p(good), log p(bad)]
inner = lm.loglikelihood


def loglikelihood(requests, *args, **kwargs):
    t0 = time.perf_counter()
    out = inner(requests, *args, **kwargs)
    timed["seconds"] += time.perf_counter() - t0
    timed["requests"] += len(requests)
    for req, (ll, _greedy) in zip(requests, out):
        scores.setdefault(req.task_name[3:], {}).setdefault(req.doc_id, [None, None])[req.idx] = ll
    return out


lm.loglikelihood = loglikelihood
t0 = time.perf_counter()
res = simple_evaluate(model=lm, tasks=names, task_manager=TaskManager(include_path=str(include)), num_fewshot=0,
                      bootstrap_iters=0, log_samples=False)
total = time.perf_counter() - t0
acc = {name[3:]: res["results"][name]["acc,none"] for name in names}
per_item = {k: [v[i] for i in sorted(v)] for k, v in scores.items()}
print("HARNESS_JSON " + json.dumps({"acc": acc, "scores": per_item, "loglikelihood_seconds": timed["seconds"],
                                    "requests": timed["requests"], "total_seconds": total}))
