"""One settings class for the whole project, read from `HEADGUARD_*` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
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

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
