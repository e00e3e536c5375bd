"""The embedded demo grammar: deterministic, BLiMP-format pairs, held out from the corpus."""
from __future__ import annotations

import json

from tokenizer import demo


def test_deterministic_from_seed(tmp_path):
    a = demo.generate(tmp_path / "a", seed=3, n_sentences=500, pairs_per_phenomenon=20)
    b = demo.generate(tmp_path / "b", seed=3, n_sentences=500, pairs_per_phenomenon=20)
    c = demo.generate(tmp_path / "c", seed=4, n_sentences=500, pairs_per_phenomenon=20)
    files = [p.relative_to(a) for p in sorted(a.rglob("*")) if p.is_file()]
    assert (
        len(files) == 2 + len(demo.PHENOMENA) + 4 + 1
    )  # corpus, dev, pairs, finetune/{demo_phenomenon,demo_acceptability}.*, aoa/cdi_childes.json
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "train" / "demo.train").read_bytes() != (c / "train" / "demo.train").read_bytes()


def test_a_folder_from_before_the_tasks_gains_them_and_keeps_its_files(tmp_path):
    """A demo folder written before a fine-tuning task existed: the missing files are added, the same bytes a fresh
    `generate` with the seed writes; a file already there is not touched; with nothing missing, nothing is written."""
    import shutil

    fresh = demo.generate(tmp_path / "fresh", seed=3, n_sentences=500, pairs_per_phenomenon=20)
    old = tmp_path / "old"
    shutil.copytree(fresh, old)
    (old / "finetune" / "demo_acceptability.valid.jsonl").unlink()
    (old / "finetune" / "demo_phenomenon.train.jsonl").unlink()
    (old / demo.AOA_WORDS).unlink()
    kept = old / "finetune" / "demo_acceptability.train.jsonl"
    kept.write_text(kept.read_text() + "\n")  # someone's edit: must survive
    assert demo.add_task(old, seed=3)
    for name in ("demo_acceptability.valid.jsonl", "demo_phenomenon.train.jsonl", "demo_phenomenon.valid.jsonl"):
        assert (old / "finetune" / name).read_bytes() == (fresh / "finetune" / name).read_bytes(), name
    assert kept.read_text() == (fresh / "finetune" / kept.name).read_text() + "\n"
    assert (old / demo.AOA_WORDS).read_bytes() == (fresh / demo.AOA_WORDS).read_bytes()
    assert not demo.add_task(old, seed=3)
    (old / demo.AOA_WORDS).unlink()  # the AoA words alone missing: added too
    assert demo.add_task(old, seed=3) and (old / demo.AOA_WORDS).read_bytes() == (fresh / demo.AOA_WORDS).read_bytes()


def test_aoa_words_are_the_grammars_content_words_in_the_cdi_layout(demo_root):
    """cdi_childes.json's layout ({word: [{"context": ...}]}), every content word of the grammar, each context a
    corpus sentence that holds the word, at most AOA_CONTEXTS of them."""
    words = json.loads((demo_root / demo.AOA_WORDS).read_text())
    corpus = set((demo_root / "train" / "demo.train").read_text().splitlines())
    assert {"dog", "dogs", "mice", "tickles", "hungry", "boxes"} <= set(words) and "the" not in words
    assert all(1 <= len(c) <= demo.AOA_CONTEXTS for c in words.values())
    for word, contexts in words.items():
        for c in contexts:
            assert c["context"] in corpus and word in c["context"].rstrip(".?!").lower().split(), (word, c)


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


