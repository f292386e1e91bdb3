"""Loading the released layout as users have it (.pt and .safetensors) and saving it back, bit for bit."""

from __future__ import annotations

import pytest
import torch

from dreamedit3d_core.mvdream.checkpoint import load_mvdream, read_state_dict, save_mvdream
from dreamedit3d_core.storage import write_state_dict
from dreamedit3d_core.testing.tiny import tiny_state_dict, write_tiny_checkpoint

U = "model.diffusion_model."
V = "first_stage_model."
T = "cond_stage_model.model."


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    return {"pt": write_tiny_checkpoint(folder / "sd-v2.1-base-4view.pt", seed=3),
            "safetensors": write_tiny_checkpoint(folder / "sd-v2.1-base-4view.safetensors", seed=3)}


@pytest.fixture(scope="module")
def loaded(files):
    """The .pt file loaded once (read-only for the tests that take it)."""
    return load_mvdream(files["pt"])


def _text(model, path: str):
    """A submodule of the text encoder by its path under ``text_model`` (some transformers versions drop it)."""
    modules = dict(model.text_encoder.named_modules())
    return modules.get("text_model." + path, modules.get(path))


def _all_params(model):
    out = {}
    for name, module in model.modules().items():
        out.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    return out


def test_pt_is_a_flat_torch_pickle_that_loads_with_weights_only(files):
    state = torch.load(files["pt"], weights_only=True)
    assert type(state).__name__ == "OrderedDict" and "state_dict" not in state
    assert list(state) == list(tiny_state_dict(3))


def test_pt_and_safetensors_load_to_bit_identical_parameters(files, loaded):
    a = _all_params(loaded)
    b = _all_params(load_mvdream(files["safetensors"]))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_parameters_equal_the_file_tensors_under_the_documented_mapping(loaded):
    """Spot checks written by hand from mvdream.md §1, independent of the derived key map."""
    state = tiny_state_dict(3)
    model = loaded
    unet, vae, text = model.unet, model.vae, model.text_encoder  # noqa: F841
    checks = [
        (unet.class_embedding.linear_1.weight, state[U + "camera_embed.0.weight"]),
        (unet.class_embedding.linear_2.bias, state[U + "camera_embed.2.bias"]),
        (unet.time_embedding.linear_1.weight, state[U + "time_embed.0.weight"]),
        (unet.conv_in.weight, state[U + "input_blocks.0.0.weight"]),
        (unet.down_blocks[1].resnets[0].conv_shortcut.weight, state[U + "input_blocks.4.0.skip_connection.weight"]),
        (unet.down_blocks[1].attentions[1].transformer_blocks[0].attn2.to_k.weight,
         state[U + "input_blocks.5.1.transformer_blocks.0.attn2.to_k.weight"]),
        (unet.down_blocks[0].downsamplers[0].conv.weight, state[U + "input_blocks.3.0.op.weight"]),
        (unet.up_blocks[1].upsamplers[0].conv.bias, state[U + "output_blocks.5.2.conv.bias"]),
        (unet.mid_block.attentions[0].proj_out.weight, state[U + "middle_block.1.proj_out.weight"]),
        (unet.conv_norm_out.weight, state[U + "out.0.weight"]),
        (vae.encoder.mid_block.attentions[0].to_q.weight, state[V + "encoder.mid.attn_1.q.weight"][:, :, 0, 0]),
        (vae.decoder.up_blocks[0].resnets[1].conv1.weight, state[V + "decoder.up.3.block.1.conv1.weight"]),
        (vae.quant_conv.weight, state[V + "quant_conv.weight"]),
        (text.get_input_embeddings().weight, state[T + "token_embedding.weight"]),
        (_text(model, "encoder.layers.1.self_attn.k_proj").weight,
         state[T + "transformer.resblocks.1.attn.in_proj_weight"][128:256]),
        (_text(model, "encoder.layers.0.mlp.fc2").bias, state[T + "transformer.resblocks.0.mlp.c_proj.bias"]),
        (_text(model, "final_layer_norm").weight, state[T + "ln_final.weight"]),
        (_text(model, "embeddings.position_embedding").weight, state[T + "positional_embedding"]),
    ]
    for param, expected in checks:
        assert torch.equal(param, expected)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_then_load_is_bit_identical(files, loaded, tmp_path, suffix):
    model = loaded
    out = save_mvdream(model, tmp_path / f"saved{suffix}")
    original, saved = read_state_dict(files["pt"]), read_state_dict(out)
    assert set(saved) == set(original)
    assert all(torch.equal(saved[k], original[k]) and saved[k].dtype == original[k].dtype for k in original)
    again = _all_params(load_mvdream(out))
    first = _all_params(model)
    assert all(torch.equal(again[k], first[k]) for k in first)


