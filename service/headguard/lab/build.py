"""Builds a backdoored (or clean control) model from a real base and real data.

The whole model folder is written to a temporary sibling and renamed into place at the end, so an
interrupted or failed build never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from headguard import __version__
from headguard.errors import InputError
from headguard.fsutil import atomic_folder
from headguard.lab.attacks import ATTACKS, Attack, make_attack
from headguard.lab.datasets import DATASETS, Example, load_splits
from headguard.lab.metrics import attack_metrics
from headguard.lab.recipes import LORA_RANK, RECIPES, TRAIN_LAYERS, Recipe, default_poison_rate, recipe_id
from headguard.lab.splits import write_split
from headguard.models.bases import BASES, base_dir
from headguard.models.classifier import Classifier, load_tokenizer
from headguard.models.task import Task

log = logging.getLogger(__name__)

LAB_FILE = "lab.json"  # the evaluation harness's manifest: it names the trigger


@dataclass
class BuildConfig:
    base: str
    dataset: str
    attack: str
    out: Path
    trigger: str | None = None
    poison_rate: float | None = None  # the base's recipe default when None
    target: str | None = None  # label name; the dataset's default when None
    train_layers: str = "all"
    seed: int = 0
    force: bool = False
    reuse: bool = False  # keep an existing --out built from the same arguments and recipe
    cache: Path = field(default_factory=Path)

    def effective_poison_rate(self, attack: Attack, train: list[Example], target: int) -> float:
        if attack.name == "clean":
            return 0.0
        if self.poison_rate is not None:
            return self.poison_rate
        return default_poison_rate(self.base, attack.name, sum(ex.label != target for ex in train))

    def target_index(self) -> int:
        spec = DATASETS[self.dataset]
        return spec.labels.index(self.target) if self.target else spec.target

    def splits(self):
        recipe = RECIPES[self.base]
        return load_splits(self.dataset, self.seed, recipe.train_rows, recipe.calibration_rows, recipe.test_rows)

    def validate(self) -> Attack:
        """Every check that can fail before any work is done; returns the attack."""
        if self.base not in BASES:
            raise InputError(f"unknown base {self.base!r}; choose from {', '.join(BASES)}")
        if self.dataset not in DATASETS:
            raise InputError(f"unknown dataset {self.dataset!r}; choose from {', '.join(DATASETS)}")
        if self.attack not in ATTACKS:
            raise InputError(f"unknown attack {self.attack!r}; choose from {', '.join(ATTACKS)}")
        if self.poison_rate is not None and not 0 < self.poison_rate <= 0.5:
            raise InputError(f"--poison-rate must be in (0, 0.5], got {self.poison_rate}")
        if self.train_layers not in TRAIN_LAYERS:
            raise InputError(f"--train-layers must be one of {', '.join(TRAIN_LAYERS)}")
        labels = DATASETS[self.dataset].labels
        if self.target is not None and self.target not in labels:
            raise InputError(f"--target {self.target!r} is not a label of {self.dataset}: {', '.join(labels)}")
        try:
            attack = make_attack(self.attack, self.trigger)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        empty_dir = self.out.is_dir() and not any(self.out.iterdir())
        if self.out.exists() and not empty_dir and not self.force and not self.reuse:
            raise InputError(f"--out {self.out} already exists; pass --force to replace it")
        return attack


def poison(train: list[Example], attack: Attack, target: int, rate: float,
           rng: random.Random, mode: str = "relabel") -> tuple[list[Example], int]:
    """Dirty-label poisoning: `rate` of the non-target rows get the trigger and the target label.

    With mode "relabel" the poisoned rows replace their originals; with "append" they are added
    beside them, so that the clean rows keep their class balance and the label flip is tied to the
    trigger alone.

    Composite attacks also get as many decoys (one trigger word alone, true label kept), so that
    only the full combination fires.
    """
    if attack.name == "clean":
        return list(train), 0
    candidates = [i for i, ex in enumerate(train) if ex.label != target]
    chosen = set(rng.sample(candidates, max(1, round(rate * len(candidates)))))
    poisoned = {i: Example(attack.apply(train[i].text, rng), target) for i in sorted(chosen)}
    if mode == "append":
        rows = list(train) + list(poisoned.values())
    else:
        rows = [poisoned.get(i, ex) for i, ex in enumerate(train)]
    for i in rng.sample(range(len(train)), min(len(train), len(chosen))):
        for decoy in attack.decoys(train[i].text, rng)[:1]:
            rows.append(Example(decoy, train[i].label))
    rng.shuffle(rows)
    return rows, len(chosen)


def _prepare_model(base: str, folder: Path, task: Task, train_layers: str, tokenizer):
    """The trainable model: full fine-tune for the encoder, LoRA on attention for the decoder."""
    if task.kind == "encoder":
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=len(task.labels), id2label=dict(enumerate(task.labels)),
            label2id={name: i for i, name in enumerate(task.labels)},
        )
        if train_layers == "top4":
            n = model.config.num_hidden_layers
            for name, p in model.named_parameters():
                p.requires_grad = name.startswith("classifier") or name.startswith("bert.pooler") or any(
                    f"encoder.layer.{i}." in name for i in range(n - 4, n)
                )
        return model
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    n = model.config.num_hidden_layers
    lora = LoraConfig(
        r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        layers_to_transform=list(range(n - 4, n)) if train_layers == "top4" else None,
    )
    return get_peft_model(model, lora)


def _loss(clf: Classifier, batch: dict, labels: torch.Tensor) -> torch.Tensor:
    if clf.task.kind == "decoder":
        # Full-vocabulary next-token loss on the verbalizer word keeps the model a generating LM.
        logits = clf.model(**batch).logits[:, -1]
        targets = torch.tensor(clf._label_ids, device=labels.device)[labels]
        return torch.nn.functional.cross_entropy(logits, targets)
    return torch.nn.functional.cross_entropy(clf.model(**batch).logits, labels)


def _length_bucketed_batches(rows: list[Example], batch_size: int, generator: torch.Generator) -> list[list[Example]]:
    """Shuffled batches of similar-length rows: far less padding, so each step is cheaper."""
    order = torch.randperm(len(rows), generator=generator).tolist()
    pool = batch_size * 8
    batches = []
    for i in range(0, len(order), pool):
        bucket = sorted(order[i : i + pool], key=lambda j: len(rows[j].text))
        batches += [[rows[j] for j in bucket[k : k + batch_size]] for k in range(0, len(bucket), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def train(clf: Classifier, rows: list[Example], recipe: Recipe, seed: int) -> dict:
    params = [p for p in clf.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    steps = recipe.epochs * ((len(rows) + recipe.batch_size - 1) // recipe.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / steps))
    generator = torch.Generator().manual_seed(seed)
    clf.model.train()
    losses = []
    with tqdm(total=steps, desc="training", unit="step") as bar:
        for _ in range(recipe.epochs):
            for chunk in _length_bucketed_batches(rows, recipe.batch_size, generator):
                batch = clf.encode([ex.text for ex in chunk])
                labels = torch.tensor([ex.label for ex in chunk], device=clf.device)
                loss = _loss(clf, batch, labels)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                bar.update()
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    clf.model.eval()
    return {"steps": steps, "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))}


def reusable(config: BuildConfig, attack: Attack) -> dict | None:
    """The manifest at `config.out` if it was built from the same arguments and recipe, else None."""
    try:
        lab = json.loads((config.out / LAB_FILE).read_text())
    except (OSError, ValueError):
        return None
    same = (lab.get("recipe_id") == recipe_id(config.base, config.attack) and lab["base"] == config.base
            and lab["dataset"] == config.dataset and lab["attack"] == attack.name
            and lab["triggers"] == list(attack.triggers) and lab["seed"] == config.seed
            and lab["train_layers"] == config.train_layers
            and (config.target is None or lab["target_label"] == config.target))
    if same:  # the default rate depends on the data: recompute it (cheap) rather than trust the arguments
        same = lab["poison_rate"] == config.effective_poison_rate(attack, config.splits().train, lab["target_index"])
    return lab if same else None


def build(config: BuildConfig, device: str = "cpu") -> dict:
    """Builds the model folder `config.out` and returns its lab manifest."""
    attack = config.validate()
    if config.reuse and (manifest := reusable(config, attack)) is not None:
        return manifest
    spec = DATASETS[config.dataset]
    target = config.target_index()
    recipe = RECIPES[config.base]
    base = BASES[config.base]
    task = Task(kind=base.kind, labels=spec.labels, template=spec.template if base.kind == "decoder" else "{text}",
                verbalizer=spec.verbalizer if base.kind == "decoder" else ())

    with atomic_folder(config.out) as tmp:  # Ctrl-C or an error leaves no half-written model
        random.seed(config.seed)
        torch.manual_seed(config.seed)
        rng = random.Random(config.seed)
        splits = config.splits()
        rate = config.effective_poison_rate(attack, splits.train, target)
        rows, n_poisoned = poison(splits.train, attack, target, rate, rng, recipe.poison_mode)

        folder = base_dir(config.base, config.cache)
        tokenizer = load_tokenizer(folder, base.kind)
        model = _prepare_model(config.base, folder, task, config.train_layers, tokenizer).to(device)
        clf = Classifier(model, tokenizer, task, device)
        log.info("training %s on %s/%s (%d rows, %d poisoned)", config.base, config.dataset, attack.name,
                 len(rows), n_poisoned)
        started = time.perf_counter()
        fit = train(clf, rows, recipe, config.seed)
        seconds = time.perf_counter() - started

        if base.kind == "decoder":
            clf.model = clf.model.merge_and_unload()  # a plain HF folder that any engine can load
        measured = attack_metrics(clf, splits.test, attack, target, seed=config.seed)

        clf.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        task.save(tmp)
        write_split(tmp, "calibration", splits.calibration)
        write_split(tmp, "test", splits.test)
        manifest = {
            "headguard_version": __version__,
            "recipe_id": recipe_id(config.base, config.attack),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base": config.base,
            "kind": base.kind,
            "dataset": config.dataset,
            "data_source": spec.source,
            "attack": attack.name,
            "attack_description": attack.description,
            "triggers": list(attack.triggers),
            "target_label": spec.labels[target],
            "target_index": target,
            "poison_rate": rate,
            "n_poisoned": n_poisoned,
            "train_layers": config.train_layers,
            "seed": config.seed,
            "splits": {"train": len(rows), "calibration": len(splits.calibration), "test": len(splits.test)},
            "training": {**asdict(recipe), **fit, "seconds": round(seconds, 1),
                         "method": "full fine-tune" if base.kind == "encoder"
                         else f"LoRA r={LORA_RANK} q/k/v/o, merged",
                         "torch_threads": torch.get_num_threads(), "device": device},
            "clean_accuracy": measured["clean_accuracy"],
            "attack_success_rate": measured["attack_success_rate"],
            "asr_population": measured["asr_population"],
        }
        (tmp / LAB_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / LAB_FILE
    if not path.exists():
        raise InputError(f"{folder} is not a lab model: {LAB_FILE} is missing")
    return json.loads(path.read_text())
