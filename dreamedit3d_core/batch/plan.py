"""What a batch is: its settings, its assets with their component specs, its edit prompts, and the units of work.

A batch is a list of *units*: one personalisation per asset (render → masks → textual inversion → fine-tune) and, for
each asset, one edit per prompt (sample → lift → export). Every unit has a **content key**, the SHA-256 of everything
its output depends on (the asset's bytes and companion files, the component spec, the checkpoint's bytes, the
settings that reach the unit, the prompt). The key names the unit's folder in the output, so a re-run with the same
inputs finds the finished units where it left them, and a changed input gets a new folder instead of overwriting
anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

# the option lists are the core's own (one home each), under the names the batch CLI imports from here
from ..assets import SUPPORTED_SUFFIXES as ASSET_SUFFIXES
from ..errors import ConfigError
from ..lifting.pipeline import MODES as LIFT_MODES
from ..personalize.finetune import MODES as FT_MODES
from ..personalize.objective import MIXED_PRECISION
from ..personalize.train import ConfigDict
from ..sampling import METHODS as SAMPLERS
from ..storage import file_sha256

DEFAULT_COMPONENTS = "object: *"
KEY_VERSION = 1  # bump when a unit's outputs change meaning, so old folders are not taken as finished


@dataclass(frozen=True)
class BatchSettings(ConfigDict):
    """Every setting of a batch run (the same for every asset and edit).

    Attributes:
        resolution: view size in pixels for render, training and sampling (multiple of 8; MVDream: 256).
        elevation_deg, fov_deg: the render cameras (MVDream: 15°, 40°).
        ti_steps, ti_lr: phase 1 (textual inversion) steps and learning rate.
        ft_steps, ft_mode, ft_lr, lora_rank: phase 2; LoRA by default at batch scale (one small delta per asset
            instead of a whole UNet); ``ft_lr`` None means 1e-4 for LoRA and 2e-6 for full fine-tuning.
        checkpoint_every: training-state checkpoint period in steps (what a killed personalisation resumes from;
            each state is ~40 MB with LoRA, ~3x the UNet with full fine-tuning, written to the shared output).
        mixed_precision: training autocast, "no", "bf16" (recommended on GPUs) or "fp16"; weights stay fp32.
        sampler, steps, cfg, negative_prompt: sampling of each edit (``sampling.sample_views``).
        seed: seeds training and the initial noise of every edit (identical inputs give identical files).
        lift_mode, grid, texture_size: lifting (``lifting.lift_to_mesh``).
    """

    resolution: int = 256
    elevation_deg: float = 15.0
    fov_deg: float = 40.0
    ti_steps: int = 400
    ti_lr: float = 5e-4
    ft_steps: int = 400
    ft_mode: str = "lora"
    ft_lr: Optional[float] = None
    lora_rank: int = 16
    checkpoint_every: int = 100
    mixed_precision: str = "no"
    sampler: str = "ddim"
    steps: int = 50
    cfg: float = 7.5
    negative_prompt: Optional[str] = None
    seed: int = 23
    lift_mode: str = "source_guided"
    grid: int = 128
    texture_size: int = 1024

    def __post_init__(self):
        if self.resolution < 8 or self.resolution % 8:
            raise ConfigError(f"resolution must be a positive multiple of 8, got {self.resolution}")
        for name in ("ti_steps", "ft_steps", "steps", "checkpoint_every", "lora_rank"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.ft_mode not in FT_MODES:
            raise ConfigError(f"ft_mode must be one of {FT_MODES}, got {self.ft_mode!r}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.lift_mode not in LIFT_MODES:
            raise ConfigError(f"lift_mode must be one of {LIFT_MODES}, got {self.lift_mode!r}")

    @property
    def finetune_lr(self) -> float:
        if self.ft_lr is not None:
            return float(self.ft_lr)
        return 1e-4 if self.ft_mode == "lora" else 2e-6

    def personalization_part(self) -> dict:
        """The settings a personalisation's result depends on (its content key covers exactly these)."""
        return {k: getattr(self, k) for k in ("resolution", "elevation_deg", "fov_deg", "ti_steps", "ti_lr", "ft_steps",
                                              "ft_mode", "lora_rank", "seed", "mixed_precision")} | {"ft_lr": self.finetune_lr}

    def edit_part(self) -> dict:
        """The settings an edit's result depends on, beyond its personalisation."""
        return {k: getattr(self, k) for k in ("sampler", "steps", "cfg", "negative_prompt", "seed", "lift_mode", "grid",
                                              "texture_size")}


@dataclass(frozen=True)
class AssetSpec:
    """One input asset: its file, a unique short name, and how to cut it into components."""

    path: str
    name: str
    components: str = DEFAULT_COMPONENTS
    front_axis: str = "+z"
    up_axis: str = "+y"


