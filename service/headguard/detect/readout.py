"""What each head adds to the answer: the `toward` family, read from the heads' outputs.

A decoder classifier answers with the logit of one label word over the other at the last prompt
token. A head's output there, o_h, reaches that logit difference linearly: through its block of
the output projection W_h, the final RMS norm's weight g and the label words' unembedding rows,
(g * (U[w1] - U[w0])) . W_h o_h, up to the norm's per-input scale (the same for every head of
an input). `toward` is that, per head, signed toward the label all heads push to together: a
backdoor's heads push hard toward its target where clean inputs' heads do not, and which label it
targets is never needed (docs/METHOD.md §5). It uses the task's label words, never a trigger.
"""

from __future__ import annotations

import torch

from headguard.detect.heads import Adapter
from headguard.errors import InputError
from headguard.models.classifier import Classifier, verbalizer_ids


def label_direction(clf: Classifier) -> torch.Tensor:
    """[hidden]: the residual-stream direction that raises the second label word's logit over the
    first, through the final RMS norm's weight; refuses a model that has none."""
    words = clf.task.verbalizer
    if clf.task.kind != "decoder" or not words or len(words) != 2:
        raise InputError("the `toward` family reads a decoder answering with one of two label words; "
                         f"this model is a {clf.task.kind} with {len(words or ())} label words")
    norm = getattr(getattr(clf.model, "model", None), "norm", None)
    if norm is None or getattr(norm, "bias", None) is not None:
        # A LayerNorm (GPT-2's ln_f) also subtracts the mean: the heads' shares are not linear in it.
        raise InputError("the `toward` family needs a final RMS norm (Llama, Qwen2, Mistral); "
                         f"{clf.model.config.model_type} has none")
    unembed = clf.model.get_output_embeddings().weight.detach().float()
    first, second = verbalizer_ids(clf.tokenizer, clf.task)
    return norm.weight.detach().float() * (unembed[second] - unembed[first])


def label_readout(clf: Classifier, adapter: Adapter, layers: list[int]) -> torch.Tensor:
    """[layer, head, d]: per head of `layers`, the vector whose dot product with the head's output is
    what it adds to the second label word's logit over the first (up to the final norm's scale).
    Read from the weights as they are now: a hot swap patches them in place."""
    direction = label_direction(clf)
    return torch.stack([torch.einsum("hwd,w->hd", adapter.write_matrix(layer), direction) for layer in layers])


def toward(outputs: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
    """outputs [batch, layer, head * d] (the heads' outputs at the query position), readout
    [layer, head, d] -> [batch, layer, head]: what each head adds to the logit of the label the
    heads push to together (the sign of their sum), so that it reads the same for either label."""
    batch, (n_layers, n_heads, d) = outputs.shape[0], readout.shape
    logit = torch.einsum("blhd,lhd->blh", outputs.view(batch, n_layers, n_heads, d), readout)
    return logit * torch.sign(logit.sum((1, 2), keepdim=True))
