"""Writing a file or folder atomically: it appears whole under its name, or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from headguard.errors import InputError


@contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yields a temporary folder beside `out`; when the block succeeds it replaces `out`, on any
    failure (an error, Ctrl-C) it is removed and `out` is left as it was."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.chmod(0o755)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(out: Path) -> Iterator[Path]:
    """Yields a path of its own beside `out` to write; when the block succeeds the file replaces
    `out` in one rename, on any failure it is removed. Two writers never share the temporary name."""
    out = Path(out)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.partial-", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp's 0600 would hide the file from a reader running as another user
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
