"""The token report itself: the JSON table, the verdicts, the λ = 0 ablation and the files (see the package docstring)."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch

from ..cameras import view_names
from ..errors import ConfigError, TokenError
from ..types import ComponentMasks, MultiViewRender, TokenSet
from .measures import render_heatmap, verdict
from .probe import TokenReportConfig, attention_isolation, image_measures, token_vectors, views_and_latents


@dataclass(frozen=True)
class TokenReport:
    """What :func:`token_report` returns.

    Attributes:
        table: JSON-ready dict (see :func:`token_report`).
        heatmap: float32 [3, H, W] in 0..1: one row per token, its attention in the four views beside its masks.
        verdicts: one line per token.
    """

    table: dict
    heatmap: torch.Tensor
    verdicts: tuple

    def to_json(self) -> str:
        return report_to_json(self.table)



def _floats(t) -> list:
    return [None if math.isnan(float(x)) else round(float(x), 4) for x in torch.as_tensor(t).flatten()]


def _mean(t) -> Optional[float]:
    vals = [float(x) for x in torch.as_tensor(t).flatten() if not math.isnan(float(x))]
    return round(sum(vals) / len(vals), 4) if vals else None


def _isolation_table(iso: dict, labels: Sequence[str], components: Sequence[str], views: Sequence[str]) -> dict:
    share, area = iso["share"], iso["area"]
    table = {
        "prompt": iso["prompt"], "layers": iso["layers"], "timesteps": iso["timesteps"], "map_size": iso["map_size"],
        "views": list(views),
        "mask_area": {c: {"per_view": _floats(area[j]), "mean": _mean(area[j])} for j, c in enumerate(components)},
        "tokens": {},
    }
    for i, label in enumerate(labels):
        inside = share[i].sum(dim=0)  # masks may overlap; the background share is 1 minus the union's share
        table["tokens"][label] = {
            "component": components[i],
            "own": {"per_view": _floats(share[i, i]), "mean": _mean(share[i, i])},
            "leakage": {c: {"per_view": _floats(share[i, j]), "mean": _mean(share[i, j])}
                        for j, c in enumerate(components)},
            "outside_all": {"per_view": _floats((1 - inside).clamp_min(0)), "mean": _mean((1 - inside).clamp_min(0))},
        }
    return table


def token_report(model, tokens: TokenSet, render: MultiViewRender, masks: ComponentMasks,
                 config: Optional[TokenReportConfig] = None, reference_model=None,
                 reference_words: Optional[Sequence[str]] = None, clip=None, dino=None, progress=None) -> TokenReport:
    """Per token and per view: attention isolation (+ reference), reconstruction, omission, swap, verdicts.

    Args:
        model: the personalised MVDreamModel (the tokens' vectors are put into it, as ``compose_prompt`` does).
        tokens: the learned tokens, one per component, in the masks' component order (``tokens.components`` names
            them; when empty the order of ``masks.names`` is assumed).
        render: the source views (the ones the tokens were learned from).
        masks: the components' masks [K, V, H, W] at the render's size.
        config: :class:`TokenReportConfig`.
        reference_model: a base model (without the tokens) for the reference isolation; None: no reference.
        reference_words: one plain word per component for the reference ("hat"); default: the component names.
        clip, dino: metric models (``dreamedit3d_core.metrics``) for masked CLIP-I / DINO in the reconstruction.
        progress: optional :class:`~dreamedit3d_core.progress.Progress`; its ``check_interrupt`` runs between stages.

    Returns:
        :class:`TokenReport`. ``table`` holds ``tokens``, ``components``, ``views``, ``attention`` (leakage matrix per
        token: ``tokens[t].own`` / ``leakage[c]`` / ``outside_all`` with ``per_view`` and ``mean``, plus each mask's
        area share), ``reference`` (the same for the words, and each token's ``gain`` over its word), and with
        ``config.images``: ``reconstruction``, ``omission``, ``swap``; and ``verdicts``.

    Raises:
        ConfigError / TokenError / ShapeError: tokens that do not match the components, words that collide in a
        prompt, masks that do not fit the render.
    """
    from ..personalize.objective import check_inputs

    config = config or TokenReportConfig()
    check_inputs(render, masks)
    components = list(masks.names)
    order = _token_order(tokens, components)
    tokens = replace(tokens, tokens=tuple(tokens.tokens[i] for i in order),
                     embeddings=tokens.embeddings[list(order)], components=tuple(components))
    labels = list(tokens.tokens)
    views = list(view_names(render.num_views))
    check = (progress.check_interrupt if progress is not None else (lambda: None))

    with torch.no_grad(), token_vectors(model, tokens):
        prepared = views_and_latents(model, render, config.resolution)
        iso = attention_isolation(model, render, masks, labels, config, _prepared=prepared)
    table = {"tokens": labels, "components": components, "views": views,
             "attention": _isolation_table(iso, labels, components, views)}
    ref_maps = None
    if reference_model is not None:
        check()
        words = list(reference_words) if reference_words else list(components)
        words = [w.strip() or c for w, c in zip(words, components)]
        with torch.no_grad():
            ref = attention_isolation(reference_model, render, masks, words, config,
                                      _prepared=views_and_latents(reference_model, render, config.resolution))
        ref_maps = ref["attention"]
        ref_labels = words if len(set(words)) == len(words) else [f"{w} ({c})" for w, c in zip(words, components)]
        table["reference"] = _isolation_table(ref, ref_labels, components, views)
        table["reference"]["words"] = words
        for i, label in enumerate(labels):
            entry = table["attention"]["tokens"][label]
            entry["reference_own"] = _mean(ref["share"][i, i])
            entry["gain_over_reference"] = _mean(iso["share"][i, i] - ref["share"][i, i])
    if config.images:
        check()
        with torch.no_grad():
            measures = image_measures(model, tokens, render, masks, config, clip=clip, dino=dino)
        table["reconstruction"] = {
            "prompt": measures["prompt"], "seed": config.seed, "steps": config.sample_steps, "cfg": config.cfg,
            "components": {c: {k: {"per_view": _floats(v), "mean": _mean(v)} for k, v in entry.items()}
                           for c, entry in measures["reconstruction"].items()},
        }
        table["omission"] = {t: {"prompt": e["prompt"], "share_inside": {"per_view": _floats(e["share"]),
                                                                        "mean": _mean(e["share"])},
                                 "overall": _floats([e["overall"]])[0], "mask_area": _mean(e["area"])}
                             for t, e in measures["omission"].items()}
        table["swap"] = [{"tokens": e["tokens"], "share_inside": {"per_view": _floats(e["share"]),
                                                                 "mean": _mean(e["share"])},
                          "overall": _floats([e["overall"]])[0], "mask_area": _mean(e["area"])}
                         for e in measures["swap"]]
    lines = []
    for i, label in enumerate(labels):
        line = verdict(label, iso["share"][i], i, components, config.isolated_share, config.leak_share)
        gain = table["attention"]["tokens"][label].get("gain_over_reference")
        if gain is not None:
            line += f" (vs '{table['reference']['words'][i]}' on the base model: {gain:+.2f})"
        om = table.get("omission", {}).get(label)
        if om is not None and om["overall"] is not None:
            line += f"; dropping it changes {om['overall']:.0%} inside its mask (mask area {om['mask_area']:.0%})"
        lines.append(line)
    table["verdicts"] = lines
    heat = render_heatmap(iso["attention"], masks.masks, [f"{t} ({c})" for t, c in zip(labels, components)],
                          reference=ref_maps)
    return TokenReport(table=table, heatmap=heat, verdicts=tuple(lines))


def _token_order(tokens: TokenSet, components: Sequence[str]) -> list:
    """Index of the token of each component (tokens.components names them; else the same order is assumed)."""
    if len(tokens.tokens) != len(components):
        raise TokenError(f"{len(tokens.tokens)} tokens {list(tokens.tokens)} for {len(components)} components "
                         f"{list(components)}: give the tokens learned from these masks")
    if not tokens.components:
        return list(range(len(components)))
    missing = [c for c in components if c not in tokens.components]
    if missing:
        raise TokenError(f"the tokens were learned for components {list(tokens.components)}, the masks have "
                         f"{list(components)}: use the masks the tokens were learned from")
    return [list(tokens.components).index(c) for c in components]


def report_to_json(table: dict) -> str:
    """The table as indented JSON (NaN written as null)."""
    return json.dumps(table, indent=2, allow_nan=False)


# ------------------------------------------------------------------------------------------------ ablation
def compare_attention_loss(base_model, render: MultiViewRender, masks: ComponentMasks, ti_config=None,
                           config: Optional[TokenReportConfig] = None, progress=None) -> dict:
    """What the attention loss buys: learn the tokens twice on the same scene (λ = 0 and ``ti_config``'s λ, same
    seed and settings otherwise), then measure each token's attention isolation for both.

    Args:
        base_model: the MVDreamModel without the tokens; it is not changed (each run trains a copy).
        ti_config: :class:`~dreamedit3d_core.personalize.textual_inversion.TIConfig` of the λ run (default TIConfig()).
        config: the report settings (only the attention measures are used).

    Returns:
        {"steps", "lr", "seed", "attention_loss_weight": λ, "attention_normalisation", "tokens": {token: {"component", "own_without": share at
        λ = 0, "own_with": share at λ, "gain": difference, "per_view_without", "per_view_with"}}, "mean_gain",
        "every_token_gains": bool, "verdicts": {"without": [...], "with": [...]}}.
    """
    from ..personalize.textual_inversion import TIConfig, train_textual_inversion

    ti_config = ti_config or TIConfig()
    config = replace(config or TokenReportConfig(), images=False)
    if ti_config.attention_loss_weight <= 0:
        raise ConfigError("the ablation compares λ = 0 with a positive attention_loss_weight; got "
                          f"{ti_config.attention_loss_weight}: set it above 0 (the training default is 0.1)")
    results = {}
    for key, weight in (("without", 0.0), ("with", float(ti_config.attention_loss_weight))):
        if progress is not None:
            progress.check_interrupt()
        model = copy.deepcopy(base_model)
        learned = train_textual_inversion(model, render, masks, replace(ti_config, attention_loss_weight=weight),
                                          progress=progress)
        results[key] = token_report(model, learned, render, masks, config)
        del model
    out = {"steps": ti_config.steps, "lr": ti_config.lr, "seed": ti_config.seed,
           "attention_loss_weight": ti_config.attention_loss_weight,
           "attention_normalisation": ti_config.attention_normalisation, "tokens": {}}
    gains = []
    for label in results["with"].table["tokens"]:
        without = results["without"].table["attention"]["tokens"][label]["own"]
        with_ = results["with"].table["attention"]["tokens"][label]["own"]
        gain = round(with_["mean"] - without["mean"], 4)
        gains.append(gain)
        out["tokens"][label] = {"component": results["with"].table["attention"]["tokens"][label]["component"],
                                "own_without": without["mean"], "own_with": with_["mean"], "gain": gain,
                                "per_view_without": without["per_view"], "per_view_with": with_["per_view"]}
    out["mean_gain"] = round(sum(gains) / len(gains), 4)
    out["every_token_gains"] = all(g > 0 for g in gains)
    out["verdicts"] = {k: list(r.verdicts) for k, r in results.items()}
    return out


# ------------------------------------------------------------------------------------------------ files
def save_token_report(report: TokenReport, folder, stem: str, overwrite: bool = False) -> dict:
    """Write ``<stem>_tokens.json`` (the table) and ``<stem>_tokens_heatmap.png`` into ``folder``, atomically.

    Returns:
        {"json": Path, "heatmap": Path}.

    Raises:
        ConfigError: a file exists and ``overwrite`` is False (nothing is overwritten).
    """
    import io as _io
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from ..storage import save_bytes

    folder = Path(folder)
    buffer = _io.BytesIO()
    pixels = (report.heatmap.clamp(0, 1).permute(1, 2, 0) * 255).round().byte().cpu().numpy()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return {
        "json": save_bytes(folder / f"{stem}_tokens.json", report.to_json().encode("utf-8"), overwrite=overwrite),
        "heatmap": save_bytes(folder / f"{stem}_tokens_heatmap.png", buffer.getvalue(), overwrite=overwrite),
    }
