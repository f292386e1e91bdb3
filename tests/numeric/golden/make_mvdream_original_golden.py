"""Regenerate ``mvdream_original_tiny.safetensors``: bytedance/MVDream's own modules run on the tiny checkpoint.

The golden file freezes what the original code computes for ``tiny_state_dict(seed=0)`` (the released layout loaded
with MVDream's strict ``load_state_dict``) on seeded inputs, so ``test_mvdream_original_golden.py`` can compare the
pack with the original without needing the original code at test time.

Usage (needs a checkout of https://github.com/bytedance/MVDream and einops; omegaconf is stubbed if absent)::

    python tests/numeric/golden/make_mvdream_original_golden.py /path/to/MVDream

Made with bytedance/MVDream @618f844 (``openaimodel.MultiViewUNetModel``, ``models.autoencoder.AutoencoderKL``,
``camera_utils.get_camera``), torch 2.14 CPU, fp32.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
OUT = HERE / "mvdream_original_tiny.safetensors"


def _import_original(checkout: Path):
    sys.path.insert(0, str(checkout))
    package = types.ModuleType("mvdream")  # skip mvdream/__init__ (model_zoo needs the hub client)
    package.__path__ = [str(checkout / "mvdream")]
    sys.modules["mvdream"] = package
    try:
        import omegaconf.listconfig  # noqa: F401
    except ImportError:
        listconfig = types.ModuleType("omegaconf.listconfig")
        listconfig.ListConfig = type("ListConfig", (list,), {})
        sys.modules["omegaconf"] = types.ModuleType("omegaconf")
        sys.modules["omegaconf.listconfig"] = listconfig
    from mvdream.camera_utils import get_camera
    from mvdream.ldm.models.autoencoder import AutoencoderKL
    from mvdream.ldm.modules.diffusionmodules.openaimodel import MultiViewUNetModel

    return MultiViewUNetModel, AutoencoderKL, get_camera


def main(checkout: str) -> None:
    sys.path.insert(0, str(REPO))
    from dreamedit3d_core.testing.tiny import TINY_UNET, TINY_VAE, tiny_state_dict

    MultiViewUNetModel, AutoencoderKL, get_camera = _import_original(Path(checkout))
    state = tiny_state_dict(0)
    u, v = TINY_UNET, TINY_VAE
    unet = MultiViewUNetModel(
        image_size=32, in_channels=4, out_channels=4, model_channels=u.model_channels,
        attention_resolutions=[2 ** i for i, a in enumerate(u.attention_levels) if a],
        num_res_blocks=u.num_res_blocks, channel_mult=list(u.channel_mult), num_head_channels=64,
        use_spatial_transformer=True, use_linear_in_transformer=True, transformer_depth=u.transformer_depth,
        context_dim=u.context_dim, legacy=False, camera_dim=u.camera_dim,
    )
    prefix = "model.diffusion_model."
    unet.load_state_dict({k[len(prefix):]: t for k, t in state.items() if k.startswith(prefix)}, strict=True)
    vae = AutoencoderKL(
        ddconfig=dict(double_z=True, z_channels=v.z_channels, resolution=256, in_channels=3, out_ch=3, ch=v.ch,
                      ch_mult=list(v.ch_mult), num_res_blocks=v.num_res_blocks, attn_resolutions=[], dropout=0.0),
        lossconfig={"target": "torch.nn.Identity"}, embed_dim=v.z_channels,
    )
    prefix = "first_stage_model."
    vae.load_state_dict({k[len(prefix):]: t for k, t in state.items() if k.startswith(prefix)}, strict=True)
    unet.eval(), vae.eval()

    g = torch.Generator("cpu").manual_seed(2024)
    views, objects = 4, 2
    n = views * objects
    cameras = torch.as_tensor(get_camera(views, elevation=15, azimuth_start=90), dtype=torch.float32)
    tensors = {
        "latents": torch.randn(n, 4, 16, 24, generator=g),
        "timesteps": torch.tensor([981] * views + [261] * views),
        "context_per_object": torch.randn(objects, 77, u.context_dim, generator=g),  # one prompt per object
        "cameras": cameras.repeat(objects, 1),
        "images": torch.rand(2, 3, 32, 48, generator=g),
    }
    context = tensors["context_per_object"].repeat_interleave(views, dim=0)  # view-contiguous, as in MVDream
    with torch.no_grad():
        tensors["eps_4_views"] = unet(tensors["latents"], tensors["timesteps"], context=context,
                                      camera=tensors["cameras"], num_frames=views)
        tensors["eps_1_view"] = unet(tensors["latents"], tensors["timesteps"], context=context,
                                     camera=tensors["cameras"], num_frames=1)
        tensors["vae_latents"] = vae.encode(tensors["images"] * 2 - 1).mode() * 0.18215
        tensors["vae_images"] = ((vae.decode(tensors["vae_latents"] / 0.18215) + 1) / 2).clamp(0, 1)
    from safetensors.torch import save_file

    save_file({k: t.contiguous() for k, t in tensors.items()}, str(OUT),
              metadata={"source": "bytedance/MVDream@618f844", "weights": "dreamedit3d_core.tiny.tiny_state_dict(0)"})
    print(f"wrote {OUT}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
