"""Scenarios that run the pack on the simulated CUDA device (tests/fakecuda/simcuda.py), one process for all.

Started by tests/fakecuda/test_fakecuda.py as ``python tests/fakecuda/scenarios.py --out RESULTS.json [CASE ...]``
in a subprocess whose environment preloads the CUDA runtime stub (``simcuda.simulated_cuda_env()``). Each case runs
inside ``simulated_cuda()`` and its own checks; the result file holds, per case, ``ok``, the error (with the source
line the layer names), the number of aten ops that ran on the simulated device and the ops recomputed in float32 on
the CPU (CPU-only half-precision gaps; ``float16_upcasts``: float16 convolutions computed in float32, the CPU's float16
kernel being slow). Cases:

- ``selfcheck_*``: bugs injected on purpose must be caught with their line; legal patterns must pass.
- ``core_*``: every core stage with tensors on ``cuda`` in float16 and bfloat16 (tiny seeded model); the LGM
  reconstructor (``core_lgm_lift_*``: a tiny file in the released layout loaded in float16, bfloat16 and float32).
- ``nodes_*``: the full-edit and batch workflows (tests/workflows, adapted by prepare_host) run node by node as
  ComfyUI runs them (inference mode, outputs cached), with ComfyUI's model management seeing the simulated GPU;
  ``nodes_lift_lgm_*``: OrthoRender -> LiftToMesh with an LGM file from models/lgm.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for _p in (str(REPO), str(REPO / "tests"), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402

import simcuda  # noqa: E402
from simcuda import SimCudaTensor, SimulatedCudaError, simulated_cuda  # noqa: E402

CUDA = torch.device("cuda", 0)
CASES: dict = {}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def case(name: str):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


def expect_on_cuda(what: str, t) -> None:
    if not isinstance(t, torch.Tensor) or t.device.type != "cuda":
        raise AssertionError(f"{what} is on {getattr(t, 'device', type(t).__name__)}, expected the simulated cuda:0")


def expect_caught(what: str, fn, line_fragment: str) -> str:
    """``fn`` must raise SimulatedCudaError naming a line containing ``line_fragment``; returns the message."""
    try:
        fn()
    except SimulatedCudaError as err:
        if line_fragment not in str(err) or "scenarios.py:" not in str(err):
            raise AssertionError(f"{what}: caught, but the message does not name the line: {err}") from None
        return str(err)
    raise AssertionError(f"{what}: the injected bug was NOT caught")


# ------------------------------------------------------------------------------------------------ self-check
@case("selfcheck_injected_bugs_are_caught")
def selfcheck_injected(sim):
    x = torch.randn(2, 8, device="cuda")
    w = torch.randn(8, 8, device="cuda")
    cpu_mask = torch.ones(2, 8)
    x16_img = torch.randn(1, 3, 8, 8, device="cuda", dtype=torch.float16)
    msgs = [
        expect_caught("CPU mask times CUDA noise", lambda: x * cpu_mask, "x * cpu_mask"),
        expect_caught("fp16 @ fp32 matmul", lambda: x.half() @ w, "x.half() @ w"),
        expect_caught(".numpy() of a CUDA tensor", lambda: x.numpy(), "x.numpy()"),
        expect_caught("CPU generator for CUDA noise",
                      lambda: torch.randn(2, 8, device="cuda", generator=torch.Generator().manual_seed(0)), "generator="),
        expect_caught("CPU tensor as a CUDA conv weight",
                      lambda: torch.nn.functional.conv2d(torch.randn(1, 3, 8, 8, device="cuda"), torch.randn(4, 3, 3, 3)),
                      "conv2d"),
        # float16 convolutions are computed in float32 on the CPU (simcuda.CPU_SLOW_FLOAT16_OPS): a float32 weight
        # under a float16 input must still fail as on the GPU
        expect_caught("fp16 conv with an fp32 weight",
                      lambda: torch.nn.functional.conv2d(x16_img, torch.randn(4, 3, 3, 3, device="cuda")), "x16_img"),
    ]
    return {"messages": msgs}


@case("selfcheck_legal_patterns_pass")
def selfcheck_legal(sim):
    x = torch.randn(4, 8, device="cuda")
    checks = {
        "cpu_index": x[torch.tensor([2, 0])],
        "cpu_bool_index": x[torch.tensor([True, False, True, False])],
        "cpu_0dim_scalar": x * torch.tensor(0.5),
        "cuda_generator": torch.randn(3, device="cuda", generator=torch.Generator("cuda").manual_seed(1)),
        "nonzero": (x > 0).nonzero(),
    }
    for k, v in checks.items():
        expect_on_cuda(k, v)
    scalar = float(x.sum())
    host = x.cpu().numpy()
    if host.shape != (4, 8) or not isinstance(scalar, float) or x.cpu().device.type != "cpu":
        raise AssertionError("float()/cpu().numpy() of a CUDA tensor gave the wrong thing")
    # a training step the way the pack trains: autocast, grad scaler, fused AdamW, backward through the engine
    lin = torch.nn.Linear(8, 8).to("cuda")
    expect_on_cuda("Module.to('cuda') parameter", lin.weight)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cuda")
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype):
            y = lin(x)
        if y.dtype != dtype:
            raise AssertionError(f"autocast on the simulated device gave {y.dtype}, expected {dtype}")
        scaler.scale(y.float().pow(2).mean()).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    expect_on_cuda("trained weight", lin.weight)
    return {"checked": sorted(checks)}


# ------------------------------------------------------------------------------------------------ core stages
def _tiny_on_cuda(dtype: torch.dtype):
    from dreamedit3d_core.testing.tiny import load_tiny_mvdream

    model = load_tiny_mvdream(seed=0, device=CUDA, dtype=dtype)
    expect_on_cuda("loaded UNet weight", next(model.unet.parameters()))
    if next(model.unet.parameters()).dtype != dtype:
        raise AssertionError(f"loaded weights are {next(model.unet.parameters()).dtype}, expected {dtype}")
    return model


def _scene(size: int = 64):
    from _personalize_helpers import two_component_scene

    render, masks = two_component_scene(size=size)
    return render, masks


def _core_load_compose_sample_vae(sim, dtype):
    from dreamedit3d_core.prompts import compose_prompt
    from dreamedit3d_core.sampling import METHODS, sample_views

    model = _tiny_on_cuda(dtype)
    render, _ = _scene()
    cond = compose_prompt(model, "a robot made of gold", cameras=render.cameras)
    expect_on_cuda("conditioning", cond.cond)
    out = {}
    for method in METHODS:
        views = sample_views(model, cond, method=method, steps=2, cfg=7.5, seed=3, resolution=64)
        expect_on_cuda(f"{method} latents", views.latents)
        expect_on_cuda(f"{method} images", views.images)
        out[method] = list(views.images.shape)
    enc = model.encode_images(views.images)
    expect_on_cuda("VAE latents", enc)
    dec = model.decode_latents(enc)
    expect_on_cuda("VAE decode", dec)
    return out


def _core_phase1(sim, dtype, mixed_precision="no"):
    from dreamedit3d_core.personalize.textual_inversion import TIConfig, train_textual_inversion

    model = _tiny_on_cuda(dtype)
    render, masks = _scene()
    tokens = train_textual_inversion(model, render.to(CUDA) if hasattr(render, "to") else render, masks,
                                     TIConfig(steps=2, resolution=64, checkpoint_every=1000, mixed_precision=mixed_precision))
    return {"tokens": list(tokens.tokens)}


def _core_phase2(sim, dtype, mode, mixed_precision, checkpointing=False):
    from dreamedit3d_core.personalize.finetune import FTConfig, finetune
    from dreamedit3d_core.personalize.textual_inversion import TIConfig, train_textual_inversion

    model = _tiny_on_cuda(dtype)
    if mode == "full":
        model.to(dtype=torch.float32)  # full fine-tuning trains fp32 masters (finetune() refuses others)
    render, masks = _scene()
    tokens = train_textual_inversion(model, render, masks, TIConfig(steps=1, resolution=64, checkpoint_every=1000))
    model, tokens = finetune(model, render, masks, tokens,
                             FTConfig(steps=2, mode=mode, lora_rank=4, mixed_precision=mixed_precision, resolution=64,
                                      gradient_checkpointing=checkpointing, checkpoint_every=1000))
    expect_on_cuda("fine-tuned UNet weight", next(model.unet.parameters()))
    return {"mode": mode, "mixed_precision": mixed_precision}


def _core_render_masks_lift(sim, dtype):
    from dreamedit3d_core.assets import load_asset
    from dreamedit3d_core.testing.examples import write_example_asset
    from dreamedit3d_core.lifting import lift_to_mesh
    from dreamedit3d_core.masks import masks_from_parts
    from dreamedit3d_core.render import render_views

    path = Path(tempfile.mkdtemp(prefix="fakecuda_asset_")) / "toy.glb"
    with torch._C._DisableTorchDispatch():  # writing the file is host work, outside the simulation
        write_example_asset(path)
    asset = load_asset(path)
    render = render_views(asset, resolution=64, device=CUDA)
    expect_on_cuda("render rgb", render.rgb)
    masks = masks_from_parts(render, "hat: hat; figure: *")
    expect_on_cuda("masks", masks.masks)
    mesh = lift_to_mesh(render.rgb.to(dtype), render.cameras, alpha=render.alpha.to(dtype), source=asset,
                        mode="source_guided", grid=32, texture_size=64, device=CUDA)
    return {"faces": int(mesh.faces.shape[0]), "masks": list(masks.masks.shape)}


for _name, _dtype in DTYPES.items():
    case(f"core_load_compose_sample_vae_{_name}")(lambda sim, d=_dtype: _core_load_compose_sample_vae(sim, d))
    case(f"core_phase1_{_name}")(lambda sim, d=_dtype: _core_phase1(sim, d))
    case(f"core_render_masks_lift_{_name}")(lambda sim, d=_dtype: _core_render_masks_lift(sim, d))
    # LoRA trains on the half-precision base as loaded; each autocast mode (fp16 autocast on a bf16 base is no setup
    # anyone runs, so the base's own dtype stands for it)
    for _mp in ("no", _name):
        case(f"core_phase2_lora_{_name}_base_autocast_{_mp}")(lambda sim, d=_dtype, p=_mp: _core_phase2(sim, d, "lora", p))
# full fine-tuning trains fp32 masters (loaded in fp16 as on CUDA, then upcast as the node does), each autocast mode
for _mp in ("no", "bf16", "fp16"):
    case(f"core_phase2_full_autocast_{_mp}")(lambda sim, p=_mp: _core_phase2(sim, torch.float16, "full", p))
case("core_phase1_autocast_fp16")(lambda sim: _core_phase1(sim, torch.float32, "fp16"))
case("core_phase1_autocast_bf16")(lambda sim: _core_phase1(sim, torch.float32, "bf16"))
case("core_phase2_full_checkpointing_bf16")(lambda sim: _core_phase2(sim, torch.bfloat16, "full", "bf16", True))


# ------------------------------------------------------------------------------------------------ node workflows
_HOST: dict = {}


def _host():
    """The ComfyUI tree imported with its device detection on (it sees the simulated GPU), our pack, and the fixtures."""
    if _HOST:
        return _HOST
    import asyncio

    from _comfy_pack import comfy_root, import_pack, point_folders_at

    root = comfy_root()
    if root is None:
        raise simcuda.SimulatedCudaUnavailable("no ComfyUI tree: run tools/setup_env.sh or set COMFYUI_PATH")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import utils.extra_config  # noqa: F401  (binds the tree's utils package first, as _comfy_pack does)
    import comfy.cli_args

    comfy.cli_args.args.cpu = False
    import comfy.model_management as mm
    import nodes as comfy_nodes

    if mm.get_torch_device().type != "cuda":
        raise AssertionError(f"ComfyUI picked {mm.get_torch_device()} as its compute device, expected the simulated cuda")
    base = Path(tempfile.mkdtemp(prefix="fakecuda_host_"))
    point_folders_at(base)
    asyncio.run(comfy_nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    pack = import_pack()
    sys.path.insert(0, str(REPO / "tests" / "workflows"))
    import prepare_host

    prepare_host.main([str(base)])
    for kind in ("mvdream", "sams"):
        import folder_paths

        folder_paths.add_model_folder_path(kind, str(base / "models" / kind), is_default=True)
    _HOST.update(base=base, pack=pack, mm=mm, comfy_nodes=comfy_nodes)
    return _HOST


def run_workflow(graph: dict, after_node=None) -> dict:
    """Run an API-format graph node by node in dependency order, as ComfyUI's executor does: each node under
    ``torch.inference_mode()``, every output kept (ComfyUI's cache). ``after_node(node id, class_type, outputs)`` is
    called as each node finishes (ComfyUI may offload a model later). Returns {node id: outputs tuple}."""
    host = _host()
    mapping = {**host["comfy_nodes"].NODE_CLASS_MAPPINGS, **host["pack"].NODES}
    from _comfy_pack import node as v3_node

    done: dict = {}

    def resolve(value):
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] in graph:
            return done[value[0]][value[1]]
        return value

    pending = list(graph)
    while pending:
        for nid in pending:
            inputs = graph[nid]["inputs"]
            deps = [v[0] for v in inputs.values() if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0] in graph]
            if all(d in done for d in deps):
                break
        else:
            raise AssertionError(f"cycle in the workflow among {pending}")
        cls = mapping[graph[nid]["class_type"]]
        kwargs = {k: resolve(v) for k, v in inputs.items()}
        with torch.inference_mode():
            if hasattr(cls, "define_schema"):
                out = v3_node(cls).execute(**kwargs)
                result = tuple(out.args) if out is not None else ()
            else:
                result = getattr(cls(), cls.FUNCTION)(**kwargs)
                result = result.get("result", ()) if isinstance(result, dict) else tuple(result or ())
        done[nid] = result
        if after_node is not None:
            after_node(nid, graph[nid]["class_type"], result)
        pending.remove(nid)
    return done


def _workflow(name: str, dtype_name: str) -> dict:
    host = _host()
    graph = json.loads((host["base"] / "workflows" / f"{name}.api.json").read_text())
    for spec in graph.values():
        if spec["class_type"] == "DreamEdit3D_MVDreamLoader":
            spec["inputs"]["dtype"] = dtype_name
    want_dtype = {"auto": torch.float16, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype_name]
    models = []  # every MVDream model a node has output so far (ComfyUI's cache holds them all)

    def check_model(nid, kind, outputs):
        # as each node finishes: its model's parts are registered with ComfyUI, which may offload them later (a
        # training node unloads every other model before it trains)
        models.extend(o for o in outputs if hasattr(o, "comfy_patchers"))
        if kind == "DreamEdit3D_MVFineTune":
            # issue 16: after fine-tuning only the personalized model is on the GPU; every other part ComfyUI knows
            # (the loader's UNet and text tower, TI's text tower) was offloaded, whole
            ours = {id(m) for m in (outputs[0].unet, outputs[0].vae, outputs[0].text_encoder)}
            for model in models:
                for part in ("unet", "vae", "text_encoder"):
                    module = getattr(model, part)
                    if id(module) in ours:
                        continue
                    devices = {p.device.type for p in module.parameters()}
                    if devices != {"cpu"}:
                        raise AssertionError(f"after MVFineTune an earlier model's {part} is on {sorted(devices)}: only "
                                             "the fine-tuned model should stay on the GPU")
        if kind == "DreamEdit3D_MVDreamLoader":
            weight = next(outputs[0].unet.parameters())
            expect_on_cuda("loaded model weight", weight)
            if weight.dtype != want_dtype:
                raise AssertionError(f"MVDreamLoader dtype {dtype_name!r} on CUDA gave {weight.dtype}, expected {want_dtype}")
        if kind in ("DreamEdit3D_MultiViewTextualInversion", "DreamEdit3D_MVFineTune"):
            expect_on_cuda(f"{kind} model weight", next(outputs[0].unet.parameters()))

    done = run_workflow(graph, after_node=check_model)
    found = {}
    for nid, spec in graph.items():
        kind = spec["class_type"]
        if kind == "DreamEdit3D_MVSample":
            latent = done[nid][0]["samples"]
            if latent.device != host["mm"].intermediate_device():
                raise AssertionError(f"MVSample LATENT on {latent.device}, ComfyUI's intermediate device is "
                                     f"{host['mm'].intermediate_device()}")
            found[f"{nid}:latent_device"] = str(latent.device)
    return found


def _node_dtype_name(dtype_name: str) -> str:
    return {"fp16": "float16", "bf16": "bfloat16"}[dtype_name]


# the loader's "auto" is float16 on CUDA (checked), so the fp16 full edit runs the shipped workflow unchanged
case("nodes_full_edit_fp16_auto")(lambda sim: _workflow("full_edit", "auto"))
case("nodes_full_edit_bf16")(lambda sim: _workflow("full_edit", "bfloat16"))
for _name in DTYPES:
    case(f"nodes_batch_edits_{_name}")(lambda sim, n=_name: _workflow("batch_edits", _node_dtype_name(n)))


@case("selfcheck_node_bug_is_caught")
def selfcheck_node_bug(sim):
    """A device placement broken inside a node (a CPU mask multiplied into the CUDA noise) fails naming its line."""
    host = _host()
    import importlib

    sampler_bridge = importlib.import_module(host["pack"].__name__ + ".nodes.sampler_bridge")
    original = sampler_bridge.run_comfy_sampler

    def broken(sampler, sigmas, model, noise, *args, **kwargs):
        noise = noise * torch.ones(noise.shape)  # the injected bug: a CPU tensor times the CUDA noise
        return original(sampler, sigmas, model, noise, *args, **kwargs)

    sampler_bridge.run_comfy_sampler = broken
    try:
        msg = expect_caught("CPU mask in a node", lambda: _workflow("batch_edits", "float16"), "noise * torch.ones")
    finally:
        sampler_bridge.run_comfy_sampler = original
    return {"message": msg}


# ------------------------------------------------------------------------------------------------ LGM reconstructor
#: the coarsest grid lift_to_mesh takes: the tiny network's random Gaussians are wide (windows of up to 32 voxels at
#: grid 32), and the density grid's cost grows with the cube of the grid
LGM_GRID = 16


def _tiny_lgm_file(folder: Path) -> Path:
    """A tiny LGM file in the released key layout and dtype (float16), written as host work outside the simulation."""
    from dreamedit3d_core.lifting.lgm import RELEASED_FILE, save_lgm
    from dreamedit3d_core.testing.lgm import tiny_lgm

    folder.mkdir(parents=True, exist_ok=True)
    with torch._C._DisableTorchDispatch():
        return save_lgm(tiny_lgm(0), folder / RELEASED_FILE, dtype=torch.float16, overwrite=True)


class _CountingProgress:
    """Counts ``check_interrupt`` polls (one per density chunk) and keeps the last update."""

    def __init__(self):
        self.polls, self.last = 0, None

    def check_interrupt(self):
        self.polls += 1

    def update(self, done, total, preview=None, stage=""):
        self.last = (done, total, stage)


def _core_lgm_lift(sim, dtype, **options):
    """A tiny LGM file loaded onto cuda in ``dtype``, registered as a reconstructor (with ``options`` for
    LGMReconstructor): four views at the tiny network's input size -> forward -> Gaussians -> density grid in chunks ->
    mesh -> bake, through ``lift_to_mesh``."""
    import numpy as np

    from dreamedit3d_core.assets import load_asset
    from dreamedit3d_core.lifting import bake, export_mesh, lift_to_mesh
    from dreamedit3d_core.lifting.lgm import (bake_vertex_colors_with_gaussians, density_grid, fit_gaussian_grid,
                                              register_lgm)
    from dreamedit3d_core.lifting.pipeline import unregister_reconstructor
    from dreamedit3d_core.render import render_views
    from dreamedit3d_core.testing.examples import write_example_asset
    from dreamedit3d_core.testing.lgm import LGM_TINY

    folder = Path(tempfile.mkdtemp(prefix="fakecuda_lgm_"))
    path = _tiny_lgm_file(folder)
    with torch._C._DisableTorchDispatch():
        write_example_asset(folder / "toy.glb")
    render = render_views(load_asset(folder / "toy.glb"), resolution=LGM_TINY.input_size, device=CUDA)
    name = f"lgm_fakecuda_{str(dtype).split('.')[-1]}"
    rec = register_lgm(path, name=name, overwrite=True, dtype=dtype, **options)
    try:
        mesh = lift_to_mesh(render.rgb.to(dtype), render.cameras, alpha=render.alpha.to(dtype), mode="hull",
                            reconstructor=name, grid=LGM_GRID, texture_size=64, face_budget=0, device=CUDA)
    finally:
        unregister_reconstructor(name)
    weight = next(rec.network(CUDA).parameters())
    expect_on_cuda("LGM weight", weight)
    if rec.network(CUDA).rotation_normalization.value != options.get("rotation_normalization", "per_gaussian"):
        raise AssertionError(f"LGM loaded with {rec.network(CUDA).rotation_normalization}, options {options}")
    if weight.dtype != dtype:
        raise AssertionError(f"LGM loaded as {weight.dtype}, asked for {dtype}")
    if mesh.stats.get("reconstructor") != name:
        raise AssertionError(f"lift_to_mesh did not use the LGM reconstructor: stats {mesh.stats.get('reconstructor')!r}")
    for field in ("vertices", "faces", "uv", "texture", "vertex_colors"):
        expect_on_cuda(f"lifted mesh {field}", getattr(mesh, field))
    g = rec.last_gaussians
    for field in ("means", "opacity", "scales", "axes", "colors"):
        expect_on_cuda(f"Gaussians {field}", getattr(g, field))
        if getattr(g, field).dtype != torch.float32:
            raise AssertionError(f"Gaussians {field} are {getattr(g, field).dtype}, expected float32 whatever the network's dtype")
    # the density grid in several chunks on the device equals the one-chunk grid
    grid = fit_gaussian_grid(g, LGM_GRID)
    whole, _, _ = density_grid(g, grid)
    counter = _CountingProgress()
    chunked, thickness, _ = density_grid(g, grid, evals_per_chunk=1 << 12, progress=counter)
    for what, t in (("density", chunked), ("thickness", thickness)):
        expect_on_cuda(what, t)
    if counter.polls < 2:
        raise AssertionError(f"the density grid ran in {counter.polls} chunk(s), expected several")
    if not torch.allclose(chunked, whole, rtol=1e-5, atol=1e-6 * float(whole.max())):
        raise AssertionError(f"chunked density differs from the one-chunk density by {float((chunked - whole).abs().max())}")
    # the reconstructor itself hands back host arrays (register_reconstructor's contract)
    verts, faces = rec(render.rgb, render.alpha, render.cameras, grid=LGM_GRID, device=CUDA)
    if not (isinstance(verts, np.ndarray) and isinstance(faces, np.ndarray) and len(faces)):
        raise AssertionError(f"the reconstructor returned {type(verts).__name__}/{type(faces).__name__}, expected numpy")
    # bake with the Gaussians' colours where no view sees the surface, on the device
    v, f = mesh.vertices, mesh.faces
    frags = bake.render_fragments(v, f, render.cameras, render.rgb.shape[-2], render.rgb.shape[-1])
    view_sets = [bake.ViewSet(render.rgb, bake.feathered_mask(render.alpha, 1, 1), render.cameras, frags.depth)]
    colors, _ = bake_vertex_colors_with_gaussians(v, bake.vertex_normals(v, f), view_sets, g)
    expect_on_cuda("vertex colours baked with the Gaussians", colors)
    # exported: the mesh on the CPU, written as a GLB
    host = mesh.to("cpu")
    if host.vertices.device.type != "cpu" or host.texture.device.type != "cpu":
        raise AssertionError("LiftedMesh.to('cpu') left tensors on the device")
    out = export_mesh(host, folder / "lgm.glb")
    # offloaded between runs: nothing of the reconstructor stays on the GPU; the next call loads it back in dtype
    rec.offload()
    left = [k for k, t in rec.held_tensors() if t.device.type == "cuda"]
    if left:
        raise AssertionError(f"after offload() the reconstructor still holds CUDA tensors: {left[:4]}")
    offloaded = {t.dtype for k, t in rec.held_tensors() if not k.startswith("last_gaussians.")}
    if offloaded != {dtype}:
        raise AssertionError(f"offload() changed the network's dtype to {offloaded}, expected it kept as {dtype}")
    back = next(rec.network(CUDA).parameters())
    expect_on_cuda("LGM weight loaded back", back)
    if back.dtype != dtype:
        raise AssertionError(f"LGM came back as {back.dtype}, expected {dtype}")
    rec.offload()  # the reconstructor cache outlives the case: leave no simulated CUDA tensor in it
    return {"faces": int(f.shape[0]), "gaussians": g.num, "chunks": counter.polls, "glb_bytes": out.stat().st_size,
            "dtype": str(dtype), **options}


for _name, _dtype in DTYPES.items():
    case(f"core_lgm_lift_{_name}")(lambda sim, d=_dtype: _core_lgm_lift(sim, d))
# float32 on CUDA, with the other frame and the older weights' rotation normalisation (their own device paths)
case("core_lgm_lift_fp32_world_frame_across_gaussians")(
    lambda sim: _core_lgm_lift(sim, torch.float32, frame="world", rotation_normalization="across_gaussians"))


@case("selfcheck_lgm_bug_is_caught")
def selfcheck_lgm_bug(sim):
    """The LGM case fails on a device bug injected into LGM's input (the Plücker rays left on the CPU beside the CUDA
    views), naming the product's line."""
    from dreamedit3d_core.lifting.lgm import rays

    original = rays.plucker_rays
    rays.plucker_rays = lambda *args, **kwargs: original(*args, **kwargs).cpu()  # the injected bug
    try:
        _core_lgm_lift(sim, torch.float16)
    except SimulatedCudaError as err:
        if "same device" not in str(err) or "rays.py:" not in str(err) or "torch.cat" not in str(err):
            raise AssertionError(f"LGM device bug caught, but the message does not name rays.py's line: {err}") from None
        return {"message": str(err)}
    finally:
        rays.plucker_rays = original
    raise AssertionError("LGM device bug (CPU rays beside CUDA views) was NOT caught")

