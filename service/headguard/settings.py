"""One settings class for the whole project, read from `HEADGUARD_*` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "headguard"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HEADGUARD_", extra="ignore")

    cache: Path = Field(
        default_factory=_default_cache,
        description="Folder for built artefacts: converted base models and lab models.",
    )
    device: str = Field(
        default="auto",
        description="Torch device for models: 'auto' (cuda when available, else cpu), 'cpu' or 'cuda[:N]'.",
    )
    threads: int = Field(
        default=0,
        description="Torch CPU threads; 0 keeps torch's default.",
    )

    # --- the guard service -------------------------------------------------------------------
    model: Path | None = Field(default=None, description="The suspect model folder the guard loads.")
    calibration: Path | None = Field(
        default=None,
        description="Calibration file; a lab model without one is calibrated on its clean split at start.",
    )
    model_name: str | None = Field(default=None, description="Model id served by /v1/models (default: folder name).")
    host: str = Field(default="127.0.0.1", description="Address the server listens on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port the server listens on (0: any free port).")
    state_dir: Path | None = Field(
        default=None,
        description="Service state (flagged-prompt log, calibrations); default CACHE/serve.",
    )
    upstream_url: str | None = Field(
        default=None,
        description="OpenAI-compatible base URL (e.g. http://llm:8000/v1) that allowed requests go to; "
        "unset: the loaded model generates.",
    )
    upstream_api_key: SecretStr | None = Field(
        default=None, description="Bearer key for the upstream; unset: the client's Authorization is passed on."
    )
    upstream_timeout_s: float = Field(default=120.0, gt=0, description="Upstream request timeout.")
    route_url: str | None = Field(
        default=None, description="OpenAI-compatible base URL of a safer model that routed requests go to."
    )
    route_api_key: SecretStr | None = Field(
        default=None, description="Bearer key for the route target; unset: the client's Authorization is passed on."
    )
    reject_fpr: float | None = Field(
        default=None, gt=0, lt=0.5,
        description="Clean false-positive rate the reject threshold is set at (default: the calibration's).",
    )
    route_fpr: float | None = Field(
        default=None, gt=0, lt=0.5,
        description="Clean false-positive rate the route threshold is set at (unset: no route band).",
    )
    mode: Literal["enforce", "monitor"] = Field(
        default="enforce", description="enforce acts on decisions; monitor only records them."
    )
    fail_mode: Literal["closed", "open"] = Field(
        default="closed", description="When scoring fails: closed answers 503, open lets the request through."
    )
    score_timeout_s: float | None = Field(
        default=None, gt=0,
        description="Longest wait for a score, queueing included; past it scoring has failed (see fail_mode). "
        "Unset: no limit.",
    )
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token for /admin/v1; unset: the admin API refuses every call."
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for repair jobs and the active weights version; unset: an in-process queue and a file.",
    )
    weights_dir: Path | None = Field(
        default=None, description="The weights store shared by workers and replicas; default STATE_DIR/weights."
    )
    weights_poll_s: float = Field(default=10.0, gt=0, description="How often replicas re-check the active version.")
    worker_metrics_port: int = Field(
        default=9101, ge=0, le=65535, description="Port of `headguard worker`'s /metrics (on HOST; 0: none)."
    )
    job_timeout_s: int = Field(default=3600, ge=60, description="A repair job running longer is stopped.")
    max_batch_size: int = Field(default=16, ge=1, le=256, description="Most inputs scored in one forward pass.")
    batch_wait_ms: float = Field(default=5.0, ge=0, description="How long a batch waits for more requests.")
    max_inputs: int = Field(default=64, ge=1, description="Most inputs in one scan request.")
    max_input_chars: int = Field(default=32_000, ge=1, description="Longest input text accepted.")
    max_new_tokens: int = Field(default=128, ge=1, description="Cap on tokens the local model generates.")
    flagged_log_size: int = Field(default=10_000, ge=1, description="Flagged prompts kept in the log.")
    flagged_redact: Literal["none", "pii"] = Field(
        default="none", description="pii masks e-mail addresses, URLs and long digit runs in the flagged log."
    )

    def resolved_state_dir(self) -> Path:
        return self.state_dir or self.cache / "serve"

    def resolved_weights_dir(self) -> Path:
        return self.weights_dir or self.resolved_state_dir() / "weights"

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
