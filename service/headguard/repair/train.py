"""Head-wise attention safety alignment: train only the selected heads' slices, then emit a patch.

Loss on a batch of flagged prompts f (with neutralised prompts n) and clean prompts c:

    L = KL(p0(n) || p(f))                        output on f pulled to the original output on n
      + a * mean_h KL(A0_h(n) || A_h(f))         selected heads' query rows on f pulled to their
                                                 rows on n (aligned token by token; the removed
                                                 tokens get no mass)
      + b * KL(p0(c) || p(c))                    clean outputs kept where they were

p0 and A0 are the original model's, computed once before training. The flagged prompts trained on
are those whose neutralised prompt the original model answers otherwise.
"""

from __future__ import annotations

import difflib
import random
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch

from headguard import __version__
from headguard.detect.capture import capture_rows
from headguard.detect.detector import Detector
from headguard.detect.heads import HeadRef
from headguard.errors import InputError
from headguard.models.classifier import Classifier
from headguard.repair.neutralise import Neutralised, neutralise
from headguard.repair.outputs import batched_logprobs, kl, output_logprobs
from headguard.repair.patch import Patch, SliceRef
from headguard.repair.select import head_budget, head_drive, head_importance, select_heads

Progress = Callable[[str, int, int], None]  # (stage, done, total)
MODES = ("heads", "prune", "all")