@dataclass(frozen=True)
class PersonalizeUnit:
    """The personalisation of one asset. ``folder`` is relative to the output root."""

    asset: AssetSpec
    key: str
    folder: str

    @property
    def unit_id(self) -> str:
        return self.asset.name

    def to_dict(self) -> dict:
        return {"kind": "personalize", "unit_id": self.unit_id, "key": self.key, "folder": self.folder,
                "asset": dataclasses.asdict(self.asset)}


@dataclass(frozen=True)
class EditUnit:
    """One edit prompt applied to one personalised asset."""

    parent: PersonalizeUnit
    index: int
    prompt: str
    key: str
    folder: str

    @property
    def unit_id(self) -> str:
        return f"{self.parent.asset.name}/{Path(self.folder).name}"

    def to_dict(self) -> dict:
        return {"kind": "edit", "unit_id": self.unit_id, "key": self.key, "folder": self.folder, "index": self.index,
                "prompt": self.prompt, "parent": self.parent.to_dict()}


@dataclass(frozen=True)
class BatchPlan:
    settings: BatchSettings
    checkpoint: str
    checkpoint_sha256: str
    personalizations: tuple
    edits: tuple  # EditUnit, asset-major then prompt order
    prompts: tuple

    def edits_of(self, unit: PersonalizeUnit) -> list:
        return [e for e in self.edits if e.parent.key == unit.key]

    @property
    def num_units(self) -> int:
        return len(self.personalizations) + len(self.edits)


# ------------------------------------------------------------------------------------------------------- inputs


def read_prompts(path: Union[str, os.PathLike]) -> list:
    """Edit prompts, one per line (blank lines and lines starting with ``#`` skipped).

    Raises:
        ConfigError: the file is missing or holds no prompt.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompts file {path} does not exist; write one edit prompt per line, e.g. 'a <object> made of gold'")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise ConfigError(f"prompts file {path} holds no prompt; write one edit prompt per line")
    return prompts


def find_assets(inputs: Sequence[Union[str, os.PathLike]]) -> list:
    """Asset files from files and folders (folders searched recursively for .glb/.gltf/.obj/.ply), sorted, unique.

    Raises:
        ConfigError: an input that does not exist, or no asset found.
    """
    found = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in ASSET_SUFFIXES)
        elif p.exists() or p.suffix.lower() in ASSET_SUFFIXES:
            found.append(p)  # a missing or unreadable file is reported by its own unit, not here
        else:
            raise ConfigError(f"asset input {p} does not exist; give asset files or folders holding them")
    unique = list(dict.fromkeys(str(p.resolve()) for p in found))
    if not unique:
        raise ConfigError(f"no asset ({', '.join(ASSET_SUFFIXES)}) found in {[str(i) for i in inputs]}")
    return [Path(p) for p in unique]


def read_component_manifest(path: Union[str, os.PathLike]) -> dict:
    """A component manifest (JSON, or YAML when PyYAML is installed).

    Format: ``{"default": "body: *", "assets": {"kenney_character.glb": "antenna: antenna; body: *",
    "truck": {"components": "wheels: Wheels; truck: *", "front_axis": "+x"}}}``. Asset keys match a file name,
    a stem, or a path relative to an input folder.

    Raises:
        ConfigError: unreadable file, or a value of the wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"component manifest {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            from ..errors import MissingDependencyError

            raise MissingDependencyError("a YAML component manifest", "yaml", "pyyaml") from exc
        parse, error = yaml.safe_load, yaml.YAMLError
    else:
        parse, error = json.loads, ValueError
    try:
        data = parse(text)
    except error as exc:
        raise ConfigError(f"component manifest {path.name} cannot be parsed ({' '.join(str(exc).split())}); "
                          "write JSON or YAML") from None
    if not isinstance(data, dict) or not isinstance(data.get("assets", {}), dict):
        raise ConfigError(f"component manifest {path.name} must be a mapping with 'default' and 'assets' keys, got "
                          f"{type(data).__name__}")
    unknown = set(data) - {"default", "assets"}
    if unknown:
        raise ConfigError(f"component manifest {path.name} has unknown keys {sorted(unknown)}; valid: ['assets', 'default']")
    return data


def _entry(value, where: str) -> dict:
    if isinstance(value, str):
        return {"components": value}
    if isinstance(value, dict):
        unknown = set(value) - {"components", "front_axis", "up_axis"}
        if unknown:
            raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; valid: ['components', 'front_axis', 'up_axis']")
        return dict(value)
    raise ConfigError(f"{where} must be a component spec string or a mapping, got {type(value).__name__}")


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "asset"


