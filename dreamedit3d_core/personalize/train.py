"""One training loop for both personalisation phases: resumable, interruptible, NaN-safe.

The phase modules supply a ``step_fn`` (forward pass and loss) and the trainable tensors; this loop owns the rest:
backward, gradient clipping, the optimiser step, progress and previews, and the training-state checkpoints.

A checkpoint holds the trainable tensors, the optimiser (and grad-scaler) state, the number of completed steps, the
state of the run's random generator and the loss history, plus a *fingerprint* of what the state belongs to (base
model hash, tokens, components, phase, trainable set). Resuming checks the fingerprint, so a file from another model
or another component set is refused instead of silently producing garbage. Every random draw of a step comes from
one CPU ``torch.Generator``; restoring its state makes a resumed run take the same path as an uninterrupted one.
Checkpoints are written atomically (temp file + rename) under new names, never over a file that was already there;
the previous checkpoint of the same run is removed only after the new one is in place.

A finished run keeps its final state file (``<prefix>-step*-done.pt``): it is the only copy of the result on disk
until the caller has written the tokens (or model) elsewhere. The caller then calls :meth:`TrainResult.release`,
which deletes it; a crash before that loses nothing (resuming from the file returns the finished result without
another step). The next finished run with the same prefix in the same folder replaces it, so they never pile up;
:func:`latest_checkpoint` (what to resume) offers only interrupted runs' states.

Without a ``progress`` hook the loop shows a tqdm bar (steps, loss, it/s, ETA) on stderr; a caller that passes its
own hook gets no bar.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from ..errors import Interrupted, TrainingError
from ..progress import ConsoleProgress, Progress  # ConsoleProgress re-exported in __all__
from ..storage import atomic_write, unique_path
from ..types import ConfigDict  # noqa: F401  (re-exported: batch/plan.py imports it from here)

CHECKPOINT_FORMAT = "dreamedit3d.train-state"
CHECKPOINT_VERSION = 1


@contextlib.contextmanager
def frozen(model):
    """Freeze every weight of an MVDreamModel for the duration; restore the previous flags afterwards.

    The phases then switch on exactly what they train (token rows, UNet, adapter, text tower).
    """
    modules = [m for m in (model.unet, model.vae, model.text_encoder) if m is not None]
    flags = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@dataclass
class StepOutput:
    """What a phase's ``step_fn`` returns: the loss to minimise, plain numbers to report, preview context."""

    loss: torch.Tensor
    info: dict = field(default_factory=dict)
    preview_context: Any = None


@dataclass
class TrainResult:
    """What a training run did.

    Attributes:
        steps_done: completed steps (resumed ones included); losses, infos: per step, the resumed history included.
        last_checkpoint: the finished run's state file (None without a checkpoint folder). It stays on disk until
            :meth:`release`: until then it is the run's only saved copy.
        keep: ``CheckpointPolicy.keep_final``: :meth:`release` leaves the file in place.
    """

    steps_done: int
    losses: list
    infos: list
    last_checkpoint: Optional[Path] = None
    keep: bool = False

    def release(self) -> None:
        """Delete the final state file; call it once what the run learned is saved elsewhere (idempotent)."""
        if self.keep or self.last_checkpoint is None:
            return
        if self.last_checkpoint.exists():
            self.last_checkpoint.unlink()
        self.last_checkpoint = None


@dataclass
class PersonalizationResult:
    """What a personalisation phase returns: the model (trained in place), the tokens, and the run.

    Call :meth:`release` after saving ``tokens`` (and the model in phase 2) to delete the run's final state file.
    """

    model: Any
    tokens: Any  # TokenSet
    training: TrainResult

    def release(self) -> None:
        self.training.release()


@dataclass
class CheckpointPolicy:
    """Where and how often training state is saved.

    Attributes:
        directory: folder for state files; None disables checkpointing (an interrupted run cannot resume then).
        every: save every ``every`` completed steps (0: only on interruption, NaN and at the end).
        prefix: file name prefix, e.g. ``"phase1"`` gives ``phase1-step000040.pt``.
        keep_final: keep the state written at the last step even after :meth:`TrainResult.release`.
    """

    directory: Optional[os.PathLike] = None
    every: int = 100
    prefix: str = "train"
    keep_final: bool = False