def test_save_keeps_fine_tuned_weights_and_drops_added_token_rows(files, tmp_path):
    model = load_mvdream(files["safetensors"])
    with torch.no_grad():
        model.unet.class_embedding.linear_1.weight.add_(1.0)
        _text(model, "encoder.layers.0.self_attn.v_proj").bias.fill_(0.5)
        model.vae.encoder.mid_block.attentions[0].to_k.weight.mul_(2.0)
    model.add_tokens(["<hat>"], torch.ones(1, 128))
    out = save_mvdream(model, tmp_path / "tuned.safetensors")
    saved = read_state_dict(out)
    original = tiny_state_dict(3)
    assert torch.equal(saved[U + "camera_embed.0.weight"], original[U + "camera_embed.0.weight"] + 1.0)
    assert torch.all(saved[T + "transformer.resblocks.0.attn.in_proj_bias"][256:] == 0.5)
    assert torch.equal(saved[T + "transformer.resblocks.0.attn.in_proj_bias"][:256],
                       original[T + "transformer.resblocks.0.attn.in_proj_bias"][:256])
    assert torch.equal(saved[V + "encoder.mid.attn_1.k.weight"], original[V + "encoder.mid.attn_1.k.weight"] * 2.0)
    assert saved[T + "token_embedding.weight"].shape == (49408, 128)
    reloaded = load_mvdream(out)
    assert torch.equal(reloaded.unet.class_embedding.linear_1.weight, model.unet.class_embedding.linear_1.weight)


def test_save_never_overwrites_unless_asked(loaded, tmp_path):
    from dreamedit3d_core.errors import ConfigError

    model = loaded
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"user data")
    with pytest.raises(ConfigError, match="already exists"):
        save_mvdream(model, target)
    assert target.read_bytes() == b"user data"
    save_mvdream(model, target, overwrite=True)
    assert load_mvdream(target).model_hash == model.model_hash
    with pytest.raises(ConfigError, match="use a .safetensors or .pt file name"):
        save_mvdream(model, tmp_path / "model.bin")


def test_load_to_half_precision_and_lightning_wrapper(loaded, tmp_path):
    wrapped = tmp_path / "wrapped.ckpt"
    torch.save({"state_dict": tiny_state_dict(3), "epoch": 7}, wrapped)
    model = load_mvdream(wrapped, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.text_encoder.dtype == torch.bfloat16
    assert model.alphas_cumprod.dtype == torch.float64
    assert torch.equal(model.unet.conv_in.weight, loaded.unet.conv_in.weight.to(torch.bfloat16))


def test_mvdream_sd15_layout_loads(tmp_path):
    """sd-v1.5-4view: CLIP-L text tower in HF layout, 8-head UNet with conv proj_in, EOT padding."""
    path = write_state_dict(tiny_state_dict(0, "mvdream-sd15"), tmp_path / "sd-v1.5-4view.pt")
    model = load_mvdream(path)
    assert model.kind == "mvdream-sd15"
    assert model.unet.config.use_linear_projection is False
    assert model.text_encoder.config.num_hidden_layers == 2 and model.text_encoder.config.hidden_act == "quick_gelu"
    assert model.tokenizer.encode([""])[0, :3].tolist() == [49406, 49407, 49407]
    out = save_mvdream(model, tmp_path / "back.safetensors")
    original, saved = read_state_dict(path), read_state_dict(out)
    assert set(saved) == set(original) and all(torch.equal(saved[k], original[k]) for k in original)


def test_save_refuses_a_unet_wrapped_by_an_adapter(files, tmp_path):
    from peft import LoraConfig

    from dreamedit3d_core.errors import ConfigError

    model = load_mvdream(files["safetensors"])
    model.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"]))
    with pytest.raises(ConfigError, match="wrapped by an adapter such as LoRA"):
        save_mvdream(model, tmp_path / "lora.safetensors")
    assert not (tmp_path / "lora.safetensors").exists()
