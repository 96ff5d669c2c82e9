"""The weights store: patch folders under one directory (shared by workers and replicas) and the
active-version pointer, kept in Redis (announced on a pub/sub channel) and in a file beside the
patches: on one machine the file alone; with Redis the file is the copy that outlives Redis's data.

"base" is the unpatched model; every other version is a patch folder named by its version id.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path

from headguard.errors import InputError
from headguard.fsutil import atomic_file
from headguard.repair.patch import MANIFEST, Patch

BASE = "base"
ACTIVE_KEY = "headguard:weights:active"
CHANNEL = "headguard:weights"
_VERSION = re.compile(r"^v\d{8}T\d{6}-[0-9a-f]{4}$")


def new_version_id() -> str:
    """Sortable by creation time, unique across workers: v20261126T172301-ab12."""
    return time.strftime("v%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


class WeightsStore:
    def __init__(self, root: Path, redis=None):
        self.root = Path(root)
        self.redis = redis  # a redis.Redis client, or None for the file pointer
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, version: str) -> Path:
        if not _VERSION.match(version):
            raise InputError(f"{version!r} is not a weights version (like v20261126T172301-ab12, or 'base')")
        return self.root / version

    def exists(self, version: str) -> bool:
        return version == BASE or (self.path(version) / MANIFEST).exists()

    def load(self, version: str) -> Patch:
        if not self.exists(version):
            raise InputError(f"weights version {version} does not exist")
        return Patch.load(self.path(version))

    def versions(self) -> list[dict]:
        """Every stored version, newest first, with what its manifest says."""
        out = []
        for folder in sorted(self.root.iterdir(), reverse=True):
            if not _VERSION.match(folder.name) or not (folder / MANIFEST).exists():
                continue
            try:
                m = json.loads((folder / MANIFEST).read_text())
            except (OSError, json.JSONDecodeError):
                continue
            out.append({"version": folder.name, "created": m.get("created"), "base_hash": m.get("base_hash"),
                        "heads": m.get("heads"), "mode": m.get("mode"),
                        "flagged_match_neutral": m.get("flagged_match_neutral"),
                        "clean_agreement": m.get("clean_agreement")})
        return out

    # --- the active pointer --------------------------------------------------------------------
    def active(self) -> str:
        if self.redis is not None and (value := self.redis.get(ACTIVE_KEY)):
            return value.decode()
        # No Redis, or a Redis that lost its data: the file, so replicas do not fall back to the
        # unrepaired weights unasked.
        pointer = self.root / "ACTIVE"
        return pointer.read_text().strip() if pointer.exists() else BASE

    def activate(self, version: str) -> None:
        """Points every replica at `version` (which must exist); rollback is activating an older one."""
        if not self.exists(version):
            raise InputError(f"weights version {version} does not exist")
        if version != BASE:
            Patch.load(self.path(version))  # verified (checksum) before anyone is told to load it
        if self.redis is not None:
            self.redis.set(ACTIVE_KEY, version)  # first: with Redis down nothing changes, the file included
        with atomic_file(self.root / "ACTIVE") as tmp:
            tmp.write_text(version + "\n")
        if self.redis is not None:
            self.redis.publish(CHANNEL, version)