@case("nodes_lift_lgm_fp16_auto")
def nodes_lift_lgm(sim):
    """OrthoRender -> LiftToMesh with a tiny LGM file from models/lgm (hull mode, the network in its "auto" dtype:
    float16 on CUDA), as ComfyUI runs them: the network runs on the device, the node's MESH comes back on the CPU, a
    GLB is written, and afterwards nothing of the reconstructor stays on the GPU."""
    host = _host()
    import folder_paths

    import importlib

    # the node runs the pack's own copy of the core (imported under the pack's package name)
    lgm = importlib.import_module(host["pack"].__name__ + ".dreamedit3d_core.lifting.lgm")
    LGMReconstructor, RELEASED_FILE = lgm.LGMReconstructor, lgm.RELEASED_FILE
    lgm_root = host["base"] / "models" / "lgm"
    path = _tiny_lgm_file(lgm_root / "tiny")
    folder_paths.add_model_folder_path("lgm", str(lgm_root), is_default=True)
    folder_paths.filename_list_cache.pop("lgm", None)
    seen = []
    original = LGMReconstructor.gaussians

    def recording(self, rgb, cameras, alpha=None, device=None):
        g = original(self, rgb, cameras, alpha, device)
        w = next(self.network(device if device is not None else rgb.device).parameters())
        seen.append((str(w.device), w.dtype, str(g.means.device)))
        return g

    graph = {
        "1": {"class_type": "DreamEdit3D_OrthoRender",
              "inputs": {"asset": "dreamedit3d/kenney_character.glb", "resolution": 64, "elevation_deg": 15.0,
                         "fov_deg": 40.0, "background": 1.0, "lighting": "ambient_diffuse", "front_axis": "+z",
                         "up_axis": "+y"}},
        "2": {"class_type": "DreamEdit3D_LiftToMesh",
              "inputs": {"images": ["1", 0], "views": ["1", 4], "mode": "hull", "grid": LGM_GRID, "texture_size": 64,
                         "face_budget": 2000, "background": 1.0, "filename_prefix": "dreamedit3d/lgm_fakecuda",
                         "also_obj": False, "detect_background": True, "reconstructor": f"tiny/{RELEASED_FILE}",
                         "keep": "all_but_edited", "components": ""}},
    }
    LGMReconstructor.gaussians = recording
    try:
        done = run_workflow(graph)
    finally:
        LGMReconstructor.gaussians = original
    if seen != [("cuda:0", torch.float16, "cuda:0")]:
        raise AssertionError(f"LGM ran as (weights device, dtype, Gaussians device) {seen}, expected once on cuda:0 in float16")
    mesh, glb = done["2"][0], done["2"][1]
    for field in ("vertices", "faces"):
        t = getattr(mesh, field)
        if t.device.type != "cpu":
            raise AssertionError(f"LiftToMesh MESH {field} on {t.device}, expected the CPU (node outputs are host data)")
    glb_path = Path(folder_paths.get_output_directory()) / glb
    if not glb_path.is_file():
        raise AssertionError(f"LiftToMesh wrote no GLB at {glb_path}")
    rec = lgm.cached_lgm_reconstructor(path)
    left = [k for k, t in rec.held_tensors() if t.device.type == "cuda"]
    if left:
        raise AssertionError(f"after LiftToMesh the LGM reconstructor still holds CUDA tensors: {left[:4]}")
    return {"faces": int(mesh.faces.shape[1]), "glb": glb, "ran": [list(map(str, s)) for s in seen]}


# ------------------------------------------------------------------------------------------------ main
def run_case(name: str) -> dict:
    start = time.perf_counter()
    result = {"name": name, "ok": False}
    try:
        with simulated_cuda() as sim:
            result["details"] = CASES[name](sim)
            result["ok"] = True
    except Exception as err:  # every failure is reported per case, with its traceback
        result["error"] = f"{type(err).__name__}: {err}"
        result["traceback"] = traceback.format_exc()[-4000:]
    result["ops"] = sim.ops if "sim" in locals() else 0
    result["half_fallbacks"] = dict(sim.half_fallbacks) if "sim" in locals() else {}
    result["float16_upcasts"] = dict(sim.float16_upcasts) if "sim" in locals() else {}
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cases", nargs="*", help="case names or prefixes (default: all)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(CASES))
        return 0
    simcuda.main_requires_stub()
    names = [n for n in CASES if not args.cases or any(n.startswith(c) for c in args.cases)]
    results = []
    for name in names:
        res = run_case(name)
        results.append(res)
        print(f"{'ok  ' if res['ok'] else 'FAIL'} {name} ({res['seconds']} s, {res['ops']} ops)"
              + ("" if res["ok"] else f": {res['error'][:400]}"), flush=True)
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
