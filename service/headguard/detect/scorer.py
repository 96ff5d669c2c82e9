"""Runs the suspect model on inputs and turns its query rows into head features."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from headguard.detect.capture import capture_outputs, capture_rows
from headguard.detect.defaults import score_defaults
from headguard.detect.features import FAMILIES, OUTPUT_FAMILIES, layer_features
from headguard.detect.heads import adapter_for
from headguard.detect.readout import label_direction, label_readout, toward
from headguard.errors import InputError
from headguard.models.batching import in_input_order, length_batches
from headguard.models.classifier import Classifier


@dataclass
class Capture:
    """One batch: features [batch, n_features], and for explanations the rows and tokens."""

    features: np.ndarray
    lengths: np.ndarray  # [batch] content keys per input: the covariate features are adjusted for
    rows: dict[int, torch.Tensor]  # layer -> [batch, head, key]
    mask: torch.Tensor  # [batch, key] real tokens
    content: torch.Tensor  # [batch, key] keys that count (no sinks, specials or padding)
    input_ids: torch.Tensor  # [batch, key]


class HeadScorer:
    """Feature extraction for a classifier-shaped model (encoder with [CLS], decoder with a prompt).

    The query position is [CLS] for encoders and the last prompt token for decoders: the positions
    whose representation the model's output is read from.
    """

    def __init__(self, clf: Classifier, layers: list[int] | None = None,
                 families: tuple[str, ...] | None = None, batch_size: int = 32):
        self.clf = clf
        self.adapter = adapter_for(clf.model)
        self.layers = sorted(layers) if layers is not None else list(range(self.adapter.n_layers))
        if not self.layers or self.layers[0] < 0 or self.layers[-1] >= self.adapter.n_layers:
            raise InputError(f"layers must lie in 0..{self.adapter.n_layers - 1}")
        if families is None:
            families = score_defaults(clf.task.kind).families
        known = FAMILIES + OUTPUT_FAMILIES
        unknown = set(families) - set(known)
        if unknown or not families:
            raise InputError(f"unknown feature families {sorted(unknown)}; choose from {', '.join(known)}")
        self.families = tuple(f for f in known if f in families)  # the order feature_names() uses
        self.row_families = tuple(f for f in self.families if f in FAMILIES)
        self.reads_outputs = "toward" in self.families
        if self.reads_outputs:
            label_direction(clf)  # refuses a model without a label readout before any input
        self.batch_size = batch_size

    @property
    def is_encoder(self) -> bool:
        return self.clf.task.kind == "encoder"

    def positions(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(query [batch], content [batch, key]) for a padded batch."""
        b, t = mask.shape
        idx = torch.arange(b, device=mask.device)
        content = mask.clone()
        if self.is_encoder:  # right padding: [CLS] text [SEP] pad...
            last = mask.sum(-1) - 1
            content[:, 0] = False
            content[idx, last] = False
            query = torch.zeros(b, dtype=torch.long, device=mask.device)
        else:  # left padding: pad... first ... last
            first = t - mask.sum(-1)
            content[idx, first] = False  # the first token is the decoder's attention sink
            query = torch.full((b,), t - 1, dtype=torch.long, device=mask.device)
        return query, content

    @torch.no_grad()
    def capture(self, texts: list[str], stop_early: bool = True, ids: Sequence[int] | None = None) -> Capture:
        """One padded batch; `ids` number the inputs in errors (default: their position in `texts`)."""
        for i, text in zip(ids if ids is not None else range(len(texts)), texts, strict=True):
            if not text or not text.strip():
                raise InputError(f"input {i} is empty")
        return self.capture_batch(self.clf.encode(texts, strict=True, ids=ids), stop_early)

    @torch.no_grad()
    def capture_batch(self, batch: dict[str, torch.Tensor], stop_early: bool = True) -> Capture:
        """`capture` of a batch already made by `clf.encode`."""
        mask = batch["attention_mask"].bool()
        query, content = self.positions(mask)
        # A decoder's logits are needed for the last position only (as in a serving prefill).
        extra = {} if self.is_encoder else {"logits_to_keep": 1}
        # What heads write is read at their output projection, after the rows: it sets the stop then.
        writes = (capture_outputs(self.adapter, self.layers, query, stop_early) if self.reads_outputs
                  else nullcontext({}))
        looks = capture_rows(self.adapter, self.layers, query, mask, stop_early=stop_early and not self.reads_outputs)
        with looks as rows, writes as outputs:
            self.clf.model(**batch, **extra)
        # All layers at once (self.layers is ascending, as rows.stacked is), in feature_names() order.
        per_layer = []
        if self.row_families:
            per_layer.append(layer_features(rows.stacked, content, self.row_families, mask))
        if self.reads_outputs:
            # The readout is read from the weights each batch (a few matrix-vector products): a hot
            # swap patches the heads' output projections in place.
            readout = label_readout(self.clf, self.adapter, self.layers)
            per_layer.append(toward(torch.stack([outputs[layer] for layer in self.layers], 1), readout))
        feats = torch.cat(per_layer, -1).flatten(1)
        lengths = content.sum(-1).cpu().numpy().astype(np.float64)
        return Capture(feats.cpu().numpy().astype(np.float64), lengths, rows, mask, content, batch["input_ids"])

    def features(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(features [n, n_features], content lengths [n]) for any number of inputs, in their order."""
        batches = length_batches(texts, self.batch_size)
        caps = [self.capture([texts[i] for i in b], ids=b) for b in batches]
        if not caps:
            return np.zeros((0, 0)), np.zeros(0)
        return (in_input_order(batches, np.concatenate([c.features for c in caps])),
                in_input_order(batches, np.concatenate([c.lengths for c in caps])))
