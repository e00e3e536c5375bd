"""Teachers with their own tokenizer: the student's blocks re-tokenised for the teacher, and the teacher's
positions aligned to the student's by the text their contexts cover.

Student position s has read the student's tokens 0..s, which end at some character E_s of the block's
text; teacher position t has read the teacher's tokens 0..t, ending at E'_t. Where E_s = E'_t both
models have read exactly the same text and predict what follows it: those positions are aligned, and
only those carry a teacher target (distill.losses.uld, hidden_mse, contrastive). Elsewhere one tokenizer splits a
word the other keeps whole, and the student's position has no teacher counterpart.

The student's text is rebuilt exactly from its ids: its tokenizer must be byte-level (the project's
own BPE, GPT-2-style pretrained ones), whose tokens are byte strings. Bytes that do not decode (a block
cut inside a character) become U+FFFD as the tokenizer's own decoding gives them, and the teacher reads that.
The teacher may use any fast tokenizer: its character offsets (`return_offsets_mapping`) give E'_t. Special tokens
of the student (BOS at each line, padding) split the block into segments; the teacher reads each segment's text, and
one boundary token of its own (its BOS, else EOS) where the student had a special token.
"""
from __future__ import annotations

import codecs
import json
from dataclasses import dataclass

import numpy as np
import torch

from common.errors import UserError


def byte_decoder() -> dict[str, int]:
    """The byte-level alphabet (GPT-2's): the 188 printable bytes stand for themselves; the other 68
    bytes are shifted to the code points from 256 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, shifted = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + shifted)] = b
            shifted += 1
    return chars


def is_byte_level(tokenizer) -> bool:
    """Whether a fast tokenizer's decoder is byte-level (alone or in a sequence)."""
    if not getattr(tokenizer, "is_fast", False):
        return False
    decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    return decoder.get("type") == "ByteLevel" or any(d.get("type") == "ByteLevel" for d in decoder.get("decoders", []))


@dataclass
class Retokenized:
    teacher_ids: torch.Tensor       # [B, T'] the teacher's tokens of each block (padded with its boundary token)
    teacher_mask: torch.Tensor      # [B, T'] 1 = a real token
    index: torch.Tensor             # [B, T] for each student position, the aligned teacher position, or -1


