"""Why does one token lag? Attention isolation of each token after phase 1, λ = 0 vs the attention loss (issue 18).

On the tiny model and the two-block asset (``tests/_token_report_helpers.two_block_scene``: a small red cube ``top``
on a wider blue slab ``base``), learn the two tokens with the attention loss off and on, for each normalisation of
the attention-alignment loss (``TIConfig.attention_normalisation``, one of
``dreamedit3d_core.personalize.losses.ATTENTION_NORMALISATIONS``), and print each
token's share of attention inside its own mask (``token_report.attention_isolation``: heads, the loss's layers and
timesteps 100..900 averaged), its gain over λ = 0, how peaked its map is (max / mean over the map, mean of the
views) and the share measured at each timestep alone. Prints figures and never asserts.

    python -m bench.token_isolation_study --seeds 0 1 2 --steps 60 --lr 5e-2 --weights 1.0 0.01
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO), str(REPO / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)


def run(seeds, steps: int, lr: float, weights, normalisations, resolution: int, scene: str = "blocks") -> list:
    from _personalize_helpers import two_component_scene
    from _token_report_helpers import two_block_scene

    from dreamedit3d_core.personalize.textual_inversion import TIConfig, run_textual_inversion
    from dreamedit3d_core.testing.tiny import load_tiny_mvdream
    from dreamedit3d_core.token_report import TokenReportConfig, attention_isolation

    render, masks = (two_block_scene if scene == "blocks" else two_component_scene)(resolution)
    config = TokenReportConfig(resolution=None, images=False)
    rows = []
    for seed in seeds:
        runs = [("lambda0", 0.0, "-")] + [(f"{norm}", w, norm) for w in weights for norm in normalisations]
        baseline = None
        for label, weight, norm in runs:
            model = load_tiny_mvdream(seed=0)
            t0 = time.perf_counter()
            result = run_textual_inversion(model, render, masks, TIConfig(
                steps=steps, lr=lr, attention_loss_weight=weight, resolution=None, seed=seed,
                attention_normalisation=norm if norm != "-" else "distribution"))
            tokens, infos = result.tokens, result.training.infos
            iso = attention_isolation(model, render, masks, list(tokens.tokens), config)
            own = iso["share"].diagonal(dim1=0, dim2=1).mean(0)  # [K] mean over views
            maps = iso["attention"]  # [K, V, h, w]
            peak = (maps.amax(dim=(-2, -1)) / maps.mean(dim=(-2, -1))).mean(-1)
            by_t = {}
            for t in config.timesteps:  # the same share measured at one timestep at a time
                one = attention_isolation(model, render, masks, list(tokens.tokens), replace(config, timesteps=(t,)))
                by_t[t] = [round(float(x), 4) for x in one["share"].diagonal(dim1=0, dim2=1).mean(0)]
            if baseline is None:
                baseline = own
            row = {"seed": seed, "run": label, "lambda": weight, "tokens": list(tokens.tokens),
                   "own": [round(float(x), 4) for x in own],
                   "gain_vs_lambda0": [round(float(x), 4) for x in own - baseline],
                   "peak_over_mean": [round(float(x), 2) for x in peak],
                   "area": [round(float(x), 4) for x in iso["area"].mean(-1)],
                   "own_by_timestep": by_t,
                   # the two terms of the objective over the run (the attention term is recorded at λ = 0 too only
                   # when the maps are; 0 there): their scale decides how much a given λ weighs
                   "masked_loss_mean": round(sum(i["masked"] for i in infos) / len(infos), 5),
                   "attention_loss_mean": round(sum(i["attention"] for i in infos) / len(infos), 5),
                   "attention_share_of_loss": round(sum(weight * i["attention"] for i in infos)
                                                    / max(1e-12, sum(i["loss"] for i in infos)), 4),
                   "time_s": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=5e-2)
    p.add_argument("--weights", type=float, nargs="+", default=[1.0], help="attention-loss weights λ besides 0")
    p.add_argument("--normalisations", nargs="+", default=["max", "distribution"])
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--scene", choices=["blocks", "bands"], default="blocks",
                   help="blocks: the two-block asset; bands: the phase-1 tests' full-width hat/dog bands")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rows = run(args.seeds, args.steps, args.lr, args.weights, args.normalisations, args.resolution, args.scene)
    print(f"\n| seed | run | λ | own share {tuple(rows[0]['tokens'])} | gain vs λ=0 | peak/mean | masked loss | "
          "attention loss | λ·attention share of loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['run']} | {r['lambda']} | {r['own']} | {r['gain_vs_lambda0']} | {r['peak_over_mean']} | "
              f"{r['masked_loss_mean']} | {r['attention_loss_mean']} | {r['attention_share_of_loss']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
