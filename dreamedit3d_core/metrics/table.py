"""Every metric the given models allow, for one edit or several, as a JSON-ready table, and its bar chart."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..cameras import view_names
from ..errors import ConfigError, ShapeError
from .models import ClipMetricModel, DinoMetricModel
from .scores import (ImageMask, check_images, check_pair, clip_directional_similarity, clip_image_similarity,
                     clip_text_image_score, dino_identity)

# ----------------------------------------------------------------------------------------------------------------
# table and chart

METRIC_INFO = {  # key: (label, chart axis low, chart axis high (values beyond are drawn clipped), definition)
    "clip_directional": ("CLIP directional", -1.0, 1.0, "cos(E_I(edit)-E_I(src), E_T(t_edit)-E_T(t_src))"),
    "clip_score": ("CLIPScore", 0.0, 100.0, "max(100*cos(E_I(edit), E_T(t_edit)), 0)"),
    "clip_image": ("CLIP-I", 0.0, 1.0, "cos(E_I(edit), E_I(src))"),
    "dino_identity": ("DINO identity", 0.0, 1.0, "cos(DINO_CLS(edit), DINO_CLS(src))"),
    "dino_identity_protected": ("DINO identity (protected parts)", 0.0, 1.0,
                                "cos(DINO_CLS(edit*m+bg*(1-m)), DINO_CLS(src*m+bg*(1-m))), m = protected mask"),
}


def evaluate_edit(source_images: torch.Tensor, edited_images: torch.Tensor, source_caption: str = "",
                  edit_caption: str = "", clip: Optional[ClipMetricModel] = None, dino: Optional[DinoMetricModel] = None,
                  mask: ImageMask = None, background=(1.0, 1.0, 1.0)) -> dict:
    """Every metric the given models allow, as a JSON-ready table.

    CLIP with a text tower gives clip_directional, clip_score and clip_image; an image-only CLIP gives clip_image;
    DINO gives dino_identity, plus dino_identity_protected when ``mask`` is given.

    Returns:
        {"views": [...], "captions": {...}, "models": {...}, "metrics": {key: {"label", "definition", "per_view", "mean"}}}
        with NaN written as None.
    """
    check_pair(source_images, edited_images)
    if clip is None and dino is None:
        raise ConfigError("no metric model given: pass a CLIP (models/clip_vision) and/or a DINO (models/dino) model")
    if mask is not None and dino is None:
        raise ConfigError("a protected mask only restricts DINO identity: choose a DINO model (models/dino) too")
    results = []
    if clip is not None:
        if clip.has_text:
            results.append(clip_directional_similarity(source_images, edited_images, source_caption, edit_caption, clip))
            results.append(clip_text_image_score(edited_images, edit_caption, clip))
        results.append(clip_image_similarity(source_images, edited_images, clip))
    if dino is not None:
        results.append(dino_identity(source_images, edited_images, dino))
        if mask is not None:
            results.append(dino_identity(source_images, edited_images, dino, mask=mask, background=background))

    def clean(x: float):
        return None if math.isnan(x) else round(x, 6)

    return {
        "views": list(view_names(source_images.shape[0])),
        "captions": {"source": source_caption, "edit": edit_caption},
        "models": {"clip": _short(clip.source) if clip is not None else None,
                   "dino": _short(dino.source) if dino is not None else None},
        "metrics": {r.name: {"label": METRIC_INFO[r.name][0], "definition": METRIC_INFO[r.name][3],
                             "per_view": [clean(v) for v in r.per_view], "mean": clean(r.mean)} for r in results},
    }


def evaluate_edits(source_images: torch.Tensor, edited_images: torch.Tensor, source_caption: str,
                   edit_captions: Sequence[str], clip: Optional[ClipMetricModel] = None,
                   dino: Optional[DinoMetricModel] = None, mask: ImageMask = None, background=(1.0, 1.0, 1.0)) -> dict:
    """Several edits of one source (one personalisation, many edit prompts), each scored like :func:`evaluate_edit`.

    Args:
        source_images: float [V, 3, H, W] in 0..1.
        edited_images: float [N*V, 3, H, W] in 0..1, edit-major (index ``n * V + v``), as MVSample batches them.
        edit_captions: N captions, one per edit, in the same order.

    Returns:
        {"views": [...], "edits": [N tables of :func:`evaluate_edit`], "summary": a table in the chart's format whose
        "views" are the edits and whose values are each edit's mean over views}.
    """
    check_images("source_images", source_images)
    check_images("edited_images", edited_images)
    v = source_images.shape[0]
    if edited_images.shape[0] % v:
        raise ShapeError(f"edited_images has {edited_images.shape[0]} views, not a multiple of the source's {v}: "
                         "give every edit the same views as the source")
    n = edited_images.shape[0] // v
    captions = [c for c in edit_captions if isinstance(c, str) and c.strip()]
    if clip is not None and clip.has_text and len(captions) != n:
        raise ConfigError(f"edited_images holds {n} edit(s) ({n}x{v} views) but {len(captions)} edit caption(s) were "
                          "given: write one caption per edit, one per line")
    captions = (captions + [""] * n)[:n]  # without a text tower the captions are only recorded
    edits = [evaluate_edit(source_images, edited_images[i * v:(i + 1) * v], source_caption, captions[i], clip, dino,
                           mask, background) for i in range(n)]
    labels = [f"edit {i + 1}" for i in range(n)]
    summary = {"views": labels, "metrics": {}}
    for key in edits[0]["metrics"]:
        means = [e["metrics"][key]["mean"] for e in edits]
        valid = [m for m in means if m is not None]
        summary["metrics"][key] = {"label": METRIC_INFO[key][0], "definition": METRIC_INFO[key][3] + ", mean over views",
                                   "per_view": means, "mean": round(sum(valid) / len(valid), 6) if valid else None}
    return {"views": edits[0]["views"], "edits": edits, "summary": summary}


def _short(path: str) -> str:
    """The model's folder and file name, not the user's whole path (tables get shared)."""
    parts = Path(path).parts
    return "/".join(parts[-2:]) if parts else ""


def metrics_to_json(table: dict) -> str:
    """The table as indented JSON (NaN already written as null)."""
    return json.dumps(table, indent=2, allow_nan=False)


_BAR_COLOURS = ((76, 114, 176), (221, 132, 82), (85, 168, 104), (196, 78, 82), (129, 114, 179), (147, 120, 96))
_MEAN_COLOUR = (60, 60, 60)


def render_metrics_chart(table: dict, width: int = 640, panel_height: int = 140) -> torch.Tensor:
    """A bar chart of the table (one panel per metric, one bar per view plus the mean), drawn with PIL.

    Returns:
        float32 [3, H, W] in 0..1 (H = panel_height * number of metrics + the legend: 24 px, plus 14 px per extra line).
    """
    from PIL import Image, ImageDraw, ImageFont

    metrics = table.get("metrics", {})
    if not metrics:
        raise ConfigError("the metrics table is empty: nothing to plot")
    views = list(table["views"]) + ["mean"]
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend, x, y = [], 8, 8  # wrap the legend onto as many lines as it needs
    for name in views:
        item = 14 + int(measure.textlength(name, font=font)) + 16
        if x > 8 and x + item > width - 8:
            x, y = 8, y + 14
        legend.append((x, y, name))
        x += item
    legend_h = y + 16
    img = Image.new("RGB", (width, legend_h + panel_height * len(metrics)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    colours = [_BAR_COLOURS[i % len(_BAR_COLOURS)] for i in range(len(views) - 1)] + [_MEAN_COLOUR]
    for (x, y, name), colour in zip(legend, colours):
        draw.rectangle([x, y, x + 10, y + 10], fill=colour)
        draw.text((x + 14, y - 1), name, fill=(0, 0, 0), font=font)
    left, right = 56, width - 12
    for row, (key, entry) in enumerate(metrics.items()):
        top = legend_h + row * panel_height
        lo, hi = METRIC_INFO.get(key, (key, -1.0, 1.0, ""))[1:3]
        draw.text((8, top + 4), f"{entry.get('label', key)}  (mean {_fmt(entry['mean'])})", fill=(0, 0, 0), font=font)
        y0, y1 = top + 34, top + panel_height - 8  # plot area, room for the labels above

        def y_of(v: float) -> float:
            return y1 - (min(max(v, lo), hi) - lo) / (hi - lo) * (y1 - y0)

        draw.rectangle([left, y0, right, y1], outline=(180, 180, 180))
        for tick in (lo, (lo + hi) / 2, hi):
            draw.text((8, y_of(tick) - 6), _fmt(tick), fill=(90, 90, 90), font=font)
        base = y_of(min(max(0.0, lo), hi))
        draw.line([left, base, right, base], fill=(120, 120, 120))
        values = list(entry["per_view"]) + [entry["mean"]]
        slot = (right - left) / len(values)
        for i, (v, colour) in enumerate(zip(values, colours)):
            x0, x1 = left + i * slot + slot * 0.2, left + (i + 1) * slot - slot * 0.2
            if v is None:
                draw.text((x0, base - 14), "n/a", fill=(120, 120, 120), font=font)
                continue
            yv = y_of(v)
            draw.rectangle([x0, min(yv, base), x1, max(yv, base)], fill=colour)
            draw.text((x0, min(yv, base) - 12 if v >= 0 else max(yv, base) + 1), _fmt(v), fill=(0, 0, 0), font=font)
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, 3)
    return data.permute(2, 0, 1).float() / 255.0


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}"
