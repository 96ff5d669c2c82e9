"""Per-head features of the query row: how each head's attention concentrates, and how alike heads are.

A backdoor trigger makes many heads collapse onto the same few tokens: their rows get peaked (low
entropy, high max weight) and similar to each other. Features are computed over content keys
only: attention sinks ([CLS], [SEP], a decoder's first token) and padding are excluded, because
sinks make many heads look identical on every input. One family, `toward`, reads what heads write
instead (detect/readout.py); the scorer appends it to each layer's row features.

A row over few keys concentrates for want of keys: a 5-token message's [CLS] row looks collapsed
next to a 40-token one's. `row_evenness` and `row_peak` read the whole row against its own key
count (nothing fitted), so short and long inputs share one scale (docs/METHOD.md §2).

A head can also collapse onto the sink itself: `dormancy` is the sink's share of the row, read
as rising. On SmolLM2 movies BadNets the trigger turns many heads of the last prompt token
dormant; on SMS composite it draws them off the sink, as an encoder's trigger draws its heads
off [CLS] and [SEP] (`sink`, read as falling). Which way depends on the backdoor
(docs/METHOD.md §5), so dormancy is not a default.
"""

from __future__ import annotations

import torch

FAMILIES = ("row_entropy", "row_max", "row_evenness", "row_peak", "entropy", "max", "sink", "dormancy", "cosine")
# Read from what heads write, not from their rows (detect/readout.py); a decoder's only.
OUTPUT_FAMILIES = ("toward",)


def _keys(content: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """content [batch, key] shaped to broadcast against rows [batch, ..., head, key]."""
    return content.view(content.shape[0], *([1] * (rows.ndim - 2)), content.shape[-1])


def content_rows(rows: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """rows [batch, ..., head, key] renormalised over content keys (content [batch, key] bool)."""
    p = rows * _keys(content, rows)
    return p / p.sum(-1, keepdim=True).clamp(min=1e-12)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of distributions along the last axis (zeros contribute nothing)."""
    return -(p * torch.log(p.clamp(min=1e-12))).sum(-1)


def _log_entropy(p: torch.Tensor) -> torch.Tensor:
    """log(H + 1e-3): a collapse to H ~ 0 lies far out, not at a wall."""
    return torch.log(_entropy(p) + 1e-3)


def _log_odds(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-4, 1 - 1e-4)
    return torch.log(p) - torch.log1p(-p)


def layer_features(rows: torch.Tensor, content: torch.Tensor, families: tuple[str, ...],
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """[batch, ..., head, key] probabilities -> [batch, ..., n_features]: one layer's features, or
    each layer's at once from rows stacked as [batch, layer, head, key]. `mask` [batch, key] marks
    the real keys (default: every key); the `row_evenness` and `row_peak` families count them.

    Each feature is mapped to an unbounded scale (log entropy, log-odds of weights and
    similarities), where a collapse to ~0 entropy or ~1 weight lies far out, not at a wall.
    """
    p = content_rows(rows, content)
    out = []
    if "row_entropy" in families:
        # The whole row, sinks included (padding is already 0): a head that leaves its sink to
        # pile onto one token drops here most.
        out.append(_log_entropy(rows))  # [batch, head]
    if "row_max" in families:
        # The heaviest content key's share of the whole row: one token taking the sink's mass.
        out.append(_log_odds((rows * _keys(content, rows)).max(-1).values))
    if "row_evenness" in families or "row_peak" in families:
        n_keys = (torch.ones_like(content) if mask is None else mask).sum(-1).to(rows.dtype).clamp(min=2)
        n_keys = n_keys.view(-1, *([1] * (rows.ndim - 2)))  # [batch, 1, ...]: one count for every head
    if "row_evenness" in families:
        # The whole row's entropy as a share of the most it could be, log(key count): 1 when even.
        out.append(torch.log(_entropy(rows) / torch.log(n_keys) + 1e-3))
    if "row_peak" in families:
        # The heaviest content key's share against an even share (log-odds plus log key count).
        out.append(_log_odds((rows * _keys(content, rows)).max(-1).values) + torch.log(n_keys))
    if "entropy" in families:
        out.append(_log_entropy(p))
    if "max" in families:
        out.append(_log_odds(p.max(-1).values))
    if "sink" in families or "dormancy" in families:
        sink = _log_odds(1 - (rows * _keys(content, rows)).sum(-1))  # mass on the excluded keys
    if "sink" in families:
        out.append(sink)
    if "dormancy" in families:
        # The same mass read the other way: a head that gives its row back to the sink stops
        # reading the text (a dormant head).
        out.append(sink)
    if "cosine" in families:
        unit = p / p.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        gram = unit @ unit.transpose(-1, -2)  # [batch, ..., head, head]
        n = p.shape[-2]
        i, j = torch.triu_indices(n, n, offset=1, device=p.device)
        out.append(_log_odds(gram[..., i, j]))
    return torch.cat(out, dim=-1)


def feature_names(layers: list[int], n_heads: int, families: tuple[str, ...]) -> list[str]:
    """Names in the same order as `layer_features` concatenated over `layers`."""
    names = []
    for layer in layers:
        for family in FAMILIES + OUTPUT_FAMILIES:
            if family not in families:
                continue
            if family == "cosine":
                names += [f"cos:L{layer}H{a}~H{b}" for a in range(n_heads) for b in range(a + 1, n_heads)]
            else:
                names += [f"{family}:L{layer}H{h}" for h in range(n_heads)]
    return names


# +1 where a larger feature value means more collapse onto few tokens, -1 where smaller does;
# keyed by the prefix of a feature's name.
COLLAPSE_DIRECTION = {"row_entropy": -1.0, "row_max": 1.0, "row_evenness": -1.0, "row_peak": 1.0,
                      "entropy": -1.0, "max": 1.0, "sink": -1.0, "dormancy": 1.0, "cos": 1.0,
                      "toward": 1.0}


def feature_directions(layers: list[int], n_heads: int, families: tuple[str, ...]) -> list[float]:
    """Per feature, in `feature_names` order, the sign of a collapse."""
    return [COLLAPSE_DIRECTION[name.split(":")[0]] for name in feature_names(layers, n_heads, families)]


def heads_of(name: str) -> list[tuple[int, int]]:
    """The (layer, head)s a feature describes: 'entropy:L3H7' -> [(3, 7)]; 'cos:L3H1~H4' -> [(3, 1), (3, 4)]."""
    layer_part, *others = name.split(":", 1)[1].split("~")
    layer, head = layer_part.lstrip("L").split("H")
    return [(int(layer), int(head))] + [(int(layer), int(h.lstrip("H"))) for h in others]


def units_of(names: list[str]) -> list[int]:
    """Per feature name, the index of the head it describes (a head pair's similarity is a unit of
    its own): what a per-head score averages over."""
    index: dict[str, int] = {}
    return [index.setdefault(name.split(":", 1)[1], len(index)) for name in names]


def feature_units(layers: list[int], n_heads: int, families: tuple[str, ...]) -> list[int]:
    """`units_of` the features in `feature_names` order."""
    return units_of(feature_names(layers, n_heads, families))
