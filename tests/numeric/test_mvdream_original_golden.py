"""The pack against bytedance/MVDream's own code, frozen in a golden file (see golden/make_mvdream_original_golden.py).

The golden tensors were computed by MVDream's ``MultiViewUNetModel`` and LDM ``AutoencoderKL`` loaded strictly with
``tiny_state_dict(0)``; if the tiny checkpoint generator changes, regenerate them with that script.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _mvdream_helpers import shared_tiny_model

pytestmark = pytest.mark.numeric

GOLDEN = Path(__file__).resolve().parent / "golden" / "mvdream_original_tiny.safetensors"


@pytest.fixture(scope="module")
def golden():
    from safetensors.torch import load_file

    return load_file(str(GOLDEN))


def test_unet_matches_the_original_mvdream_forward(golden):
    model = shared_tiny_model(0)
    text = golden["context_per_object"].repeat_interleave(4, dim=0)
    with torch.no_grad():
        eps = model.predict_noise(golden["latents"], golden["timesteps"], text, golden["cameras"])
        eps_2d = model.predict_noise(golden["latents"], golden["timesteps"], text, golden["cameras"], num_views=1)
    assert golden["eps_4_views"].abs().mean() > 0.1
    assert (eps - golden["eps_4_views"]).abs().max().item() <= 1e-4
    assert (eps_2d - golden["eps_1_view"]).abs().max().item() <= 1e-4
    assert (golden["eps_4_views"] - golden["eps_1_view"]).abs().max().item() > 1e-3  # the check sees the joint attention


def test_cameras_match_the_original_get_camera(golden):
    from dreamedit3d_core.cameras import get_camera

    assert (get_camera(4, 15, 90).repeat(2, 1) - golden["cameras"]).abs().max().item() <= 1e-6


def test_vae_matches_the_original_autoencoder(golden):
    model = shared_tiny_model(0)
    with torch.no_grad():
        latents = model.encode_images(golden["images"])
        images = model.decode_latents(golden["vae_latents"])
    assert (latents - golden["vae_latents"]).abs().max().item() <= 1e-5
    assert (images - golden["vae_images"]).abs().max().item() <= 1e-4
