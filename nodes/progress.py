"""Progress, previews and interruption of long node runs, on ComfyUI's progress bar."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ._compat import progress_bar, sd_latent_rgb_factors, throw_if_interrupted


def preview_views(preview: Any) -> Optional[torch.Tensor]:
    """An image tensor [N,3,H,W] / [N,H,W,3] / [3,H,W] in 0..1 as a CPU IMAGE float32 [N,H,W,3]; None if not one."""
    if preview is None:
        return None
    t = torch.as_tensor(preview).detach().float().cpu()
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        return None
    if t.shape[1] in (1, 3) and t.shape[-1] not in (1, 3):
        t = t.permute(0, 2, 3, 1)  # -> [N,H,W,C]
    if t.shape[-1] == 1:
        t = t.expand(*t.shape[:-1], 3)
    return t[..., :3].clamp(0, 1).contiguous()


def preview_image(preview: Any, max_size: int = 512):
    """A preview for the websocket: ("JPEG", PIL image, max size) from an image tensor (a 2x2 grid for 4 views)."""
    from PIL import Image

    if preview is None:
        return None
    if isinstance(preview, Image.Image):
        return ("JPEG", preview, max_size)
    t = preview_views(preview)
    if t is None:
        return None
    n, h, w, _ = t.shape
    cols = 2 if n == 4 else n
    rows = (n + cols - 1) // cols
    grid = torch.ones(rows * h, cols * w, 3)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = t[i, ..., :3]
    arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return ("JPEG", Image.fromarray(arr), max_size)


class ComfyProgress:
    """:class:`dreamedit3d_core.progress.Progress` on ComfyUI: the node's progress bar, previews and interruption.

    ``update`` drives the host's ``ProgressBar.update_absolute`` (websocket ``progress`` events + previews; the
    server's hook also checks interruption); ``check_interrupt`` raises ComfyUI's own InterruptProcessingException so
    the run ends with ``execution_interrupted``. ``info`` values (loss, ...) are kept in ``last_info`` for the node's
    UI text, and the last image preview in ``last_preview`` (IMAGE [N,H,W,3] on the CPU, or None).
    """

    def __init__(self, total: int = 1, node_id: Optional[str] = None):
        self.bar = progress_bar(total, node_id)
        self.last_info: dict = {}
        self.last_preview: Optional[torch.Tensor] = None

    def update(self, step: int, total: int, preview: Optional[Any] = None, **info: Any) -> None:
        self.last_info = dict(info)
        views = None if preview is None or _is_pil(preview) else preview_views(preview)
        if views is not None:
            self.last_preview = views
        self.bar.update_absolute(int(step), int(total), preview_image(preview))

    def check_interrupt(self) -> None:
        throw_if_interrupted()


def _is_pil(obj: Any) -> bool:
    from PIL import Image

    return isinstance(obj, Image.Image)


def latent_preview_rgb(latents: torch.Tensor) -> torch.Tensor:
    """Cheap RGB preview of SD latents [N,4,h,w] (the SD1/SD2 latent->RGB factors ComfyUI uses), float [N,3,h,w] in 0..1."""
    factors = torch.tensor(sd_latent_rgb_factors(), dtype=torch.float32)
    rgb = torch.einsum("nchw,cr->nrhw", latents.detach().float().cpu(), factors)
    return ((rgb + 1.0) / 2.0).clamp(0, 1)
