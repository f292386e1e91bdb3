"""One batch worker: holds the base checkpoint and runs units (a personalisation or an edit) with the core library.

The same class runs in-process (``--workers 0``) and as a Ray actor (one per GPU, :mod:`.ray_pool`). The base model
is loaded once, in the constructor; each unit works on a deep copy of it (tokens and LoRA are added in place by the
library), so no unit ever sees another unit's changes. A unit never raises for a bad input: it returns a result with
status "failed" and a one-line message, and the batch goes on. It raises only for a stop request
(:class:`~dreamedit3d_core.errors.Interrupted`), after the training loop saved a resumable checkpoint.

Everything a unit writes goes into its own folder of the output, under fixed names; a file left by a killed attempt
of the same unit is replaced (it came from the same inputs). The unit's ``done.json`` is written last. A
personalisation is followed by its token evidence (:mod:`.evidence`) unless the batch switched it off.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

import torch

from ..errors import ConfigError, DreamEdit3DError, Interrupted
from .evidence import REFERENCE, config_from_dict, evidence_unit, summary_rows
from .manifest import done_record_path, finished_record, make_record
from .plan import BatchSettings
from .store import OutputStore, canonical_safetensors

SOURCE_VIEWS = "source_views.png"
MASKS = "masks.png"
TOKENS_PHASE1 = "tokens_phase1.safetensors"
TOKENS = "tokens.safetensors"
LORA = "unet_lora.safetensors"
FULL_UNET = "finetuned_mvdream.safetensors"
TRAIN_DIR = "train"
WORKER_NOTE = "worker.json"
EDITED_VIEWS = "views.png"
EDITED_GLB = "edited.glb"
METRICS = "metrics.json"
SOURCE_CAPTION = "a 3d asset"


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, DreamEdit3DError) else f"{type(exc).__name__}: {text}"


def _failure(exc: BaseException) -> dict:
    # our own errors come from the inputs (bad file, empty component, unknown token): the same inputs fail the same
    # way, so a re-run does not try them again; anything else (out of memory, ...) may pass next time
    return {"status": "failed", "message": _one_line(exc), "input_error": isinstance(exc, DreamEdit3DError)}


def _drop_training_states(train_dir: Path, prefix: str) -> None:
    """Delete a finished phase's training-state files, periodic and final (its saved outputs replace them)."""
    for state in train_dir.glob(f"{prefix}-*.pt"):
        state.unlink()


class _TrainingHook:
    """Progress hook of the training loops: mirrors checkpoints of a URL output, and relays stop requests."""

    def __init__(self, store: OutputStore, train_rel: str, should_stop: Optional[Callable[[], bool]]):
        self.store, self.train_rel, self.should_stop = store, train_rel, should_stop
        self.begin()

    def begin(self) -> None:
        """Start counting a new phase's steps."""
        self.first_step, self.steps = None, 0

    def resumed_from(self, resumed: bool, total: int) -> int:
        """The step the phase started at (0: from scratch)."""
        if self.first_step is not None:
            return self.first_step - 1
        return total if resumed else 0  # resumed from a state that had every step done

    def update(self, step, total, preview=None, **info) -> None:
        self.first_step = step if self.first_step is None else self.first_step
        self.steps += 1
        self.store.sync_folder(self.train_rel)  # the checkpoint of step - 1 is complete now (no-op for local output)

    def check_interrupt(self) -> None:
        _check_stop(self.should_stop)


class _StopCheck:
    """Progress hook of a stage without steps to show (the token report): relays stop requests only."""

    def __init__(self, should_stop: Optional[Callable[[], bool]]):
        self.should_stop = should_stop

    def update(self, step, total, preview=None, **info) -> None:
        return None

    def check_interrupt(self) -> None:
        _check_stop(self.should_stop)


def _check_stop(should_stop: Optional[Callable[[], bool]]) -> None:
    if should_stop is not None and should_stop():
        raise Interrupted("batch stopped on request; re-run it to resume where it stopped")