def _cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu").clone()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def read_checkpoint(path: os.PathLike) -> dict:
    """Load a training-state file (tensors only: ``weights_only`` unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"resume file {path} does not exist")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(f"resume file {path.name} cannot be read ({type(exc).__name__}: {exc}); it is not a training state") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path.name} is not a DreamEdit3D training state (no '{CHECKPOINT_FORMAT}' marker)")
    return state


def latest_checkpoint(directory: os.PathLike, prefix: str) -> Optional[Path]:
    """The state file of the furthest step named ``<prefix>-step*.pt`` in ``directory``, or None.

    That is the state of an interrupted run. A finished run's kept result (``<prefix>-step*-done.pt``, see
    :func:`finished_checkpoint`) is not offered for resuming: a new run with the same prefix starts afresh.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = sorted((p for p in directory.glob(f"{prefix}-step*.pt") if not _is_finished(p)),
                   key=lambda p: (p.name.split("-step")[-1], p.stat().st_mtime))
    return found[-1] if found else None


def finished_checkpoint(directory: os.PathLike, prefix: str) -> Optional[Path]:
    """The kept final state of the last finished run, ``<prefix>-step*-done.pt`` in ``directory``, or None.

    It holds what that run learned until the caller released it (:meth:`TrainResult.release`); passing it as
    ``resume_from`` returns that result without another step (recovery after a crash before saving).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = sorted(_finished_states(directory, prefix), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _finished_states(directory: Path, prefix: str) -> list:
    return [p for p in directory.glob(f"{prefix}-step*.pt") if _is_finished(p)]


def _is_finished(path: Path) -> bool:
    return re.search(r"-step\d+-done(_\d+)?\.pt$", path.name) is not None  # "<prefix>-step000400-done.pt" (or "_00001")


def check_fingerprint(state: dict, fingerprint: Mapping[str, Any], path: os.PathLike) -> None:
    """Raise TrainingError naming every field where the resume file differs from this run."""
    saved = state.get("fingerprint", {})
    diffs = [f"{k}: file has {saved.get(k)!r}, this run has {v!r}" for k, v in fingerprint.items() if saved.get(k) != v]
    if diffs:
        raise TrainingError(
            f"resume file {Path(path).name} belongs to another run ({'; '.join(diffs)}); "
            "start without resuming or pick the matching file"
        )


class _Saver:
    def __init__(self, policy: Optional[CheckpointPolicy]):
        self.policy = policy or CheckpointPolicy()
        self.last: Optional[Path] = None
        self.last_step: Optional[int] = None

    @property
    def enabled(self) -> bool:
        return self.policy.directory is not None

    def save(self, state: dict, step: int) -> Optional[Path]:
        """An intermediate state (interruption, NaN, every N steps); replaces the run's previous one."""
        if not self.enabled or step == self.last_step:
            return self.last
        return self._write(state, step, f"{self.policy.prefix}-step{step:06d}.pt")

    def save_final(self, state: dict, step: int) -> Optional[Path]:
        """The finished run's state, kept until released; replaces the run's intermediate state and the results of
        earlier finished runs with this prefix in this folder (the newest result is the one the caller works on)."""
        if not self.enabled:
            return None
        older = set(_finished_states(Path(self.policy.directory), self.policy.prefix))
        path = self._write(state, step, f"{self.policy.prefix}-step{step:06d}-done.pt")
        for stale in older - {path}:
            stale.unlink(missing_ok=True)
        return path

    def _write(self, state: dict, step: int, name: str) -> Path:
        path = unique_path(Path(self.policy.directory) / name)
        atomic_write(path, lambda tmp: torch.save(state, tmp))
        previous, self.last, self.last_step = self.last, path, step
        if previous is not None and previous != path and previous.exists():
            previous.unlink()
        return path


