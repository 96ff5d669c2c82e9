"""Captures one attention row per head by hooking the model's own query and key projections, and,
where a feature needs it, what each head writes at the query position.

Like baukit's Trace: a context manager that always removes its hooks, and that can stop the
forward pass as soon as the deepest layer it needs has produced its keys (the rest of the model
is wasted work when only a score is wanted).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch

from headguard.detect.heads import Adapter, softmax_rows


class Rows(dict):
    """layer -> [batch, head, key] rows, each a view of `stacked` [batch, layer, head, key] (layers ascending)."""

    stacked: torch.Tensor | None = None


class StopForward(Exception):
    """Raised inside the deepest hooked layer to end a score-only forward pass early."""


@contextmanager
def capture_rows(adapter: Adapter, layers: Sequence[int], query: torch.Tensor, key_mask: torch.Tensor,
                 stop_early: bool = False) -> Iterator[Rows]:
    """Yields a `Rows` dict that fills, during the forward pass, with layer -> [batch, head, key] rows.

    `query` [batch] is the position whose row is read, `key_mask` [batch, key] the attendable keys.
    Per layer, three hooks: the attention module's call (for its inputs, e.g. rotary angles), its
    query projection (the query positions' queries) and its key projection (where the row's logits
    are made). The softmax runs once over all layers when the forward pass ends: per-layer work is
    what costs on a GPU, where a small model's forward pass is bound by kernel launches.
    """
    rows = Rows()
    scores: dict[int, torch.Tensor] = {}
    modules = adapter.attention_modules()
    deepest = max(layers)
    batch = torch.arange(len(query), device=query.device)

    def hooks_for(layer: int, module: torch.nn.Module):
        state: dict = {}

        def on_call(_module, args, kwargs):
            state["args"], state["kwargs"] = args, kwargs

        def on_query(_module, _inputs, output):
            state["q"] = adapter.query_part(output)[batch, query]

        def on_key(_module, _inputs, output):
            scores[layer] = adapter.query_scores(module, state.pop("q"), adapter.key_part(output),
                                                 state.pop("args"), state.pop("kwargs"), query)
            if stop_early and layer == deepest:
                raise StopForward

        return on_call, on_query, on_key

    with ExitStack() as handles:
        for layer in layers:
            module = modules[layer]
            q_proj, k_proj = adapter.projections(module)
            on_call, on_query, on_key = hooks_for(layer, module)
            # Registration order is call order on a shared module (GPT-2's fused projection).
            handles.callback(module.register_forward_pre_hook(on_call, with_kwargs=True).remove)
            handles.callback(q_proj.register_forward_hook(on_query).remove)
            handles.callback(k_proj.register_forward_hook(on_key).remove)
        try:
            yield rows
        except StopForward:
            pass
    if scores:
        done = sorted(scores)
        rows.stacked = softmax_rows(torch.stack([scores[i] for i in done], dim=1), key_mask)
        rows.update(zip(done, rows.stacked.unbind(1), strict=True))


@contextmanager
def capture_outputs(adapter: Adapter, layers: Sequence[int], query: torch.Tensor,
                    stop_early: bool = False) -> Iterator[dict[int, torch.Tensor]]:
    """Yields a dict that fills, during the forward pass, with layer -> [batch, head * d]: the input
    of the layer's output projection (its heads' outputs, concatenated) at the query positions.

    With `stop_early` the pass ends once the deepest layer's heads have written: rows captured
    beside it must then not stop earlier themselves.
    """
    outputs: dict[int, torch.Tensor] = {}
    deepest = max(layers)
    batch = torch.arange(len(query), device=query.device)

    def hook_for(layer: int):
        def on_write(_module, args):
            outputs[layer] = args[0][batch, query].float()
            if stop_early and layer == deepest:
                raise StopForward

        return on_write

    with ExitStack() as handles:
        for layer in layers:
            handles.callback(adapter.output_projection(layer).register_forward_pre_hook(hook_for(layer)).remove)
        try:
            yield outputs
        except StopForward:
            pass
