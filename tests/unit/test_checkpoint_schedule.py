"""The schedule buffers of the checkpoint and the model's float64 copy."""

from __future__ import annotations

import numpy as np
import torch

from dreamedit3d_core.schedule import schedule_buffers


def _numpy_reference():
    """LDM register_schedule with numpy float64 (make_beta_schedule "linear"), independent of the torch code."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    var = betas * (1.0 - ac_prev) / (1.0 - ac)
    return {
        "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev, "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - ac), "log_one_minus_alphas_cumprod": np.log(1 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1 / ac), "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / ac - 1),
        "posterior_variance": var, "posterior_log_variance_clipped": np.log(np.maximum(var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1 - ac),
        "posterior_mean_coef2": (1 - ac_prev) * np.sqrt(alphas) / (1 - ac),
    }


def test_schedule_buffers_equal_float64_recomputation():
    ours = schedule_buffers()
    reference = _numpy_reference()
    assert list(ours) == list(reference)
    for key, value in reference.items():
        assert ours[key].dtype == torch.float32 and ours[key].shape == (1000,)
        assert torch.equal(ours[key], torch.from_numpy(value).to(torch.float32)), key


def test_alphas_cumprod_reference_values():
    ac = schedule_buffers()["alphas_cumprod"]
    assert abs(ac[0].item() - 0.99915) < 1e-6
    assert abs(ac[499].item() - 0.2776697) < 1e-6
    assert abs(ac[999].item() - 0.0046601) < 1e-6


def test_model_keeps_the_checkpoints_alphas_cumprod_as_float64():
    from _mvdream_helpers import shared_tiny_model

    model = shared_tiny_model()
    assert model.alphas_cumprod.dtype == torch.float64 and model.alphas_cumprod.shape == (1000,)
    assert torch.equal(model.alphas_cumprod, schedule_buffers()["alphas_cumprod"].to(torch.float64))
    assert model.latent_scale == 0.18215


def test_a_state_dict_without_schedule_buffers_gets_the_numpy_reference_schedule(tmp_path):
    from dreamedit3d_core.mvdream.checkpoint import load_mvdream
    from dreamedit3d_core.storage import write_state_dict
    from dreamedit3d_core.mvdream.layout import SCHEDULE_BUFFERS
    from dreamedit3d_core.testing.tiny import tiny_state_dict

    state = tiny_state_dict(0)
    state["alphas_cumprod"] = state["alphas_cumprod"] * 0.5  # a file's own buffer would win: prove it is not read
    bare = {k: v for k, v in state.items() if k not in SCHEDULE_BUFFERS}
    model = load_mvdream(write_state_dict(bare, tmp_path / "no_schedule.safetensors"))
    expected = torch.from_numpy(_numpy_reference()["alphas_cumprod"]).to(torch.float32).to(torch.float64)
    assert torch.equal(model.alphas_cumprod, expected)


def test_product_modules_never_import_the_test_fixtures():
    """Test helpers live in dreamedit3d_core.testing; no library module reaches into them.

    The command line is the exception: it writes the tiny checkpoint for users on purpose (``tiny-checkpoint``)."""
    import re
    from pathlib import Path

    import dreamedit3d_core

    root = Path(dreamedit3d_core.__file__).parent
    allowed = {root / "cli.py", root / "__main__.py"}  # the command line (see above)
    pattern = re.compile(r"^\s*from\s+(\.+|dreamedit3d_core\.)(testing|tiny|examples)\b|^\s*import\s+dreamedit3d_core\.("
                         r"testing|tiny|examples)\b", re.M)
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if "testing" not in p.relative_to(root).parts and p not in allowed and pattern.search(p.read_text())]
    assert offenders == []
