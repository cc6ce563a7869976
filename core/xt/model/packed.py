"""Attention over packed rows that costs only each sample's own causal block (sdpa, any device).

A packed row holds several samples whose ``position_ids`` restart at 0. Transformers' stock sdpa
path turns that into a dense ``[B, 1, L, L]`` block-diagonal mask, so every packed row pays the full
``L x L`` attention (and a masked kernel) however short its samples are. ``packed_sdpa`` instead cuts
each row where its positions restart and runs ``scaled_dot_product_attention(is_causal=True)`` on
every sample by itself: the cost is the sum of the samples' squared lengths, not the row's.

It registers as the attention implementation :data:`PACKED_SDPA` (an attention function plus a
mask function that skips building the dense mask). Anything that is not a packed, unpadded,
full-sequence forward (generation with a cache, padded batches, models with sliding windows or
extra mask overlays) goes through transformers' own sdpa unchanged. The name lives only in the
in-memory config: transformers does not write ``_attn_implementation`` to ``config.json``.

Every layer gets the same ``position_ids`` tensor, so the spans are found once per forward pass
(:func:`spans_of`): reading them is the one device-to-host copy the packed path makes, and on a
GPU each copy waits for all queued work.
"""

from __future__ import annotations

import weakref
from typing import Any

PACKED_SDPA = "xt_packed_sdpa"
_last_spans: tuple[Any, int, int, list[list[tuple[int, int]]]] | None = None  # (tensor ref, version, rows, spans)


def segment_bounds(position_ids: Any) -> list[list[tuple[int, int]]]:
    """Per row, the ``(start, end)`` spans where ``position_ids`` count up by one (a new span at each restart)."""
    import torch

    rows, length = position_ids.shape
    restarts = torch.ones(rows, length, dtype=torch.bool, device=position_ids.device)
    restarts[:, 1:] = position_ids[:, 1:] - position_ids[:, :-1] != 1
    bounds: list[list[tuple[int, int]]] = [[] for _ in range(rows)]
    starts: list[list[int]] = [[] for _ in range(rows)]
    for row, col in restarts.nonzero().tolist():
        starts[row].append(col)
    for row, cols in enumerate(starts):
        ends = cols[1:] + [length]
        bounds[row] = list(zip(cols, ends))
    return bounds


def spans_of(position_ids: Any, rows: int) -> list[list[tuple[int, int]]]:
    """:func:`segment_bounds` of ``position_ids`` broadcast to ``rows``, remembered for the same unchanged tensor
    (the next layer's call) and recomputed for any other."""
    global _last_spans
    if _last_spans is not None:
        ref, version, cached_rows, spans = _last_spans
        if ref() is position_ids and position_ids._version == version and cached_rows == rows:
            return spans
    spans = segment_bounds(position_ids.expand(rows, -1))
    _last_spans = (weakref.ref(position_ids), position_ids._version, rows, spans)
    return spans


def packed_sdpa_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                          dropout: float = 0.0, scaling: float | None = None, position_ids: Any = None,
                          **kwargs: Any) -> tuple[Any, None]:
    """sdpa per sample of a packed row; transformers' sdpa for everything else. Output ``[B, L, H, D]``."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def stock() -> tuple[Any, None]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      position_ids=position_ids, **kwargs)

    length = query.shape[2]
    if attention_mask is not None or position_ids is None or length == 1 or key.shape[2] != length:
        return stock()
    bounds = spans_of(position_ids, query.shape[0])
    if all(len(spans) == 1 for spans in bounds):
        return stock()
    gqa = query.shape[1] != key.shape[1]
    rows = []
    for row, spans in enumerate(bounds):
        pieces = [torch.nn.functional.scaled_dot_product_attention(
            query[row:row + 1, :, s:e], key[row:row + 1, :, s:e], value[row:row + 1, :, s:e],
            dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa) for s, e in spans]
        rows.append(torch.cat(pieces, dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


def packed_sdpa_mask(*args: Any, attention_mask: Any = None, use_vmap: bool = False, config: Any = None,
                     **kwargs: Any) -> Any:
    """No dense mask for an unpadded causal batch (the attention cuts packed rows itself); sdpa's mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and not use_vmap and plain_causal(config):
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, use_vmap=use_vmap, config=config, **kwargs)


def plain_causal(config: Any) -> bool:
    """Every layer is full causal attention (no sliding window, no chunked or bidirectional layers)."""
    if config is None or not getattr(config, "is_causal", True):
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    if getattr(config, "attention_chunk_size", None):
        return False
    layer_types = getattr(config, "layer_types", None)
    return not layer_types or all(t == "full_attention" for t in layer_types)


def register_packed_sdpa() -> str:
    """Register :data:`PACKED_SDPA` with transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)
    return PACKED_SDPA


def use_packed_sdpa(model: Any) -> bool:
    """Switch an sdpa model whose layers call transformers' attention interface to :data:`PACKED_SDPA`.

    Returns whether it switched. Models with their own attention code (``_supports_attention_backend``
    false), sliding windows or non-causal layers keep stock sdpa.
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if not getattr(model, "_supports_attention_backend", False) or not plain_causal(config):
        return False
    register_packed_sdpa()
    config._attn_implementation = PACKED_SDPA
    return True