def run_training(
    step_fn: Callable[[int], StepOutput],
    parameters: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    generator: torch.Generator,
    fingerprint: Mapping[str, Any],
    progress: Optional[Progress] = None,
    checkpoint: Optional[CheckpointPolicy] = None,
    resume_from: Optional[os.PathLike] = None,
    max_grad_norm: Optional[float] = 1.0,
    scaler: Optional[Any] = None,
    preview_fn: Optional[Callable[[Any], Any]] = None,
    preview_every: int = 0,
    after_step: Optional[Callable[[], None]] = None,
    learning_rates: Optional[list] = None,
    description: str = "training",
) -> TrainResult:
    """Run ``total_steps`` optimisation steps (continuing a resumed run where it stopped).

    Args:
        step_fn: ``step_fn(step_index) -> StepOutput``; draws all randomness from ``generator``.
        parameters: {name: trainable tensor} saved in and restored from checkpoints (order matters for the optimiser).
        optimizer: over exactly ``parameters``.
        total_steps: the run's length in steps.
        generator: the run's CPU random generator.
        fingerprint: plain values identifying what the state belongs to (checked on resume).
        progress: reporting/interruption hook; ``check_interrupt`` is called before every step. None: a tqdm bar
            (:class:`ConsoleProgress`) labelled ``description``.
        checkpoint: where/how often to save training state; the final state is always written and kept until
            :meth:`TrainResult.release`.
        resume_from: a state file written by this function for the same fingerprint.
        max_grad_norm: clip the global gradient norm to this (None: no clipping).
        scaler: a ``torch.amp.GradScaler`` for fp16 autocast, or None.
        preview_fn: ``preview_fn(preview_context) -> image``, called every ``preview_every`` steps.
        after_step: called after every optimiser step (e.g. to re-impose frozen values).
        learning_rates: per param-group learning rates to impose after loading a resume file (None: keep the file's).

    Returns:
        TrainResult with the loss of every step done in this call (and the resumed history before it).

    Raises:
        TrainingError: NaN/inf loss or gradient (the message names the step and the last good checkpoint),
            or a resume file that does not belong to this run.
    """
    console = ConsoleProgress(description) if progress is None else None
    progress = console or progress
    saver = _Saver(checkpoint)
    params = dict(parameters)
    start, losses, infos = 0, [], []
    if resume_from is not None:
        start, losses = _resume(resume_from, fingerprint, params, optimizer, scaler, generator, learning_rates,
                                total_steps)

    def snapshot(step_done: int, rng_state: torch.Tensor) -> dict:
        return _snapshot(fingerprint, step_done, total_steps, params, optimizer, scaler, rng_state, losses)

    trainable = [p for p in params.values() if p.requires_grad]
    completed = start
    rng_state = generator.get_state()
    try:
        for step in range(start, total_steps):
            progress.check_interrupt()
            out = step_fn(step)
            loss_value, norm = _optimizer_step(out, step, optimizer, trainable, scaler, max_grad_norm)
            if after_step is not None:
                after_step()
            completed = step + 1
            rng_state = generator.get_state()
            losses.append(loss_value)
            info = dict(out.info, loss=loss_value, grad_norm=norm)
            infos.append(info)
            preview = None
            if preview_fn is not None and preview_every and (completed % preview_every == 0 or completed == total_steps):
                preview = preview_fn(out.preview_context)
            progress.update(completed, total_steps, preview, **info)
            if saver.enabled and saver.policy.every and completed % saver.policy.every == 0 and completed < total_steps:
                saver.save(snapshot(completed, rng_state), completed)
    except _NonFinite as exc:
        path = saver.save(snapshot(completed, rng_state), completed) if saver.enabled else None
        where = (f"the last good state (step {completed}) is saved in {path}" if path is not None
                 else "no checkpoint was written (give a checkpoint folder to keep one)")
        raise TrainingError(
            f"{exc.what} at step {exc.step} of {total_steps}; training stopped and nothing was updated by that step; "
            f"{where}. Lower the learning rate or use fp32, then resume"
        ) from None
    except BaseException:
        # interruption or crash: keep what is done so the run can resume exactly here
        if saver.enabled and completed > start:
            saver.save(snapshot(completed, rng_state), completed)
        raise
    finally:
        if console is not None:
            console.close()
    # the finished run's state stays until the caller has saved what it learned (TrainResult.release)
    if resume_from is not None and completed == start:
        final = Path(resume_from)  # resumed a finished run: that file already holds exactly this state
    else:
        final = saver.save_final(snapshot(completed, rng_state), completed)
    return TrainResult(steps_done=completed, losses=losses, infos=infos, last_checkpoint=final,
                       keep=saver.policy.keep_final)


