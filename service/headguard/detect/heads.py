"""Head adapters: where each model family keeps its attention modules and how to read one row.

The guard hooks the model's own query and key projections and, from their outputs, computes the
attention probabilities of the query position only: one row per head, [batch, head, key]. No
projection is computed twice, the model keeps its fused attention kernel, and nothing T x T is
materialised.

A "head" is a query head. In grouped-query attention (Llama, Qwen2, Mistral) several query heads
share one key/value group; `kv_group(head)` names it, and the repair module trains query rows per
head and shared k/v rows per group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True, order=True)
class HeadRef:
    """A query head, named the TransformerLens way: `L3H7` is head 7 of layer 3.

    >>> str(HeadRef(3, 7)), HeadRef.parse("L3H7")
    ('L3H7', HeadRef(layer=3, head=7))
    """

    layer: int
    head: int

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"

    @classmethod
    def parse(cls, name: str) -> HeadRef:
        layer, head = name.upper().lstrip("L").split("H")
        return cls(int(layer), int(head))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def softmax_rows(scores: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """scores [batch, ..., key], key_mask [batch, key] (True = attendable) -> probabilities."""
    key_mask = key_mask.view(key_mask.shape[0], *([1] * (scores.ndim - 2)), key_mask.shape[-1])
    return torch.softmax(scores.float().masked_fill(~key_mask, float("-inf")), dim=-1)


class Adapter:
    """One model family. Subclasses find the attention modules and recompute a query row."""

    family = "base"

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config
        self.n_layers: int = self.config.num_hidden_layers
        self.n_heads: int = self.config.num_attention_heads
        self.n_kv_heads: int = getattr(self.config, "num_key_value_heads", None) or self.n_heads

    def kv_group(self, head: int) -> int:
        return head // (self.n_heads // self.n_kv_heads)

    def blocks(self) -> list[nn.Module]:
        """The transformer blocks in order; each one's output is the next one's input."""
        raise NotImplementedError

    def attention_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.config.hidden_size // self.n_heads

    def head_slices(self, layer: int, heads: set[int]) -> list[tuple[nn.Parameter, int, int, int]]:
        """The parameter slices that belong to `heads` of `layer` alone: (parameter, dim, start, stop).

        Query rows, key/value rows where a head has its own (all heads of a KV group selected),
        output-projection columns. Used by the repair to train and patch only those heads.
        """
        raise NotImplementedError

    def output_projection(self, layer: int) -> nn.Module:
        """The module whose input is the concatenation of the layer's head outputs."""
        raise NotImplementedError

    def write_matrix(self, layer: int) -> torch.Tensor:
        """[head, hidden, d]: each head's block of the output projection; a head with output o_h
        adds write_matrix[h] @ o_h to the residual stream (less the projection's bias)."""
        weight = self.output_projection(layer).weight.detach().float()
        if self.family == "gpt2":  # Conv1D stores [in, out]
            weight = weight.T
        return weight.view(weight.shape[0], self.n_heads, self.head_dim()).permute(1, 0, 2)

    def output_slices(self, layer: int, heads: set[int]) -> list[tuple[nn.Parameter, int, int, int]]:
        """Each head's share of the output projection: zeroing it removes the head from the model."""
        weight, d = self.output_projection(layer).weight, self.head_dim()
        dim = 0 if self.family == "gpt2" else 1  # GPT-2's Conv1D stores [in, out]
        return [(weight, dim, h * d, (h + 1) * d) for h in sorted(heads)]

    def projections(self, module: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(query projection, key projection) of an attention module; the query's runs first."""
        raise NotImplementedError

    def query_part(self, output: torch.Tensor) -> torch.Tensor:
        """The queries [..., head * d] within the query projection's output."""
        return output

    def key_part(self, output: torch.Tensor) -> torch.Tensor:
        """The keys [..., kv_head * d] within the key projection's output."""
        return output

    def query_scores(self, module: nn.Module, q: torch.Tensor, k: torch.Tensor, args: tuple, kwargs: dict,
                     query: torch.Tensor) -> torch.Tensor:
        """Attention logits of the query positions over all keys: [batch, head, key] (`softmax_rows`
        turns them into the attention probabilities).

        `q` [batch, head * d] is the query projection at the query positions, `k` [batch, key,
        kv_head * d] the key projection, `args`/`kwargs` what the attention module was called with.
        """
        raise NotImplementedError


def _row_slices(linear: nn.Linear, blocks: list[int], size: int) -> list[tuple[nn.Parameter, int, int, int]]:
    """Output rows of a Linear (weight and bias) for each block of `size` rows."""
    out = []
    for block in blocks:
        out.append((linear.weight, 0, block * size, (block + 1) * size))
        if linear.bias is not None:
            out.append((linear.bias, 0, block * size, (block + 1) * size))
    return out


class BertAdapter(Adapter):
    family = "bert"

    def blocks(self) -> list[nn.Module]:
        return list(self.model.base_model.encoder.layer)

    def attention_modules(self) -> list[nn.Module]:
        return [layer.attention.self for layer in self.blocks()]

    def output_projection(self, layer: int) -> nn.Module:
        return self.blocks()[layer].attention.output.dense

    def head_slices(self, layer, heads):
        attn, d, hs = self.attention_modules()[layer], self.head_dim(), sorted(heads)
        return [*_row_slices(attn.query, hs, d), *_row_slices(attn.key, hs, d), *_row_slices(attn.value, hs, d),
                *self.output_slices(layer, heads)]

    def projections(self, module):
        return module.query, module.key

    def query_scores(self, module, q, k, args, kwargs, query):
        b, t, _ = k.shape
        d = module.attention_head_size
        return torch.einsum("bhd,bthd->bht", q.view(b, -1, d), k.view(b, t, -1, d)) * module.scaling


class LlamaAdapter(Adapter):
    """Llama, Qwen2, Mistral and their kin: RoPE, optional q/k norms, grouped-query attention."""

    family = "llama"

    def blocks(self) -> list[nn.Module]:
        return list(self.model.model.layers)

    def attention_modules(self) -> list[nn.Module]:
        return [layer.self_attn for layer in self.blocks()]

    def output_projection(self, layer: int) -> nn.Module:
        return self.attention_modules()[layer].o_proj

    def head_slices(self, layer, heads):
        attn, d, hs = self.attention_modules()[layer], self.head_dim(), sorted(heads)
        per_group = self.n_heads // self.n_kv_heads
        whole_groups = [g for g in range(self.n_kv_heads)
                        if all(g * per_group + i in heads for i in range(per_group))]
        return [*_row_slices(attn.q_proj, hs, d), *_row_slices(attn.k_proj, whole_groups, d),
                *_row_slices(attn.v_proj, whole_groups, d), *self.output_slices(layer, heads)]

    def projections(self, module):
        return module.q_proj, module.k_proj

    def query_scores(self, module, q, k, args, kwargs, query):
        cos, sin = kwargs["position_embeddings"] if "position_embeddings" in kwargs else args[1]
        b, t, _ = k.shape
        d = module.head_dim
        idx = torch.arange(b, device=k.device)
        q, k = q.view(b, -1, d), k.view(b, t, -1, d)  # [batch, head, d], [batch, key, kv_head, d]
        if hasattr(module, "q_norm"):
            q, k = module.q_norm(q), module.k_norm(k)
        q = q * cos[idx, query][:, None] + _rotate_half(q) * sin[idx, query][:, None]
        k = k * cos[:, :, None] + _rotate_half(k) * sin[:, :, None]
        # Head h belongs to KV group h // per_group: score each group's queries against its keys
        # without copying the keys once per query head.
        n_kv = k.shape[2]
        return torch.einsum("bkgd,btkd->bkgt", q.view(b, n_kv, -1, d), k).reshape(b, -1, t) * module.scaling


class GPT2Adapter(Adapter):
    family = "gpt2"

    def blocks(self) -> list[nn.Module]:
        return list(self.model.transformer.h)

    def attention_modules(self) -> list[nn.Module]:
        return [block.attn for block in self.blocks()]

    def output_projection(self, layer: int) -> nn.Module:
        return self.attention_modules()[layer].c_proj

    def head_slices(self, layer, heads):
        # GPT-2's Conv1D stores weights as [in, out]: q, k, v are column blocks of c_attn.
        attn, d, dim = self.attention_modules()[layer], self.head_dim(), self.config.hidden_size
        out = []
        for h in sorted(heads):
            for part in range(3):
                start = part * dim + h * d
                out += [(attn.c_attn.weight, 1, start, start + d), (attn.c_attn.bias, 0, start, start + d)]
        return out + self.output_slices(layer, heads)

    def projections(self, module):
        return module.c_attn, module.c_attn  # one fused projection: [q | k | v]

    def query_part(self, output):
        return output[..., : self.config.hidden_size]

    def key_part(self, output):
        return output[..., self.config.hidden_size : 2 * self.config.hidden_size]

    def query_scores(self, module, q, k, args, kwargs, query):
        b, t, _ = k.shape
        d = module.head_dim
        scores = torch.einsum("bhd,bthd->bht", q.view(b, -1, d), k.view(b, t, -1, d))
        if module.scale_attn_weights:
            scores = scores / (d**0.5)
        if getattr(module, "scale_attn_by_inverse_layer_idx", False):
            scores = scores / float(module.layer_idx + 1)
        return scores


ADAPTERS: dict[str, type[Adapter]] = {
    "bert": BertAdapter,
    "llama": LlamaAdapter,
    "qwen2": LlamaAdapter,
    "mistral": LlamaAdapter,
    "gpt2": GPT2Adapter,
}


def adapter_for(model: nn.Module) -> Adapter:
    model_type = model.config.model_type
    if model_type not in ADAPTERS:
        raise ValueError(f"no head adapter for model type {model_type!r}; supported: {', '.join(ADAPTERS)}")
    return ADAPTERS[model_type](model)
