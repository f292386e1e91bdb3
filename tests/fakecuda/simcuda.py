"""A simulated CUDA device for tests on machines without a GPU (issue 16; ../shared/design/gpu-sim.md).

Every tensor the code under test puts on "cuda" becomes a :class:`SimCudaTensor`: a tensor whose device *is*
``cuda:0`` for everything that looks (``.device``, dispatch keys, autocast, the autograd engine), carrying a real CPU
tensor with its values. :class:`SimulatedCuda` (a ``TorchDispatchMode``) runs each aten op twice:

1. on PyTorch's fake tensors with the arguments' real devices, so device propagation is decided by PyTorch's own rules
   (mixing a CUDA and a non-scalar CPU tensor raises exactly what a GPU raises; a 0-dim CPU scalar, a CPU index into a
   CUDA tensor, ``.item()`` are legal), and
2. on the CPU copies, so values exist (``if loss > 0``, ``.item()``, ``nonzero``) and dtype errors the CPU kernels share
   with CUDA (``fp16 @ fp32``) surface.

Generators are checked as CUDA checks them (a CPU generator for CUDA noise is refused). Any error is re-raised as
:class:`SimulatedCudaError` naming the innermost source line outside torch and this layer, i.e. the product's line.

The C++ side of torch (the autograd engine's device threads, stream and event guards, autocast's availability check,
``is_bf16_supported``) needs a CUDA runtime that answers; ``cudastub.c`` provides one sm_90 device, loaded with
``LD_PRELOAD`` into a subprocess only (:func:`stub_library` builds it, :func:`simulated_cuda_env` makes the environment).
Without it backward over a CUDA tensor aborts the process (pytorch issue 92627), so this module refuses to start.

Known CPU-vs-CUDA differences are filtered, each named in :data:`CPU_ONLY_REFUSALS`: an op the CPU has no half-precision
kernel for, but whose CUDA kernel exists (the fake run accepted it), is recomputed in float32 and cast back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import traceback
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Optional

import logging

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

# fake tensors log every meta kernel that refuses an op; the layer handles those itself (the CPU run decides)
logging.getLogger("torch._subclasses.fake_tensor").setLevel(logging.CRITICAL)
STUB_SOURCE = Path(__file__).with_name("cudastub.c")
SIM_DEVICE = torch.device("cuda", 0)
THIS_FILE = os.path.abspath(__file__)
TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
# CPU kernels that refuse half precision where the CUDA kernel accepts it; recomputed in float32 (see module doc)
CPU_ONLY_REFUSALS = ("not implemented for 'Half'", "not implemented for 'BFloat16'")
#: ops whose CPU float16 kernel is a slow reference implementation (a float16 convolution ran ~40x slower than float32
#: on the CI machine's CPU); when every floating argument is float16 their values are computed in float32 and cast
#: back, as the GPU accumulates them. Arguments of mixed dtypes still run as given, so their dtype errors surface.
#: (Under inference mode the convolutions reach the simulation as aten::conv2d etc., not decomposed.)
CPU_SLOW_FLOAT16_OPS = ("aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::convolution", "aten::_convolution",
                        "aten::convolution_backward")


class SimulatedCudaError(RuntimeError):
    """A device or dtype error a real CUDA run would raise, with the source line that caused it."""


class SimulatedCudaUnavailable(RuntimeError):
    """The simulation cannot start on this machine (no compiler, no CUDA headers, or a torch without CUDA)."""


# ------------------------------------------------------------------------------------------------ the runtime stub
def _cuda_include_dirs() -> list[Path]:
    """CUDA runtime headers: those the CUDA-build torch wheel's nvidia packages ship (crt/ comes with triton's copy),
    or a toolkit under CUDA_HOME / /usr/local/cuda."""
    site = Path(sysconfig.get_paths()["purelib"])
    cands = [*sorted(site.glob("nvidia/cu*/include")), *sorted(site.glob("nvidia/cuda_runtime/include")),
             site / "triton" / "backends" / "nvidia" / "include"]
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            cands.append(Path(os.environ[env]) / "include")
    cands.append(Path("/usr/local/cuda/include"))
    return [p for p in cands if (p / "cuda_runtime_api.h").is_file() or (p / "crt" / "host_defines.h").is_file()]


def why_unavailable() -> Optional[str]:
    """None when the simulation can run here, else the reason in one line."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build: the simulation needs the CUDA-build wheel (its C++ CUDA paths)"
    if shutil.which(os.environ.get("CC", "gcc")) is None:
        return "no C compiler (gcc) to build tests/fakecuda/cudastub.c: apt-get install gcc"
    incs = _cuda_include_dirs()
    if not any((p / "cuda_runtime_api.h").is_file() for p in incs) or not any((p / "crt" / "host_defines.h").is_file() for p in incs):
        return ("no CUDA runtime headers (cuda_runtime_api.h and crt/host_defines.h) in the torch wheel's nvidia/triton "
                "packages or CUDA_HOME: install the CUDA-build torch wheel's dependencies")
    return None


