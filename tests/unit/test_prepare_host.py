"""prepare_host.py runs with a plain ComfyUI Python (no pytest) and writes every fixture the shipped workflows need."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
SCRIPT = REPO / "tests" / "workflows" / "prepare_host.py"
# run the script as __main__ with pytest made unimportable, as in a ComfyUI install without test tools
NO_PYTEST = ("import runpy, sys; sys.modules['pytest'] = None; sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__')")


def _prepare(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", NO_PYTEST, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


def test_fixtures_for_every_shipped_workflow_without_pytest(shared_assets, tmp_path):
    proc = _prepare(tmp_path / "fix", "--asset", shared_assets / "kenney_character.glb", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    fix = tmp_path / "fix"
    for rel in ("models/mvdream/dreamedit3d-tiny-random-4view.pt", "models/mvdream/dreamedit3d-example-finetuned.safetensors",
                "models/mvdream_tokens/dreamedit3d-example.safetensors", "input/dreamedit3d/kenney_character.glb",
                "models/embeddings/dreamedit3d-example_robot.safetensors",
                "models/embeddings/dreamedit3d-example_antenna.safetensors"):
        assert (fix / rel).is_file(), rel
    # the tiny SAM too: it comes from dreamedit3d_core.testing, not from the pytest-only test helpers
    assert (fix / "models/sams/dreamedit3d-tiny-random-sam.pth").is_file() and "SAM " in proc.stdout
    assert proc.stdout.count("components ") == 1  # one component spec, the one the workflows use
    # every file a shipped workflow names is among the fixtures
    for twin in sorted((REPO / "tests" / "workflows").glob("*.api.json")):
        for node in json.loads(twin.read_text()).values():
            inputs = node["inputs"]
            for key, folder in (("ckpt_name", "models/mvdream"), ("tokens_name", "models/mvdream_tokens"),
                                ("asset", "input")):
                if isinstance(inputs.get(key), str):
                    assert (fix / folder / inputs[key]).is_file(), (twin.name, key, inputs[key])
    from dreamedit3d_core.tokens import load_tokens

    tokens = load_tokens(fix / "models/mvdream_tokens/dreamedit3d-example.safetensors")
    assert tokens.tokens == ("<antenna>", "<robot>")


def test_components_given_make_the_prompt_and_tokens_of_those_components(shared_assets, tmp_path):
    proc = _prepare(tmp_path / "fix", "--asset", shared_assets / "kenney_character.glb", "--components",
                    "head: antenna; body: *", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "edit prompt 'a <body> with a <head> made of gold'" in proc.stdout
    adapted = json.loads((tmp_path / "fix" / "workflows" / "sample_only.api.json").read_text())
    prompts = [n["inputs"]["prompt"] for n in adapted.values() if n["class_type"] == "DreamEdit3D_ComposePrompt"]
    assert prompts == ["a <body> with a <head> made of gold"]


@pytest.mark.parametrize("kind", ["missing", "jpeg"])
def test_a_missing_or_broken_asset_is_one_line_and_writes_nothing(tmp_path, kind):
    from PIL import Image

    asset = tmp_path / "fake.glb"
    if kind == "jpeg":
        Image.new("RGB", (8, 8)).save(asset, format="JPEG")
    proc = _prepare(tmp_path / "fix", "--asset", asset, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    err = proc.stderr.strip()
    assert err.startswith("prepare_host: error:") and "fake.glb" in err and "\n" not in err
    assert not (tmp_path / "fix").exists()
