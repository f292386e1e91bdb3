"""Files users keep get the ordinary mode of a new file under their umask (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from dreamedit3d_core import storage


@pytest.fixture
def umask():
    old = os.umask(0o022)
    try:
        yield lambda mask: os.umask(mask)
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask_like_a_plain_open(tmp_path, umask, mask, expected):
    umask(mask)
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")  # what any program writing a new file gets: the reference
    written = storage.save_bytes(tmp_path / "kept.bin", b"data")
    tensors = storage.save_safetensors(tmp_path / "kept.safetensors", {"a": torch.zeros(2)})
    for path in (written, tensors):
        assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.bin", "kept.safetensors", "plain.bin"]  # no temp left


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    def boom(tmp):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        storage.atomic_write(tmp_path / "x.bin", boom)
    assert list(tmp_path.iterdir()) == []


def test_save_new_bytes_never_overwrites_and_moves_on_when_a_name_is_taken_meanwhile(tmp_path, monkeypatch):
    first = storage.save_new_bytes(tmp_path / "v.png", b"1")
    second = storage.save_new_bytes(tmp_path / "v.png", b"2")
    assert (first.name, second.name) == ("v.png", "v_00001.png") and first.read_bytes() == b"1"
    real_unique = storage.unique_path
    calls = []

    def racing_unique(path):
        target = real_unique(path)
        if not calls:  # another writer takes the free name right after we picked it
            target.write_bytes(b"theirs")
        calls.append(target.name)
        return target

    monkeypatch.setattr(storage, "unique_path", racing_unique)
    third = storage.save_new_bytes(tmp_path / "v.png", b"3")
    assert calls == ["v_00002.png", "v_00003.png"] and third.name == "v_00003.png" and third.read_bytes() == b"3"
    assert (tmp_path / "v_00002.png").read_bytes() == b"theirs"
