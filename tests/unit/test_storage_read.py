"""storage.read_state_dict / read_safetensors: the one safe reader of weight files (safetensors or torch pickle)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from dreamedit3d_core import storage
from dreamedit3d_core.errors import CheckpointError, TokenError


def test_every_format_reads_the_same_tensors_in_file_order(tmp_path):
    state = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.tensor([1.5, -2.0])}
    save_file(state, str(tmp_path / "w.safetensors"), metadata={"format": "pt", "who": "me"})
    torch.save(state, tmp_path / "w.bin")
    torch.save({"state_dict": state}, tmp_path / "w.ckpt")  # Lightning's wrapper
    torch.save({"model": state}, tmp_path / "sam.pth")  # SAM's wrapper, named by the caller
    (tmp_path / "no_suffix").write_bytes((tmp_path / "w.safetensors").read_bytes())  # told apart by its header
    for name, kwargs in [("w.safetensors", {}), ("w.bin", {}), ("w.ckpt", {}), ("sam.pth", {"wrappers": ("model",)}),
                         ("no_suffix", {})]:
        got = storage.read_state_dict(tmp_path / name, **kwargs)
        assert sorted(got) == sorted(state), name
        for k in state:
            assert torch.equal(got[k], state[k]) and got[k].device.type == "cpu", (name, k)
    tensors, meta = storage.read_safetensors(tmp_path / "w.safetensors")
    assert meta == {"format": "pt", "who": "me"} and torch.equal(tensors["b.weight"], state["b.weight"])


def test_bad_files_give_one_line_errors_of_the_callers_class(tmp_path):
    state = {"w": torch.randn(64, 64)}
    save_file(state, str(tmp_path / "good.safetensors"))
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"m": torch.nn.Linear(2, 2)}, tmp_path / "evil.pt")
    torch.save({"w": torch.zeros(1), "note": "hi"}, tmp_path / "mixed.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    cases = [("nope.pt", "does not exist; expected a thing"), ("cut.safetensors", "corrupt or truncated"),
             ("empty.pt", r"is empty \(0 bytes\)"), ("evil.pt", r"Python objects \(torch\.nn\.modules\.linear\.Linear\)"),
             ("mixed.pt", r"not a flat state dict \(non-tensor entries note\)"), ("list.pt", "holds list, not a state dict")]
    for name, match in cases:
        with pytest.raises(CheckpointError, match=match) as exc:
            storage.read_state_dict(tmp_path / name, "a thing")
        assert "\n" not in str(exc.value) and name in str(exc.value)
    with pytest.raises(TokenError, match="not a readable safetensors file"):
        storage.read_safetensors(tmp_path / "cut.safetensors", "a token file", error=TokenError)


def test_write_state_dict_writes_what_torch_and_safetensors_read_back_and_never_overwrites(tmp_path):
    from safetensors.torch import load_file

    from dreamedit3d_core.errors import ConfigError

    state = {"z.weight": torch.arange(4.0).reshape(2, 2), "a.bias": torch.tensor([0.25])}
    pt = storage.write_state_dict(state, tmp_path / "w.pt")
    st = storage.write_state_dict(state, tmp_path / "w.safetensors")
    forced = storage.write_state_dict(state, tmp_path / "w.ckpt", fmt="safetensors")  # fmt wins over the suffix
    from_pickle = torch.load(pt, weights_only=True)
    assert list(from_pickle) == ["z.weight", "a.bias"]  # the caller's order, as a released .pt has it
    for got in (from_pickle, load_file(str(st)), load_file(str(forced))):
        assert sorted(got) == sorted(state) and all(torch.equal(got[k], state[k]) for k in state)
    with pytest.raises(ConfigError):
        storage.write_state_dict(state, tmp_path / "w.pt")  # there already
    storage.write_state_dict({"only": torch.ones(1)}, tmp_path / "w.pt", overwrite=True)
    assert list(torch.load(pt, weights_only=True)) == ["only"]
    with pytest.raises(ConfigError, match="unknown checkpoint format"):
        storage.write_state_dict(state, tmp_path / "x.pt", fmt="npz")
