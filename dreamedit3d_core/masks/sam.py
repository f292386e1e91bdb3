"""Segment Anything prompted consistently across the views, for assets without usable parts.

The user places points (or a box) on one view. Points are lifted to 3D with that view's depth and re-projected into
every other view, where they are kept only if that view sees them (depth test): occluded points are dropped. A box is
carried over as the bounding box of its lifted object pixels that the other view sees. SAM (``segment-anything``'s
``SamPredictor``, which resizes with ``ResizeLongestSide(img_size)`` of the loaded model) is prompted in each view; masks
are limited to the object (alpha) and their cross-view agreement is measured by re-projection
(:func:`~dreamedit3d_core.masks.reproject.mask_disagreement`) and returned in ``ComponentMasks.disagreement``.

Weights: any SAM checkpoint in the released format (a plain ``state_dict`` saved with ``torch.save``, e.g.
``sam_vit_b_01ec64.pth``, or the same keys in ``.safetensors``). The architecture (ViT size, image size, patch and window
sizes, global-attention blocks) is read from the tensor shapes, so vit_b/l/h and smaller models load alike; the mask
decoder's 8 attention heads are fixed by SAM's design and not stored in the file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError, MissingDependencyError
from ..types import ComponentMasks, MaskSource, MultiViewRender
from .reproject import DEFAULT_DEPTH_TOLERANCE, lift_pixels, mask_disagreement, project_visible
from .spec import clean_component_name, parse_component_spec, require_covered

#: Attention heads of SAM's two-way transformer (every released SAM; not recoverable from the weights).
SAM_DECODER_HEADS = 8


@dataclass(frozen=True)
class SamPrompt:
    """Where the user pointed, on one view.

    Attributes:
        component: component name (e.g. "hat").
        view: index of the view the prompt is on (0 = front).
        points: ((x, y), ...) pixel coordinates (x = column, y = row, pixel centres at +0.5) in that view.
        labels: 1 (on the component) or 0 (not on it) per point; default all 1.
        box: (x0, y0, x1, y1) pixel box in that view, or None.
    """

    component: str
    view: int = 0
    points: tuple = ()
    labels: tuple = ()
    box: Optional[tuple] = None

    def __post_init__(self):
        pts = tuple(tuple(float(c) for c in p) for p in self.points)
        if any(len(p) != 2 for p in pts):
            raise ConfigError(f"component '{self.component}': points must be (x, y) pairs, got {self.points!r}")
        labels = tuple(int(l) for l in self.labels) if self.labels else (1,) * len(pts)
        if len(labels) != len(pts) or any(l not in (0, 1) for l in labels):
            raise ConfigError(f"component '{self.component}': need one label (1 = on it, 0 = not) per point, "
                              f"got {self.labels!r} for {len(pts)} points")
        box = None if self.box is None else tuple(float(c) for c in self.box)
        if box is not None and (len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]):
            raise ConfigError(f"component '{self.component}': box must be (x0, y0, x1, y1) with x1 > x0, y1 > y0, "
                              f"got {self.box!r}")
        if not pts and box is None:
            raise ConfigError(f"component '{self.component}': give at least one point or a box")
        if 1 not in labels and box is None:
            raise ConfigError(f"component '{self.component}': needs at least one point with label 1 (or a box)")
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "box", box)


def parse_sam_prompts(prompts) -> list:
    """Prompts as a list of :class:`SamPrompt`, from SamPrompts, a dict ``{component: {"view", "points", "labels",
    "box"}}`` or its JSON text."""
    if isinstance(prompts, str):
        try:
            prompts = json.loads(prompts)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"SAM prompts are not valid JSON ({exc}); write e.g. "
                              '{"hat": {"view": 0, "points": [[128, 40]]}}') from None
    if isinstance(prompts, SamPrompt):
        prompts = [prompts]
    if isinstance(prompts, Mapping):
        out = []
        for name, p in prompts.items():
            if not isinstance(p, Mapping):
                raise ConfigError(f"SAM prompt for '{name}' must be a dict with view/points/labels/box, got {p!r}")
            unknown = set(p) - {"view", "points", "labels", "box"}
            if unknown:
                raise ConfigError(f"SAM prompt for '{name}' has unknown keys {sorted(unknown)}; valid: box, labels, "
                                  f"points, view")
            out.append(SamPrompt(name, int(p.get("view", 0)), tuple(p.get("points", ())), tuple(p.get("labels", ())),
                                 p.get("box")))
        prompts = out
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, SamPrompt) for p in prompts):
        raise ConfigError("SAM prompts must be a non-empty list of SamPrompt or a dict {component: {...}}")
    names = [p.component.lower() for p in prompts]
    if len(set(names)) != len(names):
        raise ConfigError(f"SAM prompts name a component twice: {[p.component for p in prompts]}")
    return prompts


# --------------------------------------------------------------------------------------------------------------------------
# loading SAM from a released-format state dict


def _read_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: SAM checkpoint not found; put the .pth in models/sams")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be read as a SAM checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or "image_encoder.patch_embed.proj.weight" not in state:
        raise CheckpointError(f"{path}: is not a Segment Anything checkpoint (no image_encoder.patch_embed weights); "
                              f"use a SAM file such as sam_vit_b_01ec64.pth")
    return state


def _sam_config(state: dict, path: Path) -> dict:
    """Architecture of a SAM state dict, from tensor shapes."""
    try:
        patch = state["image_encoder.patch_embed.proj.weight"]
        embed_dim, patch_size = int(patch.shape[0]), int(patch.shape[-1])
        grid = int(state["image_encoder.pos_embed"].shape[1])
        blocks = sorted({int(m.group(1)) for k in state for m in [re.match(r"image_encoder\.blocks\.(\d+)\.", k)] if m})
        depth = len(blocks)
        rel = [int(state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0]) for i in blocks]
        head_dim = int(state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1])
        global_idx = [i for i, r in zip(blocks, rel) if r == 2 * grid - 1]
        windows = {(r + 1) // 2 for i, r in zip(blocks, rel) if r != 2 * grid - 1}
        prompt_dim = int(state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].shape[1]) * 2
        dec_layers = {int(m.group(1)) for k in state for m in [re.match(r"mask_decoder\.transformer\.layers\.(\d+)\.", k)]
                      if m}
        iou_layers = {int(m.group(1)) for k in state
                      for m in [re.match(r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.", k)] if m}
        return dict(
            embed_dim=embed_dim, patch_size=patch_size, img_size=grid * patch_size, depth=depth,
            num_heads=embed_dim // head_dim,
            mlp_ratio=state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / embed_dim,
            out_chans=int(state["image_encoder.neck.0.weight"].shape[0]),
            global_attn_indexes=tuple(global_idx), window_size=windows.pop() if len(windows) == 1 else 0,
            prompt_dim=prompt_dim, mask_in_chans=int(state["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
            decoder_depth=len(dec_layers),
            decoder_mlp_dim=int(state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
            num_multimask_outputs=int(state["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
            iou_head_depth=len(iou_layers),
            iou_head_hidden_dim=int(state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
        )
    except (KeyError, IndexError, ZeroDivisionError) as exc:
        raise CheckpointError(f"{path}: SAM checkpoint is incomplete (missing or odd tensor {exc}); re-download it") from None


def load_sam(path: Union[str, os.PathLike], device: Optional[Union[str, torch.device]] = None):
    """Build ``segment_anything.modeling.Sam`` for a checkpoint and load its weights (strict).

    Raises:
        MissingDependencyError: segment-anything is not installed.
        CheckpointError: missing, unreadable, not SAM, or weights that do not fit.
    """
    try:
        from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    except ImportError:
        raise MissingDependencyError("ComponentMask with SAM", "segment_anything", "segment-anything") from None
    path = Path(path)
    state = _read_state_dict(path)
    cfg = _sam_config(state, path)
    grid = cfg["img_size"] // cfg["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=cfg["img_size"], patch_size=cfg["patch_size"], embed_dim=cfg["embed_dim"], depth=cfg["depth"],
            num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"], out_chans=cfg["out_chans"], qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            global_attn_indexes=cfg["global_attn_indexes"], window_size=cfg["window_size"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg["prompt_dim"], image_embedding_size=(grid, grid),
            input_image_size=(cfg["img_size"], cfg["img_size"]), mask_in_chans=cfg["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=cfg["num_multimask_outputs"],
            transformer=TwoWayTransformer(depth=cfg["decoder_depth"], embedding_dim=cfg["prompt_dim"],
                                          mlp_dim=cfg["decoder_mlp_dim"], num_heads=SAM_DECODER_HEADS),
            transformer_dim=cfg["prompt_dim"], iou_head_depth=cfg["iou_head_depth"],
            iou_head_hidden_dim=cfg["iou_head_hidden_dim"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the SAM architecture read from it "
                              f"({str(exc).splitlines()[0]})") from None
    return sam.eval().to(device if device is not None else "cpu")


# --------------------------------------------------------------------------------------------------------------------------
# prompts carried across views


def view_prompts(render: MultiViewRender, prompt: SamPrompt, depth_tolerance: float):
    """The prompt of every view: list over views of (points float [N, 2] or None, labels int [N] or None, box or None).

    The prompt's own view keeps it as given; other views get the lifted points they see (occluded ones dropped) and the
    bounding box of the box's visible object pixels. A view left with no positive point and no box gets None throughout.
    """
    num_views = render.num_views
    if not (0 <= prompt.view < num_views):
        raise ConfigError(f"component '{prompt.component}': view {prompt.view} does not exist (0..{num_views - 1})")
    h, w = render.size
    per_view: list = [(None, None, None) for _ in range(num_views)]
    pts = torch.tensor(prompt.points, dtype=torch.float64).reshape(-1, 2)
    labels = torch.tensor(prompt.labels, dtype=torch.int64)
    per_view[prompt.view] = (pts.numpy() if len(pts) else None, labels.numpy() if len(pts) else None,
                             None if prompt.box is None else np.asarray(prompt.box, np.float64))
    if len(pts):
        world, on_object = lift_pixels(render, prompt.view, pts)
        bad = [tuple(p) for p, ok, lab in zip(prompt.points, on_object.tolist(), prompt.labels) if lab == 1 and not ok]
        if bad:
            raise ConfigError(f"component '{prompt.component}': point(s) {bad} on view {prompt.view} are not on the object "
                              f"(background or outside the {w}x{h} image); place them on it")
        xy, visible = project_visible(render, world[on_object], depth_tolerance)
        lab_obj = labels[on_object.cpu()]
    box_xy = None
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        cols = torch.arange(max(0, int(x0)), min(w, int(np.ceil(x1))))
        rows = torch.arange(max(0, int(y0)), min(h, int(np.ceil(y1))))
        grid = torch.stack(torch.meshgrid(cols, rows, indexing="xy"), -1).reshape(-1, 2).to(torch.float64) + 0.5
        box_world, ok = lift_pixels(render, prompt.view, grid)
        box_xy = project_visible(render, box_world[ok], depth_tolerance)
    for v in range(num_views):
        if v == prompt.view:
            continue
        p_v = l_v = b_v = None
        if len(pts) and bool(visible[v].any()):
            p_v = xy[v, visible[v]].cpu().numpy()
            l_v = lab_obj[visible[v].cpu()].numpy()
        if box_xy is not None and int(box_xy[1][v].sum()) >= 3:
            sel = box_xy[0][v, box_xy[1][v]]
            b_v = np.concatenate([sel.min(0).values.cpu().numpy() - 0.5, sel.max(0).values.cpu().numpy() + 0.5])
        if (l_v is None or 1 not in l_v) and b_v is None:
            continue  # the component is hidden in this view
        per_view[v] = (p_v, l_v, b_v)
    return per_view


def _prompts_from_components(components, view, points, labels, box) -> tuple:
    """The one-component form (what a node with a points field passes): ([SamPrompt], name of the '*' component or None).

    ``components`` is a name ("hat") or a spec ("hat: Hat; dog: *"): the first component that is not '*' is segmented from
    the points/box, and a '*' component takes the rest of the object.
    """
    if components is None:
        raise ConfigError("masks_from_sam needs prompts, or components= with points= (or box=) on one view")
    text = str(components)
    spec = parse_component_spec(text) if ":" in text else {clean_component_name(n): [] for n in text.replace(";", ",").split(",")
                                                           if n.strip()}
    named = [n for n, parts in spec.items() if parts != "*"]
    rest = [n for n, parts in spec.items() if parts == "*"]
    if len(named) != 1:
        raise ConfigError(f"SAM from points segments one component (plus an optional '*' one for the rest of the "
                          f"object); got components {list(spec)}")
    prompt = SamPrompt(named[0], int(view), tuple(points or ()), tuple(labels or ()), box)
    return [prompt], (rest[0] if rest else None), list(spec)


def masks_from_sam(
    render: MultiViewRender,
    sam_checkpoint_path,
    prompts=None,
    *,
    components=None,
    view: int = 0,
    points=None,
    labels=None,
    box=None,
    depth_tolerance: Optional[float] = None,
    restrict_to_object: bool = True,
    multimask: bool = False,
    device: Optional[Union[str, torch.device]] = None,
) -> ComponentMasks:
    """Component masks from SAM, prompted consistently across the views.

    Args:
        render: from ``render_views`` (rgb, depth, normals, cameras).
        sam_checkpoint_path: a SAM checkpoint path (see module doc), or an already loaded ``Sam`` module.
        prompts: list of :class:`SamPrompt`, or ``{component: {"view": 0, "points": [[x, y]], "labels": [1], "box":
            [x0, y0, x1, y1]}}`` (or its JSON). Pixel coordinates: x = column, y = row, pixel centres at +0.5.
        components, view, points, labels, box: the one-component form instead of ``prompts``: ``components`` is a name
            or a spec such as ``"hat: Hat; dog: *"`` whose first non-'*' component is segmented from ``points``/``box`` on
            ``view``; a '*' component gets the rest of the object (alpha minus the segmented component).
        depth_tolerance: object units for the occlusion test (default ``reproject.DEFAULT_DEPTH_TOLERANCE``).
        restrict_to_object: keep only mask pixels on the object (alpha > 0.5).
        multimask: ask SAM for several masks per view and keep the best-scored.
        device: where SAM runs (default: the render's device).

    Returns:
        ComponentMasks (source SAM) with masks bool [K, V, H, W] and disagreement float [K] (0 = consistent).

    Raises:
        ConfigError: bad prompts, a positive point off the object, or a component empty in every view.
        CheckpointError / MissingDependencyError: see :func:`load_sam`.
    """
    tol = DEFAULT_DEPTH_TOLERANCE if depth_tolerance is None else float(depth_tolerance)
    rest_name, order = None, None
    if prompts is None:
        prompts, rest_name, order = _prompts_from_components(components, view, points, labels, box)
    prompts = parse_sam_prompts(prompts)
    names = tuple(clean_component_name(p.component) for p in prompts)
    all_prompts = [view_prompts(render, p, tol) for p in prompts]  # checks the prompts before loading SAM
    run_device = device if device is not None else render.rgb.device
    sam = sam_checkpoint_path if isinstance(sam_checkpoint_path, torch.nn.Module) else load_sam(sam_checkpoint_path,
                                                                                              run_device)
    from segment_anything import SamPredictor

    predictor = SamPredictor(sam)
    h, w = render.size
    masks = torch.zeros(len(prompts), render.num_views, h, w, dtype=torch.bool)
    on_object = (render.alpha[:, 0] > 0.5).cpu()
    with torch.no_grad():
        for v in range(render.num_views):
            if all(pp[v][1] is None and pp[v][2] is None for pp in all_prompts):
                continue
            image = (render.rgb[v].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            predictor.set_image(image, image_format="RGB")
            for k, pp in enumerate(all_prompts):
                points_v, labels_v, box_v = pp[v]
                if labels_v is None and box_v is None:
                    continue
                # SAM counts pixel i from i (it adds 0.5 for the centre); ours has the centre of pixel i at i + 0.5
                out, scores, _ = predictor.predict(point_coords=None if points_v is None else points_v - 0.5,
                                                   point_labels=labels_v, box=None if box_v is None else box_v - 0.5,
                                                   multimask_output=multimask)
                m = torch.from_numpy(out[int(np.argmax(scores))] if multimask else out[0])
                masks[k, v] = m & on_object[v] if restrict_to_object else m
    if rest_name is not None:
        rest = on_object & ~masks.any(0)
        by_name = dict(zip(names, masks))
        by_name[rest_name] = rest
        names = tuple(order)
        masks = torch.stack([by_name[n] for n in names])
    masks = masks.to(render.rgb.device)
    require_covered(masks, names, "SAM found nothing at the prompts: move the points onto the component or add a box")
    return ComponentMasks(masks=masks, names=names, source=MaskSource.SAM,
                          disagreement=mask_disagreement(render, masks, depth_tolerance=tol))
