"""``run_batch``: a catalogue of assets × edit prompts through the whole pipeline, resumable, in-process or on Ray.

The driver plans the units (:mod:`.plan`), skips the finished ones (:mod:`.manifest`), hands the rest to workers
(:class:`.worker.BatchWorker`: in this process, or one Ray actor per GPU, :mod:`.ray_pool`), and keeps the manifest,
the progress display and the report (:mod:`.report`) up to date as units finish.

Order of work: an asset's edits become ready when its personalisation is done. An idle worker takes, in this order,
an edit of the asset it personalised or edited last (its model is still loaded), a new personalisation, then any
ready edit. Retrying a unit whose worker died is Ray's job (``max_restarts``/``max_task_retries`` of the actors); the
driver never re-submits a unit on its own.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from ..errors import ConfigError
from .evidence import config_to_dict, evidence_config, evidence_key, finished_evidence
from .manifest import Manifest, finished_record
from .plan import (BatchPlan, BatchSettings, asset_specs, build_plan, find_assets, read_component_manifest,
                   read_prompts)
from .report import SHEETS_DIR, CatalogueReport
from .store import OutputStore


@dataclass
class BatchResult:
    """What a run did. ``computed``/``reused`` list unit ids; ``failed`` maps unit id -> message."""

    plan: BatchPlan
    output: str
    computed: list = field(default_factory=list)
    reused: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    glbs: list = field(default_factory=list)
    results: list = field(default_factory=list)
    workers: list = field(default_factory=list)
    wall_s: float = 0.0
    startup_s: float = 0.0  # from the call until the workers were ready (Ray start, base model loaded)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


class _Publisher:
    """Writes the manifest and the report at most every ``every_s`` seconds while units finish, and at the end.

    Both are rewritten whole (they index every unit), so writing them after each of thousands of units would cost
    O(units²) bytes; the per-unit done records, written by the workers, are what resuming relies on.
    """

    def __init__(self, manifest, report, every_s: float):
        self.manifest, self.report, self.every_s = manifest, report, float(every_s)
        self.last = float("-inf")

    def maybe(self) -> None:
        if time.monotonic() - self.last >= self.every_s:
            self.now()

    def now(self) -> None:
        self.manifest.save()
        self.report.write()
        self.last = time.monotonic()


class _Progress:
    """One line per finished unit and an overall bar (assets, edits, ETA) on stderr."""

    def __init__(self, plan: BatchPlan, enabled: bool, stream=None):
        from tqdm.auto import tqdm

        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.assets_total, self.edits_total = len(plan.personalizations), len(plan.edits)
        self.assets_done = self.edits_done = 0
        self.bar = tqdm(total=plan.num_units, unit="unit", disable=not enabled, file=self.stream, dynamic_ncols=True,
                        desc="batch")
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"assets {self.assets_done}/{self.assets_total}, edits {self.edits_done}/{self.edits_total}",
                                 refresh=False)

    def finished(self, unit, status: str, detail: str) -> None:
        if unit.__class__.__name__ == "EditUnit":
            self.edits_done += 1
        else:
            self.assets_done += 1
        if self.enabled:
            kind = "edit" if unit.__class__.__name__ == "EditUnit" else "personalize"
            self.bar.write(f"{status:>7}  {kind:<11} {unit.unit_id}  {detail}", file=self.stream)
        self.bar.update(1)
        self._postfix()

    def close(self) -> None:
        self.bar.close()


# ----------------------------------------------------------------------------------------------------- pools


class InProcessPool:
    """One worker in this process (``--workers 0``)."""

    def __init__(self, make_worker: Callable[[], "object"], should_stop=None):
        self.worker = make_worker()
        self.slots = [0]
        self.should_stop = should_stop
        self._done: list = []

    def infos(self) -> list:
        return [self.worker.info()]

    def submit(self, slot: int, unit) -> None:
        t0 = time.perf_counter()
        outcome = self.worker.run(unit.to_dict(), self.should_stop)
        outcome["driver_s"] = time.perf_counter() - t0
        self._done.append((slot, unit, outcome))

    def wait(self) -> tuple:
        return self._done.pop(0)

    def busy(self) -> int:
        return len(self._done)

    def close(self) -> None:
        self.worker = None


# ------------------------------------------------------------------------------------------------------ driver


def _detail(result: dict, store: OutputStore) -> str:
    if result["status"] != "done":
        return result.get("message", "")
    record = result["record"]
    times = record.get("times_s", {})
    spent = ", ".join(f"{k[:-2]} {v:.1f}s" for k, v in times.items())
    glb = next((rel for rel in record.get("outputs", {}) if rel.endswith(".glb")), None)
    where = f" -> {store.url(glb)}" if glb else ""
    evidence = result.get("evidence")
    if evidence is not None and evidence["status"] == "done" and not evidence["cached"]:
        spent += f", token report {evidence['record']['times_s']['token_report_s']:.1f}s"
    elif evidence is not None and evidence["status"] != "done":
        spent += f"; token report failed: {evidence.get('message', '')}"
    return ("(already done)" if result.get("cached") else spent) + where


def run_batch(
    assets: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
    prompts: Union[str, os.PathLike, Sequence[str]],
    checkpoint: Union[str, os.PathLike],
    output: Union[str, os.PathLike],
    components: Optional[str] = None,
    component_manifest: Optional[Union[str, os.PathLike, dict]] = None,
    settings: Optional[BatchSettings] = None,
    workers: int = 0,
    ray_address: Optional[str] = None,
    gpus_per_worker: Optional[float] = None,
    cpus_per_worker: float = 1.0,
    worker_memory_gb: Optional[float] = None,
    max_retries: int = 3,
    device: str = "auto",
    scratch: Optional[Union[str, os.PathLike]] = None,
    clip: Optional[str] = None,
    dino: Optional[str] = None,
    show_progress: bool = True,
    should_stop: Optional[Callable[[], bool]] = None,
    retry_failed: bool = False,
    report_every_s: float = 5.0,
    token_evidence="full",
) -> BatchResult:
    """Edit a catalogue: every asset personalised once, then every prompt sampled, lifted and exported.

    Args:
        assets: asset files and/or folders (searched recursively for .glb/.gltf/.obj/.ply).
        prompts: a prompts file (one edit per line, ``<component>`` tokens) or a list of prompts.
        checkpoint: the MVDream checkpoint (the same path on every machine of a cluster).
        output: output folder or fsspec URL (shared by all machines); re-running into it finishes only what is missing.
        components: default component spec (``"hat: Hat; body: *"``; default ``"object: *"``).
        component_manifest: JSON/YAML file (or dict) with per-asset specs (:func:`.plan.read_component_manifest`).
        settings: :class:`BatchSettings` (training, sampling, lifting).
        workers: 0 runs in this process without Ray; N > 0 starts N Ray actors (one per GPU where there are GPUs).
        ray_address: "auto" or "HOST:PORT" joins a running cluster; None starts a local Ray when ``workers > 0``.
        gpus_per_worker: GPUs each actor declares (default 1 when the cluster has GPUs, else 0).
        cpus_per_worker, worker_memory_gb: the other resources each actor declares to Ray's scheduler.
        max_retries: how often Ray restarts a lost actor and retries its unit (``max_restarts``/``max_task_retries``).
        device: in-process device ("auto": CUDA when present); actors use their assigned GPU, or the CPU.
        scratch: local scratch folder for a URL output.
        clip, dino: metric models (``models/clip_vision`` / ``models/dino`` files); metrics are skipped without them.
        show_progress: print a line per finished unit and an overall progress bar on stderr.
        should_stop: polled during training (in-process runs); True stops the batch with a resumable checkpoint.
        retry_failed: also retry units that failed on these same inputs in an earlier run (by default they are
            reported again without running: a bad file or an empty component fails the same way every time).
        report_every_s: the manifest and report are rewritten at most this often while units finish (and at the end).
        token_evidence: after each personalisation, the token report (:mod:`.evidence`): "full" (attention isolation,
            reconstruction, omission, swap; the default), "attention" (attention isolation only: cheap), "off", or a
            ``TokenReportConfig``. Each asset's report lands in its ``token_evidence/`` folder and in the catalogue
            report; a re-run makes only the missing ones (also for assets personalised while it was off).

    Returns:
        :class:`BatchResult`.

    Raises:
        ConfigError: bad arguments (no assets, no prompts, missing checkpoint, ...).
        MissingDependencyError: ``workers > 0`` without Ray installed.
        Interrupted: ``should_stop`` asked to stop (re-run to resume).
    """
    t_start = time.perf_counter()
    settings = settings or BatchSettings()
    if workers < 0:
        raise ConfigError(f"workers must be 0 (in-process) or more, got {workers}")
    if should_stop is not None and (workers or ray_address):
        raise ConfigError("should_stop works for in-process runs (workers=0) only; stop a Ray batch with Ctrl-C and re-run it")
    if ray_address is not None and workers == 0:
        workers = -1  # joining a cluster: one actor per GPU of the cluster (decided once connected)
    inputs = [assets] if isinstance(assets, (str, os.PathLike)) else list(assets)
    files = find_assets(inputs)
    manifest_data = component_manifest if isinstance(component_manifest, dict) else (
        read_component_manifest(component_manifest) if component_manifest else None)
    specs = asset_specs(files, components, manifest_data, roots=[Path(p) for p in inputs if Path(p).is_dir()])
    prompt_list = read_prompts(prompts) if isinstance(prompts, (str, os.PathLike)) else list(prompts)
    plan = build_plan(specs, prompt_list, checkpoint, settings)
    evidence = evidence_config(settings, token_evidence)
    evidence = config_to_dict(evidence) if evidence is not None else None
    store = OutputStore(output, scratch)
    for rel in ("", SHEETS_DIR):  # temporary files of a driver that was killed while writing the report
        store.clear_leftovers(rel)
    manifest = Manifest(store, plan)
    report = CatalogueReport(store, plan)
    result = BatchResult(plan=plan, output=str(output))
    books = _Books(plan, store, manifest, report, _Progress(plan, show_progress), result)
    pending_pers = books.sort_units(evidence, retry_failed)
    todo = len(pending_pers) + len(books.ready_edits) + sum(len(v) for v in books.waiting.values())
    for unit in plan.personalizations:  # sheets of the edits finished by earlier runs
        report.write_sheet(unit)
    publisher = _Publisher(manifest, report, report_every_s)
    publisher.now()
    if todo == 0:
        books.progress.close()
        result.wall_s = time.perf_counter() - t_start
        return result

    worker_args = dict(checkpoint=str(checkpoint), output=str(output), settings=settings.to_dict(),
                       scratch=str(scratch) if scratch else None, clip=clip, dino=dino, token_evidence=evidence)
    pool = None
    try:
        if workers == 0:
            pool = InProcessPool(lambda: _make_worker(device=device, **worker_args), should_stop)
        else:
            from .ray_pool import RayPool

            pool = RayPool(worker_args, workers=workers, ray_address=ray_address, gpus_per_worker=gpus_per_worker,
                           cpus_per_worker=cpus_per_worker, worker_memory_gb=worker_memory_gb, max_retries=max_retries)
        result.workers = pool.infos()
        result.startup_s = time.perf_counter() - t_start
        _dispatch(pool, books, pending_pers, publisher)
    finally:
        books.progress.close()
        if pool is not None:
            pool.close()
        publisher.now()
    result.wall_s = time.perf_counter() - t_start
    return result


def _dispatch(pool, books: "_Books", pending_pers: list, publisher: _Publisher) -> None:
    """Hand units to idle workers until none is left, booking each as it finishes.

    An idle worker takes an edit of the asset it holds (its model is loaded), else a new personalisation, else any
    ready edit; an asset's edits become ready when its personalisation is booked (:meth:`_Books.finish`).
    """
    ready_edits = books.ready_edits
    last_asset = {}  # slot -> personalisation key whose model that worker holds
    idle = list(pool.slots)
    while pending_pers or ready_edits or pool.busy():
        if not idle and not pool.busy():  # every worker is gone for good: what is left cannot run now
            for unit in pending_pers + ready_edits:
                books.finish(unit, {"status": "failed", "message": "no batch worker left; re-run the batch"},
                             release_edits=False)
            break
        while idle and (pending_pers or ready_edits):
            slot = idle.pop(0)
            unit = next((e for e in ready_edits if e.parent.key == last_asset.get(slot)), None)
            if unit is None and pending_pers:
                unit = pending_pers.pop(0)
            elif unit is None:
                unit = ready_edits[0]
            if unit in ready_edits:
                ready_edits.remove(unit)
            last_asset[slot] = unit.parent.key if hasattr(unit, "parent") else unit.key
            pool.submit(slot, unit)
        slot, unit, outcome = pool.wait()
        if slot is not None:
            idle.append(slot)
        books.finish(unit, outcome)
        publisher.maybe()


def _make_worker(**kwargs):
    from .worker import BatchWorker

    return BatchWorker(**kwargs)


@dataclass
class _Books:
    """The driver's bookkeeping of one run: what waits, what is ready, and where each finished unit is booked
    (manifest, report, progress line, result)."""

    plan: BatchPlan
    store: OutputStore
    manifest: Manifest
    report: CatalogueReport
    progress: _Progress
    result: BatchResult
    ready_edits: list = field(default_factory=list)  # edits whose asset is personalised, not yet handed out
    waiting: dict = field(default_factory=dict)  # personalisation key -> its edits, released when it is done

    def sort_units(self, evidence: Optional[dict], retry_failed: bool) -> list:
        """Book what earlier runs finished (files present with their recorded hashes) and what failed on these same
        inputs; fill ``ready_edits``/``waiting``; return the personalisations to run (those without the requested
        token evidence included: their workers make only the evidence)."""
        store, manifest, report, result, progress = self.store, self.manifest, self.report, self.result, self.progress
        pending_pers, known_bad, personalized = [], [], set()
        for unit in self.plan.personalizations:
            record = finished_record(store, unit)
            if record is not None:
                personalized.add(unit.key)
                report.note(unit, "done", record)
                if evidence is not None:
                    found = finished_evidence(store, unit.folder, unit.key, evidence)
                    error = manifest.evidence_error(unit, evidence_key(unit.key, evidence))
                    if found is not None:
                        report.note_evidence(unit, {"status": "done", "record": found})
                    elif error is not None and not retry_failed:
                        report.note_evidence(unit, {"status": "failed", "message": error})
                    else:  # personalised before, without this evidence: its worker makes only the evidence
                        pending_pers.append(unit)
                        continue
                result.reused.append(unit.unit_id)
                progress.finished(unit, "reused", "(already done)")
            elif manifest.input_error(unit) is not None and not retry_failed:
                known_bad.append(unit)
            else:
                pending_pers.append(unit)
        for unit in self.plan.edits:
            record = finished_record(store, unit)
            if record is not None:
                report.note(unit, "done", record)
                result.reused.append(unit.unit_id)
                result.glbs.append(store.url(f"{unit.folder}/edited.glb"))
                progress.finished(unit, "reused", "(already done)")
            elif unit.parent.key not in personalized and (unit.parent in pending_pers or unit.parent in known_bad):
                self.waiting.setdefault(unit.parent.key, []).append(unit)
            elif manifest.input_error(unit) is not None and not retry_failed:
                known_bad.append(unit)
            else:
                self.ready_edits.append(unit)
        for unit in known_bad:  # failed on these same inputs before: reported again, not retried
            message = manifest.input_error(unit)
            note = " (same inputs as an earlier run: fix them, or retry with retry_failed)"
            message = message if message.endswith(note) else message + note
            self.finish(unit, {"status": "failed", "message": message, "input_error": True})
        return pending_pers

    def finish(self, unit, outcome: dict, release_edits: bool = True) -> None:
        """Book one finished unit: manifest, report, progress line; release (``release_edits``) or skip the asset's
        edits."""
        store, manifest, report, result, progress = self.store, self.manifest, self.report, self.result, self.progress
        result.results.append(outcome)
        is_edit = hasattr(unit, "prompt")
        if outcome["status"] == "done":
            record = outcome["record"]
            manifest.record(unit, "done", record)
            report.note(unit, "done", record)
            if "evidence" in outcome:
                manifest.record_evidence(unit, outcome["evidence"])
                report.note_evidence(unit, outcome["evidence"])
            (result.reused if outcome.get("cached") else result.computed).append(unit.unit_id)
            if is_edit:
                result.glbs.append(store.url(f"{unit.folder}/edited.glb"))
            elif release_edits:
                self.ready_edits.extend(self.waiting.pop(unit.key, []))
            progress.finished(unit, "reused" if outcome.get("cached") else "done", _detail(outcome, store))
        else:
            message = outcome.get("message", "")
            manifest.record(unit, "failed", message=message, input_error=bool(outcome.get("input_error")))
            report.note(unit, "failed", message=message)
            result.failed[unit.unit_id] = message
            progress.finished(unit, "FAILED", message)
            if not is_edit:
                for edit in self.waiting.pop(unit.key, []):
                    note = f"personalisation of {unit.unit_id} failed"
                    manifest.record(edit, "skipped", message=note)
                    report.note(edit, "skipped", message=note)
                    result.skipped.append(edit.unit_id)
                    progress.finished(edit, "skipped", note)
        if is_edit:
            report.write_sheet(unit.parent)
