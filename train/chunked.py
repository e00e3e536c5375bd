"""Losses over a language model's logits without its whole [B, T, V] logits tensor.

A causal LM's logits are its output layer (the head) applied to its last hidden state. With a 16k
vocabulary, 128-token blocks and batch 128, float32 logits take 1 GB, and their softmax, its gradient
and the loss's float copies several more; distillation adds one per teacher. Here the model runs
without its head (`logits_to_keep` set to no position), its last hidden state is read by a hook on its
base model, and a loss that is a sum over positions is computed `chunk` positions at a time: the
head maps a chunk's hidden rows to its logits, the loss and its gradient are taken on that chunk,
and the chunk's logits are freed before the next (`over_chunks`). The gradients with respect to the
hidden rows and the head's weights are accumulated in the same pass and handed to autograd's
backward, so nothing of size N x V outlives a chunk, and no logit is computed twice (the technique
of Liger Kernel's fused linear cross-entropy, written here in PyTorch for any loss over rows).

Values equal the whole-logits computation's to float rounding and gradients are the same
(tests/test_chunked.py). A model whose logits are more than its head applied to the base model's last
hidden state (logit soft-capping, a logit scale) fails `logit_head`'s probe, and its logits are then
computed whole, as before.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["logit_head", "final_states", "over_chunks", "scored_positions", "ce", "causal_ce"]


def scored_positions(labels, causal: bool = True):
    """(select, targets): `select` takes [B, T, ...] to [N, ...] at the N positions whose label is
    scored, and `targets` [N] are those labels. A causal LM's logits at position p predict label
    p + 1, so for it the positions shift by one; a masked LM predicts in place."""
    targets = labels[:, 1:] if causal else labels
    valid = targets != -100
    if causal and bool(valid.all()):  # packed blocks: a slice, whose backward is a copy (a mask's is a serial scatter)
        return (lambda x: x[:, :-1].reshape(-1, *x.shape[2:])), targets.reshape(-1)
    if causal:
        return (lambda x: x[:, :-1][valid]), targets[valid]
    return (lambda x: x[valid]), targets[valid]


class _LastHidden:
    """A forward hook on a model's base model that keeps its last hidden state [B, T, H] (what the head reads).
    Registered once per model and never replaced, so a compiled model is not recompiled for a new hook."""

    def __init__(self):
        self.value: torch.Tensor | None = None

    def __call__(self, _module, _args, output) -> None:
        self.value = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    def take(self) -> torch.Tensor | None:
        value, self.value = self.value, None
        return value


def _last_hidden(model: nn.Module) -> _LastHidden:
    reader = model.__dict__.get("_babydistill_last_hidden")
    if reader is None:
        reader = _LastHidden()
        model.base_model.register_forward_hook(reader)
        model.__dict__["_babydistill_last_hidden"] = reader
    return reader


def _no_position(device) -> torch.Tensor:
    return torch.empty(0, dtype=torch.long, device=device)


@torch.no_grad()
def logit_head(model: nn.Module) -> nn.Module | None:
    """The model's output layer when its logits are exactly that layer applied to its base model's last
    hidden state and its forward takes `logits_to_keep`; else None (its logits are then computed whole).
    Checked once on four tokens, in eval mode (no dropout)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    forward = inspect.signature(model.forward).parameters
    if head is None or "logits_to_keep" not in forward or getattr(model, "base_model", model) is model:
        return None
    device = next(model.parameters()).device
    ids = (torch.arange(4, device=device) % model.config.vocab_size)[None]
    was_training = model.training
    model.eval()
    try:
        mask = torch.ones_like(ids)  # ids 0..3 may be the padding id: say that they are real tokens
        whole = model(input_ids=ids, attention_mask=mask).logits
        reader = _last_hidden(model)
        reader.take()
        out = model(input_ids=ids, attention_mask=mask, logits_to_keep=_no_position(device))
        last = reader.take()
        if out.logits.numel() or last is None:
            return None
        rebuilt = head(last)
    finally:
        model.train(was_training)
    close = rebuilt.shape == whole.shape and torch.allclose(rebuilt.float(), whole.float(), rtol=1e-4, atol=1e-5)
    return head if close else None


def final_states(model: nn.Module, unwrapped: nn.Module, head: nn.Module | None, **inputs):
    """(model outputs, final [B, T, ...]): run `model` (the language model `unwrapped`, or a wrapper of it
    such as DDP's or torch.compile's) on `inputs`. With a `head` (from `logit_head(unwrapped)`), the head is
    skipped and `final` is the last hidden state it would read; without one, `final` is the whole logits."""
    if head is None:
        out = model(**inputs)
        return out, out.logits
    reader = _last_hidden(unwrapped)
    out = model(**inputs, logits_to_keep=_no_position(inputs["input_ids"].device))
    return out, reader.take()


