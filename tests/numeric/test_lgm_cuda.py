"""LGM on CUDA: the loaded file in fp32 / fp16 / bf16 against the CPU fp32 forward, and the density grid on the GPU."""

from __future__ import annotations

import pytest
import torch

from _lgm_helpers import sphere_shell
from dreamedit3d_core.lifting.hull import VoxelGrid
from dreamedit3d_core.lifting.lgm import density_grid, load_lgm, save_lgm
from dreamedit3d_core.testing.lgm import tiny_lgm

pytestmark = [pytest.mark.numeric, pytest.mark.gpu]

#: Relative (to the largest magnitude) tolerance of each dtype against the CPU fp32 forward.
TOLERANCE = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 6e-2}


@pytest.fixture(scope="module")
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device("cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_loaded_file_on_cuda_matches_the_cpu_forward(cuda, tmp_path, dtype):
    net = tiny_lgm(1)
    path = save_lgm(net, tmp_path / "tiny.safetensors")
    x = torch.randn(2, 4, 9, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = net(x).packed()
        gpu = load_lgm(path, device=cuda, dtype=dtype)
        assert next(gpu.parameters()).dtype == dtype and next(gpu.parameters()).device.type == "cuda"
        got = gpu(x.to(cuda, dtype)).packed().float().cpu()
    assert torch.isfinite(got).all()
    assert (got - ref).abs().max() <= TOLERANCE[dtype] * ref.abs().max()
    assert load_lgm(path, device=cuda).parameters().__next__().dtype == torch.float16  # auto: fp16 on CUDA


def test_density_grid_on_cuda_matches_cpu(cuda):
    g = sphere_shell(0.3)
    grid = VoxelGrid((-0.35, -0.35, -0.35), 0.01, (71, 70, 72))
    cpu, cpu_thick, _ = density_grid(g, grid)
    gpu, gpu_thick, _ = density_grid(g.to(cuda), grid)
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).abs().max() <= 1e-4 * cpu.max()
    seen = cpu > 1e-3
    assert torch.allclose(gpu_thick.cpu()[seen], cpu_thick[seen], rtol=1e-4)


def test_offload_leaves_no_tensor_of_the_reconstructor_on_the_gpu(cuda, tmp_path):
    # the LiftToMesh node offloads after each run (nodes/lifting.lgm_for_this_run): the Gaussians of the last call
    # stayed on the GPU before offload() moved them too (caught by tests/fakecuda core_lgm_lift_*)
    from dreamedit3d_core.cameras import MVCameras
    from dreamedit3d_core.lifting.lgm import LGMReconstructor

    path = save_lgm(tiny_lgm(1), tmp_path / "tiny.safetensors", dtype=torch.float16)
    rec = LGMReconstructor(path)
    cams = MVCameras.mvdream_default()
    rgb = torch.full((4, 3, 64, 64), 1.0)
    rgb[:, :, 16:48, 16:48] = 0.3
    g = rec.gaussians(rgb, cams, device=cuda)
    rec.last_gaussians = g
    assert g.means.device.type == "cuda" and next(rec.network(cuda).parameters()).dtype == torch.float16
    rec.offload()
    assert [k for k, t in rec.held_tensors() if t.device.type != "cpu"] == []
    assert next(rec.network(cuda).parameters()).device.type == "cuda"  # loaded back on the next call
