"""The library installs with pip (the README's 'pip install -e .') and brings its console script, dreamedit3d."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_pip_builds_a_wheel_of_the_library_with_its_console_script_that_runs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "dreamedit3d_core", src / "dreamedit3d_core",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # --no-build-isolation: setuptools comes from this environment, so the test needs no network
    subprocess.run(pip + ["wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist")],
                   check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "dist").glob("dreamedit3d-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "dreamedit3d = dreamedit3d_core.cli:main" in entry_points
    assert "dreamedit3d_core/cli.py" in names and "dreamedit3d_core/lifting/pipeline.py" in names
    assert not [n for n in names if n.startswith(("nodes/", "tests/", "bench/"))]

    target = tmp_path / "site"
    subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, text=True)
    script = target / "bin" / "dreamedit3d"
    env = dict(os.environ, PYTHONPATH=str(target))
    run = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "tiny-checkpoint" in run.stdout and "edit" in run.stdout
    where = subprocess.run([sys.executable, "-c", "import dreamedit3d_core; print(dreamedit3d_core.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout
    assert where.startswith(str(target))
