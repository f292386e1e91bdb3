"""Contact sheet: N edits x 4 views on one image, one row per prompt, columns front, right, back, left.

Layout (all in pixels, views H x W, padding ``pad``, label strip height ``label_height``)::

    pad | header strip (view names above each column)            height label_height
    pad | row 0: prompt label strip (full width)                 height label_height
        |        view 0 | pad | view 1 | pad | view 2 | pad | view 3   height H
    pad | row 1: ...

    column c starts at x = pad + c * (W + pad)
    row r's views start at y = pad + label_height + r * (label_height + H + pad) + label_height
    sheet: width 4 * W + 5 * pad, height pad + label_height + N * (label_height + H + pad)

Labels are drawn with PIL's default font in dark grey on the background, cut with "..." to fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from .cameras import VIEW_NAMES
from .errors import ShapeError


@dataclass(frozen=True)
class SheetLayout:
    """Where everything sits on a sheet (pixels; boxes are (x0, y0, x1, y1), x1/y1 exclusive).

    Attributes:
        width, height: the sheet's size.
        cells: per edit, per view, the box of that view's image.
        labels: per edit, the box of its prompt label strip.
        headers: per view column, the box of its view-name label.
    """

    width: int
    height: int
    cells: tuple
    labels: tuple
    headers: tuple


def sheet_layout(rows: int, view_size: tuple[int, int], num_views: int = 4, pad: int = 4,
                 label_height: int = 14) -> SheetLayout:
    """The layout of a sheet of ``rows`` edits of ``num_views`` views of ``view_size`` = (H, W) each."""
    h, w = int(view_size[0]), int(view_size[1])
    if rows < 1 or h < 1 or w < 1:
        raise ShapeError(f"a contact sheet needs at least one row of non-empty views, got {rows} rows of {h}x{w}")
    width = num_views * w + (num_views + 1) * pad
    height = pad + label_height + rows * (label_height + h + pad)
    xs = [pad + c * (w + pad) for c in range(num_views)]
    headers = tuple((x, pad, x + w, pad + label_height) for x in xs)
    cells, labels = [], []
    for r in range(rows):
        top = pad + label_height + r * (label_height + h + pad)
        labels.append((pad, top, width - pad, top + label_height))
        cells.append(tuple((x, top + label_height, x + w, top + label_height + h) for x in xs))
    return SheetLayout(width, height, tuple(cells), tuple(labels), headers)


def _fit(draw, text: str, font, max_width: int) -> str:
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "...", font=font) > max_width:
        text = text[:-1]
    return text + "..." if text else ""


def contact_sheet(images: torch.Tensor, labels: Optional[Sequence[str]] = None, num_views: int = 4,
                  view_names: Sequence[str] = VIEW_NAMES, pad: int = 4, label_height: int = 14,
                  background: float = 1.0) -> tuple[torch.Tensor, SheetLayout]:
    """Lay out N·V views (view-contiguous: image n·V + v is view v of edit n) as an N x V contact sheet.

    Args:
        images: float [N·V, 3, H, W] in 0..1.
        labels: one text per row (the prompts); None or fewer than N leave rows unlabelled ("edit n").
        num_views: V (4: front, right, back, left).
        view_names: column titles.
        pad, label_height: spacing and label strip height in pixels (see the module docstring).
        background: grey level of the sheet's background.

    Returns:
        (sheet float32 [3, Hs, Ws] in 0..1 on ``images``' device, its :class:`SheetLayout`).

    Raises:
        ShapeError: not [N·V, 3, H, W], or more labels than rows.
    """
    from PIL import Image, ImageDraw, ImageFont

    if images.ndim != 4 or images.shape[1] != 3:
        raise ShapeError(f"images must be [N*{num_views}, 3, H, W], got {list(images.shape)}")
    if images.shape[0] == 0 or images.shape[0] % num_views:
        raise ShapeError(f"{images.shape[0]} images are not a whole number of {num_views}-view edits: give N*{num_views} "
                         "views, view-contiguous (front, right, back, left for each edit)")
    rows = images.shape[0] // num_views
    labels = [str(t) for t in (labels or [])]
    if len(labels) > rows:
        raise ShapeError(f"{len(labels)} labels for {rows} rows of views: give one label (prompt) per edit")
    labels += [f"edit {r + 1}" for r in range(len(labels), rows)]
    h, w = int(images.shape[2]), int(images.shape[3])
    layout = sheet_layout(rows, (h, w), num_views, pad, label_height)
    grey = int(round(float(background) * 255))
    canvas = Image.new("RGB", (layout.width, layout.height), (grey, grey, grey))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    ink = (40, 40, 40) if grey > 127 else (225, 225, 225)
    for c, box in enumerate(layout.headers):
        name = view_names[c] if c < len(view_names) else f"view {c}"
        draw.text((box[0] + 1, box[1] + 1), _fit(draw, name, font, box[2] - box[0] - 2), fill=ink, font=font)
    for r, box in enumerate(layout.labels):
        draw.text((box[0] + 1, box[1] + 1), _fit(draw, labels[r], font, box[2] - box[0] - 2), fill=ink, font=font)
    sheet = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
    # the views go in as floats, not through 8-bit PIL: the sheet keeps their exact values
    sheet = sheet.to(device=images.device)
    views = images.detach().to(torch.float32).clamp(0, 1)
    for r in range(rows):
        for c, (x0, y0, x1, y1) in enumerate(layout.cells[r]):
            sheet[:, y0:y1, x0:x1] = views[r * num_views + c]
    return sheet, layout


def strip_suffixes(prompt: str) -> str:
    """A prompt as the user wrote it: MVDream's and DreamEdit3D's suffixes removed (for labels)."""
    from .prompts import DREAMEDIT3D_QUALITY_SUFFIX, MVDREAM_SUFFIX

    text = prompt
    for suffix in (DREAMEDIT3D_QUALITY_SUFFIX, MVDREAM_SUFFIX):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    return text.strip()
