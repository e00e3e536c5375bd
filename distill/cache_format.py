"""How the teacher cache stores each token's top-k: `fp16` (k float16 log-probabilities and k
uint16/int32 ids), the quantised `q8` and `q4` (the row by probability), or the quantised `s8` and
`s7` (the row by id), chosen per cache by `distill.cache_format`.

The q formats store, per token:
    ids    the k token ids bit-packed at ceil(log2 vocabulary) bits each
    head   the H = 4 largest log-probabilities in float16
    step   one float16 step size
    codes  the k − H remaining log-probabilities as 8- or 4-bit steps down from the previous one
    rest   the mass outside the top k, float16 (every format)
The log-probabilities are sorted, so each is the previous one minus a non-negative gap. The codes
quantise those gaps with error diffusion (each code rounds the gap from the previous *decoded* value),
so errors never add up along the row: every decoded log-probability is within about one step of the
true one. The step is the row's largest gap over (2^bits − 2), so no gap overflows its code.

The s formats store the row in id order instead, since a set of k ids out of V needs far fewer bits
than a sequence of them (Elias 1974, Fano 1971: ⌊log₂(V/k)⌋ + 2 to 3 bits an id, 9.0 at k = 128
and V = 16,000, where the q formats spend 14):
    set    the k ascending ids as low parts of ⌊log₂(V/k)⌋ bits, then the high parts in unary (bit
           high_i + i set), then where in the row each of the H largest sits (⌈log₂ k⌉ bits each)
    head   the H = 4 largest log-probabilities in float16
    step   one float16 step size: the head's last value minus the row's smallest, over 2^bits − 1
    codes  the k − H others as 8- or 7-bit steps down from the head's last value, each rounded alone
    rest   as above
Each decoded log-probability is within half a step of the true one (plus float16's rounding).

Every reader rescales the k probabilities so that they and the rest sum to 1 (an error in the total
would otherwise enter the KD loss at first order). Bytes per token with b-bit ids (`bytes_per_token`):
fp16 4k + 2 (b ≤ 16); q8 ⌈kb/8⌉ + (k − 4) + 12; q4 ⌈kb/8⌉ + ⌈(k − 4)/2⌉ + 12; sB ⌈set_bits/8⌉ +
⌈(k − 4)·B/8⌉ + 12. The readers give the q formats' rows by probability and the s formats' by id:
every loss that reads the cache sums over the row, so the order does not matter.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

Format = Literal["fp16", "q8", "q4", "s8", "s7"]
FORMATS: tuple[str, ...] = ("fp16", "q8", "q4", "s8", "s7")
HEAD = 4  # log-probabilities stored exactly (float16) before the quantised gaps
FLOOR = -60.0  # log-probabilities are clipped here before quantising (the loss clips at log 1e-12 ≈ -27.6 anyway)


def id_bits(vocab: int) -> int:
    return max(1, math.ceil(math.log2(vocab)))


def layout(fmt: str, k: int, vocab: int) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """The arrays one position stores: {name: (dtype, trailing shape)}."""
    if fmt == "fp16":
        ids = np.uint16 if vocab <= 1 << 16 else np.int32
        return {"logp": (np.float16, (k,)), "ids": (ids, (k,)), "rest": (np.float16, ())}
    bits, head = int(fmt[1:]), min(HEAD, k)
    if fmt[0] == "s":
        return {"set": (np.uint8, (-(-set_bits(k, vocab) // 8),)), "head": (np.float16, (head,)),
                "step": (np.float16, ()), "codes": (np.uint8, (-(-(k - head) * bits // 8),)), "rest": (np.float16, ())}
    return {"ids": (np.uint8, (-(-k * id_bits(vocab) // 8),)), "head": (np.float16, (head,)), "step": (np.float16, ()),
            "codes": (np.uint8, (-(-(k - head) * bits // 8),)), "rest": (np.float16, ())}


def low_bits(k: int, vocab: int) -> int:
    """Elias-Fano's split: the low ⌊log₂(V/k)⌋ bits of each sorted id are stored as they are, the rest in unary."""
    return max(0, (vocab // k).bit_length() - 1)


def set_bits(k: int, vocab: int) -> int:
    """Bits of an `s` format's "set": k low parts, the unary high parts, and where each head value sits."""
    low = low_bits(k, vocab)
    return k * low + ((vocab - 1) >> low) + k + min(HEAD, k) * (k - 1).bit_length()


def bytes_per_token(fmt: str, k: int, vocab: int) -> int:
    return sum(np.dtype(dtype).itemsize * math.prod(shape) for dtype, shape in layout(fmt, k, vocab).values())


def encode(
    fmt: str, top_logp: torch.Tensor, top_ids: torch.Tensor, rest: torch.Tensor, vocab: int
) -> dict[str, np.ndarray]:
    """top_logp [N, k] sorted descending, top_ids [N, k], rest [N] -> the arrays of `layout`, leading dim N."""
    if fmt == "fp16":
        return {
            "logp": top_logp.cpu().numpy().astype(np.float16),
            "ids": top_ids.cpu().numpy().astype(layout(fmt, 1, vocab)["ids"][0]),
            "rest": rest.cpu().numpy().astype(np.float16),
        }
    if fmt[0] == "s":
        return encode_set(int(fmt[1:]), top_logp, top_ids, rest, vocab)
    bits, head = int(fmt[1:]), min(HEAD, top_logp.shape[1])
    top = top_logp.float().clamp_min(FLOOR)
    first = top[:, :head].half().float()
    tail = top[:, head:]
    top_code = (1 << bits) - 1
    largest_gap = torch.cat([first[:, -1:], tail], 1).diff(dim=1).neg().amax(1) if tail.shape[1] else first[:, 0] * 0
    step = float16_step(largest_gap, top_code - 1)
    codes = torch.empty_like(tail, dtype=torch.uint8)
    decoded = first[:, -1]
    for i in range(tail.shape[1]):  # error diffusion: each code rounds the gap from the previous decoded value
        c = torch.round((decoded - tail[:, i]) / step).clamp(0, top_code)
        codes[:, i] = c.to(torch.uint8)
        decoded = decoded - c * step
    return {
        "ids": pack(top_ids.cpu().numpy().astype(np.int64), id_bits(vocab)),
        "head": first.cpu().numpy().astype(np.float16),
        "step": step.cpu().numpy().astype(np.float16),
        "codes": pack(codes.cpu().numpy().astype(np.int64), bits),
        "rest": rest.cpu().numpy().astype(np.float16),
    }


def decode(
    fmt: str, arrays: dict[str, np.ndarray], k: int, vocab: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The arrays of `layout` (any leading dims) -> (log-probs [..., k] float32, ids [..., k] long, rest [...]
    float32); the s formats give each row in id order, the others by probability."""
    rest = torch.from_numpy(arrays["rest"].astype(np.float32))
    if fmt == "fp16":
        return (
            torch.from_numpy(arrays["logp"].astype(np.float32)),
            torch.from_numpy(arrays["ids"].astype(np.int64)),
            rest,
        )
    if fmt[0] == "s":
        return (*decode_set(int(fmt[1:]), arrays, k, vocab), rest)
    bits, head = int(fmt[1:]), min(HEAD, k)
    ids = torch.from_numpy(unpack(arrays["ids"], id_bits(vocab), k))
    first = torch.from_numpy(arrays["head"].astype(np.float32))
    codes = torch.from_numpy(unpack(arrays["codes"], bits, k - head)).float()
    step = torch.from_numpy(arrays["step"].astype(np.float32))[..., None]
    tail = first[..., -1:] - step * codes.cumsum(-1)
    return rescale(torch.cat([first, tail], -1), rest), ids, rest


def float16_step(span: torch.Tensor, steps: int) -> torch.Tensor:
    """The step that covers `span` [N] in `steps` steps, as float16 stores it: float16 rounds to nearest (relative
    error ≤ 2^-11), so a margin keeps the stored step at or above its need."""
    return (span.clamp_min(0) / steps * (1 + 2 ** -9)).clamp_min(1e-4).half().float()


def encode_set(
    bits: int, top_logp: torch.Tensor, top_ids: torch.Tensor, rest: torch.Tensor, vocab: int
) -> dict[str, np.ndarray]:
    """An `s` format: the row in id order, its ids as one Elias-Fano set, its log-probabilities as `bits`-bit
    steps down from the head's last value (plain rounding: in id order no neighbour shares an error)."""
    n, k = top_logp.shape
    head, low = min(HEAD, k), low_bits(k, vocab)
    top = top_logp.float().cpu().clamp_min(FLOOR)
    order = top_ids.cpu().argsort(1)
    ids = top_ids.cpu().gather(1, order).numpy().astype(np.int64)  # ascending
    where = order.argsort(1)[:, :head]  # the place of the r-th largest in id order, r < head
    is_head = torch.zeros(n, k, dtype=torch.bool).scatter_(1, where, True)
    first = top[:, :head].half().float()
    tail = top.gather(1, order)[~is_head].view(n, k - head)
    top_code = (1 << bits) - 1
    span = first[:, -1] - tail.amin(1) if k > head else first[:, 0] * 0
    step = float16_step(span, top_code)
    codes = torch.round((first[:, -1:] - tail) / step[:, None]).clamp(0, top_code)
    high = np.zeros((n, ((vocab - 1) >> low) + k), np.uint8)
    high[np.arange(n)[:, None], (ids >> low) + np.arange(k)] = 1
    places = where.numpy().astype(np.int64)
    planes = [bit_planes(ids, low), high, bit_planes(places, (k - 1).bit_length())]
    return {
        "set": np.packbits(np.concatenate(planes, 1), axis=-1, bitorder="little"),
        "head": first.numpy().astype(np.float16),
        "step": step.numpy().astype(np.float16),
        "codes": pack(codes.numpy().astype(np.int64), bits),
        "rest": rest.cpu().numpy().astype(np.float16),
    }


def decode_set(bits: int, arrays: dict[str, np.ndarray], k: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `encode_set` (any leading dims): (log-probs [..., k] rescaled with the rest, ids [..., k]),
    both in id order."""
    lead = arrays["rest"].shape
    head, low, where_bits = min(HEAD, k), low_bits(k, vocab), (k - 1).bit_length()
    n_high = ((vocab - 1) >> low) + k
    planes = np.unpackbits(arrays["set"].reshape(-1, arrays["set"].shape[-1]), axis=-1, count=set_bits(k, vocab),
                           bitorder="little")
    n = planes.shape[0]
    low_part = unpack(arrays["set"].reshape(n, -1), low, k)  # the low parts come first, from bit 0
    unary = np.ascontiguousarray(planes[:, k * low: k * low + n_high]).view(bool)  # k ones in each row
    if not (unary.sum(1) == k).all():
        raise ValueError(f"a row's id set does not hold {k} ids (damaged)")
    high = np.flatnonzero(unary).reshape(n, k) - (np.arange(n) * n_high)[:, None] - np.arange(k)
    ids = (high << low) | low_part
    if ids.max(initial=0) >= vocab:
        raise ValueError(f"a row's id set holds an id past the {vocab}-token vocabulary (damaged)")
    where = from_planes(planes[:, k * low + n_high:], where_bits, head)
    first = arrays["head"].reshape(n, head).astype(np.float32)
    codes = unpack(arrays["codes"].reshape(n, -1), bits, k - head)
    step = arrays["step"].reshape(n, 1).astype(np.float32)
    rows = np.arange(n)[:, None]
    is_tail = np.ones((n, k), bool)
    is_tail[rows, where] = False
    logp = np.empty((n, k), np.float32)
    logp[is_tail] = (first[:, -1:] - step * codes).ravel()
    logp[rows, where] = first
    rest = torch.from_numpy(arrays["rest"].reshape(n).astype(np.float32))
    return rescale(torch.from_numpy(logp), rest).view(*lead, k), torch.from_numpy(ids).view(*lead, k)


def bit_planes(values: np.ndarray, bits: int) -> np.ndarray:
    """[..., m] non-negative ints < 2^bits -> [..., m·bits] of 0/1, each value's bits from the lowest."""
    return ((values[..., None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(*values.shape[:-1], -1)


def from_planes(planes: np.ndarray, bits: int, m: int) -> np.ndarray:
    """The inverse of `bit_planes`: [n, m·bits] of 0/1 -> [n, m] int64."""
    return planes.reshape(planes.shape[0], m, bits).astype(np.int64) @ (1 << np.arange(bits, dtype=np.int64))


def rescale(logp: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """logp [..., k] shifted so that the k probabilities and the stored rest [...] sum to exactly 1 (an error in the
    total would otherwise enter the KD loss at first order)."""
    return logp + (torch.log1p(-rest.clamp(0, 1 - 1e-6)) - logp.logsumexp(-1))[..., None]


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """[..., n] non-negative ints < 2^bits -> [..., ⌈n·bits/8⌉] uint8, little-endian bit order."""
    return np.packbits(bit_planes(values, bits), axis=-1, bitorder="little")


def unpack(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """The inverse of `pack`: [..., bytes] uint8 -> [..., n] int64. Whole bytes (8 bits) and nibbles (4) are read
    directly; other widths from the bytes each value's bits touch (three for ids of up to 17 bits), for all values
    at once."""
    if bits == 8:
        return packed[..., :n].astype(np.int64)
    if bits == 4:
        nibbles = np.stack([packed & 15, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
        return nibbles[..., :n].astype(np.int64)
    touched = -(-(7 + bits) // 8)
    word_type = np.uint32 if touched <= 4 else np.uint64  # 32-bit words up to 25-bit values: half the memory traffic
    start = np.arange(n) * bits
    first, shift = start // 8, (start % 8).astype(word_type)
    padded = np.concatenate([packed, np.zeros((*packed.shape[:-1], touched), np.uint8)], axis=-1)
    word = padded[..., first].astype(word_type)
    for j in range(1, touched):
        word |= padded[..., first + j].astype(word_type) << word_type(8 * j)
    return ((word >> shift) & word_type((1 << bits) - 1)).astype(np.int64)
