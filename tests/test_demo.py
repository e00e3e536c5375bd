"""The embedded demo grammar: deterministic, BLiMP-format pairs, held out from the corpus."""
from __future__ import annotations

import json

from tokenizer import demo


def test_deterministic_from_seed(tmp_path):
    a = demo.generate(tmp_path / "a", seed=3, n_sentences=500, pairs_per_phenomenon=20)
    b = demo.generate(tmp_path / "b", seed=3, n_sentences=500, pairs_per_phenomenon=20)
    c = demo.generate(tmp_path / "c", seed=4, n_sentences=500, pairs_per_phenomenon=20)
    files = [p.relative_to(a) for p in sorted(a.rglob("*")) if p.is_file()]
    assert len(files) == 2 + len(demo.PHENOMENA) + 2  # corpus, dev, pairs, finetune/demo_phenomenon.{train,valid}
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "train" / "demo.train").read_bytes() != (c / "train" / "demo.train").read_bytes()


def test_pairs_are_blimp_format_and_held_out(demo_root):
    corpus = set((demo_root / "train" / "demo.train").read_text().splitlines())
    corpus |= set((demo_root / "dev" / "demo.dev").read_text().splitlines())
    for uid in demo.PHENOMENA:
        rows = [json.loads(line) for line in (demo_root / "pairs" / f"{uid}.jsonl").read_text().splitlines()]
        assert len(rows) == 200
        assert {"sentence_good", "sentence_bad", "UID", "field", "linguistics_term", "pair_id"} <= set(rows[0])
        assert all(r["UID"] == uid and r["sentence_good"] != r["sentence_bad"] for r in rows)
        assert not any(r["sentence_good"] in corpus or r["sentence_bad"] in corpus for r in rows)
        # a minimal pair: same length, one word differs
        for r in rows:
            good, bad = r["sentence_good"].split(), r["sentence_bad"].split()
            assert len(good) == len(bad) and sum(g != b for g, b in zip(good, bad)) == 1


def test_finetune_task_is_balanced_and_held_out(demo_root):
    seen = set((demo_root / "train" / "demo.train").read_text().splitlines()) | set((demo_root / "dev" / "demo.dev").read_text().splitlines())
    for uid in demo.PHENOMENA:
        for line in (demo_root / "pairs" / f"{uid}.jsonl").read_text().splitlines():
            seen |= {json.loads(line)["sentence_good"], json.loads(line)["sentence_bad"]}
    splits = {}
    for split, n in (("train", 1000), ("valid", 200)):
        rows = [json.loads(line) for line in (demo_root / "finetune" / f"demo_phenomenon.{split}.jsonl").read_text().splitlines()]
        assert len(rows) == n and sorted({r["label"] for r in rows}) == list(range(len(demo.PHENOMENA)))
        assert all(sum(r["label"] == k for r in rows) == n // len(demo.PHENOMENA) for k in range(len(demo.PHENOMENA)))
        assert not any(r["sentence"] in seen for r in rows)
        splits[split] = {r["sentence"] for r in rows}
    assert not splits["train"] & splits["valid"]


def test_agreement_is_right():
    import random

    rng = random.Random(0)
    singular = {v[0] for v in demo.INTRANSITIVE}
    for _ in range(200):
        good, bad = demo.pair_sv_across_pp(rng)
        head = good.split()[1] if good.split()[1] not in demo.ADJECTIVES else good.split()[2]
        is_singular = any(head == n[0] for n in demo.NOUNS)
        assert (good.rstrip(".").split()[-1] in singular) == is_singular
        good, bad = demo.pair_reflexive(rng)
        assert good.rstrip(".").split()[-1] in ("himself", "herself", "themselves")
    plural_subject = demo.pair_sv_simple(random.Random(1))
    assert plural_subject[0] != plural_subject[1]


def test_corpus_has_the_phenomena(demo_root):
    text = (demo_root / "train" / "demo.train").read_text()
    for marker in (" that the ", " near the ", "themselves", "herself", "These ", "Where are", "Look at"):
        assert marker in text
