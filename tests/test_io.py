"""Atomic writes: a reader sees the old file or the new one; a failed writer leaves no trace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from unlearn.io import atomic_directory, atomic_path, write_json_atomic, write_text_atomic


class Boom(Exception):
    pass


def test_atomic_path_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(Boom), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"half")
        assert target.read_bytes() == b"old"  # nothing visible before the block ends
        raise Boom
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no partial file left
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_path_refuses_an_empty_write(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_path(target):
        pass
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_json_writer_format_and_a_failed_write(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_json_atomic(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    with pytest.raises(TypeError):
        write_json_atomic(target, {"x": object()})
    assert target.read_text().startswith('{\n  "a"')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "t.txt", "x")
    finally:
        os.umask(umask)
    assert (tmp_path / "t.txt").stat().st_mode & 0o777 == 0o644


def test_atomic_directory_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "tree"
    (target / "old").mkdir(parents=True)
    (target / "old" / "f.txt").write_text("old")
    with pytest.raises(Boom), atomic_directory(target) as staging:
        assert staging.parent == tmp_path and list(staging.iterdir()) == []
        (staging / "half.txt").write_text("half")
        raise Boom
    assert (target / "old" / "f.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]  # staging removed
    with atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
        assert (target / "old" / "f.txt").is_file()  # the old tree is there until the end
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]  # old tree removed
    with atomic_directory(tmp_path / "fresh" / "tree") as staging:
        (staging / "x").write_text("x")
    assert (tmp_path / "fresh" / "tree" / "x").read_text() == "x"
