"""Batch workers as Ray actors: one actor per GPU (or per CPU slot), each loading the base checkpoint once.

Each actor declares its resources to Ray's scheduler (``num_gpus``, ``num_cpus``, ``memory``) and keeps its model
between units. When an actor's process dies (a killed worker, a lost node), Ray restarts it (``max_restarts``) and
re-runs the unit it was running (``max_task_retries``); the unit then resumes from its last training checkpoint and
skips what its earlier attempt finished. Only when Ray gives up is the unit reported as failed.

Ray is an optional dependency (``pip install "ray>=2.52"``), imported only here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, MissingDependencyError


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError("running a batch on Ray (--workers N, --ray-address)", "ray", '"ray>=2.52"') from exc
    return ray


def _code_path_env() -> dict:
    """Workers import this package from where the driver does (the same path on every machine of a cluster)."""
    root = str(Path(__file__).resolve().parents[2])
    current = os.environ.get("PYTHONPATH", "")
    return {"env_vars": {"PYTHONPATH": root + (os.pathsep + current if current else "")}}


class RayPool:
    """A fixed set of :class:`~.worker.BatchWorker` actors the driver hands units to.

    Args:
        worker_args: keyword arguments of ``BatchWorker`` (checkpoint, output, settings, ...).
        workers: number of actors; -1: one per GPU of the cluster (one in all without GPUs).
        ray_address: "auto" / "HOST:PORT" of a running cluster; None starts a local Ray (unless this process is
            already connected, then that session is used and left running).
        gpus_per_worker: GPUs per actor (default: 1 when the cluster has GPUs, else 0).
        cpus_per_worker, worker_memory_gb: the actors' other declared resources.
        max_retries: Ray's ``max_restarts`` and ``max_task_retries`` of every actor.
    """

    def __init__(self, worker_args: dict, workers: int, ray_address: Optional[str] = None,
                 gpus_per_worker: Optional[float] = None, cpus_per_worker: float = 1.0,
                 worker_memory_gb: Optional[float] = None, max_retries: int = 3):
        ray = import_ray()
        self.ray = ray
        self.max_retries = int(max_retries)
        self._owns_connection = False
        if not ray.is_initialized():
            if ray_address:
                ray.init(address=ray_address, runtime_env=_code_path_env(), log_to_driver=False)
            else:
                ray.init(runtime_env=_code_path_env(), log_to_driver=False, include_dashboard=False)
            self._owns_connection = True
        try:
            resources = ray.cluster_resources()
            gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 0))
            if gpus_per_worker is None:
                gpus_per_worker = 1.0 if gpus >= 1 else 0.0
            if workers < 0:
                workers = max(1, int(gpus // gpus_per_worker)) if gpus_per_worker else 1
            if gpus_per_worker and workers * gpus_per_worker > gpus:
                raise ConfigError(f"{workers} workers x {gpus_per_worker:g} GPU need {workers * gpus_per_worker:g} GPUs, the "
                                  f"Ray cluster has {gpus:g}; ask for fewer workers or add GPU machines")
            if workers * cpus_per_worker > cpus:
                raise ConfigError(f"{workers} workers x {cpus_per_worker:g} CPU need {workers * cpus_per_worker:g} CPUs, the "
                                  f"Ray cluster has {cpus:g}; ask for fewer workers or lower --cpus-per-worker")
            options = dict(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=self.max_retries,
                           max_task_retries=self.max_retries)
            if worker_memory_gb:
                options["memory"] = int(float(worker_memory_gb) * 2 ** 30)
            from .worker import BatchWorker

            actor_class = ray.remote(**options)(BatchWorker)
            device = "cuda" if gpus_per_worker else "cpu"
            self.actors = [actor_class.remote(device=device, **worker_args) for _ in range(int(workers))]
        except BaseException:
            self.close()
            raise
        self.slots = list(range(len(self.actors)))
        self.inflight: dict = {}
        self.dead: set = set()

    def infos(self) -> list:
        """pid/host/device/load time of every actor (waits until each has loaded its model)."""
        try:
            return self.ray.get([a.info.remote() for a in self.actors])
        except self.ray.exceptions.RayActorError as exc:
            raise ConfigError(f"the batch workers could not start: {_cause(exc)}") from None

    def submit(self, slot: int, unit) -> None:
        ref = self.actors[slot].run.remote(unit.to_dict())
        self.inflight[ref] = (slot, unit, time.perf_counter())

    def busy(self) -> int:
        return len(self.inflight)

    def wait(self) -> tuple:
        """(slot or None when that actor is gone for good, unit, outcome) of the next unit to finish."""
        done, _ = self.ray.wait(list(self.inflight), num_returns=1)
        slot, unit, t0 = self.inflight.pop(done[0])
        try:
            outcome = self.ray.get(done[0])
            outcome["driver_s"] = time.perf_counter() - t0  # submit -> result here: the unit's time + Ray's overhead
            return slot, unit, outcome
        except self.ray.exceptions.RayActorError as exc:
            self.dead.add(slot)
            outcome = {"unit_id": unit.unit_id, "key": unit.key, "status": "failed",
                       "message": f"its worker was lost {self.max_retries + 1} times, Ray gave up ({_cause(exc)})"}
            return None, unit, outcome

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            self.ray.kill(actor)
        self.actors = []
        if self._owns_connection and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns_connection = False


def _cause(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) < 300 else text[:297] + "..."
