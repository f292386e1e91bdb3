"""Token evidence of every personalisation in a catalogue (issue 18): did each learned token learn its part?

After an asset is personalised, its worker runs the token report (:func:`dreamedit3d_core.token_report.token_report`,
the library function the TokenReport node and ``bench/eval_edits.py`` use) on the asset's scene with the saved
personalised model, the base model as the reference (each component's name as its plain word), and writes beside the
asset's outputs, in ``<asset folder>/token_evidence/``:

* ``<asset>_tokens.json``: the whole table (leakage matrix per view, reference, reconstruction, omission, swap,
  verdicts), and ``<asset>_tokens_heatmap.png`` (``token_report.save_token_report``);
* ``done.json``: the evidence's done record (the two files' hashes, the report settings, one summary row per token,
  the time it took), written last.

Resumable like the units: the record's key is the personalisation's key plus the report settings, so a complete
report for the same settings is found and never recomputed; a report made with other settings is replaced. The level
``full`` measures attention isolation and the sampled measures (reconstruction, omission, swap: the sampler, steps,
cfg and seed of the batch's edits), ``attention`` only the attention maps (a few UNet passes: cheap), ``off`` skips it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from types import SimpleNamespace
from typing import Optional, Union

from ..errors import ConfigError
from .manifest import finished_record

LEVELS = ("full", "attention", "off")
EVIDENCE_DIR = "token_evidence"
KEY_VERSION = 1  # bump when the evidence files change meaning, so old reports are made again
#: the reference the report compares each token with: the base model attending to the component's name
REFERENCE = "base model, component names"


def evidence_config(settings, level: Union[str, bool, None, "object"] = "full"):
    """The :class:`~dreamedit3d_core.token_report.TokenReportConfig` of a batch's evidence, or None when it is off.

    Args:
        settings: the :class:`~.plan.BatchSettings` (resolution, and the edits' sampler/steps/cfg/seed for ``full``).
        level: "full", "attention", "off" (True/False/None: "full"/"off"), or a ``TokenReportConfig`` used as is.
    """
    from ..token_report import TokenReportConfig

    if isinstance(level, TokenReportConfig):
        return level
    if level is None or level is False:
        return None
    level = "full" if level is True else level
    if level not in LEVELS:
        raise ConfigError(f"token evidence must be one of {LEVELS}, got {level!r}")
    if level == "off":
        return None
    return TokenReportConfig(resolution=settings.resolution, images=level == "full", sample_steps=settings.steps,
                             cfg=settings.cfg, seed=settings.seed, method=settings.sampler)


def config_to_dict(config) -> dict:
    """A TokenReportConfig as plain JSON values (what travels to the workers and into the record)."""
    data = dataclasses.asdict(config)
    data["timesteps"] = list(data["timesteps"])
    return data


def config_from_dict(data: dict):
    from ..token_report import TokenReportConfig

    return TokenReportConfig(**data)


def evidence_key(unit_key: str, config: dict) -> str:
    """Content key of an asset's evidence: its personalisation's key and the report settings."""
    text = json.dumps({"v": KEY_VERSION, "unit": unit_key, "config": config, "reference": REFERENCE},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def evidence_folder(unit_folder: str) -> str:
    return f"{unit_folder}/{EVIDENCE_DIR}"


def evidence_unit(unit_folder: str, unit_key: str, config: dict) -> SimpleNamespace:
    """What the done-record machinery (:mod:`.manifest`) needs: the evidence's folder and content key."""
    return SimpleNamespace(folder=evidence_folder(unit_folder), key=evidence_key(unit_key, config))


def finished_evidence(store, unit_folder: str, unit_key: str, config: Optional[dict]) -> Optional[dict]:
    """The evidence record of a personalisation for these report settings, if complete and intact; else None."""
    if config is None:
        return None
    return finished_record(store, evidence_unit(unit_folder, unit_key, config))


def _mean(entry) -> Optional[float]:
    return None if entry is None else entry.get("mean")


def summary_rows(table: dict) -> list:
    """One row per token of a token-report table: what the catalogue report lists.

    Returns:
        [{"token", "component", "isolation" (mean share of its attention inside its own mask), "mask_area" (its
        mask's area share: what attention spread evenly would score), "largest_leak" (the other component with the
        largest share, or None), "largest_leak_share", "outside_all", "reference_isolation" (the component's name on
        the base model), "gain_over_reference", "omission_inside" (share of the change inside its mask when the token
        is dropped; None without the image measures), "reconstruction_psnr" (masked PSNR in dB of its component
        between the source views and the views sampled with every token; None without the image measures),
        "verdict"}].
    """
    attention = table["attention"]
    rows = []
    for i, token in enumerate(table["tokens"]):
        entry = attention["tokens"][token]
        component = entry["component"]
        others = sorted(((_mean(v), c) for c, v in entry["leakage"].items()
                         if c != component and _mean(v) is not None), reverse=True)
        omission = table.get("omission", {}).get(token, {})
        psnr = table.get("reconstruction", {}).get("components", {}).get(component, {}).get("psnr")
        rows.append({
            "token": token, "component": component, "isolation": _mean(entry["own"]),
            "mask_area": _mean(attention["mask_area"].get(component)),
            "largest_leak": others[0][1] if others else None, "largest_leak_share": others[0][0] if others else None,
            "outside_all": _mean(entry["outside_all"]), "reference_isolation": entry.get("reference_own"),
            "gain_over_reference": entry.get("gain_over_reference"), "omission_inside": omission.get("overall"),
            "reconstruction_psnr": _mean(psnr), "verdict": table["verdicts"][i],
        })
    return rows
