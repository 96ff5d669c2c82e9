"""Captures one attention row per head by hooking the model's own attention modules.

Like baukit's Trace: a context manager that always removes its hooks, and that can stop the
forward pass right after the deepest layer it needs (the rest of the model is wasted work when
only a score is wanted).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from headguard.detect.heads import Adapter


class StopForward(Exception):
    """Raised inside the deepest hooked layer to end a score-only forward pass early."""


@contextmanager
def capture_rows(adapter: Adapter, layers: Sequence[int], query: torch.Tensor, key_mask: torch.Tensor,
                 stop_early: bool = False) -> Iterator[dict[int, torch.Tensor]]:
    """Yields a dict that fills, during the forward pass, with layer -> [batch, head, key] rows.

    `query` [batch] is the position whose row is read, `key_mask` [batch, key] the attendable keys.
    """
    rows: dict[int, torch.Tensor] = {}
    modules = adapter.attention_modules()
    deepest = max(layers)

    def hook_for(layer: int):
        def hook(module, args, kwargs):
            rows[layer] = adapter.query_row(module, args, kwargs, query, key_mask)
            if stop_early and layer == deepest:
                raise StopForward
        return hook

    handles = [modules[i].register_forward_pre_hook(hook_for(i), with_kwargs=True) for i in layers]
    try:
        yield rows
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
