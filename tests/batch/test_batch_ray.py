"""The batch on a real Ray cluster started by the test (``ray start --head --block`` on 127.0.0.1, token auth), stopped
by its PID at the end, with a check that none of its processes (raylet, GCS, the actors) is left behind.

3 assets (+ 1 broken file) × 2 prompts on 2 actors → 6 GLBs, the report and each asset's token evidence; a re-run computes nothing; a worker killed
with SIGKILL in the middle of a personalisation is restarted by Ray, its unit resumes from its training checkpoint,
and the batch ends with every file present once and byte-identical to the uninterrupted run's.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from _batch_helpers import COMPONENTS, PROMPTS, fast_settings, output_hashes
from conftest import skip_or_fail
from dreamedit3d_core.batch import run_batch

pytestmark = pytest.mark.slow

# three steps per phase with a checkpoint after each: a window to kill a worker in the middle of training
SETTINGS = fast_settings(ti_steps=3, ft_steps=3, checkpoint_every=1)
AUTH = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_mentioning(text: str) -> list:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append((int(entry.name), cmd[:120]))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


@pytest.fixture(scope="module")
def ray_cluster():
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        skip_or_fail("ray is not installed: pip install -r requirements-dev.txt")
    # (Ray reads the token once, when it first connects: set it before anything in this process imports ray)
    ray_cli = Path(sys.executable).with_name("ray")
    temp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    port = _free_port()
    saved = {k: os.environ.get(k) for k in AUTH}
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)})  # the driver's side too
    log = open(Path(temp) / "head.log", "w")
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats",
         # Ray's fixed default ports (8265, 52365) could be taken on a shared CI machine: free ones instead
         f"--dashboard-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        start_new_session=True)
    cluster = {"address": f"127.0.0.1:{port}", "temp": temp, "worker_pids": set()}
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in (Path(temp) / "head.log").read_text(errors="replace"):
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not come up: {(Path(temp) / 'head.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield cluster
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops every process it started when it is stopped
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=30)
        log.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (_processes_mentioning(temp) or any(map(_alive, cluster["worker_pids"]))):
            time.sleep(0.5)
        stray = _processes_mentioning(temp) + [(p, "batch actor") for p in cluster["worker_pids"] if _alive(p)]
        shutil.rmtree(temp, ignore_errors=True)
        assert not stray, f"Ray processes left behind: {stray}"


@pytest.fixture(scope="module")
def inputs(catalogue, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray_in")
    for name in ("figure.glb", "lamp.glb", "mushroom.glb"):
        shutil.copy(catalogue / name, folder / name)
    (folder / "crate.glb").write_bytes(b"glTF\x02\x00\x00\x00 broken")  # reported, the others go on
    prompts = folder.parent / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return folder, prompts


def _run(inputs, checkpoint, out, cluster):
    folder, prompts = inputs
    result = run_batch(folder, prompts, checkpoint, out, component_manifest=COMPONENTS, settings=SETTINGS, workers=2,
                       ray_address=cluster["address"], max_retries=2, show_progress=False)
    cluster["worker_pids"] |= {w["pid"] for w in result.workers}
    cluster["worker_pids"] |= {r["worker"]["pid"] for r in result.results if "worker" in r}
    return result


def _records(out: Path) -> dict:
    return {json.loads(p.read_text())["unit_id"]: json.loads(p.read_text()) for p in out.rglob("done.json")}


FIRST_RUN = {}


def test_catalogue_on_ray_writes_every_glb_and_the_report_and_a_rerun_recomputes_nothing(
        ray_cluster, inputs, tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray_out") / "batch"
    result = _run(inputs, tiny_checkpoint, out, ray_cluster)

    glbs = sorted(out.rglob("*.glb"))
    assert len(glbs) == 6 and len(result.glbs) == 6
    assert not [p for p in out.rglob("*") if "_0000" in p.name]  # nothing written twice under a second name
    assert len(result.computed) == 9 == len(set(result.computed)) and result.reused == []
    assert list(result.failed) == ["crate"] and "crate.glb" in result.failed["crate"]
    assert len(result.skipped) == 2
    assert len({r["worker"]["pid"] for r in result.results if r["status"] == "done"}) == 2  # both actors worked
    assert all(r["device"] == "cpu" for r in result.workers)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "**6 done**" in report and "crate" in report
    assert {p.name for p in (out / "sheets").iterdir()} == {"figure.png", "lamp.png", "mushroom.png"}
    with open(out / "tokens.csv", newline="", encoding="utf-8") as f:  # every personalisation's token evidence
        tokens = sorted((r["asset"], r["token"], r["status"]) for r in csv.DictReader(f))
    assert tokens == [(a, t, "done") for a in ("figure", "lamp", "mushroom") for t in ("<body>", "<top>")]
    assert "## Token evidence" in report and len(list(out.glob("assets/*/token_evidence/*_tokens_heatmap.png"))) == 3
    for record in _records(out).values():  # no unit trained a step it had done before
        if record["kind"] == "personalize":
            assert record["steps_run"] == {"textual_inversion": 3, "finetune": 3}
    FIRST_RUN["out"] = out

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()
              and p.name not in ("manifest.json", "report.md", "report.csv")}
    again = _run(inputs, tiny_checkpoint, out, ray_cluster)
    assert again.computed == [] and len(again.reused) == 9 and list(again.failed) == ["crate"]
    assert again.workers == []  # nothing left to do: no actor was even started
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_a_worker_killed_mid_training_is_restarted_and_the_batch_matches_the_uninterrupted_run(
        ray_cluster, inputs, tiny_checkpoint, tmp_path_factory):
    if "out" not in FIRST_RUN:
        pytest.fail("the uninterrupted run (previous test) did not finish; it is this test's reference")
    out = tmp_path_factory.mktemp("ray_kill") / "batch"
    killed = {}

    def kill_first_trainer():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed.get("stop"):
            for state in out.glob("assets/*/train/phase*-step*.pt"):
                note = state.parent / "worker.json"
                if note.is_file():
                    pid = json.loads(note.read_text())["pid"]
                    os.kill(pid, signal.SIGKILL)
                    killed.update(pid=pid, unit=json.loads(note.read_text())["unit"], state=state.name)
                    return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_first_trainer, daemon=True)
    watcher.start()
    try:
        result = _run(inputs, tiny_checkpoint, out, ray_cluster)
    finally:
        killed["stop"] = True
        watcher.join(timeout=10)
    assert "pid" in killed, "no training checkpoint appeared while the batch ran, so no worker was killed"

    assert list(result.failed) == ["crate"] and len(result.glbs) == 6
    assert len(result.computed) == 9 == len(set(result.computed))  # every unit finished once
    assert not [p for p in out.rglob("*") if "_0000" in p.name]
    records = _records(out)
    victim = records[killed["unit"]]
    assert victim["worker"]["pid"] != killed["pid"]  # finished by the restarted actor
    assert sum(victim["resumed_from_step"].values()) >= 1 or victim["steps_run"]["textual_inversion"] == 0
    for record in records.values():  # resumed steps + steps run = the phase's length: no step trained twice
        if record["kind"] != "personalize":
            continue
        for phase, done in record["steps_run"].items():
            if phase in record["resumed_from_step"]:
                assert done + record["resumed_from_step"][phase] == 3
            else:  # phase 1 had finished (its tokens saved) before the worker was killed
                assert (phase, done, record["unit_id"]) == ("textual_inversion", 0, killed["unit"])
    assert output_hashes(out) == output_hashes(FIRST_RUN["out"])
