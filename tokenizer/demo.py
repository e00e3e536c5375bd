"""The embedded demo: a small probabilistic grammar of child-directed-style English.

It writes a training corpus, a dev corpus and held-out minimal pairs in BLiMP's JSONL
format (`sentence_good`, `sentence_bad`, `UID`, ...) for the phenomena the grammar
controls: subject-verb agreement (plain, across a prepositional phrase, across an
object relative clause), determiner-noun agreement and reflexive agreement. Everything
is deterministic from the seed, and no good or bad pair sentence occurs in the corpus.

    python -m tokenizer demo cache/demo --seed 42
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

from common.errors import writing
from common.paths import building, write_atomic

# (singular, plural, gender) -- gender m/f picks the reflexive; n nouns take no reflexive.
NOUNS = [
    ("boy", "boys", "m"), ("girl", "girls", "f"), ("man", "men", "m"), ("woman", "women", "f"),
    ("king", "kings", "m"), ("queen", "queens", "f"), ("brother", "brothers", "m"), ("sister", "sisters", "f"),
    ("dog", "dogs", "n"), ("cat", "cats", "n"), ("bird", "birds", "n"), ("baby", "babies", "n"),
    ("teacher", "teachers", "n"), ("child", "children", "n"), ("friend", "friends", "n"), ("duck", "ducks", "n"),
    ("bear", "bears", "n"), ("rabbit", "rabbits", "n"), ("puppy", "puppies", "n"), ("mouse", "mice", "n"),
]
PLACES = [("tree", "trees"), ("table", "tables"), ("box", "boxes"), ("car", "cars"), ("house", "houses"),
          ("chair", "chairs"), ("door", "doors"), ("bed", "beds")]
# (third person singular, plural)
INTRANSITIVE = [("runs", "run"), ("sleeps", "sleep"), ("laughs", "laugh"), ("jumps", "jump"), ("sings", "sing"),
                ("smiles", "smile"), ("cries", "cry"), ("plays", "play"), ("walks", "walk"), ("swims", "swim")]
TRANSITIVE = [("sees", "see"), ("likes", "like"), ("helps", "help"), ("hugs", "hug"), ("finds", "find"),
              ("watches", "watch"), ("calls", "call"), ("loves", "love"), ("tickles", "tickle"), ("feeds", "feed")]
ADJECTIVES = ["big", "little", "happy", "sad", "hungry", "tired", "funny", "red", "small", "nice"]
PREPOSITIONS = ["near", "behind", "under", "beside", "by"]
DETS = {"sg": ["the", "the", "this", "that", "a"], "pl": ["the", "the", "these", "those", "some"]}
REFLEXIVE = {("sg", "m"): "himself", ("sg", "f"): "herself", ("pl", "m"): "themselves", ("pl", "f"): "themselves"}
COPULA = {"sg": "is", "pl": "are"}
NUMBERS = ("sg", "pl")


def _other(number: str) -> str:
    return "pl" if number == "sg" else "sg"


def _noun(rng: random.Random, number: str, gendered: bool = False) -> tuple[str, str]:
    pool = [n for n in NOUNS if n[2] != "n"] if gendered else NOUNS
    sg, pl, gender = rng.choice(pool)
    return (sg if number == "sg" else pl), gender


def _np(rng: random.Random, number: str, det: str | None = None, gendered: bool = False) -> tuple[str, str]:
    noun, gender = _noun(rng, number, gendered)
    det = det or rng.choice(DETS[number])
    adj = (
        rng.choice(ADJECTIVES) + " " if rng.random() < 0.25 else ""
    )  # no noun or adjective starts with a vowel: "a" fits
    return f"{det} {adj}{noun}", gender


def _place(rng: random.Random, number: str) -> str:
    sg, pl = rng.choice(PLACES)
    return f"the {sg if number == 'sg' else pl}"


def _verb(table: list[tuple[str, str]], rng: random.Random, number: str) -> tuple[str, str]:
    """(correct form, wrong form) for a subject of `number`."""
    sg, pl = rng.choice(table)
    return (sg, pl) if number == "sg" else (pl, sg)


def _sentence(words: str, end: str = ".") -> str:
    return words[0].upper() + words[1:] + end


# ----------------------------------------------------------------------------- pair makers
# Each returns (good, bad) sentences; the corpus uses the good ones of the same frames.


def pair_sv_simple(rng):
    n = rng.choice(NUMBERS)
    subj, _ = _np(rng, n)
    good, bad = _verb(INTRANSITIVE, rng, n)
    return _sentence(f"{subj} {good}"), _sentence(f"{subj} {bad}")


def pair_sv_across_pp(rng):
    n = rng.choice(NUMBERS)
    subj, _ = _np(rng, n)
    pp = f"{rng.choice(PREPOSITIONS)} {_place(rng, _other(n))}"  # the attractor has the other number
    good, bad = _verb(INTRANSITIVE, rng, n)
    return _sentence(f"{subj} {pp} {good}"), _sentence(f"{subj} {pp} {bad}")


def pair_sv_across_rc(rng):
    n = rng.choice(NUMBERS)
    subj, _ = _np(rng, n)
    rc_n = _other(n)
    rc_subj, _ = _np(rng, rc_n, det="the")
    rc_verb, _ = _verb(TRANSITIVE, rng, rc_n)
    good, bad = _verb(INTRANSITIVE, rng, n)
    rc = f"that {rc_subj} {rc_verb}"
    return _sentence(f"{subj} {rc} {good}"), _sentence(f"{subj} {rc} {bad}")


def pair_det_noun(rng):
    n = rng.choice(NUMBERS)
    subj_n = rng.choice(NUMBERS)
    subj, _ = _np(rng, subj_n)
    verb, _ = _verb(TRANSITIVE, rng, subj_n)
    sg, pl, _ = rng.choice(NOUNS)
    det_sg, det_pl = rng.choice([("this", "these"), ("that", "those")])
    det, wrong = (det_sg, det_pl) if n == "sg" else (det_pl, det_sg)
    obj = sg if n == "sg" else pl
    return _sentence(f"{subj} {verb} {det} {obj}"), _sentence(f"{subj} {verb} {wrong} {obj}")


def pair_reflexive(rng):
    n = rng.choice(NUMBERS)
    subj, gender = _np(rng, n, gendered=True)
    verb, _ = _verb(TRANSITIVE, rng, n)
    good = REFLEXIVE[(n, gender)]
    bad = rng.choice([r for r in ("himself", "herself", "themselves") if r != good])
    return _sentence(f"{subj} {verb} {good}"), _sentence(f"{subj} {verb} {bad}")


PHENOMENA = {
    "demo_subject_verb_agreement": ("morphology", "subject_verb_agreement", pair_sv_simple),
    "demo_agreement_across_pp": ("syntax", "subject_verb_agreement", pair_sv_across_pp),
    "demo_agreement_across_relative_clause": ("syntax", "subject_verb_agreement", pair_sv_across_rc),
    "demo_determiner_noun_agreement": ("morphology", "determiner_noun_agreement", pair_det_noun),
    "demo_reflexive_agreement": ("syntax", "anaphor_agreement", pair_reflexive),
}


# ----------------------------------------------------------------------------- corpus


def _frame_sentence(rng: random.Random) -> str:
    """A child-directed frame: questions, imperatives, copulas, transitives."""
    n = rng.choice(NUMBERS)
    subj, _ = _np(rng, n)
    kind = rng.randrange(6)
    if kind == 0:
        return _sentence(f"look at {subj}", "!")
    if kind == 1:
        return _sentence(f"where {COPULA[n]} {subj}", "?")
    if kind == 2:
        return _sentence(f"{subj} {COPULA[n]} {rng.choice(ADJECTIVES)}")
    if kind == 3:
        return _sentence(f"{COPULA[n]} {subj} {rng.choice(ADJECTIVES)}", "?")
    if kind == 4:
        return _sentence(f"can you see {subj}", "?")
    verb, _ = _verb(TRANSITIVE, rng, n)
    obj, _ = _np(rng, rng.choice(NUMBERS))
    return _sentence(f"{subj} {verb} {obj}")


def corpus_sentence(rng: random.Random) -> str:
    """One corpus line: a frame half the time, else the good side of a pair frame."""
    if rng.random() < 0.5:
        return _frame_sentence(rng)
    _, _, make = rng.choice(list(PHENOMENA.values()))
    return make(rng)[0]


def check_target(out_dir: str | Path, n_sentences: int) -> None:
    """Refuse a sentence count the grammar cannot use, or a folder that already holds a corpus or pairs
    (the demo never writes over files: they may be someone's)."""
    from common.errors import UserError

    if n_sentences < 10:
        raise UserError(f"--sentences {n_sentences}: give at least 10 (the dev set gets a tenth)")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file; give a folder for the demo corpus")
    taken = [p for p in (out / part for part in PARTS) if p.exists() and (not p.is_dir() or any(p.iterdir()))]
    if taken:
        raise UserError(
            f"{out}: already holds {', '.join(p.name + '/' for p in taken)}; the demo does not write over them, "
            f"choose an empty or new folder"
        )


def _held_out_rows(rng: random.Random, seen: set[str], n: int, row_for) -> list[dict]:
    """n rows made from fresh minimal pairs (neither side in `seen`; both are added to it), then shuffled.
    `row_for(i, k)` gives row i's phenomenon (0..k-1) and the function that makes the row from (good, bad)."""
    rows, makers = [], [make for _, _, make in PHENOMENA.values()]
    while len(rows) < n:
        phenomenon, make_row = row_for(len(rows), len(makers))
        good, bad = makers[phenomenon](rng)
        if good in seen or bad in seen:
            continue
        seen.update((good, bad))
        rows.append(make_row(good, bad))
    rng.shuffle(rows)
    return rows


def phenomenon_task(rng: random.Random, seen: set[str], n: int) -> list[dict]:
    """n grammatical sentences of the grammar, labelled with the phenomenon that made them (0..4, balanced), none
    seen before: the demo's fine-tuning task (eval/tasks/finetune/demo_phenomenon.yaml)."""
    return _held_out_rows(rng, seen, n, lambda i, k: (i % k, lambda good, bad: {"sentence": good, "label": i % k}))


# the folders the demo writes, in the order they are put in place: train last, as a run that finds train/ takes the
# corpus there as whole (tokenizer.prepare.ensure_demo)
PARTS = ("dev", "pairs", "finetune", "aoa", "train")
LOCK = ".demo.lock"  # held in the demo's folder while one process writes the demo there; the others wait
AOA_WORDS = "aoa/cdi_childes.json"  # the demo's stand-in for the 2025 AoA task's word list (python -m eval aoa)
AOA_CONTEXTS = 5  # corpus sentences kept per word


def aoa_words(train: list[str]) -> dict[str, list[dict]]:
    """The grammar's content words in cdi_childes.json's layout, {word: [{"context": sentence}, ...]}: each with its
    first AOA_CONTEXTS corpus sentences that hold it (the task scores words out of context, so these only count)."""
    vocab = dict.fromkeys([w for n in NOUNS for w in n[:2]] + [w for pl in PLACES for w in pl]
                          + [w for v in INTRANSITIVE + TRANSITIVE for w in v] + ADJECTIVES)
    contexts: dict[str, list[dict]] = {w: [] for w in vocab}
    for sentence in train:
        for token in dict.fromkeys(sentence.rstrip(".?!").lower().split()):
            if token in contexts and len(contexts[token]) < AOA_CONTEXTS:
                contexts[token].append({"context": sentence})
    return contexts


def write_aoa_words(out: Path, train: list[str]) -> None:
    (out / AOA_WORDS).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out / AOA_WORDS, json.dumps(aoa_words(train), indent=1) + "\n")


