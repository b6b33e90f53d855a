"""Atomic writes (resnet_jax.core.files): a reader sees the old file or the new one, never a mix or a leftover."""

import pytest

from resnet_jax.core import files


def test_a_write_replaces_the_file_whole_and_leaves_nothing_beside_it(tmp_path):
    path = tmp_path / "record.json"
    path.write_text("old")
    files.write_atomically(path, "new")
    assert path.read_text() == "new"
    files.write_atomically(path, b"bytes")
    assert path.read_bytes() == b"bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_a_block_that_raises_leaves_the_old_file_and_no_partial(tmp_path):
    path = tmp_path / "runs.tar.gz"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt), files.replacing(path) as partial:
        partial.write_text("half")
        assert path.read_text() == "old"  # nothing reaches the path before the block ends
        raise KeyboardInterrupt
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.tar.gz"]
    with files.replacing(path) as partial:
        partial.write_text("whole")
    assert path.read_text() == "whole"


def test_a_rename_that_fails_leaves_no_partial(tmp_path):
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "inside").write_text("x")  # a non-empty folder cannot be replaced by a file
    with pytest.raises(OSError), files.replacing(folder) as partial:
        partial.write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
