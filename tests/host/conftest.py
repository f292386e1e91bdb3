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


@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory, host_fixdir):
    comfy = comfy_path()
    if comfy is None:
        skip_or_fail("no ComfyUI tree: run tools/setup_env.sh or set COMFYUI_PATH")
    host = start_host(tmp_path_factory.mktemp("host"), host_fixdir, comfy)
    try:
        yield host
    finally:
        host.stop()
