"""The teacher cache's storage formats (distill/cache_format.py) on their own: exact ids at any vocabulary,
log-probabilities within the format's step, the byte counts the README states, the edge cases. The s formats give a
row back in id order, so rows are compared as id -> log-probability maps (`by_id`)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill import cache_format as C
from distill.losses import cached_logit_kd


def targets(n: int, vocab: int, k: int, scale: float = 3.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=g) * scale
    top, ids = F.log_softmax(logits, -1).topk(k, -1)
    return logits, top, ids, (1 - top.exp().sum(-1)).clamp_min(0)


def by_id(logp: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's (log-probabilities, ids) sorted by id."""
    order = ids.argsort(-1)
    return logp.gather(-1, order), ids.gather(-1, order)


def round_trip(fmt: str, top, ids, rest, vocab: int):
    """(log-probabilities, ids, rest) as `fmt` stores them, each row sorted by id, and the true ones sorted alike."""
    logp, got_ids, got_rest = C.decode(fmt, C.encode(fmt, top, ids, rest, vocab), top.shape[-1], vocab)
    return (*by_id(logp, got_ids), got_rest), by_id(top, ids)


@pytest.mark.parametrize("vocab", [2, 512, 16_000, 50_257, 128_256])
def test_ids_round_trip_exactly_at_any_vocabulary(vocab):
    k = min(vocab, 37)  # an odd k: the packed bits do not end on a byte
    ids = torch.stack([torch.randperm(vocab)[:k] for _ in range(50)])
    ids[0, 0] = vocab - 1  # the largest id needs every bit
    for fmt in C.FORMATS:
        (_, got, _), (_, want) = round_trip(fmt, torch.zeros(50, k) - torch.arange(k), ids, torch.zeros(50), vocab)
        assert torch.equal(got, want), fmt
    assert set(C.FORMATS) == {"fp16", "q8", "q4", "s8", "s7"}


@pytest.mark.parametrize("fmt", ["s8", "s7"])
def test_the_s_formats_give_each_row_in_id_order_with_its_ids_exact(fmt):
    _, top, ids, rest = targets(300, 16_000, 128)
    logp, got_ids, _ = C.decode(fmt, C.encode(fmt, top, ids, rest, 16_000), 128, 16_000)
    assert (got_ids.diff(dim=1) > 0).all() and torch.equal(got_ids, ids.sort(1).values)
    # blocks of positions (the cache's [blocks, T, ...] shards) decode as the flat rows do
    arrays = {n: a.reshape(3, 100, *a.shape[1:]) for n, a in C.encode(fmt, top, ids, rest, 16_000).items()}
    logp3, ids3, rest3 = C.decode(fmt, arrays, 128, 16_000)
    assert logp3.shape == (3, 100, 128) and rest3.shape == (3, 100)
    assert torch.equal(ids3.flatten(0, 1), got_ids) and torch.equal(logp3.flatten(0, 1), logp)


def test_a_damaged_id_set_is_refused_not_misread():
    """The s formats' sets check themselves: a row whose unary part lost or gained an id, or whose last id runs
    past the vocabulary, is a ValueError naming the damage (the cache reader turns it into one line)."""
    _, top, ids, rest = targets(10, 16_000, 64)
    arrays = C.encode("s8", top, ids, rest, 16_000)
    low = C.low_bits(64, 16_000)
    unary_byte = (64 * low + 20) // 8  # a byte inside the unary high parts, which follow the 64 low parts
    for flip in (0x01, 0x80):
        damaged = {**arrays, "set": arrays["set"].copy()}
        damaged["set"][3, unary_byte] ^= flip
        with pytest.raises(ValueError, match="does not hold 64 ids"):
            C.decode("s8", damaged, 64, 16_000)
    # at 16,100 tokens the largest high part (125) with all low bits set spells 16,127: past the vocabulary, with the
    # count of ids unchanged
    vocab = 16_100
    planes = np.unpackbits(C.encode("s8", top, ids, rest, vocab)["set"], axis=-1, count=C.set_bits(64, vocab),
                           bitorder="little")
    low, n_high = C.low_bits(64, vocab), (vocab - 1 >> C.low_bits(64, vocab)) + 64
    unary = planes[3, 64 * low: 64 * low + n_high]
    unary[np.flatnonzero(unary)[-1]], unary[-1] = 0, 1
    planes[3, 63 * low: 64 * low] = 1
    planes[3, 64 * low: 64 * low + n_high] = unary
    past = {**C.encode("s8", top, ids, rest, vocab), "set": np.packbits(planes, axis=-1, bitorder="little")}
    with pytest.raises(ValueError, match="past the 16100-token vocabulary"):
        C.decode("s8", past, 64, vocab)


@pytest.mark.parametrize("fmt,bound", [("q8", 1 / 254), ("q4", 1 / 14)])
def test_each_log_probability_is_within_about_a_step(fmt, bound):
    """Error diffusion: the error of every decoded value stays within one step (the largest gap over
    2^bits − 2), wherever it is in the row; the rescaling to a total of 1 moves all values together."""
    _, top, ids, rest = targets(400, 5000, 64)
    logp, _, got_rest = C.decode(fmt, C.encode(fmt, top, ids, rest, 5000), 64, 5000)
    err = logp - top
    err = err - err[:, :1]  # the common shift of the rescaling
    largest_gap = top.diff(dim=1).neg().amax(1, keepdim=True)
    assert (err.abs() <= largest_gap * bound + 4e-3).all()  # + the float16 head's rounding
    total = logp.exp().sum(-1) + got_rest
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)


