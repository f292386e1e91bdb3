"""Estimated peak GPU memory and FLOPs of every stage at full size, and of the node chain as ComfyUI runs it (issue 16).

No GPU is needed: the full-size model (sd-v2.1-base-4view's released layout, built on the ``meta`` device and loaded
through the pack's own loader) runs on PyTorch's fake tensors on a simulated ``cuda`` device
(tests/fakecuda: the CUDA runtime stub answers torch's device queries, so autocast, SDPA's kernel choice and the
autograd engine behave as on an sm_90 GPU). The script re-runs itself in a subprocess with the stub preloaded.

Method (printed with the figures):
- peak = the maximum over the run of the bytes of live CUDA storages, each rounded up to the caching allocator's
  512-byte blocks, tracked op by op by a ``TorchDispatchMode`` (storages die when their last tensor does): the analogue
  of ``torch.cuda.max_memory_allocated()`` for the stage, counting what was resident when it started (weights, cached
  outputs). It excludes the CUDA context (~0.5 GiB), cuBLAS/cuDNN workspaces and fragmentation (+5-20 %).
- FLOPs = ``torch.utils.flop_counter.FlopCounterMode`` (matmul, conv, attention; elementwise ops are not counted).
- values are unknown on fake tensors; `.item()` and friends answer "no trouble" (bools True, floats 0.5, ints 1; values derived from isnan/isinf or a GradScaler found-inf flag 0), so checks pass and no step is skipped.
- validation: the same estimator on CPU fake tensors against a real CPU run of the same step on a medium-size model
  (peak RSS growth of a fresh process, large allocations mmapped so freed memory leaves RSS).

Usage: ``python -m bench.bench_memory [--stages NAME ...] [--out FILE.md] [--skip-validation]``
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import weakref
from collections import OrderedDict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO), str(REPO / "tests"), str(REPO / "tests" / "fakecuda")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

GIB = 1024 ** 3
BLOCK = 512  # the CUDA caching allocator rounds every block up to 512 bytes
VIEWS = 4
RESOLUTION = 256


# ------------------------------------------------------------------------------------------------ the estimator
class LiveBytes(TorchDispatchMode):
    """Bytes of live storages on ``device_type`` (512-byte blocks), op by op; ``peak`` is the maximum seen.

    Storages that exist before the mode starts are counted once :meth:`track` is given them (model weights).
    """

    def __init__(self, device_type: str = "cuda"):
        super().__init__()
        self.device_type = device_type
        self.live: dict = {}
        self.current = 0
        self.peak = 0
        self._swap = None
        self._finalizers: dict = {}  # id(tensor) -> its weakref.finalize objects

    def __enter__(self):
        # Module.to() swaps fake parameters with torch.utils.swap_tensors, which refuses tensors with weakrefs (our
        # finalizers, the fake mode's memo): detach ours for the swap and count both tensors afresh after it
        self._swap = torch.utils.swap_tensors

        def swap(t1, t2):
            keys = [info[2][0] for t in (t1, t2) for f in self._finalizers.pop(id(t), []) if (info := f.detach())]
            refs = weakref.getweakrefs
            weakref.getweakrefs = lambda obj: []  # the fake mode's own memo holds weakrefs to them too
            try:
                self._swap(t1, t2)
            finally:
                weakref.getweakrefs = refs
            for key in keys:
                self._release(key)
            self._add(t1)
            self._add(t2)

        torch.utils.swap_tensors = swap
        return super().__enter__()

    def __exit__(self, *exc):
        torch.utils.swap_tensors = self._swap
        return super().__exit__(*exc)

    def track(self, tensors) -> None:
        for t in tensors:
            self._add(t)
        self.peak = max(self.peak, self.current)

    def _add(self, t) -> None:
        # a storage lives while any tensor on it does: count the tensors we saw on it, release it with the last one
        # (fake tensors keep their Python object as long as the C++ tensor lives, autograd's saved tensors included)
        if not isinstance(t, torch.Tensor) or t.device.type != self.device_type:
            return
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self.live:
            self.live[key][1] += 1
        else:
            nbytes = -(-storage.nbytes() // BLOCK) * BLOCK
            self.live[key] = [nbytes, 1]
            self.current += nbytes
        self._finalizers.setdefault(id(t), []).append(weakref.finalize(t, self._release, key))

    def _release(self, key) -> None:
        # (the finalizer list of a dead tensor's id is dropped lazily: ids are reused, detach() of a dead one is None)
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= self.live.pop(key)[0]

    def sweep(self) -> None:
        gc.collect()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t)
        self.peak = max(self.peak, self.current)
        return out


class StubValues(TorchDispatchMode):
    """Answers value reads on fake tensors (``.item()``, ``bool()``, ``int()``) so code that checks values runs.

    ``nonzero`` finds one element; a boolean-mask index selects every element. Checks for trouble read "no trouble": a value derived from ``isnan``/``isinf`` (or a GradScaler's found-inf flag)
    reads 0/False, so no step is skipped and no error raised; every other bool reads True (``mask.any()``: the
    component is present), floats read 0.5 (inside (0, 1): a schedule check passes), ints 1.
    """

    TROUBLE_OPS = ("isnan", "isinf", "isneginf", "isposinf")

    def __init__(self):
        super().__init__()
        from torch.utils.weak import WeakIdKeyDictionary

        self.trouble = WeakIdKeyDictionary()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        if func is torch.ops.aten._local_scalar_dense.default:
            t = args[0]
            if t in self.trouble:
                return False if t.dtype == torch.bool else 0
            return True if t.dtype == torch.bool else (0.5 if t.dtype.is_floating_point else 1)
        if func is torch.ops.aten.nonzero.default:
            # one hit (a token's position in a prompt is looked up this way); index lists are small next to activations
            t = args[0]
            return torch.zeros((1, t.dim()), dtype=torch.long, device=t.device)
        if func.overloadpacket.__name__ in ("index", "index_put", "index_put_", "_index_put_impl_") and any(
                isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1]):
            # a boolean mask index selects every element (an upper bound; masked selections here are attention maps)
            indices = []
            for i in args[1]:
                if isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8):
                    indices += [torch.zeros(i.numel(), dtype=torch.long, device=i.device)] * i.dim()
                else:
                    indices.append(i)
            args = (args[0], indices, *args[2:])
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name == "_amp_foreach_non_finite_check_and_unscale_":
            self.trouble[args[1]] = True  # the found_inf flag it writes
        elif name in self.TROUBLE_OPS or any(a in self.trouble for a in flat):
            for o in tree_flatten(out)[0]:
                if isinstance(o, torch.Tensor):
                    self.trouble[o] = True
        return out


def module_tensors(*modules) -> list:
    out = []
    for m in modules:
        out += list(m.parameters()) + list(m.buffers())
    return out


def model_tensors(model) -> list:
    return module_tensors(model.unet, model.vae, model.text_encoder)


@contextlib.contextmanager
def estimating(device_type: str = "cuda", resident=()):
    """``with estimating(resident=[...]) as est:`` -> est['peak_gib'], est['tflops'], est['resident_after_gib']."""
    from torch.utils.flop_counter import FlopCounterMode

    live = LiveBytes(device_type)
    live.track(resident)
    start = live.current
    flops = FlopCounterMode(display=False)
    est: dict = {}
    t0 = time.perf_counter()
    with flops, live, StubValues():
        yield est
    live.sweep()
    est.update(peak_gib=live.peak / GIB, start_gib=start / GIB, resident_after_gib=live.current / GIB,
               tflops=flops.get_total_flops() / 1e12, seconds=time.perf_counter() - t0, live=live)


# ------------------------------------------------------------------------------------------------ full-size model
def meta_state_dict(unet=None, vae=None, text=None) -> "OrderedDict[str, torch.Tensor]":
    """A released-layout state dict on the meta device (schedule buffers with their real values)."""
    from dreamedit3d_core.schedule import schedule_buffers
    from dreamedit3d_core.testing.tiny import SD21_TEXT, SD21_UNET, SD21_VAE, released_layout

    layout = released_layout(unet or SD21_UNET, vae or SD21_VAE, text or SD21_TEXT)
    buffers = schedule_buffers()
    return OrderedDict((k, buffers[k].clone() if k in buffers else torch.empty(shape, device="meta"))
                       for k, shape in layout.items())


@contextlib.contextmanager
def loader_reads(state):
    """The pack's loader (``load_mvdream``) reading ``state`` instead of a file (meta tensors have no values to hash)."""
    from dreamedit3d_core.mvdream import checkpoint

    saved = checkpoint.read_state_dict, checkpoint._fingerprint
    checkpoint.read_state_dict = lambda path: state
    checkpoint._fingerprint = lambda st: "meta-full-size"
    try:
        yield
    finally:
        checkpoint.read_state_dict, checkpoint._fingerprint = saved


def fake_mode():
    """Fake tensors that never compute for real on the (simulated) GPU: with the stub, torch believes a GPU exists,
    so fake mode would constant-fold small ``torch.tensor(..., device='cuda')`` values there."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    class NoDeviceFakeTensorMode(FakeTensorMode):
        avoid_device_init = property(lambda self: True)

    return NoDeviceFakeTensorMode(allow_non_fake_inputs=True)


def to_fake_device(mode, modules, device: str = "cuda") -> None:
    """Replace every parameter and buffer of ``modules`` (on meta) by a fake tensor on ``device`` (same dtype/shape)."""
    from torch._subclasses.fake_tensor import FakeTensor

    dev = torch.device(device, 0) if device == "cuda" else torch.device(device)
    for module in modules:
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None:
                    fake = FakeTensor(mode, torch.empty_like(p, device="meta"), dev)
                    sub._parameters[name] = torch.nn.Parameter(fake, requires_grad=p.requires_grad)
            for name, b in list(sub._buffers.items()):
                if b is not None:
                    sub._buffers[name] = FakeTensor(mode, torch.empty_like(b, device="meta"), dev)


def load_full_size(mode, dtype: torch.dtype, device: str = "cuda", archs: tuple = ()):
    """The full-size model (or ``archs`` = (unet, vae, text)) through ``load_mvdream`` onto meta, then fake ``device``."""
    from dreamedit3d_core.mvdream.checkpoint import load_mvdream

    with loader_reads(meta_state_dict(*archs)):
        model = load_mvdream("sd-v2.1-base-4view (meta)", device="meta", dtype=dtype)
    with mode:
        to_fake_device(mode, (model.unet, model.vae, model.text_encoder), device)
    return model


# ------------------------------------------------------------------------------------------------ stages
def two_component_inputs(mode, size: int = RESOLUTION):
    """The crafted two-component 4-view scene the personalisation tests use, as fake CPU tensors (a real tensor met
    by a fake-mode op with no fake input is computed for real, on a device that does not exist)."""
    from dataclasses import fields, replace

    from _personalize_helpers import two_component_scene

    out = []
    for obj in two_component_scene(size=size):
        with mode, StubValues():
            out.append(replace(obj, **{f.name: mode.from_tensor(getattr(obj, f.name)) for f in fields(obj)
                                       if isinstance(getattr(obj, f.name), torch.Tensor)}))
    return tuple(out)


def _cameras():
    from dreamedit3d_core.cameras import MVCameras

    return MVCameras.mvdream_default(num_views=VIEWS)


def stage_text(mode, model):
    from dreamedit3d_core.prompts import compose_prompt

    with mode, torch.no_grad(), estimating(resident=model_tensors(model)) as est:
        compose_prompt(model, "a robot made of gold", cameras=_cameras())
    return est


def stage_unet_cfg(mode, model):
    """One UNet call of classifier-free guidance sampling: 4 views x (cond, uncond) = 8 latents."""
    from dreamedit3d_core.prompts import compose_prompt

    with mode, torch.no_grad(), StubValues():
        cond = compose_prompt(model, "a robot made of gold", cameras=_cameras())
        lat = torch.randn(2 * VIEWS, 4, RESOLUTION // 8, RESOLUTION // 8, device=model.device, dtype=model.dtype)
        t = torch.full((2 * VIEWS,), 500, device=model.device)
        text = torch.cat([cond.cond, cond.uncond])
        cams = torch.cat([cond.cameras, cond.cameras])
        with estimating(resident=model_tensors(model) + [lat, text, cams]) as est:
            model.predict_noise(lat, t, text, cams)
    return est


def stage_vae_decode(mode, model):
    with mode, torch.no_grad():
        lat = torch.randn(VIEWS, 4, RESOLUTION // 8, RESOLUTION // 8, device=model.device, dtype=model.dtype)
        with estimating(resident=model_tensors(model) + [lat]) as est:
            model.decode_latents(lat)
    return est


def stage_vae_encode(mode, model):
    with mode, torch.no_grad():
        rgb = torch.rand(VIEWS, 3, RESOLUTION, RESOLUTION, device=model.device, dtype=model.dtype)
        with estimating(resident=model_tensors(model) + [rgb]) as est:
            model.encode_images(rgb)
    return est


def stage_sampling(mode, model, steps: int = 2):
    """sample_views end to end (text, ``steps`` CFG steps, VAE decode); FLOPs per step = (total - decode) / steps."""
    from dreamedit3d_core.prompts import compose_prompt
    from dreamedit3d_core.sampling import sample_views

    with mode, torch.no_grad(), estimating(resident=model_tensors(model)) as est:
        cond = compose_prompt(model, "a robot made of gold", cameras=_cameras())
        sample_views(model, cond, method="ddim", steps=steps, cfg=7.5, seed=0, resolution=RESOLUTION)
    return est


def stage_phase1(mode, model):
    """One phase-1 step (textual inversion: token rows train through the frozen multi-view UNet)."""
    from dreamedit3d_core.personalize.textual_inversion import TIConfig, train_textual_inversion

    render, masks = two_component_inputs(mode)
    with mode, estimating(resident=model_tensors(model)) as est:
        train_textual_inversion(model, render, masks, TIConfig(steps=1, resolution=RESOLUTION, checkpoint_every=10 ** 6))
    return est


def _tokens_for(model, small_render, small_masks):
    """Phase-1 tokens without training them (phase 2's input): the token rows as phase 1 would hand them over."""
    from dreamedit3d_core.personalize.textual_inversion import TIConfig, train_textual_inversion

    return train_textual_inversion(model, small_render, small_masks, TIConfig(steps=1, resolution=64,
                                                                              checkpoint_every=10 ** 6))


class EmulatedAdamW8bit(torch.optim.Optimizer):
    """The memory of bitsandbytes' AdamW8bit on fake tensors (bitsandbytes has no CPU or fake-tensor path): two uint8
    states per weight plus one float32 absmax per 256-value block each, 32-bit states for tensors under 4096 values
    (its ``min_8bit_size``); its fused kernel updates in place, so the step allocates nothing else. Not its numerics."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    if p.numel() < 4096:
                        state["state1"] = torch.zeros_like(p, dtype=torch.float32)
                        state["state2"] = torch.zeros_like(p, dtype=torch.float32)
                    else:
                        blocks = -(-p.numel() // 256)
                        state["state1"] = torch.zeros(p.shape, dtype=torch.uint8, device=p.device)
                        state["state2"] = torch.zeros(p.shape, dtype=torch.uint8, device=p.device)
                        state["absmax1"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
                        state["absmax2"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
                p.add_(p.grad, alpha=-group["lr"])  # in place, as the fused kernel writes the weight
        return None


@contextlib.contextmanager
def emulated_bitsandbytes(active: bool):
    """``import bitsandbytes`` answers :class:`EmulatedAdamW8bit` as ``bnb.optim.AdamW8bit`` (when ``active``)."""
    import types

    if not active:
        yield
        return
    saved = sys.modules.get("bitsandbytes")
    sys.modules["bitsandbytes"] = types.SimpleNamespace(optim=types.SimpleNamespace(AdamW8bit=EmulatedAdamW8bit))
    try:
        yield
    finally:
        if saved is None:
            sys.modules.pop("bitsandbytes", None)
        else:
            sys.modules["bitsandbytes"] = saved


def stage_phase2(mode, model, ft_mode: str, mixed_precision: str, checkpointing: bool = False, optimizer: str = "adamw",
                 resident_extra=(), train_text_encoder: bool = False):
    """One phase-2 step (fine-tuning, tokens still learning), optimizer states created as in the first step."""
    from dreamedit3d_core.personalize.finetune import FTConfig, finetune

    render, masks = two_component_inputs(mode)
    small = two_component_inputs(mode, 64)
    with mode, StubValues():
        tokens = _tokens_for(model, *small)
        gc.collect()
        config = FTConfig(steps=1, mode=ft_mode, mixed_precision=mixed_precision, gradient_checkpointing=checkpointing,
                          optimizer=optimizer, train_text_encoder=train_text_encoder, resolution=RESOLUTION,
                          checkpoint_every=10 ** 6)
        with emulated_bitsandbytes(optimizer == "adamw8bit"), \
                estimating(resident=model_tensors(model) + list(resident_extra)) as est:
            trained, _ = finetune(model, render, masks, tokens, config)
            est["trained"] = trained
    return est


def stage_node_chain_finetune(mode, model_fp16, ft_mode: str = "full", mixed_precision: str = "bf16",
                              checkpointing: bool = False, optimizer: str = "adamw", train_text_encoder: bool = False):
    """MVFineTune as ComfyUI runs it after the loader (dtype auto = fp16 on CUDA) and the TI node, with the nodes' own
    copies (``dreamedit3d_core.personalize.copies``, which nodes/personalize.py calls): TI's output has its own text
    tower and shares the loader's UNet and VAE; MVFineTune's model has its own UNet (float32 masters for full
    fine-tuning) and text tower and shares the VAE. Every part is registered with ComfyUI (nodes/_compat.py), and
    MVFineTune loads its model ``exclusive``: ComfyUI unloads every other model from the GPU first (the loader's UNet
    and text tower, TI's text tower), so what is resident while it trains is its own model's parts only."""
    from dreamedit3d_core.personalize.copies import model_for_finetuning, model_for_token_training

    with mode:
        ti_out = model_for_token_training(model_fp16)
        ft_model = model_for_finetuning(ti_out, ft_mode, train_text_encoder)
    return stage_phase2(mode, ft_model, ft_mode, mixed_precision, checkpointing, optimizer,
                        train_text_encoder=train_text_encoder)


def stage_core_chain_finetune(mode, model, ft_mode: str = "full", mixed_precision: str = "bf16"):
    """The same step through the core alone: the one model, fp32 masters for full fine-tuning, nothing else resident."""
    if ft_mode == "full":
        with mode:
            model.to(dtype=torch.float32)
    return stage_phase2(mode, model, ft_mode, mixed_precision)


# ------------------------------------------------------------------------------------------------ validation
def medium_archs():
    """A medium MVDream (UNet width 128, 4 views, real text width) for the CPU validation run."""
    from dreamedit3d_core.testing.tiny import TINY_TEXT, TINY_VAE, UNetArch

    return (UNetArch(128, (1, 2, 4, 4), 2, (True, True, True, False), 1, 128, True, 16), TINY_VAE, TINY_TEXT)


def validation_step(model, train: bool) -> None:
    """The validation workload: one CFG UNet call at 4 views x 256 px (train=False), or one full fine-tuning step of the
    UNet on it (MSE to the noise, backward, AdamW) (train=True). fp32, device of the model."""
    dev = next(model.unet.parameters()).device
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(2 * VIEWS, 4, RESOLUTION // 8, RESOLUTION // 8, generator=g).to(dev)
    text = torch.randn(2 * VIEWS, 77, model.text_dim, generator=g).to(dev)
    cams = torch.randn(2 * VIEWS, 16, generator=g).to(dev)
    t = torch.full((2 * VIEWS,), 500, device=dev)
    if not train:
        with torch.no_grad():
            model.predict_noise(lat, t, text, cams)
        return
    model.unet.requires_grad_(True)
    opt = torch.optim.AdamW(model.unet.parameters(), lr=1e-6)
    loss = torch.nn.functional.mse_loss(model.predict_noise(lat, t, text, cams), lat)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_real_cpu(train: bool) -> float:
    """GiB of peak RSS growth of a real CPU run of validation_step (this process; call in a fresh one)."""
    from dreamedit3d_core.mvdream.checkpoint import load_mvdream

    state = meta_state_dict(*medium_archs())
    g = torch.Generator().manual_seed(0)
    state = OrderedDict((k, (torch.randn(v.shape, generator=g) * 0.02) if v.is_meta else v) for k, v in state.items())
    with loader_reads(state):
        model = load_mvdream("medium (random)", device="cpu", dtype=torch.float32)
    del state
    gc.collect()
    validation_step(model, train=False)  # warm-up: one-time allocations (kernels, thread pools) out of the figure
    gc.collect()
    base = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    validation_step(model, train)
    return (_rss_kib("VmHWM") - base) / 1024 ** 2


def estimate_cpu(train: bool) -> float:
    """GiB the estimator gives for the same run on fake CPU tensors (peak above what was resident at the start)."""
    mode = fake_mode()
    model = load_full_size(mode, torch.float32, device="cpu", archs=medium_archs())
    with mode, estimating("cpu", resident=model_tensors(model)) as est:
        validation_step(model, train)
    return est["peak_gib"] - est["start_gib"]


# ------------------------------------------------------------------------------------------------ main
TARGETS = {"sampling": 4.0, "lora": 6.0, "full": 16.0, "full_8bit": 11.0}


def stage_table() -> list:
    """(label, weights dtype, stage function, args, issue-16 target GiB or None)."""
    f16, f32 = torch.float16, torch.float32
    return [
        ("text tower, prompt + negative", f16, stage_text, (), None),
        ("UNet CFG call (8 latents)", f16, stage_unet_cfg, (), None),
        ("VAE decode, 4 views", f16, stage_vae_decode, (), None),
        ("VAE encode, 4 views", f16, stage_vae_encode, (), None),
        ("sampling: text + 2 DDIM CFG steps + decode", f16, stage_sampling, (), TARGETS["sampling"]),
        ("phase 1 step, fp16 weights", f16, stage_phase1, (), None),
        ("phase 2 LoRA step, fp16 base, fp16 autocast", f16, stage_phase2, ("lora", "fp16"), TARGETS["lora"]),
        ("phase 2 LoRA step + gradient checkpointing", f16, stage_phase2, ("lora", "fp16", True), TARGETS["lora"]),
        ("phase 2 full step, bf16 autocast, AdamW (core)", f32, stage_phase2, ("full", "bf16"), TARGETS["full"]),
        ("phase 2 full step + gradient checkpointing (core)", f32, stage_phase2, ("full", "bf16", True), TARGETS["full"]),
        ("node chain: loader(auto) -> TI -> MVFineTune full, bf16", f16, stage_node_chain_finetune, ("full", "bf16"),
         TARGETS["full"]),
        ("node chain: MVFineTune full, bf16, adamw8bit (emulated)", f16, stage_node_chain_finetune,
         ("full", "bf16", False, "adamw8bit"), TARGETS["full_8bit"]),
        ("node chain: MVFineTune full, bf16 + gradient checkpointing", f16, stage_node_chain_finetune,
         ("full", "bf16", True), TARGETS["full"]),
        ("node chain: MVFineTune full, bf16 + train_text_encoder", f16, stage_node_chain_finetune,
         ("full", "bf16", False, "adamw", True), None),
        ("node chain: loader(auto) -> TI -> MVFineTune LoRA, fp16", f16, stage_node_chain_finetune, ("lora", "fp16"),
         TARGETS["lora"]),
        ("node chain: MVFineTune LoRA, fp16 + gradient checkpointing", f16, stage_node_chain_finetune,
         ("lora", "fp16", True), TARGETS["lora"]),
    ]


def run_stages(only=()) -> list:
    rows = []
    shared = {}
    for label, dtype, fn, args, target in stage_table():
        if only and not any(o in label for o in only):
            continue
        mode = fake_mode()
        training = fn in (stage_phase1, stage_phase2, stage_node_chain_finetune)
        if training or dtype not in shared:
            model = load_full_size(mode, dtype)
            if not training:
                shared[dtype] = (mode, model)
        else:
            mode, model = shared[dtype]
        est = fn(mode, model, *args)
        row = dict(stage=label, peak_gib=est["peak_gib"], start_gib=est["start_gib"],
                   resident_after_gib=est["resident_after_gib"], tflops=est["tflops"], seconds=est["seconds"],
                   target_gib=target)
        rows.append(row)
        print(f"{label:60s} peak {row['peak_gib']:6.2f} GiB  (start {row['start_gib']:5.2f}, after {row['resident_after_gib']:5.2f})"
              f"  {row['tflops']:7.3f} TFLOP  [{row['seconds']:.0f} s]"
              + (f"  target <= {target} GiB: {'met' if row['peak_gib'] <= target else 'NOT met'}" if target else ""),
              flush=True)
        del est, model
        gc.collect()
    return rows


def run_validation() -> list:
    rows = []
    for train in (False, True):
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", OMP_NUM_THREADS="1")
        env.pop("LD_PRELOAD", None)
        env.pop("DREAMEDIT3D_FAKECUDA", None)
        done = subprocess.run([sys.executable, "-m", "bench.bench_memory", "--measure-real", "train" if train else "infer"],
                              env=env, cwd=str(REPO), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"real CPU run failed: {done.stderr[-2000:]}")
        real = float(done.stdout.strip().splitlines()[-1])
        est = estimate_cpu(train)
        rows.append(dict(step="medium model, " + ("full fine-tuning step (fwd+bwd+AdamW)" if train else "CFG UNet call"),
                         estimated_gib=est, real_gib=real, error_pct=100.0 * (est - real) / real))
        print(f"validation {rows[-1]['step']}: estimated {est:.3f} GiB, real CPU peak RSS growth {real:.3f} GiB "
              f"({rows[-1]['error_pct']:+.1f} %)", flush=True)
    return rows


METHOD = __doc__.split("Method (printed with the figures):")[1].split("Usage:")[0].strip()


def markdown(rows: list, validation: list) -> str:
    lines = ["## Estimated GPU memory and FLOPs at full size (bench/bench_memory.py, issue 16)", "",
             f"torch {torch.__version__}, simulated sm_90 device (tests/fakecuda), {VIEWS} views x {RESOLUTION} px, "
             "sd-v2.1-base-4view layout (meta -> fake CUDA). Estimates of *allocated* bytes, not measurements on a GPU.", "",
             "| stage | peak GiB | resident at start GiB | resident after GiB | TFLOP | issue-16 target |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        tgt = f"<= {r['target_gib']:g} GiB: {'met' if r['peak_gib'] <= r['target_gib'] else '**not met**'}" if r["target_gib"] else ""
        lines.append(f"| {r['stage']} | {r['peak_gib']:.2f} | {r['start_gib']:.2f} | {r['resident_after_gib']:.2f} | "
                     f"{r['tflops']:.3f} | {tgt} |")
    lines += ["", "Method: " + " ".join(METHOD.split()), ""]
    if validation:
        lines += ["Validation (same estimator on CPU fake tensors vs a real CPU run of the same step):", "",
                  "| step | estimated GiB | real CPU GiB | error |", "|---|---|---|---|"]
        lines += [f"| {v['step']} | {v['estimated_gib']:.3f} | {v['real_gib']:.3f} | {v['error_pct']:+.1f} % |" for v in validation]
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", nargs="*", default=(), help="substrings of stage labels to run (default: all)")
    ap.add_argument("--out", type=Path, help="also write the table (markdown) here")
    ap.add_argument("--skip-validation", action="store_true")
    ap.add_argument("--measure-real", choices=("infer", "train"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure_real:
        print(measure_real_cpu(args.measure_real == "train"))
        return 0
    import simcuda

    if not simcuda.stub_is_loaded():
        reason = simcuda.why_unavailable()
        if reason:
            print(f"bench_memory: cannot simulate a GPU here: {reason}", file=sys.stderr)
            return 2
        return subprocess.run([sys.executable, "-m", "bench.bench_memory", *(argv if argv is not None else sys.argv[1:])],
                              env=simcuda.simulated_cuda_env(), cwd=str(REPO)).returncode
    print(f"device: simulated {torch.cuda.get_device_name(0)} (no GPU; fake tensors), torch {torch.__version__}")
    print("method: " + " ".join(METHOD.split()))
    rows = run_stages(args.stages)
    validation = [] if args.skip_validation else run_validation()
    if args.out:
        args.out.write_text(markdown(rows, validation))
        print(f"table written to {args.out}")
    print(json.dumps({"stages": rows, "validation": validation}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
