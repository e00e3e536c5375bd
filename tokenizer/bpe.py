"""Tokenizers: byte-level BPE trained with `tokenizers`, or a pretrained one loaded with AutoTokenizer.

A from-scratch tokenizer is saved as a fast tokenizer whose post-processor puts BOS in
front of every sequence: zero-shot minimal-pair scoring needs a prefix token, and the
training blocks then contain the same sentence-initial context. The ByteLevel
pre-tokenizer adds a prefix space, so "The dog" and " The dog" encode alike and the
BabyLM 2024 (" " + sentence) and 2025 (no space) scoring conventions see the same ids.
"""
from __future__ import annotations

from pathlib import Path

from common.errors import UserError
from common.paths import building

MIN_VOCAB = 300  # 256 byte tokens, the specials and some merges: tokenizer.vocab_size's lower bound
SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}


def train_bpe(text_files: list[Path], vocab_size: int, min_frequency: int, out_dir: Path):
    """Train byte-level BPE on `text_files` and save a PreTrainedTokenizerFast to `out_dir`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=True,
        special_tokens=list(SPECIAL_TOKENS.values()), initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    _in_a_thread(tok.train, [str(p) for p in text_files], trainer)
    if tok.get_vocab_size() != vocab_size:
        found = tok.get_vocab_size()
        if found < MIN_VOCAB:  # the smallest size a from-scratch tokenizer may have: suggesting it would fail again
            raise UserError(
                f"data.train_dir: the corpus is too small for a BPE tokenizer (it supports {found} tokens, fewer than "
                f"the {MIN_VOCAB} tokenizer.vocab_size must reach); add text, lower tokenizer.min_frequency, or use "
                f"tokenizer.type=pretrained"
            )
        raise UserError(
            f"tokenizer.vocab_size: the corpus in data.train_dir supports only {found} BPE tokens, "
            f"not {vocab_size}; set tokenizer.vocab_size={found} and model.vocab_size={found}")
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B:1", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    with building(tmp):
        fast.save_pretrained(tmp)
        tmp.replace(out_dir)
    return fast


TRAINING_THREAD = "bpe training"


def _in_a_thread(work, *args) -> None:
    """`work(*args)` in a daemon thread while this one waits for it. tokenizers trains in Rust without the GIL and
    without looking at signals: called here, Ctrl-C or SIGTERM would wait for the whole training (4 s after the
    signal on 8.8M words; minutes on the 100M corpus). From this thread they stop the command at once, and the
    training, whose result is not written anywhere yet, ends with the process."""
    import threading

    failed: list[BaseException] = []

    def run():
        try:
            work(*args)
        except BaseException as exc:  # noqa: BLE001 - raised again in the waiting thread
            failed.append(exc)

    thread = threading.Thread(target=run, name=TRAINING_THREAD, daemon=True)
    thread.start()
    thread.join()  # a signal's handler interrupts the wait (a lock's acquire, on POSIX)
    if failed:
        raise failed[0]


def load_pretrained(name_or_path: str, key: str = "tokenizer.name_or_path", cached: bool = False):
    """AutoTokenizer from a local folder or a Hub name; the error names the key, or with `cached` the cache folder
    (a tokenizer trained by `prepare`, which the user never named)."""
    from transformers import AutoTokenizer

    from common.errors import reading

    local = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1 or Path(name_or_path).exists()
    if local and not Path(name_or_path).is_dir():
        raise UserError(
            f"{key}={name_or_path}: no such folder; give a tokenizer folder (saved with save_pretrained) or a Hub name"
        )
    with reading(
        name_or_path if cached else f"{key}={name_or_path}",
        "the cached tokenizer" if cached else "the tokenizer",
        "move that folder away (the tokenizer is trained again)" if cached
        else "give a tokenizer folder (saved with save_pretrained) or a reachable Hub name",
    ):
        tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.bos_token_id is None and tok.eos_token_id is None:
        raise UserError(
            f"{key}={name_or_path}: the tokenizer has neither a BOS nor an EOS token; zero-shot scoring needs a "
            "prefix token"
        )
    return tok


def prefix_id(tok) -> int:
    """The token every sequence starts with: BOS, else EOS (as GPT-2's <|endoftext|>)."""
    return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