def stub_library(cache_dir: Optional[Path] = None) -> Path:
    """Build (once per source and torch version) the runtime stub; returns the shared library's path."""
    reason = why_unavailable()
    if reason:
        raise SimulatedCudaUnavailable(reason)
    import hashlib

    tag = hashlib.sha256(STUB_SOURCE.read_bytes() + torch.__version__.encode()).hexdigest()[:12]
    cache_dir = Path(cache_dir or os.environ.get("DREAMEDIT3D_FAKECUDA_CACHE", Path.home() / ".cache" / "dreamedit3d-fakecuda"))
    lib = cache_dir / f"libcudastub-{tag}.so"
    if lib.is_file():
        return lib
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    cmd = [os.environ.get("CC", "gcc"), "-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1"]
    incs = _cuda_include_dirs()
    cmd += ["-I" + str(incs[0])] + [a for p in incs[1:] for a in ("-idirafter", str(p))]
    cmd += ["-o", str(tmp), str(STUB_SOURCE), "-ldl"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SimulatedCudaUnavailable(f"building {STUB_SOURCE.name} failed: {done.stderr.strip()[:800]}")
    os.replace(tmp, lib)
    return lib


def simulated_cuda_env(base: Optional[dict] = None) -> dict:
    """Environment for a subprocess that runs under the simulation (the stub preloaded, one thread)."""
    env = dict(os.environ if base is None else base)
    lib = str(stub_library())
    env["LD_PRELOAD"] = lib + (":" + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["DREAMEDIT3D_FAKECUDA"] = "1"
    return env


def stub_is_loaded() -> bool:
    """Whether this process runs with the stub (torch then sees the one simulated device)."""
    if os.environ.get("DREAMEDIT3D_FAKECUDA") != "1":
        return False
    try:
        with open("/proc/self/maps") as maps:
            return "libcudastub" in maps.read()
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------ the tensor
class SimCudaTensor(torch.Tensor):
    """A tensor on the simulated ``cuda:0`` holding its values in ``self.cpu_value`` (a plain CPU tensor)."""

    cpu_value: torch.Tensor

    @staticmethod
    def __new__(cls, value: torch.Tensor):
        out = torch.Tensor._make_wrapper_subclass(cls, value.shape, strides=value.stride(), storage_offset=value.storage_offset(),
                                                  dtype=value.dtype, device=SIM_DEVICE, requires_grad=False)
        out.cpu_value = value
        return out

    def _set_data(self, new):
        # param.data = other (transformers' resize_token_embeddings does it) swaps the TensorImpl, not this object's
        # attributes: carry the values along, or the CPU copy would keep the old shape
        torch._C.TensorBase.data.__set__(self, new)
        if isinstance(new, SimCudaTensor):
            self.cpu_value = new.cpu_value
        elif new.device.type != "cuda":
            raise SimulatedCudaError(f"a CPU tensor assigned to the .data of a CUDA tensor (simulated CUDA) at {source_line()}")

    data = property(torch._C.TensorBase.data.__get__, _set_data)

    def tolist(self):  # legal on CUDA (a synchronising copy to the host)
        return self.cpu_value.tolist()

    def numpy(self, *, force: bool = False):
        # the C++ check runs after the subclass check, so say what a CUDA tensor says
        raise SimulatedCudaError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to "
                                 f"host memory first. (simulated CUDA) at {source_line()}")

    def __repr__(self, *, tensor_contents=None):  # printing must not dispatch into the mode
        return f"SimCudaTensor({self.cpu_value!r}, device='{SIM_DEVICE}')"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        mode = SimulatedCuda.active
        if mode is None:
            raise SimulatedCudaError(f"{func} on a simulated CUDA tensor outside SimulatedCuda(): enter the mode first")
        return mode.run_op(func, args, kwargs or {})


def sim_value(t: Any) -> Any:
    """The CPU values of a simulated CUDA tensor (any other object unchanged)."""
    return t.cpu_value if isinstance(t, SimCudaTensor) else t


# ------------------------------------------------------------------------------------------------ the mode
def source_line(skip_paths: tuple = ()) -> str:
    """``file:line: code`` of the innermost frame outside torch, this layer and the standard library."""
    stdlib = os.path.dirname(os.__file__)
    for frame in reversed(traceback.extract_stack()):
        path = os.path.abspath(frame.filename)
        if path == THIS_FILE or path.startswith(TORCH_DIR) or path.startswith(stdlib) or "<" in frame.filename:
            continue
        if any(path.startswith(p) for p in skip_paths):
            continue
        return f"{frame.filename}:{frame.lineno}: {(frame.line or '').strip()}"
    return "<no source line outside torch>"


def _is_cuda_device(x: Any) -> bool:
    return isinstance(x, torch.device) and x.type == "cuda" or isinstance(x, str) and x.startswith("cuda")


class SimulatedCuda(TorchDispatchMode):
    """Run the code under test as if ``cuda:0`` existed (see the module doc). Use as a context manager.

    ``ops`` counts the aten ops run on the simulated device; ``half_fallbacks`` lists ops recomputed in float32 on the
    CPU because only the CPU lacked a half kernel; ``float16_upcasts`` those computed in float32 because the CPU's
    float16 kernel is slow (:data:`CPU_SLOW_FLOAT16_OPS`).
    """

    active: Optional["SimulatedCuda"] = None

    def __init__(self, skip_paths: tuple = ()):
        super().__init__()
        if not stub_is_loaded():
            raise SimulatedCudaUnavailable("the CUDA runtime stub is not preloaded in this process: run the code in a "
                                           "subprocess with tests/fakecuda/simcuda.simulated_cuda_env()")
        from torch._subclasses.fake_tensor import FakeTensorMode

        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=False)
        self.skip_paths = tuple(os.path.abspath(p) for p in skip_paths)
        self.ops = 0
        self.half_fallbacks: dict = {}
        self.float16_upcasts: dict = {}
        self._cpu_generators: dict = {}
        self._device_cache: dict = {}
        self._stack = ExitStack()

    def __enter__(self):
        self._math_attention_only()
        # Module.to("cuda") must swap in the simulated tensors (param.data = ... would keep a plain Parameter object)
        swap = torch.__future__.get_swap_module_params_on_conversion()
        torch.__future__.set_swap_module_params_on_conversion(True)
        self._stack.callback(torch.__future__.set_swap_module_params_on_conversion, swap)
        # torch.tensor(data, device="cuda") builds on the CPU and moves the result through the dispatcher (as under
        # FakeTensorMode), instead of asking the CUDA runtime for memory
        lift = torch._C._only_lift_cpu_tensors()
        torch._C._set_only_lift_cpu_tensors(True)
        self._stack.callback(torch._C._set_only_lift_cpu_tensors, lift)
        SimulatedCuda.active = self
        return super().__enter__()

    def _math_attention_only(self) -> None:
        """Values need an attention kernel the CPU has: SDPA's math path. Its choice is made in C++ from global flags
        that hosts set at import (ComfyUI enables flash/efficient/cuDNN attention), so the fused backends are switched
        off and the setters ignore requests to switch them on while the mode is active. Memory estimates use the GPU's
        own choice (bench/bench_memory.py)."""
        names = ("flash", "mem_efficient", "cudnn", "math")
        setters = {n: getattr(torch._C, f"_set_sdp_use_{n}") for n in names}
        before = {n: getattr(torch._C, f"_get_{n}_sdp_enabled")() for n in names}
        for n in names:
            setters[n](n == "math")
            setattr(torch._C, f"_set_sdp_use_{n}", lambda enabled, n=n: setters[n](n == "math"))

        def restore():
            for n in names:
                setattr(torch._C, f"_set_sdp_use_{n}", setters[n])
                setters[n](before[n])

        self._stack.callback(restore)

    def __exit__(self, *exc):
        SimulatedCuda.active = None
        self._stack.close()
        return super().__exit__(*exc)

    # --- conversion helpers
    def _fake_of(self, t: torch.Tensor):
        from torch._subclasses.fake_tensor import FakeTensor

        value = sim_value(t)
        device = SIM_DEVICE if isinstance(t, SimCudaTensor) else t.device
        storage = value.untyped_storage().nbytes() // max(value.element_size(), 1)
        with torch._C._DisableTorchDispatch():
            meta = torch.empty(max(storage, 1), dtype=value.dtype, device="meta").as_strided(
                value.shape, value.stride(), value.storage_offset())
        return FakeTensor(self.fake_mode, meta, device)

    def _cpu_generator(self, gen: torch.Generator) -> torch.Generator:
        key = (id(gen), gen.initial_seed())
        if key not in self._cpu_generators:
            self._cpu_generators[key] = torch.Generator("cpu").manual_seed(gen.initial_seed())
        return self._cpu_generators[key]

    def _fail(self, message: str, cause: BaseException) -> SimulatedCudaError:
        return SimulatedCudaError(f"{message} (simulated CUDA) at {source_line(self.skip_paths)}")

    # --- the op
    @staticmethod
    def _device_signature(func, flat) -> tuple:
        """What PyTorch's device propagation depends on: the op, each tensor's device and 0-dim-ness, device args."""
        sig = [func]
        for a in flat:
            if isinstance(a, torch.Tensor):
                sig.append(("cuda" if isinstance(a, SimCudaTensor) else a.device.type, a.dim() == 0))
            elif isinstance(a, torch.device) or _is_cuda_device(a):
                sig.append(str(a))
            elif isinstance(a, torch.Generator):
                sig.append(("generator", a.device.type))
        return tuple(sig)

    def _fake_run(self, func, flat, spec):
        """The op on fake tensors with the arguments' devices: raises what CUDA raises for a device mix; returns the
        fake outputs (None where values decide the output and no meta kernel can run)."""
        from torch._subclasses.fake_tensor import (DataDependentOutputException, DynamicOutputShapeException,
                                                   FakeTensorDeviceMismatchError, UnsupportedOperatorException)

        fake_flat = [self._fake_of(a) if isinstance(a, torch.Tensor) else (None if isinstance(a, torch.Generator) else a)
                     for a in flat]
        fake_args, fake_kwargs = tree_unflatten(fake_flat, spec)
        try:
            with self.fake_mode, torch._C._DisableAutocast():
                return func(*fake_args, **fake_kwargs)
        except FakeTensorDeviceMismatchError as err:
            raise self._fail(f"{func}: {err}", err) from None
        except (DataDependentOutputException, DynamicOutputShapeException, UnsupportedOperatorException,
                NotImplementedError):
            return None  # values decide the shape (nonzero, item): devices come from the inputs
        except RuntimeError as err:
            if "device" in str(err).lower():
                raise self._fail(f"{func}: {err}", err) from None
            return None  # a meta kernel stricter or looser than CUDA's: the CPU run decides

    def run_op(self, func, args, kwargs):
        flat, spec = tree_flatten((args, kwargs))
        self.ops += 1
        # 1. device propagation by PyTorch's fake tensors, once per device signature (it depends on nothing else)
        key = self._device_signature(func, flat)
        out_devices = self._device_cache.get(key)
        if out_devices is None:
            fake_out = self._fake_run(func, flat, spec)
            out_devices = tuple(t.device.type for t in tree_flatten(fake_out)[0] if isinstance(t, torch.Tensor)) \
                if fake_out is not None else ()
            self._device_cache[key] = out_devices
        target_cuda = out_devices[0] == "cuda" if out_devices else self._inputs_on_cuda(flat)
        # 2. generators: CUDA kernels take CUDA generators only
        for a in flat:
            if isinstance(a, torch.Generator) and target_cuda and a.device.type != "cuda":
                raise self._fail(f"{func}: Expected a 'cuda' device type for generator but found '{a.device.type}'", None)
        # 3. values on the CPU
        real_flat = [self._real_arg(a) for a in flat]
        real_args, real_kwargs = tree_unflatten(real_flat, spec)
        fake_out = self._fake_run(func, flat, spec) if self._slow_in_float16(func, real_flat) else None
        try:
            if fake_out is not None:
                out = self._run_in_float32(func, real_args, real_kwargs, fake_out, self.float16_upcasts)
            else:
                with torch._C._DisableAutocast():
                    out = func(*real_args, **real_kwargs)
        except RuntimeError as err:
            if not any(s in str(err) for s in CPU_ONLY_REFUSALS):
                raise self._fail(f"{func}: {err}", err) from None
            fake_out = self._fake_run(func, flat, spec)
            if fake_out is None:
                raise self._fail(f"{func}: {err}", err) from None
            out = self._run_in_float32(func, real_args, real_kwargs, fake_out)
        # 4. wrap outputs on the device PyTorch decided
        return self._wrap(func, out, out_devices, flat, target_cuda)

    def _real_arg(self, a):
        if isinstance(a, SimCudaTensor):
            return a.cpu_value
        if _is_cuda_device(a):
            return torch.device("cpu")
        if isinstance(a, torch.Generator) and a.device.type == "cuda":
            return self._cpu_generator(a)
        return a

    @staticmethod
    def _inputs_on_cuda(flat) -> bool:
        return any(isinstance(a, SimCudaTensor) or _is_cuda_device(a) for a in flat)

    @staticmethod
    def _slow_in_float16(func, real_flat) -> bool:
        """Whether ``func`` is one of :data:`CPU_SLOW_FLOAT16_OPS` with float16 as its only floating dtype."""
        if func._schema.name not in CPU_SLOW_FLOAT16_OPS:
            return False
        dtypes = {a.dtype for a in real_flat if isinstance(a, torch.Tensor) and a.is_floating_point()}
        return dtypes == {torch.float16}

    def _run_in_float32(self, func, real_args, real_kwargs, fake_out, tally=None):
        """The op in float32 on the CPU (no half kernel there, or a slow one; the fake run showed CUDA has one),
        outputs cast back to the dtypes CUDA gives and arguments the op writes updated in place; counted in ``tally``
        (default ``half_fallbacks``)."""
        name = str(func)
        tally = self.half_fallbacks if tally is None else tally
        tally[name] = tally.get(name, 0) + 1
        flat, spec = tree_flatten((real_args, real_kwargs))
        halves = (torch.float16, torch.bfloat16)
        up = [a.float() if isinstance(a, torch.Tensor) and a.dtype in halves else a for a in flat]
        up_args, up_kwargs = tree_unflatten(up, spec)
        with torch._C._DisableAutocast():
            out = func(*up_args, **up_kwargs)
        originals = {id(u): a for a, u in zip(flat, up) if u is not a}
        for a, u in zip(flat, up):
            if u is not a:
                a.copy_(u)  # in-place ops wrote into the float32 copy
        fake_leaves, _ = tree_flatten(fake_out)
        out_leaves, out_spec = tree_flatten(out)
        cast = []
        for o, f in zip(out_leaves, fake_leaves):
            if isinstance(o, torch.Tensor) and id(o) in originals:
                cast.append(originals[id(o)])
            elif isinstance(o, torch.Tensor) and isinstance(f, torch.Tensor):
                cast.append(o.to(f.dtype))
            else:
                cast.append(o)
        return tree_unflatten(cast, out_spec)

    def _wrap(self, func, out, out_devices, flat, target_cuda):
        by_value = {id(a.cpu_value): a for a in flat if isinstance(a, SimCudaTensor)}
        out_leaves, out_spec = tree_flatten(out)
        tensor_leaves = [o for o in out_leaves if isinstance(o, torch.Tensor)]
        devices = iter(out_devices if len(out_devices) == len(tensor_leaves) else ["cuda" if target_cuda else "cpu"] * len(tensor_leaves))
        # a view shares its base's version counter, so it must be an inference tensor exactly when its base is one
        # (a view of a model weight taken under ComfyUI's inference_mode is a normal tensor)
        is_view = any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)
        base = next((a for a in flat if isinstance(a, SimCudaTensor)), None)
        inference = base.is_inference() if is_view and base is not None else torch.is_inference_mode_enabled()
        wrapped = []
        for o in out_leaves:
            if not isinstance(o, torch.Tensor):
                wrapped.append(o)
            elif next(devices) != "cuda":
                wrapped.append(o)
            elif id(o) in by_value:  # in-place op or out=: the same tensor object comes back
                wrapped.append(by_value[id(o)])
            else:
                with torch.inference_mode(inference):
                    wrapped.append(SimCudaTensor(o))
        return tree_unflatten(wrapped, out_spec)

    # --- the outermost dispatch (factories, and ops on plain CPU tensors)
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        if any(isinstance(a, SimCudaTensor) for a in flat) or any(_is_cuda_device(a) for a in flat):
            return self.run_op(func, args, kwargs)
        return func(*args, **kwargs)


@contextmanager
def simulated_cuda(skip_paths: tuple = ()):
    """``with simulated_cuda() as sim:`` run code as if ComfyUI's compute device were a CUDA GPU."""
    with SimulatedCuda(skip_paths) as sim:
        yield sim


def main_requires_stub() -> None:
    """Exit with a one-line reason when a scenario script is started without the stub."""
    if not stub_is_loaded():
        sys.exit("tests/fakecuda: start this script through simcuda.simulated_cuda_env() (the CUDA runtime stub is not preloaded)")
