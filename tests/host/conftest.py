"""One real ComfyUI server for the whole host test session (boot takes 5-9 s)."""

from __future__ import annotations

import pytest

from conftest import skip_or_fail
from _host import comfy_path, prepare_fixtures, start_host


@pytest.fixture(scope="session")
def host_fixdir(tmp_path_factory):
    fixdir = tmp_path_factory.mktemp("fixdir")
    prepare_fixtures(fixdir)
    return fixdir


def _cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a live process (Linux /proc)."""
    import os

    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory, host_fixdir):
    comfy = comfy_path()
    if comfy is None:
        skip_or_fail("no ComfyUI tree: run tools/setup_env.sh or set COMFYUI_PATH")
    host = start_host(tmp_path_factory.mktemp("host"), host_fixdir, comfy)
    try:
        yield host
    finally:
        cpu = _cpu_seconds(host.proc.pid)
        host.stop()
        HOST_SUMMARY.append(f"ComfyUI {comfy}: boot {host.boot_seconds:.1f} s, server CPU {cpu:.0f} s")


HOST_SUMMARY: list = []


def pytest_terminal_summary(terminalreporter):
    for line in HOST_SUMMARY:
        terminalreporter.write_line(f"[host] {line}")
    # how many real-host tests ran (CI must show they ran, not skipped)
    counts = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        reports = terminalreporter.stats.get(outcome, [])
        counts[outcome] = sum(1 for r in reports if getattr(r, "when", "call") in ("call", "setup")
                              and "host" in getattr(r, "keywords", {}) and (outcome != "passed" or r.when == "call"))
    terminalreporter.write_line("[host] real-host tests: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
