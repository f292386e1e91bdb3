"""Did each token learn its part? Disentanglement evidence for a set of learned component tokens (issue 18).

For every token and every view the report measures:

* **attention isolation**: the token's cross-attention maps, averaged over heads, the layers the attention-alignment
  loss uses and a fixed set of timesteps (fixed noise, the source views' latents, the prompt naming every token), and
  the share of that mass inside each component's mask (a leakage matrix: row = token, column = component). The same
  is measured on a base model with each token's initialiser word as a reference.
* **reconstruction**: four views sampled with the prompt naming every token (fixed seed), compared with the source
  render inside each component's mask: masked PSNR always, masked DINO / CLIP-I when those models are given.
* **omission**: the same noise with one token dropped from the prompt; the share of the image change
  (mean absolute RGB difference) that falls inside that token's mask.
* **swap**: the same noise with two tokens' embeddings exchanged; the share of the change inside both masks.

Every share comes with the mask's own area share (what a change or an attention spread evenly over the image would
score), and each token gets a one-line verdict: isolated / leaking into X / weak. :func:`compare_attention_loss`
trains the tokens twice on the same scene, λ = 0 and the given λ, and reports each token's isolation for both (the
ablation that shows what the attention loss buys).

Tensor layout: channels-first, views first (``[V, 3, H, W]``), masks ``[K, V, H, W]``; see ``../shared/design/mvdream.md``
§6 for the attention maps (Break-a-Scene's "res 16" layers).

Modules: ``measures.py`` (pure measures and the heat map), ``probe.py`` (running the model: attention maps, sampled
views; :class:`TokenReportConfig`), ``report.py`` (the table, verdicts, ablation, files).
"""

from __future__ import annotations

from .measures import (MAX_PSNR_DB, attention_shares, change_shares, mask_area_shares, masked_psnr, render_heatmap,
                       verdict)
from .probe import (DEFAULT_TIMESTEPS, TokenReportConfig, attention_isolation, image_measures, recorded_attention,
                    report_layers, swapped, token_vectors, views_and_latents)
from .report import TokenReport, compare_attention_loss, report_to_json, save_token_report, token_report

__all__ = [
    "DEFAULT_TIMESTEPS", "MAX_PSNR_DB", "TokenReport", "TokenReportConfig", "attention_isolation", "attention_shares",
    "change_shares", "compare_attention_loss", "image_measures", "mask_area_shares", "masked_psnr",
    "recorded_attention", "render_heatmap", "report_layers", "report_to_json", "save_token_report", "swapped",
    "token_report", "token_vectors", "verdict", "views_and_latents",
]