class _OverChunks(torch.autograd.Function):
    """Σ_chunks fn(head(rows[chunk]), chunk), with the gradients for `rows` and the head's parameters
    taken chunk by chunk in the forward pass and returned, scaled, by the backward."""

    @staticmethod
    def forward(ctx, fn, head, chunk, rows, *params):
        want = ctx.needs_input_grad[3:]
        grads = [torch.zeros_like(rows) if want[0] else None] + [
            torch.zeros_like(p, dtype=torch.float32) if w else None for p, w in zip(params, want[1:])
        ]
        total = rows.new_zeros((), dtype=torch.float32)
        # These gradients are taken before any loss scaler (fp16's GradScaler scales the backward only). The loss is
        # per token of the batch, so a position's gradient is O(1/N): under fp16 autocast that is near fp16's
        # smallest normal numbers. They are taken of the value times a power of two >= N, O(1) each, and divided
        # by it at the end (exactly: a power of two).
        scale = 2.0 ** math.ceil(math.log2(max(rows.shape[0], 1)))
        for start in range(0, rows.shape[0], chunk):
            part = slice(start, start + chunk)
            with torch.enable_grad():
                x = rows[part].detach().requires_grad_(want[0])
                value = fn(head(x) if head is not None else x, part)
                inputs = [(x if want[0] else None)] + [p if w else None for p, w in zip(params, want[1:])]
                wanted = [t for t in inputs if t is not None]
                got = iter(torch.autograd.grad(value * scale, wanted, allow_unused=True) if wanted else ())
            for i, t in enumerate(inputs):
                g = next(got) if t is not None else None
                if g is None:
                    continue
                if i == 0:
                    grads[0][part] = g
                else:
                    grads[i].add_(g)
            total = total + value.detach().float()
        for g in grads:
            if g is not None:
                g.div_(scale)
        ctx.dtypes = [p.dtype for p in params]
        ctx.save_for_backward(*[g if g is not None else torch.empty(0) for g in grads])
        ctx.present = [g is not None for g in grads]
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        out = []
        for i, (g, present) in enumerate(zip(saved, ctx.present)):
            if not present:
                out.append(None)
                continue
            g = g * grad_out.to(g.dtype)
            out.append(g if i == 0 else g.to(ctx.dtypes[i - 1]))
        return (None, None, None, *out)


def over_chunks(rows: torch.Tensor, head: nn.Module | None, fn: Callable[[torch.Tensor, slice], torch.Tensor],
                chunk: int, extra: tuple = ()) -> torch.Tensor:
    """Σ over chunks of `chunk` rows of fn(logits [n, V], rows' slice) -> scalar, with logits = head(rows[slice]).

    rows [N, H]: hidden states at the scored positions (or, with `head` None, the logits themselves
    [N, V]); `fn` must be a sum over its rows (a loss normalised by a count fixed outside, as every
    term here is). `chunk` 0 takes all N rows at once. Differentiable with respect to `rows`, the
    head's parameters and the parameters `extra` that `fn` itself uses; no [N, V] tensor is kept for the
    backward pass."""
    n = rows.shape[0]
    chunk = min(chunk or n, n) or 1
    params = list({id(p): p for p in [*(head.parameters() if head is not None else ()), *extra]}.values())
    if not torch.is_grad_enabled() or not (rows.requires_grad or any(p.requires_grad for p in params)):
        with torch.no_grad():
            total = rows.new_zeros((), dtype=torch.float32)
            for start in range(0, n, chunk):
                part = slice(start, start + chunk)
                total = total + fn(head(rows[part]) if head is not None else rows[part], part).float()
            return total
    return _OverChunks.apply(fn, head, chunk, rows, *params)


def ce(logits: torch.Tensor, targets: torch.Tensor, n_tokens) -> torch.Tensor:
    """Hard-label cross-entropy summed over rows / n_tokens. logits [N, V], targets [N] (token ids); returns a scalar
    (the `ce` term of distillation is this function)."""
    return nn.functional.cross_entropy(logits.float(), targets, reduction="sum") / n_tokens


def causal_ce(final: torch.Tensor, head: nn.Module | None, labels: torch.Tensor, n_tokens, chunk: int) -> torch.Tensor:
    """Σ cross-entropy of the next tokens / n_tokens (None: the count of scored positions here), chunk by chunk.

    final [B, T, H] (the last hidden state, or with `head` None the logits [B, T, V]); labels [B, T], -100 = not
    scored; returns a scalar, the same value as Hugging Face's ForCausalLMLoss for the same count."""
    rows, targets = scored_positions(labels)
    n = n_tokens if n_tokens is not None else max(targets.numel(), 1)
    return over_chunks(rows(final), head, lambda logits, part: ce(logits, targets[part], n), chunk)