class CrossTokenizer:
    """Re-tokenises student blocks for one teacher and aligns the two (see the module's docstring)."""

    def __init__(self, student_tokenizer, teacher_tokenizer, where: str, max_positions: int | None = None):
        if not is_byte_level(student_tokenizer):
            raise UserError(
                f"{where}: tokenizer: own needs a byte-level student tokenizer (the project's BPE or a GPT-2-style "
                "one), "
                f"whose text can be rebuilt exactly; the student's is not"
            )
        self.student, self.teacher = student_tokenizer, teacher_tokenizer
        self.pieces = student_pieces(student_tokenizer)
        self.special = set(student_tokenizer.all_special_ids)
        boundary = (
            teacher_tokenizer.bos_token_id
            if teacher_tokenizer.bos_token_id is not None
            else teacher_tokenizer.eos_token_id
        )
        if boundary is None:
            raise UserError(
                f"{where}: the teacher's tokenizer has neither a BOS nor an EOS token to mark where the student's "
                "lines begin"
            )
        self.boundary, self.max_positions = boundary, max_positions

    def __call__(self, student_ids: torch.Tensor) -> Retokenized:
        rows = [self.block(ids) for ids in student_ids.tolist()]
        width = max(len(t) for t, _ in rows)
        if self.max_positions:
            width = min(width, self.max_positions)
        teacher_ids = torch.full((len(rows), width), self.boundary, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        index = torch.full(student_ids.shape, -1, dtype=torch.long)
        for b, (t_ids, idx) in enumerate(rows):
            n = min(len(t_ids), width)
            teacher_ids[b, :n] = torch.tensor(t_ids[:n])
            mask[b, :n] = 1
            idx = torch.tensor(idx)
            index[b] = torch.where(idx < n, idx, -1)
        return Retokenized(
            teacher_ids.to(student_ids.device), mask.to(student_ids.device), index.to(student_ids.device)
        )

    def block(self, ids: list[int]) -> tuple[list[int], list[int]]:
        """One block: (the teacher's ids, for each student position its aligned teacher position or -1)."""
        teacher_ids: list[int] = []
        index = [-1] * len(ids)
        start = 0
        for stop in [i for i, x in enumerate(ids) if x in self.special] + [len(ids)]:
            if stop > start:  # a segment of ordinary tokens: its text, read by the teacher
                self.segment(ids[start:stop], start, teacher_ids, index)
            if stop < len(ids):  # a special token: the teacher's boundary token, aligned with it
                index[stop] = len(teacher_ids)
                teacher_ids.append(self.boundary)
            start = stop + 1
        return teacher_ids, index

    def segment(self, ids: list[int], offset: int, teacher_ids: list[int], index: list[int]) -> None:
        data = b"".join(self.pieces[i] for i in ids)
        ends_bytes = np.cumsum([len(self.pieces[i]) for i in ids])
        text, char_bytes, replaced = decode_with_spans(data)
        char_ends = np.cumsum(char_bytes)  # byte offset after each character
        # a student token ending inside an undecodable run has read that run's U+FFFD as far as decoding
        # goes (a cut run decodes to the same one character): it ends where the run ends
        if len(char_ends):
            j = np.searchsorted(char_ends, ends_bytes).clip(max=len(char_ends) - 1)
            ends_bytes = np.where(replaced[j] & (char_ends[j] != ends_bytes), char_ends[j], ends_bytes)
        enc = self.teacher(text, add_special_tokens=False, return_offsets_mapping=True)
        # a teacher token's context ends at its end offset (kept non-decreasing: a whitespace-only token's
        # trimmed span may be empty); leading spaces belong to the next token in both conventions
        ends_chars = np.maximum.accumulate(np.array([e for _, e in enc["offset_mapping"]], dtype=np.int64))
        teacher_end_bytes = np.concatenate([[0], char_ends])[ends_chars]
        base = len(teacher_ids)
        teacher_ids.extend(enc["input_ids"])
        # the last teacher token ending there: tokens that split one character share its end offset, and
        # only the last of them has read the whole character
        where = np.searchsorted(teacher_end_bytes, ends_bytes, side="right") - 1
        for s, (w, e) in enumerate(zip(where, ends_bytes)):
            if w >= 0 and teacher_end_bytes[w] == e:
                index[offset + s] = base + int(w)


_REPLACED: dict[int, int] = {}  # byte offset -> length of an undecodable run, filled by the handler below


def _replace_and_record(exc: UnicodeDecodeError):
    _REPLACED[exc.start] = exc.end - exc.start
    return "\ufffd", exc.end


codecs.register_error("babydistill.replace", _replace_and_record)


def decode_with_spans(data: bytes) -> tuple[str, np.ndarray, np.ndarray]:
    """UTF-8 text as the tokenizer's own decoding gives it (each undecodable run one U+FFFD, Python's
    `replace`), the number of bytes behind each character (so offsets map back to bytes exactly), and
    which characters stand for an undecodable run."""
    _REPLACED.clear()
    text = data.decode("utf-8", "babydistill.replace")
    lengths, replaced, at = np.empty(len(text), dtype=np.int64), np.zeros(len(text), dtype=bool), 0
    for i, c in enumerate(text):
        run = _REPLACED.get(at, 0) if c == "\ufffd" else 0
        lengths[i], replaced[i] = run or len(c.encode()), bool(run)
        at += lengths[i]
    return text, lengths, replaced


def student_pieces(tokenizer) -> list[bytes]:
    """Every id of a byte-level tokenizer as the bytes it stands for (special tokens: empty)."""
    table = byte_decoder()
    vocab = tokenizer.get_vocab()
    pieces = [b""] * (max(vocab.values()) + 1)
    special = set(tokenizer.all_special_ids)
    for token, i in vocab.items():
        if i not in special:
            pieces[i] = bytes(table[c] for c in token if c in table)
    return pieces


def gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values [B, T', ...] at the aligned positions index [B, T] (-1: position 0, to be masked) -> [B, T, ...]."""
    idx = index.clamp_min(0)
    return values.gather(1, idx.view(*idx.shape, *([1] * (values.dim() - 2))).expand(*idx.shape, *values.shape[2:]))


def student_rows(output, rows, logits: bool, hidden: bool):
    """One teacher's output (distill.teachers.TeacherOutput) as the loss terms read it: (its `final` at the N
    scored student rows [N, ...] or None: what its head maps to logits, or the logits; hidden states in the
    student's positions [B, T, H] or None; aligned rows [N] bool or None when every row is). `rows` takes
    [B, T, ...] to [N, ...]."""
    if output.index is None:
        return rows(output.final) if logits else None, output.hidden if hidden else None, None
    index = rows(output.index)
    batch = rows(torch.arange(output.index.shape[0], device=index.device)[:, None].expand_as(output.index))
    picked = output.final[batch, index.clamp_min(0)] if logits else None  # one copy, of the scored rows only
    states = tuple(gather(h, output.index) for h in output.hidden) if hidden and output.hidden is not None else None
    return picked, states, index >= 0
