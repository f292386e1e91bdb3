"""run_example.sh's runner (tools/run_workflow.py): a user's mistake ends in one line and a non-zero exit, never a
traceback, and before any ComfyUI is started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(tmp_path, *args):
    comfy = tmp_path / "comfy"
    comfy.mkdir(exist_ok=True)
    (comfy / "main.py").write_text("raise SystemExit('a ComfyUI must not be started for a refused input')\n")
    return subprocess.run([sys.executable, str(REPO / "tools" / "run_workflow.py"), "--comfyui", str(comfy),
                           "--out", str(tmp_path / "out"), *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)


def _one_line_error(proc, fragment):
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "\n" not in err and err.startswith("[run] error:") and fragment in err


def test_a_missing_asset_is_one_line(tmp_path):
    _one_line_error(_run(tmp_path, "--asset", tmp_path / "nope.glb"), "nope.glb")


def test_a_jpeg_renamed_glb_is_one_line_with_the_cores_message(tmp_path):
    from PIL import Image

    fake = tmp_path / "photo.glb"
    Image.new("RGB", (8, 8)).save(fake, format="JPEG")
    proc = _run(tmp_path, "--asset", fake)
    _one_line_error(proc, "photo.glb")


def test_an_unknown_workflow_is_one_line(tmp_path):
    _one_line_error(_run(tmp_path, "--workflow", "full_edti"), "full_edti")