class BatchWorker:
    """Runs batch units on one device with one loaded base model.

    Args:
        checkpoint: the MVDream file (the same path on every machine of a cluster).
        output: the output root (local folder or fsspec URL).
        settings: :meth:`BatchSettings.to_dict` of the batch.
        device: "auto" (CUDA when present, the GPU Ray assigned to this actor), "cpu", "cuda:1", ...
        scratch: local scratch folder for a URL output.
        clip, dino: metric model files/folders (``metrics.load_metric_clip`` / ``load_metric_dino``), or None.
        token_evidence: the token report's settings (``evidence.config_to_dict``) run after each personalisation,
            or None for none.
    """

    def __init__(self, checkpoint: str, output: str, settings: dict, device: str = "auto", scratch: Optional[str] = None,
                 clip: Optional[str] = None, dino: Optional[str] = None, token_evidence: Optional[dict] = None):
        from ..mvdream.checkpoint import load_mvdream

        self.device = resolve_device(device)
        self.settings = BatchSettings.from_dict(settings)
        self.store = OutputStore(output, scratch)
        t0 = time.perf_counter()
        self.base = load_mvdream(checkpoint, device=self.device)
        self.load_s = time.perf_counter() - t0
        self._metric_paths = (clip, dino)
        self._metric_models = None
        self._personalized = None  # (key, model, tokens, asset, render, masks) of the last personalisation edited
        self.token_evidence = dict(token_evidence) if token_evidence else None

    def info(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "device": str(self.device), "load_s": self.load_s}

    # ---------------------------------------------------------------------------------------------- entry
    def run(self, unit: dict, should_stop: Optional[Callable[[], bool]] = None) -> dict:
        """Run one unit (a dict from ``PersonalizeUnit/EditUnit.to_dict``); returns its result, never raises for it."""
        t0 = time.perf_counter()
        base = {"unit_id": unit["unit_id"], "key": unit["key"], "kind": unit["kind"], "worker": self.info()}
        evidence = None
        try:
            if unit["kind"] == "personalize":
                record, cached = self._personalize(unit, should_stop)
                if self.token_evidence is not None:
                    evidence = self._token_evidence(unit, should_stop)
                    cached = cached and evidence["status"] == "done" and evidence["cached"]
            else:
                record, cached = self._edit(unit)
        except Interrupted:
            raise
        except Exception as exc:  # one unit's failure is reported in the batch report; the other units go on
            return {**base, **_failure(exc), "wall_s": time.perf_counter() - t0}
        done = {**base, "status": "done", "cached": cached, "record": record, "wall_s": time.perf_counter() - t0}
        return done if evidence is None else {**done, "evidence": evidence}

    # ------------------------------------------------------------------------------------------- helpers
    def _finished(self, unit: dict) -> Optional[dict]:
        return finished_record(self.store, SimpleNamespace(folder=unit["folder"], key=unit["key"]))

    def _scene(self, spec: dict):
        from ..assets import load_asset
        from ..cameras import MVCameras
        from ..masks import masks_from_parts
        from ..render import render_views

        s = self.settings
        asset = load_asset(spec["path"], front_axis=spec["front_axis"], up_axis=spec["up_axis"], device=self.device)
        cameras = MVCameras.mvdream_default(elevation_deg=s.elevation_deg, fov_deg=s.fov_deg)
        render = render_views(asset, cameras, resolution=s.resolution, device=self.device)
        masks = masks_from_parts(render, spec["components"])
        return asset, render, masks

    def _put_png(self, rel: str, image: torch.Tensor, record: dict) -> str:
        """A PNG with provenance (``provenance.save_png``) under a fixed name, replacing an unfinished attempt's."""
        from ..provenance import save_png

        self.store.write_with(rel, lambda folder: save_png(image, folder / "image.png", record))
        return rel

    @staticmethod
    def _row(views: torch.Tensor) -> torch.Tensor:
        """float [V, 3, H, W] -> [3, H, V*W] (the views side by side: front, right, back, left)."""
        return torch.cat(list(views.detach().float().cpu().clamp(0, 1)), dim=2)

    def _hashes(self, rels) -> dict:
        return {rel: self.store.sha256(rel) for rel in rels}

    # -------------------------------------------------------------------------------------- personalise
    def _personalize(self, unit: dict, should_stop) -> tuple:
        from ..contact_sheet import contact_sheet
        from ..provenance import build_record

        record = self._finished(unit)
        if record is not None:
            return record, True
        folder, spec = unit["folder"], unit["asset"]
        for rel in (folder, f"{folder}/{TRAIN_DIR}"):  # a killed earlier attempt's temporary files
            self.store.clear_leftovers(rel)
        times, steps_run, resumed_from = {}, {}, {}
        t = time.perf_counter()
        asset, render, masks = self._scene(spec)
        times["render_s"] = time.perf_counter() - t
        about = build_record(base_model_hash=self.base.model_hash, asset=spec["name"], components=spec["components"],
                             batch_unit=unit["unit_id"], batch_key=unit["key"])
        outputs = [self._put_png(f"{folder}/{SOURCE_VIEWS}", self._row(render.rgb), about)]
        mask_views = masks.masks.float()[:, :, None].expand(-1, -1, 3, -1, -1).reshape(-1, 3, *masks.masks.shape[-2:])
        sheet, _ = contact_sheet(mask_views, labels=list(masks.names), num_views=render.rgb.shape[0])
        outputs.append(self._put_png(f"{folder}/{MASKS}", sheet, about))

        train_rel = f"{folder}/{TRAIN_DIR}"
        train_dir = self.store.fetch_folder(train_rel)
        # who is training this asset (a person watching the cluster, or a test killing that worker)
        self.store.write_json(f"{train_rel}/{WORKER_NOTE}", {**self.info(), "unit": unit["unit_id"]})
        hook = _TrainingHook(self.store, train_rel, should_stop)

        t = time.perf_counter()
        tokens1, tokens1_rel = self._learn_tokens(folder, render, masks, train_dir, hook, steps_run, resumed_from)
        outputs.append(tokens1_rel)
        times["textual_inversion_s"] = time.perf_counter() - t

        t = time.perf_counter()
        tokens2, saved = self._finetune(folder, render, masks, tokens1, train_dir, hook, steps_run, resumed_from)
        outputs += saved
        self.store.remove(f"{train_rel}/{WORKER_NOTE}")  # training is over: nothing of it stays in the output
        self.store.sync_folder(train_rel)
        if train_dir.is_dir() and not any(train_dir.iterdir()):
            train_dir.rmdir()
        times["finetune_s"] = time.perf_counter() - t

        record = make_record(unit, self._hashes(outputs), times_s=times, steps_run=steps_run,
                             resumed_from_step=resumed_from, components=list(masks.names),
                             tokens=list(tokens2.tokens), worker=self.info())
        self.store.write_json(done_record_path(folder), record)
        return record, False

    def _learn_tokens(self, folder: str, render, masks, train_dir, hook, steps_run: dict, resumed_from: dict) -> tuple:
        """Phase 1 (textual inversion) of one asset, resumed from its last training checkpoint; the saved tokens of an
        earlier attempt when phase 1 finished then. Returns (tokens, their file's output-relative path)."""
        from ..personalize.copies import model_for_token_training
        from ..personalize.textual_inversion import TIConfig, train_textual_inversion
        from ..personalize.train import latest_checkpoint
        from ..tokens import load_tokens, save_tokens

        s, tokens_rel = self.settings, f"{folder}/{TOKENS_PHASE1}"
        local = self.store.fetch(tokens_rel)
        if local is not None:  # phase 1 finished in an earlier attempt
            steps_run["textual_inversion"] = 0
            _drop_training_states(train_dir, "phase1")  # (if that attempt was killed before it removed them)
            return load_tokens(local), tokens_rel
        model = model_for_token_training(self.base)  # its own text tower; the base's UNet and VAE, frozen, shared
        resume = latest_checkpoint(train_dir, "phase1")
        config = TIConfig(steps=s.ti_steps, lr=s.ti_lr, seed=s.seed, resolution=s.resolution,
                          checkpoint_every=s.checkpoint_every, mixed_precision=s.mixed_precision)
        hook.begin()
        tokens = train_textual_inversion(model, render, masks, config, progress=hook, resume_from=resume,
                                         checkpoint_dir=train_dir)
        del model
        steps_run["textual_inversion"] = hook.steps
        resumed_from["textual_inversion"] = hook.resumed_from(resume is not None, config.steps)
        canonical_safetensors(save_tokens(tokens, self.store.path(tokens_rel), overwrite=True))
        self.store.publish(tokens_rel)
        _drop_training_states(train_dir, "phase1")  # the saved tokens replace them
        self.store.sync_folder(f"{folder}/{TRAIN_DIR}")
        return tokens, tokens_rel

    def _finetune(self, folder: str, render, masks, tokens1, train_dir, hook, steps_run: dict,
                  resumed_from: dict) -> tuple:
        """Phase 2 (fine-tuning, LoRA or full) of one asset from the base and the phase-1 tokens, resumed from its last
        training checkpoint; saves and publishes the tokens and the weights. Returns (tokens, [their files' paths])."""
        from ..personalize.copies import model_for_finetuning
        from ..personalize.finetune import FTConfig, finetune, save_finetuned_model, save_unet_lora
        from ..personalize.train import latest_checkpoint
        from ..tokens import save_tokens

        s = self.settings
        # phase 2 starts from the base + the saved phase-1 tokens, however phase 1 ended; its own UNet (float32 masters
        # for full fine-tuning) and text tower, the base's VAE shared
        model = model_for_finetuning(self.base, s.ft_mode)
        resume = latest_checkpoint(train_dir, "phase2")
        config = FTConfig(steps=s.ft_steps, lr=s.finetune_lr, mode=s.ft_mode, lora_rank=s.lora_rank,
                          lora_alpha=float(s.lora_rank), seed=s.seed, resolution=s.resolution,
                          checkpoint_every=s.checkpoint_every, mixed_precision=s.mixed_precision)
        hook.begin()
        model, tokens = finetune(model, render, masks, tokens1, config, progress=hook, resume_from=resume,
                                 checkpoint_dir=train_dir)
        steps_run["finetune"] = hook.steps
        resumed_from["finetune"] = hook.resumed_from(resume is not None, config.steps)
        tokens_rel = f"{folder}/{TOKENS}"
        canonical_safetensors(save_tokens(tokens, self.store.path(tokens_rel), overwrite=True))
        if s.ft_mode == "lora":
            weights_rel = f"{folder}/{LORA}"
            canonical_safetensors(save_unet_lora(model, self.store.path(weights_rel), overwrite=True))
        else:
            weights_rel = f"{folder}/{FULL_UNET}"
            target = self.store.path(weights_rel)
            if target.exists():
                target.unlink()  # an unfinished attempt's file (save_mvdream never overwrites)
            canonical_safetensors(save_finetuned_model(model, target))
        del model
        for rel in (tokens_rel, weights_rel):
            self.store.publish(rel)
        _drop_training_states(train_dir, "phase2")
        return tokens, [tokens_rel, weights_rel]

    # --------------------------------------------------------------------------------------------- edit
    def _load_personalized(self, parent: dict):
        """Base + the personalisation's saved tokens and weights (+ its render), cached for the asset's next edit."""
        from ..mvdream.checkpoint import load_mvdream
        from ..personalize.copies import model_for_finetuning
        from ..personalize.finetune import load_unet_lora
        from ..tokens import apply_tokens, load_tokens

        if self._personalized is not None and self._personalized[0] == parent["key"]:
            return self._personalized[1:]
        self._personalized = None  # free the previous asset's model first
        if self._finished(parent) is None:
            raise ConfigError(f"the personalisation of {parent['unit_id']} is not finished; run the batch again to do it")
        folder = parent["folder"]
        tokens = load_tokens(self.store.fetch(f"{folder}/{TOKENS}"))
        if self.settings.ft_mode == "lora":
            model = model_for_finetuning(self.base, "lora")  # the adapter goes on its own UNet; the VAE is shared
            load_unet_lora(model, self.store.fetch(f"{folder}/{LORA}"))
        else:
            model = load_mvdream(self.store.fetch(f"{folder}/{FULL_UNET}"), device=self.device)
        apply_tokens(model, tokens)
        asset, render, masks = self._scene(parent["asset"])
        self._personalized = (parent["key"], model, tokens, asset, render, masks)
        return self._personalized[1:]

    # ------------------------------------------------------------------------------------------ evidence
    def _token_evidence(self, unit: dict, should_stop) -> dict:
        """The token report of a finished personalisation (the saved model and tokens, the base model as reference),
        written into its ``token_evidence/`` folder with a done record; an earlier complete one is kept as it is.

        Returns {"status": "done", "cached", "record"} or {"status": "failed", "message", "input_error"}: a report that
        cannot be made does not fail the personalisation (its edits go on).
        """
        from ..token_report import save_token_report, token_report

        target = evidence_unit(unit["folder"], unit["key"], self.token_evidence)
        record = finished_record(self.store, target)
        if record is not None:
            return {"status": "done", "cached": True, "record": record}
        t0 = time.perf_counter()
        try:
            self.store.clear_leftovers(target.folder)  # a killed earlier attempt's temporary files
            model, tokens, _, render, masks = self._load_personalized(unit)  # (kept loaded for the asset's edits)
            report = token_report(model, tokens, render, masks, config_from_dict(self.token_evidence),
                                  reference_model=self.base, progress=_StopCheck(should_stop))
            folder = self.store.path(target.folder)
            folder.mkdir(parents=True, exist_ok=True)
            written = save_token_report(report, folder, unit["asset"]["name"], overwrite=True)
            rels = {kind: f"{target.folder}/{path.name}" for kind, path in written.items()}
            for rel in rels.values():
                self.store.publish(rel)
        except Interrupted:
            raise
        except Exception as exc:
            return {**_failure(exc), "key": target.key}
        record = make_record({"kind": "token_evidence", "unit_id": f"{unit['unit_id']}/token_evidence",
                              "key": target.key, "folder": target.folder}, self._hashes(rels.values()),
                             json=rels["json"], heatmap=rels["heatmap"], config=self.token_evidence,
                             reference=REFERENCE, tokens=summary_rows(report.table),
                             times_s={"token_report_s": time.perf_counter() - t0}, worker=self.info())
        self.store.write_json(done_record_path(target.folder), record)
        return {"status": "done", "cached": False, "record": record}

    def _metrics(self):
        from ..metrics import load_metric_clip, load_metric_dino

        if self._metric_models is None:
            clip, dino = self._metric_paths
            self._metric_models = (load_metric_clip(clip, device=self.device) if clip else None,
                                   load_metric_dino(dino, device=self.device) if dino else None)
        return self._metric_models

    def _edit(self, unit: dict) -> tuple:
        from ..contact_sheet import strip_suffixes
        from ..lifting import export_mesh, lift_alpha, lift_to_mesh
        from ..lifting.export import LIFT_STATS_KEY
        from ..metrics import evaluate_edit
        from ..prompts import DEFAULT_NEGATIVE, compose_prompt
        from ..provenance import build_record, glb_extras
        from ..sampling import sample_views

        record = self._finished(unit)
        if record is not None:
            return record, True
        s, folder = self.settings, unit["folder"]
        self.store.clear_leftovers(folder)  # a killed earlier attempt's temporary files
        times = {}
        t = time.perf_counter()
        model, tokens, asset, render, _ = self._load_personalized(unit["parent"])
        times["load_s"] = time.perf_counter() - t

        t = time.perf_counter()
        negative = DEFAULT_NEGATIVE if s.negative_prompt is None else s.negative_prompt
        cond = compose_prompt(model, unit["prompt"], negative_prompt=negative, tokens=tokens, cameras=render.cameras)
        samples = sample_views(model, cond, method=s.sampler, steps=s.steps, cfg=s.cfg, seed=s.seed,
                               resolution=s.resolution)
        views = samples.images[: cond.num_views]
        times["sample_s"] = time.perf_counter() - t
        facts = dict(cond.provenance)
        about = build_record(prompt=cond.prompts[0], negative_prompt=cond.negative_prompt, seed=samples.seed,
                             sampler=s.sampler, sigmas=samples.sigmas.detach().cpu().double(), cfg=s.cfg, steps=s.steps,
                             base_model_hash=facts.pop("base_model_hash", "") or self.base.model_hash,
                             token_files=facts.pop("token_files", None), asset=unit["parent"]["asset"]["name"],
                             batch_unit=unit["unit_id"], batch_key=unit["key"], **facts)
        outputs = [self._put_png(f"{folder}/{EDITED_VIEWS}", self._row(views), about)]

        t = time.perf_counter()
        alpha = lift_alpha(s.lift_mode, render.alpha)
        mesh = lift_to_mesh(views, render.cameras, alpha=alpha, source=asset, mode=s.lift_mode, grid=s.grid,
                            texture_size=s.texture_size)
        # the lift's numbers without its timings: the same inputs then give the same GLB bytes
        lift_facts = {k: v for k, v in mesh.stats.items()
                      if isinstance(v, (int, float, str, bool)) and not k.endswith("_s")}
        glb_rel = f"{folder}/{EDITED_GLB}"
        extras = glb_extras(about, **{LIFT_STATS_KEY: lift_facts})
        self.store.write_with(glb_rel, lambda folder: export_mesh(mesh, folder / EDITED_GLB, extras=extras))
        outputs.append(glb_rel)
        times["lift_s"] = time.perf_counter() - t

        metric_means = {}
        clip, dino = self._metrics() if any(self._metric_paths) else (None, None)
        if clip is not None or dino is not None:
            t = time.perf_counter()
            table = evaluate_edit(render.rgb, views, SOURCE_CAPTION, strip_suffixes(cond.prompts[0]), clip=clip, dino=dino)
            metrics_rel = f"{folder}/{METRICS}"
            self.store.write_json(metrics_rel, table)
            outputs.append(metrics_rel)
            metric_means = {k: v["mean"] for k, v in table["metrics"].items()}
            times["metrics_s"] = time.perf_counter() - t

        record = make_record(unit, self._hashes(outputs), times_s=times, prompt=unit["prompt"], metrics=metric_means,
                             num_faces=int(mesh.faces.shape[0]), worker=self.info())
        self.store.write_json(done_record_path(folder), record)
        return record, False