def _resume(path: os.PathLike, fingerprint: Mapping[str, Any], params: dict, optimizer, scaler, generator,
            learning_rates: Optional[list], total_steps: int) -> tuple:
    """Load a state file into the parameters, optimiser, scaler and generator; returns ``(start step, losses)``."""
    state = read_checkpoint(path)
    check_fingerprint(state, fingerprint, path)
    missing = sorted(set(params) - set(state["params"]))
    if missing:
        raise TrainingError(f"resume file lacks trainable tensors {missing[:3]}...; it belongs to another run")
    with torch.no_grad():
        for name, p in params.items():
            src = state["params"][name]
            if src.shape != p.shape:
                raise TrainingError(f"resume file has {name} of shape {list(src.shape)}, this run needs {list(p.shape)}")
            p.copy_(src.to(device=p.device, dtype=p.dtype))
    optimizer.load_state_dict(state["optimizer"])
    if learning_rates is not None:
        for group, lr in zip(optimizer.param_groups, learning_rates):
            group["lr"] = lr
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    generator.set_state(state["rng"])
    start = int(state["step"])
    if start > total_steps:
        raise TrainingError(f"resume file is at step {start}, beyond the {total_steps} steps asked for; ask for more steps")
    return start, list(state.get("losses", []))


def _snapshot(fingerprint, step_done: int, total_steps: int, params: dict, optimizer, scaler, rng_state, losses) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "fingerprint": dict(fingerprint),
        "step": step_done,
        "total_steps": total_steps,
        "params": {k: v.detach().to("cpu").clone() for k, v in params.items()},
        "optimizer": _cpu(optimizer.state_dict()),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state.clone(),
        "losses": list(losses),
    }


def _optimizer_step(out: StepOutput, step: int, optimizer, trainable: list, scaler, max_grad_norm) -> tuple:
    """Backward, clip, step and zero the gradients; returns ``(loss, grad norm)``; raises _NonFinite before updating."""
    loss_value = float(out.loss.detach())
    if not math.isfinite(loss_value):
        raise _NonFinite(f"loss became {loss_value}", step + 1)
    if scaler is not None:
        scaler.scale(out.loss).backward()
        scaler.unscale_(optimizer)
    else:
        out.loss.backward()
    if max_grad_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    else:
        norm = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in trainable if p.grad is not None))
    if scaler is not None:
        scaler.step(optimizer)  # skips the step itself on inf/NaN gradients and lowers the scale
        scaler.update()
    else:
        if not math.isfinite(float(norm)):
            optimizer.zero_grad(set_to_none=True)
            raise _NonFinite(f"gradient norm became {float(norm)}", step + 1)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_value, float(norm)


class _NonFinite(Exception):
    def __init__(self, what: str, step: int):
        super().__init__(what)
        self.what = what
        self.step = step


__all__ = [
    "CheckpointPolicy",
    "ConfigDict",
    "ConsoleProgress",
    "PersonalizationResult",
    "StepOutput",
    "TrainResult",
    "check_fingerprint",
    "frozen",
    "finished_checkpoint",
    "latest_checkpoint",
    "read_checkpoint",
    "run_training",
    "Interrupted",
]