@pytest.mark.parametrize("fmt,levels", [("s8", 255), ("s7", 127)])
def test_each_s_format_log_probability_is_within_half_a_step(fmt, levels):
    """Each value is rounded alone to a step of (the head's last value − the row's smallest) / (2^bits − 1); the
    rescaling to a total of 1 moves all values together."""
    _, top, ids, rest = targets(400, 5000, 64)
    (logp, _, got_rest), (want, _) = round_trip(fmt, top, ids, rest, 5000)
    err = logp - want
    err = err - err.gather(1, want.argmax(1, keepdim=True))  # the common shift (the largest is a float16 head value)
    half_step = (top[:, C.HEAD - 1] - top[:, -1]) / levels / 2
    assert (err.abs() <= half_step[:, None] * (1 + 2 ** -8) + 4e-3).all()  # + the float16 head's rounding
    assert err.abs().max() > half_step.min() / 2  # the bound is near what rounding does, not loose
    total = logp.exp().sum(-1) + got_rest
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)


def test_bytes_per_token_as_the_readme_states():
    # 14-bit ids (a 16k vocabulary), k = 32, 64, 128
    assert [C.bytes_per_token("fp16", k, 16_000) for k in (32, 64, 128)] == [130, 258, 514]
    assert [C.bytes_per_token("q8", k, 16_000) for k in (32, 64, 128)] == [96, 184, 360]
    assert [C.bytes_per_token("q4", k, 16_000) for k in (32, 64, 128)] == [82, 154, 298]
    assert C.bytes_per_token("fp16", 64, 70_000) == 64 * 6 + 2  # int32 ids past 65,536 tokens
    assert C.bytes_per_token("q4", 64, 70_000) == math.ceil(64 * 17 / 8) + 30 + 12
    # the s formats: the set (k low parts of ⌊log₂(16000/k)⌋ bits, k + (15999 >> low) unary bits, 4 places of
    # ⌈log₂ k⌉ bits), 4 float16 head values, a step, (k − 4) codes, a rest
    for k, low, place in ((32, 8, 5), (64, 7, 6), (128, 6, 7)):
        set_bytes = math.ceil((k * low + k + (15_999 >> low) + 4 * place) / 8)
        for bits in (8, 7):
            assert C.bytes_per_token(f"s{bits}", k, 16_000) == set_bytes + 8 + 2 + math.ceil((k - 4) * bits / 8) + 2
    assert [C.bytes_per_token("s7", k, 16_000) for k in (32, 50, 64, 128)] == [84, 120, 148, 268]
    assert [C.bytes_per_token("s8", k, 16_000) for k in (32, 50, 64, 128)] == [87, 125, 155, 283]
    assert [C.bytes_per_token(f, 128, 50_257) for f in ("s8", "s7")] == [308, 293]


@pytest.mark.parametrize("k", [1, 3, 4, 5])
def test_rows_no_longer_than_the_head(k):
    _, top, ids, rest = targets(20, 300, k)
    for fmt in C.FORMATS:
        (logp, got_ids, _), (want, want_ids) = round_trip(fmt, top, ids, rest, 300)
        assert torch.equal(got_ids, want_ids) and (logp - want).abs().max() < 0.01


def test_zero_probabilities_and_flat_rows_stay_finite():
    top = torch.tensor([[-0.1, -3.0, -float("inf"), -float("inf"), -float("inf"), -float("inf")],
                        [-math.log(6)] * 6])
    ids = torch.arange(6).repeat(2, 1)
    rest = torch.tensor([1 - math.exp(-0.1) - math.exp(-3.0), 0.0]).clamp_min(0)
    for fmt in ("q8", "q4", "s8", "s7"):
        (logp, _, _), (want, _) = round_trip(fmt, top, ids, rest, 6)
        assert torch.isfinite(logp).all()
        assert torch.allclose(logp[1], want[1], atol=2e-3)  # a flat row: every gap 0


def test_the_kd_loss_from_each_format_matches_full_precision_for_a_near_student():
    """The hardest case for storage: a student close to the teacher, whose KD loss is small."""
    logits, top, ids, rest = targets(2000, 16_000, 128)
    student = logits + torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
    dense = float(F.kl_div(F.log_softmax(student, -1), F.log_softmax(logits, -1), log_target=True, reduction="sum"))
    exact = float(cached_logit_kd(student, top, ids, rest, 1.0, 1))
    for fmt in C.FORMATS:
        stored = float(
            cached_logit_kd(student, *C.decode(fmt, C.encode(fmt, top, ids, rest, 16_000), 128, 16_000), 1.0, 1)
        )
        assert abs(stored - exact) < 1e-3 * dense, (fmt, stored, exact, dense)


def test_pack_unpack_are_inverse():
    rng = np.random.default_rng(0)
    for bits in (1, 2, 3, 4, 5, 7, 8, 9, 14, 16, 17, 18, 25, 26, 31):  # nibbles, bytes, 32- and 64-bit words
        for values in (rng.integers(0, 1 << bits, size=(5, 7, 11)), np.full((2, 11), (1 << bits) - 1)):
            assert np.array_equal(C.unpack(C.pack(values, bits), bits, 11), values), bits