def test_finetune_tasks_are_balanced_and_held_out(demo_root):
    """Both fine-tuning tasks: balanced classes (acceptability: over labels and phenomena), no sentence from the corpus,
    the pairs, the other split or the other task."""
    seen = set((demo_root / "train" / "demo.train").read_text().splitlines()) | set(
        (demo_root / "dev" / "demo.dev").read_text().splitlines()
    )
    for uid in demo.PHENOMENA:
        for line in (demo_root / "pairs" / f"{uid}.jsonl").read_text().splitlines():
            seen |= {json.loads(line)["sentence_good"], json.loads(line)["sentence_bad"]}
    sentences = {}
    for task, classes in (("demo_phenomenon", len(demo.PHENOMENA)), ("demo_acceptability", 2)):
        for split, n in (("train", 1000), ("valid", 200)):
            rows = [
                json.loads(line) for line in (demo_root / "finetune" / f"{task}.{split}.jsonl").read_text().splitlines()
            ]
            assert len(rows) == n and sorted({r["label"] for r in rows}) == list(range(classes))
            assert all(sum(r["label"] == k for r in rows) == n // classes for k in range(classes))
            assert not any(r["sentence"] in seen for r in rows)
            sentences[task, split] = {r["sentence"] for r in rows}
    groups = list(sentences.values())
    assert all(not (a & b) for i, a in enumerate(groups) for b in groups[i + 1:])


def test_acceptability_labels_the_grammatical_side_1():
    """The same rng draws the same pairs: label 1 must be each pair's good side, label 0 its bad side."""
    from random import Random

    rows = demo.acceptability_task(Random(5), set(), 40)
    makers, rng, expected = [make for _, _, make in demo.PHENOMENA.values()], Random(5), {}
    for i in range(40):
        good, bad = makers[(i // 2) % len(makers)](rng)
        expected[good if i % 2 else bad] = i % 2
    assert {r["sentence"]: r["label"] for r in rows} == expected


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


def test_a_stop_part_way_leaves_no_corpus_and_a_killed_ones_folder_goes_with_the_next(tmp_path, monkeypatch):
    """The demo is written into `.demo.tmp` and moved into place whole, `train/` last, since a run that finds
    `train/` takes the corpus there as whole (tokenizer.prepare.ensure_demo). Ctrl-C at the last file: no part of the
    demo is in place and the hidden folder is gone (until 2026-12-04 a full disk or Ctrl-C left a cut
    `train/demo.train`). A killed run's `.demo.tmp` is removed by the next, which writes the same bytes."""
    import pytest

    fresh = demo.generate(tmp_path / "fresh", seed=3, n_sentences=500, pairs_per_phenomenon=20)
    out = tmp_path / "out"
    write_aoa = demo.write_aoa_words

    def stopped(*args):
        write_aoa(*args)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(demo, "write_aoa_words", stopped)
        with pytest.raises(KeyboardInterrupt):
            demo.generate(out, seed=3, n_sentences=500, pairs_per_phenomenon=20)
    assert list(out.iterdir()) == []
    (out / ".demo.tmp" / "train").mkdir(parents=True)
    (out / ".demo.tmp" / "train" / "demo.train").write_text("a killed run's half line")
    demo.check_target(out, 500)
    demo.generate(out, seed=3, n_sentences=500, pairs_per_phenomenon=20)
    files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == files
    assert all((out / f).read_bytes() == (fresh / f).read_bytes() for f in files)


def test_writers_of_one_demo_folder_take_turns(tmp_path):
    """Two `tokenizer demo` commands and two runs that generate the demo (`ensure_demo`, as two grid points with their
    own data caches do) into one folder at once: they wait for the one that writes (`.demo.lock`, held here first),
    then one writes the whole demo; the other command is refused in one line, the other run finds it written. Until
    2026-12-04 each removed the others' `.demo.tmp`: three at once all failed, naming a missing file, and wrote
    nothing."""
    import subprocess
    import sys
    import time

    from common.locks import file_lock
    from conftest import ROOT, assert_user_error

    fresh = demo.generate(tmp_path / "fresh", seed=42, n_sentences=2000)
    files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    ensure = ("import sys; from tokenizer.config import DataConfig; from tokenizer.prepare import ensure_demo; "
              "ensure_demo(DataConfig(train_dir=sys.argv[1] + '/train', dev_dir=sys.argv[1] + '/dev', demo=True, "
              "demo_sentences=2000))")
    for name, command in (("commands", ["-m", "tokenizer", "demo", "OUT", "--sentences", "2000"]),
                          ("runs", ["-c", ensure, "OUT"])):
        out = tmp_path / name
        with file_lock(out / demo.LOCK):
            procs = [subprocess.Popen([sys.executable, *[str(out) if a == "OUT" else a for a in command]], cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
            time.sleep(6)  # each has started and waits for the lock: nothing written
            assert [p.poll() for p in procs] == [None, None], [p.communicate() for p in procs if p.poll()]
            assert [p.name for p in out.iterdir()] == [demo.LOCK]
        done = [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for p in procs]
        assert sorted(p.returncode for p in done) == ([0, 2] if name == "commands" else [0, 0]), done
        wrote = [p for p in done if p.returncode == 0 and (name == "commands" or "generating" in p.stdout)]
        assert len(wrote) == 1, done
        if name == "commands":
            refused = next(p for p in done if p.returncode == 2)
            assert_user_error(refused, str(out), "already holds dev/, pairs/, finetune/, aoa/, train/")
            assert "Traceback" not in refused.stderr, refused.stderr
        assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == files
        assert all((out / f).read_bytes() == (fresh / f).read_bytes() for f in files)
