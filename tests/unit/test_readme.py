"""The README's Python snippet and command lines run as written on the tiny model.

Substituted are only what the README itself says to change: the lines marked "yours" (checkpoint, asset, components,
prompt) and the settings it gives for a "quick try". Everything else is executed exactly as printed.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import trimesh

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
pytestmark = pytest.mark.slow
SECTION = README[README.index("## Python API and command line"):]
SECTION = SECTION[:SECTION.index("\n## ", 5)]
ROBOT = {"components": "antenna: antenna; robot: *", "prompt": "a <robot> with a <antenna> made of gold"}


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", SECTION, flags=re.S)


def _yours(line: str, value: str) -> str:
    name, rest = line.split("=", 1)
    assert "# yours" in rest or name.strip() == "PROMPT", line
    return f"{name.strip()} = {value!r}"


def _quick_try(line: str) -> str:
    names, rest = line.split("=", 1)
    quick = rest.split("# quick try:")[1].strip()
    return f"{names.strip()} = {quick}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from dreamedit3d_core.cli import main

    folder = tmp_path_factory.mktemp("readme")
    (command,) = [line for block in _blocks("bash") for line in block.splitlines() if "tiny-checkpoint" in line]
    argv = shlex.split(command.split("#")[0])
    assert argv[0].endswith("dreamedit3d") and argv[1:] == ["tiny-checkpoint", "tiny.safetensors"]
    assert main([argv[1], str(folder / argv[2])]) == 0
    return folder / "tiny.safetensors"


def test_the_python_snippet_runs_as_written_with_the_quick_try_settings(tiny, shared_assets, tmp_path, monkeypatch):
    (snippet,) = [b for b in _blocks("python") if "lift_to_mesh" in b]
    values = {"CHECKPOINT": str(tiny), "ASSET": str(shared_assets / "kenney_character.glb"),
              "COMPONENTS": ROBOT["components"], "PROMPT": ROBOT["prompt"]}
    lines, changed = [], 0
    for line in snippet.splitlines():
        key = line.split("=", 1)[0].strip()
        if key in values:
            line, changed = _yours(line, values[key]), changed + 1
        elif "# quick try:" in line:
            line, changed = _quick_try(line), changed + 1
        lines.append(line)
    assert changed == 5, "the README's marked lines moved: update this test with the README"
    monkeypatch.chdir(tmp_path)
    exec(compile("\n".join(lines), "README.md", "exec"), {"__name__": "readme"})
    scene = trimesh.load(tmp_path / "edited.glb", force="scene")
    assert sum(len(g.faces) for g in scene.geometry.values()) > 0


def test_the_command_lines_run_as_written_with_the_quick_try_flags(tiny, shared_assets, tmp_path, monkeypatch):
    from dreamedit3d_core.cli import main

    quick = re.search(r"a quick try on the tiny model adds `([^`]*)`", SECTION.replace("\n", " "))
    assert quick, "the README no longer gives the quick-try flags"
    commands = [c for c in " ".join(_blocks("bash")).replace("\\\n", " ").splitlines() if " edit " in c or " render " in c]
    assert len(commands) == 2
    mine = {"dog_with_hat.glb": str(shared_assets / "kenney_character.glb"), "sd-v2.1-base-4view.pt": str(tiny),
            "hat: Hat, Brim; dog: *": ROBOT["components"], "a <dog> wearing a <hat> made of gold": ROBOT["prompt"]}
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = [mine.get(a, a) for a in shlex.split(command)]
        assert argv[0].endswith("dreamedit3d")
        if argv[1] == "edit":
            argv += shlex.split(quick.group(1))
        assert main(argv[1:]) == 0, command
    assert (tmp_path / "views" / "views.png").is_file()
    scene = trimesh.load(tmp_path / "edit" / "edited.glb", force="scene")
    assert sum(len(g.faces) for g in scene.geometry.values()) > 0
