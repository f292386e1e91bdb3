"""Small frozen dataclasses for what flows between stages (torch only).

Layout rules: channels-first ``[V, C, H, W]`` for images; batched views are view-contiguous
(``index = b * V + v``). ComfyUI's BHWC appears only in ``nodes/``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Optional, TypeVar

import torch

from .cameras import MVCameras
from .errors import ShapeError, check_keys
from .geometry import SourceFrame


def _check(name: str, t: Optional[torch.Tensor], shape: tuple, dtype: Optional[tuple] = None, finite: bool = False):
    """Check ``t`` against ``shape`` (ints or None wildcards). Raises ShapeError naming what arrived."""
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ShapeError(f"{name} must have shape {want}, got {list(t.shape)}")
    if dtype is not None and t.dtype not in dtype:
        raise ShapeError(f"{name} must have dtype in {[str(d) for d in dtype]}, got {t.dtype}")
    if finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ShapeError(f"{name} contains NaN or inf values")


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INTS = (torch.int32, torch.int64)


def _shapes(obj) -> str:
    parts = []
    for k, v in obj.__dict__.items():
        if isinstance(v, torch.Tensor):
            parts.append(f"{k}={list(v.shape)}:{str(v.dtype).replace('torch.', '')}")
        elif isinstance(v, (str, int, float, bool)) or v is None:
            parts.append(f"{k}={v!r}")
        elif isinstance(v, (list, tuple)) and len(v) <= 8:
            parts.append(f"{k}={v!r}")
        else:
            parts.append(f"{k}=<{type(v).__name__}>")
    return f"{type(obj).__name__}(" + ", ".join(parts) + ")"


def _to(obj, device=None, dtype=None):
    """Copy of ``obj`` with every tensor on ``device`` and every floating tensor in ``dtype``."""
    changes = {}
    for k, v in obj.__dict__.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device) if device is not None else v
            v = v.to(dtype) if dtype is not None and v.is_floating_point() else v
            changes[k] = v
    return replace(obj, **changes)


def _check_frame(frame) -> None:
    if not isinstance(frame, SourceFrame):
        raise ShapeError(f"source_frame must be a geometry.SourceFrame, got {type(frame).__name__}; wrap a 4x4 "
                         f"to-internal matrix as SourceFrame(matrix)")


_Data = TypeVar("_Data", bound="StageData")


class ConfigDict:
    """Round trip of a frozen settings dataclass through a plain dict (``to_dict`` / ``from_dict``); an unknown key
    is a ConfigError naming the valid ones (the training configs and the batch settings use it)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        check_keys(cls.__name__, data, (f.name for f in dataclasses.fields(cls)))
        return cls(**data)


class StageData:
    """What every stage dataclass below shares: ``.to(device, dtype)`` returns a copy with its tensors moved (floating
    ones cast), and ``repr`` shows tensor shapes and dtypes instead of values."""

    def to(self: _Data, device=None, dtype=None) -> _Data:
        return _to(self, device, dtype)

    def __repr__(self) -> str:
        return _shapes(self)