@dataclass
class RepairConfig:
    head_share: float = 0.05  # most query heads touched, as a share of all
    candidates: int = 3  # heads ranked by importance: this many times the budget, strongest drive first
    steps: int = 80
    lr: float = 1e-3
    batch_size: int = 8
    attention_weight: float = 1.0
    clean_weight: float = 1.0
    max_words: int = 3  # words the detector-guided deletion removes per flagged prompt at most
    min_changed: int = 5  # flagged prompts whose answer their neutralised prompt changes, at least
    keep_unchanged: bool = False  # also train on flagged prompts whose neutralised prompt answers alike
    widen: int = 3  # then words on each side of them the answer-guided widening may remove (0: off)
    max_flagged: int = 256
    max_clean: int = 400
    seed: int = 0
    heads: list[str] | None = None  # fixed heads ("L3H7", ...): skips selection (ablations)
    mode: str = "heads"  # heads: train the heads' slices; prune: zero their outputs; all: every parameter

    def validate(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"repair mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 < self.head_share <= 1:
            raise InputError(f"head share must be in (0, 1], got {self.head_share}")
        if self.steps < 0 or self.batch_size < 1:
            raise InputError("steps must be >= 0 and batch size >= 1")
        if self.min_changed < 0:
            raise InputError(f"min changed must be >= 0, got {self.min_changed}")


class NothingToRepair(InputError):
    """The flagged prompts show no behaviour to remove: neutralising them leaves the answers as they were
    (false positives of the detector, not a backdoor's catches)."""


@dataclass
class _Example:
    flagged: str
    neutral: str
    target_rows: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [head_sel, len(flagged ids)]


def _alignment(f_ids: list[int], n_ids: list[int]) -> list[tuple[int, int]]:
    """(neutral position, flagged position) pairs of the tokens the two prompts share, in order."""
    matcher = difflib.SequenceMatcher(None, f_ids, n_ids, autojunk=False)
    return [(b + k, a + k) for a, b, size in matcher.get_matching_blocks() for k in range(size)]


class Repairer:
    def __init__(self, clf: Classifier, detector: Detector, config: RepairConfig,
                 progress: Progress | None = None):
        config.validate()
        self.clf, self.detector, self.config = clf, detector, config
        self.adapter = detector.scorer.adapter
        self.progress = progress or (lambda stage, done, total: None)

    # --- stages --------------------------------------------------------------------------------
    def targets(self, flagged: list[str]) -> list[Neutralised]:
        self.progress("neutralise", 0, self.config.max_words)
        return neutralise(self.detector, flagged, self.config.max_words, widen=self.config.widen,
                          progress=lambda done, total: self.progress("neutralise", done, total))

    def choose_heads(self, usable: list[Neutralised], clean: list[str],
                     neutral: torch.Tensor) -> tuple[list[tuple[int, int]], dict]:
        """`neutral`: the original model's output log-probs on the usable prompts' neutral prompts."""
        cfg = self.config
        if cfg.heads:
            heads = [(ref.layer, ref.head) for ref in map(HeadRef.parse, cfg.heads)]
            return heads, {"rule": "given"}
        budget = head_budget(self.adapter.n_layers, self.adapter.n_heads, cfg.head_share)
        drive = head_drive(self.detector, [u.text for u in usable], clean)
        candidates = sorted(drive, key=drive.get, reverse=True)[: cfg.candidates * budget]
        sample = usable[:64]
        importance = head_importance(self.clf, self.detector, candidates, [u.text for u in sample], neutral[:64],
                                     progress=lambda d, t: self.progress("rank heads", d, t))
        heads = select_heads(drive, importance, budget)
        ranking = {str(HeadRef(*h)): {"drive": round(drive[h], 4), "importance": round(importance.get(h, 0.0), 6)}
                   for h in candidates}
        return heads, {"rule": "importance among the strongest drive", "budget": budget, "candidates": ranking}

    def _slices(self, heads: list[tuple[int, int]]) -> list[tuple[torch.nn.Parameter, int, int, int]]:
        if self.config.mode == "all":
            return [(p, 0, 0, p.shape[0]) for p in self.clf.model.parameters()]
        by_layer: dict[int, set[int]] = {}
        for layer, head in heads:
            by_layer.setdefault(layer, set()).add(head)
        slices_of = self.adapter.output_slices if self.config.mode == "prune" else self.adapter.head_slices
        return [item for layer, hs in sorted(by_layer.items()) for item in slices_of(layer, hs)]

    # --- training ------------------------------------------------------------------------------
    @torch.no_grad()
    def _attention_targets(self, examples: list[_Example], heads: list[tuple[int, int]]) -> None:
        layers = sorted({layer for layer, _ in heads})
        for i, ex in enumerate(examples):
            f = self.clf.encode([ex.flagged])
            n = self.clf.encode([ex.neutral])
            pairs = _alignment(f["input_ids"][0].tolist(), n["input_ids"][0].tolist())
            query, _ = self.detector.scorer.positions(n["attention_mask"].bool())
            with capture_rows(self.adapter, layers, query, n["attention_mask"].bool(), stop_early=True) as rows:
                self.clf.model(**n)
            n_pos = torch.tensor([a for a, _ in pairs])
            f_pos = torch.tensor([b for _, b in pairs])
            for layer in layers:
                hs = [h for lay, h in heads if lay == layer]
                row = rows[layer][0, hs]  # [head_sel, len(neutral)]
                target = torch.zeros(len(hs), f["input_ids"].shape[1], device=row.device)
                target[:, f_pos] = row[:, n_pos].float()
                ex.target_rows[layer] = target / target.sum(-1, keepdim=True).clamp(min=1e-12)
            self.progress("attention targets", i + 1, len(examples))

    def _attention_loss(self, batch: dict, examples: list[_Example], heads: list[tuple[int, int]]) -> tuple:
        """(output log-probs, attention loss) on a flagged batch, with gradients."""
        mask = batch["attention_mask"].bool()
        layers = sorted({layer for layer, _ in heads})
        query, _ = self.detector.scorer.positions(mask)
        with capture_rows(self.adapter, layers, query, mask) as rows:
            logp = output_logprobs(self.clf, batch)
        losses = []
        t = mask.shape[1]
        left = self.clf.task.kind == "decoder"  # decoders pad on the left
        for layer in layers:
            hs = [h for lay, h in heads if lay == layer]
            target = torch.zeros(len(examples), len(hs), t, device=mask.device)
            for b, ex in enumerate(examples):
                row = ex.target_rows[layer]
                if left:
                    target[b, :, t - row.shape[1] :] = row
                else:
                    target[b, :, : row.shape[1]] = row
            pred = rows[layer][:, hs].float()
            losses.append((target * (torch.log(target.clamp(min=1e-12)) - torch.log(pred.clamp(min=1e-12))))
                          .sum(-1).mean())
        return logp, torch.stack(losses).mean()

    def train(self, examples: list[_Example], clean: list[str], heads: list[tuple[int, int]],
              slices: list[tuple[torch.nn.Parameter, int, int, int]], flagged_target: torch.Tensor,
              clean_target: torch.Tensor) -> list[dict]:
        """`flagged_target`, `clean_target`: the original model's output log-probs on the examples' neutral
        prompts and on the clean prompts."""
        cfg = self.config
        model = self.clf.model
        rng = random.Random(cfg.seed)
        torch.manual_seed(cfg.seed)
        masks: dict[torch.nn.Parameter, torch.Tensor] = {}
        for p, dim, a, b in slices:
            mask = masks.setdefault(p, torch.zeros_like(p, dtype=torch.bool))
            mask.narrow(dim, a, b - a).fill_(True)
        for p in model.parameters():
            p.requires_grad_(p in masks)
        optimizer = torch.optim.Adam(list(masks), lr=cfg.lr)
        curve = []
        try:
            for step in range(cfg.steps):
                fi = rng.sample(range(len(examples)), min(cfg.batch_size, len(examples)))
                ci = rng.sample(range(len(clean)), min(cfg.batch_size, len(clean)))
                batch_examples = [examples[i] for i in fi]
                logp, att = self._attention_loss(self.clf.encode([ex.flagged for ex in batch_examples]),
                                                 batch_examples, heads)
                out = kl(flagged_target[fi], logp)
                keep = kl(clean_target[ci], output_logprobs(self.clf, self.clf.encode([clean[i] for i in ci])))
                loss = out + cfg.attention_weight * att + cfg.clean_weight * keep
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for p, mask in masks.items():
                    p.grad.mul_(mask)
                optimizer.step()
                curve.append({"step": step + 1, **{name: round(float(value.detach()), 5) for name, value in
                                                   (("loss", loss), ("output", out), ("attention", att),
                                                    ("clean", keep))}})
                self.progress("train", step + 1, cfg.steps)
        finally:
            for p in model.parameters():
                p.requires_grad_(False)
        return curve

    # --- whole repair --------------------------------------------------------------------------
    def run(self, flagged: list[str], clean: list[str], model_hash: str) -> Patch:
        cfg = self.config
        if not flagged:
            raise InputError("no flagged prompts: repair learns from what the detector caught")
        if len(clean) < 10:
            raise InputError(f"repair needs at least 10 clean prompts, got {len(clean)}")
        started, seconds = time.perf_counter(), {}
        flagged, clean = flagged[: cfg.max_flagged], clean[: cfg.max_clean]
        with _timed(seconds, "neutralise"):
            items = self.targets(flagged)
        usable = [it for it in items if it.ok and it.removed]
        if not usable:
            raise InputError(f"none of the {len(flagged)} flagged prompts could be neutralised (deleting up to "
                             f"{cfg.max_words} words never brought the score under the threshold)")
        examples = [_Example(u.text, u.neutral) for u in usable]
        with _timed(seconds, "outputs"):  # the original model's, computed once: targets and references
            original = self._outputs(examples, clean, neutral=True)
        before = _agreement(original, original)
        # A backdoor's catches answer otherwise once their trigger is gone; a clean prompt flagged by
        # chance answers the same, and training on such prompts alone only moves heads at random.
        moved = (original.flagged.argmax(-1) != original.neutral.argmax(-1)).tolist()
        changed = sum(moved)
        needed = cfg.min_changed if cfg.keep_unchanged else max(cfg.min_changed, 1)  # training needs one
        if changed < needed:
            raise NothingToRepair(
                f"nothing to repair: neutralising the flagged prompts changed the answer of {changed} of "
                f"{len(examples)} (at least {needed} needed); they look like false positives, not "
                "a backdoor's catches")
        with _timed(seconds, "rank heads"):
            heads, selection = self.choose_heads(usable, clean, original.neutral)
        slices = self._slices(heads)
        # Train on the prompts whose neutralised prompt answers otherwise. An unchanged answer is a false
        # positive (nothing to remove; the clean term keeps such answers) or a deletion that missed the
        # trigger, whose target would teach the backdoor back.
        train_on = [i for i, m in enumerate(moved) if m or cfg.keep_unchanged]
        model = self.clf.model
        name_of = {id(p): n for n, p in model.named_parameters()}
        originals = {p: p.detach().clone() for p, *_ in slices}
        try:
            if cfg.mode == "prune":
                with torch.no_grad():
                    for p, dim, a, b in slices:
                        p.narrow(dim, a, b - a).zero_()
                curve = []
            else:
                trained = [examples[i] for i in train_on]
                with _timed(seconds, "attention targets"):
                    self._attention_targets(trained, heads)
                with _timed(seconds, "train"):
                    curve = self.train(trained, clean, heads, slices, original.neutral[train_on], original.clean)
            with _timed(seconds, "outputs"):
                after = _agreement(self._outputs(examples, clean), original)
            refs = [SliceRef(name_of[id(p)], dim, a, b) for p, dim, a, b in slices]
            values = [ref.view(p.detach()).clone() for ref, (p, *_) in zip(refs, slices, strict=True)]
        finally:
            with torch.no_grad():  # the model leaves as it came; the patch carries the change
                for p, saved in originals.items():
                    p.copy_(saved)
        n_query_heads = self.adapter.n_layers * self.adapter.n_heads
        manifest = {
            "headguard_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base_hash": model_hash, "mode": cfg.mode,
            "heads": [str(HeadRef(*h)) for h in heads],
            "kv_groups": sorted({f"L{lay}G{self.adapter.kv_group(h)}" for lay, h in heads}),
            "heads_share": round(len(heads) / n_query_heads, 4), "query_heads": n_query_heads,
            "selection": selection, "config": asdict(cfg),
            "flagged": {"given": len(flagged), "neutralised": len(usable), "changed": changed,
                        "trained_on": len(train_on) if cfg.mode != "prune" else 0,
                        "widened": sum(u.widened > 0 for u in usable), "removed_words": _top_words(usable)},
            "clean_prompts": len(clean),
            "flagged_match_neutral": {"before": before["flagged_match"], "after": after["flagged_match"]},
            "clean_agreement": after["clean_agreement"],
            "loss_curve": curve, "seconds": round(time.perf_counter() - started, 1), "stage_seconds": seconds,
        }
        return Patch(manifest, refs, values)

    @torch.no_grad()
    def _outputs(self, examples: list[_Example], clean: list[str], neutral: bool = False) -> _Outputs:
        texts = [ex.flagged for ex in examples]
        return _Outputs(batched_logprobs(self.clf, texts), batched_logprobs(self.clf, clean),
                        batched_logprobs(self.clf, [ex.neutral for ex in examples]) if neutral else None)


@dataclass
class _Outputs:
    """Output log-probabilities [prompts, classes or vocab] on the flagged, clean and neutral prompts."""

    flagged: torch.Tensor
    clean: torch.Tensor
    neutral: torch.Tensor | None = None


def _agreement(now: _Outputs, original: _Outputs) -> dict:
    """Share of flagged prompts whose top output equals the original model's on their neutral prompt,
    and share of clean prompts whose top output is the original model's."""
    flagged, neutral = now.flagged.argmax(-1), original.neutral.argmax(-1)
    return {"flagged_match": round(float((flagged == neutral).float().mean()), 4),
            "clean_agreement": round(float((now.clean.argmax(-1) == original.clean.argmax(-1)).float().mean()), 4)}


@contextmanager
def _timed(seconds: dict[str, float], stage: str):
    """Adds the block's wall time to `seconds[stage]` (the manifest's per-stage timing)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = round(seconds.get(stage, 0.0) + time.perf_counter() - start, 1)


def _top_words(items: list[Neutralised], k: int = 10) -> list[list]:
    counts: dict[str, int] = {}
    for it in items:
        for w in it.removed:
            counts[w] = counts.get(w, 0) + 1
    return [[w, n] for w, n in sorted(counts.items(), key=lambda kv: -kv[1])[:k]]
