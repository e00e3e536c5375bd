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

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "mask_token": "<mask>"}


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
    tok.train([str(p) for p in text_files], trainer)
    if tok.get_vocab_size() != vocab_size:
        raise UserError(
            f"tokenizer.vocab_size: the corpus in data.train_dir supports only {tok.get_vocab_size()} BPE tokens, "
            f"not {vocab_size}; set tokenizer.vocab_size={tok.get_vocab_size()} and model.vocab_size={tok.get_vocab_size()}")
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B:1", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    fast.save_pretrained(tmp)
    tmp.replace(out_dir)
    return fast


def load_pretrained(name_or_path: str, key: str = "tokenizer.name_or_path"):
    """AutoTokenizer from a local folder or a Hub name; the error names the key."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{key}={name_or_path}: cannot load a tokenizer ({first[:200]}); give a tokenizer folder or a reachable Hub name") from None
    if tok.bos_token_id is None and tok.eos_token_id is None:
        raise UserError(f"{key}={name_or_path}: the tokenizer has neither a BOS nor an EOS token; zero-shot scoring needs a prefix token")
    return tok


def prefix_id(tok) -> int:
    """The token every sequence starts with: BOS, else EOS (as GPT-2's <|endoftext|>)."""
    return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