@dataclass(frozen=True, repr=False)
class MeshAsset(StageData):
    """A loaded, normalised 3D asset.

    Attributes:
        vertices: float32 [N, 3], normalised world positions (OpenGL y-up, asset front facing +x).
        faces: int64 [M, 3] vertex indices.
        part_ids: int64 [M] index into ``part_names`` per face.
        part_names: unique part names (node/mesh/group names).
        uv: float32 [N, 2] texture coordinates (v = 0 at the image bottom), or None.
        vertex_colors: float32 [N, 3] in 0..1, or None.
        face_textures: int64 [M] index into ``textures`` per face (-1: none), or None.
        textures: tuple of float32 [H, W, 3] images in 0..1 (one per material with a texture).
        face_base_color: float32 [M, 3] material base colour per face in 0..1.
        source: the file it came from ("" when built in memory).
        source_frame: the normalisation applied to the file's coordinates (orientation, centring, scale) as a
            :class:`~dreamedit3d_core.geometry.SourceFrame`: ``source_frame.to_source_frame(vertices)`` gives the file's
            own coordinates back. Identity for vertices built in memory without normalising.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    part_ids: torch.Tensor
    part_names: tuple
    face_base_color: torch.Tensor
    uv: Optional[torch.Tensor] = None
    vertex_colors: Optional[torch.Tensor] = None
    face_textures: Optional[torch.Tensor] = None
    textures: tuple = ()
    source: str = ""
    source_frame: SourceFrame = field(default_factory=SourceFrame)

    def __post_init__(self):
        _check("vertices", self.vertices, (None, 3), _FLOATS, finite=True)
        n = self.vertices.shape[0]
        _check("faces", self.faces, (None, 3), _INTS)
        m = self.faces.shape[0]
        _check("part_ids", self.part_ids, (m,), _INTS)
        _check("face_base_color", self.face_base_color, (m, 3), _FLOATS)
        _check("uv", self.uv, (n, 2), _FLOATS)
        _check("vertex_colors", self.vertex_colors, (n, 3), _FLOATS)
        _check("face_textures", self.face_textures, (m,), _INTS)
        for i, tex in enumerate(self.textures):
            _check(f"textures[{i}]", tex, (None, None, 3), _FLOATS)
        if m and (int(self.faces.min()) < 0 or int(self.faces.max()) >= n):
            raise ShapeError(f"faces index vertices out of range 0..{n - 1}")
        _check_frame(self.source_frame)

    @property
    def num_parts(self) -> int:
        return len(self.part_names)

    @property
    def normalisation(self) -> torch.Tensor:
        """float64 [4, 4] from the file's coordinates to the vertices (``source_frame.to_internal``)."""
        return self.source_frame.to_internal

    def with_faces(self, which: torch.Tensor) -> "MeshAsset":
        """This asset with only the faces ``which`` (bool [M] or face indices) and their per-face data; vertices, UVs,
        textures, part names and frame unchanged (what it looks like with the other faces gone)."""
        f = which.to(self.faces.device)
        return replace(self, faces=self.faces[f], part_ids=self.part_ids[f], face_base_color=self.face_base_color[f],
                       face_textures=None if self.face_textures is None else self.face_textures[f])


@dataclass(frozen=True, repr=False)
class MultiViewRender(StageData):
    """Four (V) views of one object.

    Attributes:
        rgb: float32 [V, 3, H, W] in 0..1, composited over ``background``.
        alpha: float32 [V, 1, H, W] coverage in 0..1.
        depth: float32 [V, 1, H, W] metric view-axis distance, 0 where nothing is hit.
        normals: float32 [V, 3, H, W] world-space unit normals, 0 where nothing is hit.
        part_id: int64 [V, H, W] index into ``part_names``, -1 for background.
        part_names: names of the parts.
        cameras: the cameras used (orientation, fov, distance).
        background: RGB background colour in 0..1.
        source_frame: where the internal frame sits in the rendered asset's own coordinates (its ``MeshAsset.source_frame``),
            so what is lifted from these views can be written back in them; glTF's convention at unit size when the views
            come from no asset.
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    normals: torch.Tensor
    part_id: torch.Tensor
    part_names: tuple
    cameras: MVCameras
    background: tuple = (1.0, 1.0, 1.0)
    source_frame: SourceFrame = field(default_factory=SourceFrame.gltf_unit)

    def __post_init__(self):
        _check("rgb", self.rgb, (None, 3, None, None), _FLOATS)
        v, _, h, w = self.rgb.shape
        _check("alpha", self.alpha, (v, 1, h, w), _FLOATS)
        _check("depth", self.depth, (v, 1, h, w), _FLOATS)
        _check("normals", self.normals, (v, 3, h, w), _FLOATS)
        _check("part_id", self.part_id, (v, h, w), _INTS)
        if self.cameras.num_views != v:
            raise ShapeError(f"render has {v} views but its cameras have {self.cameras.num_views}")
        _check_frame(self.source_frame)

    @property
    def num_views(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.rgb.shape[2]), int(self.rgb.shape[3])


class MaskSource(str, Enum):
    """Where component masks come from (a ``str`` enum: ``"parts"`` / ``"sam"`` compare equal to the members)."""

    PARTS = "parts"
    SAM = "sam"


@dataclass(frozen=True, repr=False)
class ComponentMasks(StageData):
    """One mask per component in every view.

    Attributes:
        masks: bool [K, V, H, W].
        names: K component names (without angle brackets, e.g. "hat").
        source: where the masks came from.
        disagreement: float [K] cross-view re-projection disagreement (0 = consistent), or None.
    """

    masks: torch.Tensor
    names: tuple
    source: MaskSource = MaskSource.PARTS
    disagreement: Optional[torch.Tensor] = None

    def __post_init__(self):
        _check("masks", self.masks, (len(self.names), None, None, None), (torch.bool,))
        if len(set(self.names)) != len(self.names):
            raise ShapeError(f"component names must be unique, got {list(self.names)}")


@dataclass(frozen=True, repr=False)
class TokenSet(StageData):
    """Learned placeholder tokens.

    Attributes:
        tokens: placeholder strings, e.g. ("<hat>", "<dog>").
        embeddings: float32 [K, n_vectors, D] (D = 1024 for OpenCLIP ViT-H).
        components: the component name each token was learned for.
        base_model_hash: fingerprint of the base checkpoint the tokens were learned with ("" if unknown).
        source_files: ((file name, sha256 hex), ...) of the token files these vectors were read from; () when they
            were learned in memory (provenance records it).
    """

    tokens: tuple
    embeddings: torch.Tensor
    components: tuple = ()
    base_model_hash: str = ""
    source_files: tuple = ()

    def __post_init__(self):
        _check("embeddings", self.embeddings, (len(self.tokens), None, None), _FLOATS)
        if self.components and len(self.components) != len(self.tokens):
            raise ShapeError(f"{len(self.components)} component names for {len(self.tokens)} tokens")


@dataclass(frozen=True, repr=False)
class MVConditioning(StageData):
    """Text + camera conditioning for a batch of objects.

    Attributes:
        cond: float [B·V, 77, D] positive text embeddings, view-contiguous.
        uncond: float [B·V, 77, D] negative text embeddings (same cameras as cond for CFG).
        cameras: float [B·V, 16] MVDream camera inputs.
        num_views: V.
        prompts: the B positive prompts as encoded (suffixes included).
        negative_prompt: the negative prompt as encoded.
        truncated: per prompt, whether it was longer than the text window and was cut like MVDream does.
        provenance: JSON-able facts about what made it (base model hash, token names and token file hashes), copied
            into the files written from its samples (``dreamedit3d_core.provenance``).
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    cameras: torch.Tensor
    num_views: int
    prompts: tuple
    negative_prompt: str = ""
    truncated: tuple = ()
    provenance: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        _check("cond", self.cond, (None, None, None), _FLOATS)
        _check("uncond", self.uncond, tuple(self.cond.shape), _FLOATS)
        _check("cameras", self.cameras, (self.cond.shape[0], 16), _FLOATS)
        if self.cond.shape[0] % self.num_views:
            raise ShapeError(f"batch {self.cond.shape[0]} is not a multiple of num_views {self.num_views}")

    @property
    def batch_size(self) -> int:
        return int(self.cond.shape[0]) // self.num_views