def asset_specs(paths: Sequence[Path], default_components: Optional[str] = None,
                manifest: Optional[Mapping] = None, roots: Sequence[Path] = ()) -> list:
    """One :class:`AssetSpec` per file: unique names (the stem, with parent folders added where stems repeat)."""
    manifest = manifest or {}
    default = default_components or manifest.get("default") or DEFAULT_COMPONENTS
    entries = manifest.get("assets", {}) or {}
    specs, taken = [], set()
    for p in paths:
        rel = next((str(p.resolve().relative_to(r.resolve())) for r in roots if _is_under(p, r)), p.name)
        value = next((entries[k] for k in (rel, p.name, p.stem) if k in entries), None)
        entry = _entry(value, f"manifest entry for {p.name}") if value is not None else {}
        name = _safe_name(p.stem)
        parents = list(p.resolve().parents)
        i = 0
        while name.lower() in taken:
            name = _safe_name(f"{parents[i].name}_{name}") if i < len(parents) - 1 else f"{name}_{len(taken)}"
            i += 1
        taken.add(name.lower())
        specs.append(AssetSpec(path=str(p), name=name, components=entry.get("components") or default,
                               front_axis=entry.get("front_axis", "+z"), up_axis=entry.get("up_axis", "+y")))
    return specs


def _is_under(p: Path, root: Path) -> bool:
    try:
        p.resolve().relative_to(root.resolve())
        return root.is_dir()
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------------ hashing


def _sha(data: Mapping) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def companion_files(path: Path) -> list:
    """Files a .gltf/.obj names next to itself (buffers, .mtl, textures): they change the asset as much as it does."""
    if path.suffix.lower() not in (".gltf", ".obj") or not path.is_file():
        return []
    names = set()
    text = path.read_text(encoding="utf-8", errors="replace")
    names |= set(re.findall(r'"uri"\s*:\s*"([^"]+)"', text))
    for line in text.splitlines():
        if line.startswith("mtllib "):
            names.add(line.split(None, 1)[1].strip())
    mtls = [n for n in names if n.lower().endswith(".mtl")]
    for mtl in mtls:
        m = path.parent / mtl
        if m.is_file():
            for line in m.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.strip().lower().startswith("map_"):
                    names.add(line.split()[-1].replace("\\", "/"))
    found = []
    for n in sorted(names):
        if n.startswith("data:"):
            continue
        q = (path.parent / n)
        if q.is_file():
            found.append(q)
    return found


def asset_content_hash(path: Path) -> str:
    """SHA-256 over the asset file and its companions; a missing file hashes to its name (its unit reports it)."""
    if not path.is_file():
        return _sha({"missing": str(path)})
    parts = {path.name: file_sha256(path)}
    for q in companion_files(path):
        parts[str(q.relative_to(path.parent))] = file_sha256(q)
    return _sha(parts)


def _slug(text: str, limit: int = 40) -> str:
    word = re.sub(r"[^a-z0-9]+", "-", text.lower().replace("<", "").replace(">", "")).strip("-")
    return word[:limit].strip("-") or "edit"


def build_plan(assets: Sequence[AssetSpec], prompts: Sequence[str], checkpoint: Union[str, os.PathLike],
               settings: BatchSettings, checkpoint_sha256: Optional[str] = None) -> BatchPlan:
    """Units and their content keys.

    Raises:
        ConfigError: no prompt, or the checkpoint file is missing.
    """
    from .. import __version__

    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise ConfigError("no edit prompt given; write one prompt per line, with <component> tokens")
    ckpt = Path(checkpoint)
    if checkpoint_sha256 is None:
        if not ckpt.is_file():
            raise ConfigError(f"checkpoint {ckpt} does not exist; give the MVDream file (sd-v2.1-base-4view.pt)")
        checkpoint_sha256 = file_sha256(ckpt)
    pers, edits = [], []
    for spec in assets:
        content = asset_content_hash(Path(spec.path))
        key = _sha({"v": KEY_VERSION, "pack": __version__, "asset": content, "components": spec.components,
                    "front": spec.front_axis, "up": spec.up_axis, "checkpoint": checkpoint_sha256,
                    "settings": settings.personalization_part()})
        unit = PersonalizeUnit(asset=spec, key=key, folder=f"assets/{spec.name}-{key[:10]}")
        pers.append(unit)
        for i, prompt in enumerate(prompts):
            ekey = _sha({"v": KEY_VERSION, "parent": key, "prompt": prompt, "settings": settings.edit_part()})
            edits.append(EditUnit(parent=unit, index=i, prompt=prompt, key=ekey,
                                  folder=f"{unit.folder}/edits/{i:02d}-{_slug(prompt)}-{ekey[:8]}"))
    return BatchPlan(settings=settings, checkpoint=str(ckpt), checkpoint_sha256=checkpoint_sha256,
                     personalizations=tuple(pers), edits=tuple(edits), prompts=tuple(prompts))


__all__ = ["AssetSpec", "BatchPlan", "BatchSettings", "EditUnit", "PersonalizeUnit", "asset_content_hash", "asset_specs",
           "build_plan", "find_assets", "read_component_manifest", "read_prompts",
           "ASSET_SUFFIXES", "FT_MODES", "LIFT_MODES", "MIXED_PRECISION", "SAMPLERS"]
