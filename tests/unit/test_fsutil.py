"""Atomic writes: the target is whole or untouched, and no temporary file is left behind."""

from __future__ import annotations

import pytest

from headguard.fsutil import atomic_file, atomic_folder


def test_atomic_file_replaces_the_target_only_when_the_write_succeeds(tmp_path):
    out = tmp_path / "cal.safetensors"
    out.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    with atomic_file(out) as tmp:
        tmp.write_text("new")
    assert out.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    assert out.stat().st_mode & 0o777 == 0o644


def test_two_writers_of_one_file_never_share_a_temporary_name(tmp_path):
    out = tmp_path / "ACTIVE"
    with atomic_file(out) as first, atomic_file(out) as second:
        assert first != second
        first.write_text("v1\n")
        second.write_text("v2\n")
    assert out.read_text() in {"v1\n", "v2\n"} and [p.name for p in tmp_path.iterdir()] == ["ACTIVE"]


def test_atomic_folder_leaves_the_old_folder_on_failure(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "w").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_folder(out) as tmp:
        (tmp / "w").write_text("new")
        raise KeyboardInterrupt
    assert (out / "w").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["model"]