@dataclass(frozen=True, repr=False)
class MultiViewSamples(StageData):
    """Sampled views.

    Attributes:
        latents: float [B·V, 4, h, w] (unscaled by nothing: these are the UNet's latents, i.e. 0.18215·E(x)).
        images: float32 [B·V, 3, H, W] in 0..1.
        seed: the seed used.
        sigmas: float [S+1] the sigma schedule used (or the timesteps for DDIM).
    """

    latents: torch.Tensor
    images: torch.Tensor
    seed: int
    sigmas: torch.Tensor

    def __post_init__(self):
        _check("latents", self.latents, (None, None, None, None), _FLOATS)
        _check("images", self.images, (self.latents.shape[0], 3, None, None), _FLOATS)


@dataclass(frozen=True, repr=False)
class LiftedMesh(StageData):
    """A textured triangle mesh produced by lifting.

    Attributes:
        vertices: float32 [N, 3] in the lift's internal frame; float64 once moved into the source file's own frame
            (``lifting.export.in_output_frame``: files far from the origin keep their precision); faces: int64 [M, 3];
        uv: float32 [N, 2] (v = 0 at the texture's bottom) or None;
        texture: float32 [T, T, 3] in 0..1 or None;
        vertex_colors: float32 [N, 3] in 0..1 or None;
        stats: plain numbers about the lift (unseen texel fraction, timings, ...).
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    uv: Optional[torch.Tensor] = None
    texture: Optional[torch.Tensor] = None
    vertex_colors: Optional[torch.Tensor] = None
    stats: dict = field(default_factory=dict)

    def __post_init__(self):
        _check("vertices", self.vertices, (None, 3), _FLOATS, finite=True)
        _check("faces", self.faces, (None, 3), _INTS)
        _check("uv", self.uv, (self.vertices.shape[0], 2), _FLOATS)
        _check("texture", self.texture, (None, None, 3), _FLOATS)
        _check("vertex_colors", self.vertex_colors, (self.vertices.shape[0], 3), _FLOATS)