def generate(out_dir: str | Path, seed: int = 42, n_sentences: int = 20000, pairs_per_phenomenon: int = 200) -> Path:
    """Write `train/demo.train`, `dev/demo.dev`, `pairs/<UID>.jsonl`, `finetune/<task>.{train,valid}.jsonl`
    (demo_phenomenon, demo_acceptability) and `aoa/cdi_childes.json` under `out_dir`."""
    out = Path(out_dir)
    rng = random.Random(seed)
    train = [corpus_sentence(rng) for _ in range(n_sentences)]
    dev = [corpus_sentence(rng) for _ in range(max(1, n_sentences // 10))]
    seen = set(train) | set(dev)
    pair_rng = random.Random(seed + 1_000_003)
    pairs = {}
    for uid, (field_name, term, make) in PHENOMENA.items():
        rows, tries = [], 0
        while len(rows) < pairs_per_phenomenon and tries < 200 * pairs_per_phenomenon:
            tries += 1
            good, bad = make(pair_rng)
            if good in seen or bad in seen:
                continue  # held out: neither side appears in the corpus or in an earlier pair
            seen.update((good, bad))
            rows.append({"sentence_good": good, "sentence_bad": bad, "field": field_name,
                         "linguistics_term": term, "UID": uid, "pair_id": len(rows)})
        pairs[uid] = rows
    task = task_splits(seed, seen)
    tmp = out / ".demo.tmp"
    with writing(out), building(tmp):  # a full disk or Ctrl-C leaves no half corpus that looks whole
        tmp.mkdir(parents=True)
        for sub, name, lines in (("train", "demo.train", train), ("dev", "demo.dev", dev)):
            (tmp / sub).mkdir()
            (tmp / sub / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        (tmp / "pairs").mkdir()
        for uid, rows in pairs.items():
            (tmp / "pairs" / f"{uid}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        write_task(tmp, task)
        write_aoa_words(tmp, train)
        for part in PARTS:  # onto folders that are absent or empty (check_target)
            os.replace(tmp / part, out / part)
        tmp.rmdir()
    return out


def acceptability_task(rng: random.Random, seen: set[str], n: int) -> list[dict]:
    """n sentences, one side of a fresh minimal pair each: label 1 the grammatical side, 0 the other (balanced over
    labels and phenomena), none seen before. Solving it takes the agreement the pairs test, not surface cues."""
    return _held_out_rows(
        rng,
        seen,
        n,
        lambda i, k: ((i // 2) % k, lambda good, bad: {"sentence": good if i % 2 else bad, "label": i % 2}),
    )


TASKS = ("demo_phenomenon", "demo_acceptability")  # the fine-tuning tasks, in the order task_splits draws them


def task_splits(seed: int, seen: set[str]) -> dict[str, dict[str, list[dict]]]:
    """Each fine-tuning task's train (1,000) and valid (200) rows, none of them in `seen` or in another task."""
    task_rng = random.Random(seed + 2_000_003)
    phenomenon = {"train": phenomenon_task(task_rng, seen, 1000), "valid": phenomenon_task(task_rng, seen, 200)}
    return {
        "demo_phenomenon": phenomenon,
        "demo_acceptability": {
            "train": acceptability_task(task_rng, seen, 1000),
            "valid": acceptability_task(task_rng, seen, 200),
        },
    }


def write_task(out: Path, tasks: dict[str, dict[str, list[dict]]]) -> None:
    (out / "finetune").mkdir(parents=True, exist_ok=True)
    for name, splits in tasks.items():
        for split, rows in splits.items():
            write_atomic(out / "finetune" / f"{name}.{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def _lines(paths: list[Path]) -> list[str]:
    """The non-empty lines of the corpus files `paths`, in order."""
    return [line for path in paths for line in path.read_text(encoding="utf-8").split("\n") if line]


def add_task(out_dir: str | Path, seed: int) -> bool:
    """A demo folder written before a task existed gains its files: the fine-tuning tasks' (their sentences kept out
    of that folder's own corpus and pairs) and the AoA words (from its corpus), the same files a fresh `generate`
    with this seed writes; files already there are kept. False when nothing was missing."""
    out = Path(out_dir)
    missing = [f"{name}.{split}.jsonl" for name in TASKS for split in ("train", "valid")
               if not (out / "finetune" / f"{name}.{split}.jsonl").exists()]
    added = not (out / AOA_WORDS).exists()
    if added:
        write_aoa_words(out, _lines(sorted((out / "train").glob("*"))))
    if not missing:
        return added
    seen = set(_lines(sorted((out / "train").glob("*")) + sorted((out / "dev").glob("*"))))
    for path in sorted((out / "pairs").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            seen.update((row["sentence_good"], row["sentence_bad"]))
    tasks = task_splits(seed, seen)
    write_task(out, {name: {split: rows for split, rows in splits.items() if f"{name}.{split}.jsonl" in missing}
                     for name, splits in tasks.items()})
    return True
