"""Queries, keys and values of chosen decoder blocks, read by forward hooks on the attention's input
projections. The projections run before any attention kernel, so this works with every attention
implementation (SDPA, flash, eager) and needs no attention maps. For Llama-family blocks the queries
and keys are taken before the rotary embedding is applied (as the projections give them).
"""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from common.errors import UserError


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks (Llama family: model.layers; GPT-2: transformer.h)."""
    base = getattr(model, "base_model", model)
    for name in ("layers", "h"):
        blocks = getattr(base, name, None)
        if isinstance(blocks, nn.ModuleList):
            return blocks
    raise UserError(f"{type(model).__name__}: cannot find its decoder blocks (model.layers or transformer.h); "
                    f"attention_relation supports Llama-family and GPT-2 models")


def projections(model: nn.Module, block: int) -> dict[str, nn.Module] | nn.Module:
    """{"q", "k", "v": module} for separate projections, or the one fused module (GPT-2's c_attn) whose
    output holds queries, keys and values side by side."""
    layer = decoder_blocks(model)[block]
    attn = getattr(layer, "self_attn", None) or getattr(layer, "attn", None)
    if attn is not None and all(hasattr(attn, f"{x}_proj") for x in "qkv"):
        return {x: getattr(attn, f"{x}_proj") for x in "qkv"}
    if attn is not None and hasattr(attn, "c_attn"):
        return attn.c_attn
    raise UserError(f"{type(model).__name__} block {block}: no q_proj/k_proj/v_proj or c_attn in its attention; "
                    f"attention_relation supports Llama-family and GPT-2 models")


def widths(model: nn.Module, block: int) -> dict[str, int]:
    """The widths of the block's queries, keys and values (keys and values are narrower under grouped-query
    attention)."""
    proj = projections(model, block)
    if isinstance(proj, dict):
        return {x: m.out_features for x, m in proj.items()}
    fused = (
        proj.weight.shape[-1] if not isinstance(proj, nn.Linear) else proj.out_features
    )  # GPT-2's Conv1D is [in, out]
    return {x: fused // 3 for x in "qkv"}


@contextmanager
def capture_qkv(model: nn.Module, blocks: list[int]):
    """Within the block, each forward of `model` fills the yielded dict: block -> {"q", "k", "v": [B, T, W]}
    (the outputs themselves, so gradients flow back to the projections)."""
    captured: dict[int, dict] = {b: {} for b in blocks}
    handles = []
    for b in blocks:
        proj = projections(model, b)
        if isinstance(proj, dict):
            for x, module in proj.items():
                handles.append(
                    module.register_forward_hook(lambda m, i, out, b=b, x=x: captured[b].__setitem__(x, out))
                )
        else:
            def split(m, i, out, b=b):
                q, k, v = out.chunk(3, dim=-1)
                captured[b].update(q=q, k=k, v=v)
            handles.append(proj.register_forward_hook(split))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()
