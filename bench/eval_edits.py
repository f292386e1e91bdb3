"""Evaluate edits end to end: assets x edit prompts -> metrics, stage times and peak memory (CSV, Markdown, plot).

For every asset in ``--assets`` (a folder or one file): load, render the four views, make component masks, learn the
tokens (phase 1) and fine-tune (phase 2) once, then sample every edit prompt of ``--prompts`` in one batch, lift each
edit to a mesh, render the mesh with the source cameras, and score the edit with CLIP directional similarity,
CLIPScore, CLIP-I and DINO identity (``dreamedit3d_core.metrics``), on the sampled views and on the lifted mesh's
renders.

With ``--token-report`` every asset also gets its token evidence (issue 18, ``dreamedit3d_core.token_report``): each
learned token's attention isolation per view (leakage matrix, against the base model's initialiser word), masked
reconstruction, omission and swap, written as ``<asset>_tokens.json`` + ``<asset>_tokens_heatmap.png`` and summarised in
``tokens.csv`` and the report; ``--ablation`` also learns the tokens with λ = 0 and the default λ on the same scene and
reports each token's gain (:func:`token_evidence` is the one call for other runners).

Prompts file: one edit per line, ``edit prompt [| edit caption [| source caption]]``; the edit caption defaults to the
prompt with its placeholders written as words (``<dog> wearing a hat`` -> ``dog wearing a hat``), the source caption
to ``--source-caption`` (``{name}`` = the asset's file stem). Lines starting with ``#`` are skipped.

Real models:
    python -m bench.eval_edits --assets ../shared/assets/kenney_character.glb --prompts edits.txt \\
        --mvdream models/mvdream/sd-v2.1-base-4view.pt --clip models/clip_vision/clip-vit-large-patch14 \\
        --dino models/dino/dino-vits16 --components "hat: Hat; body: *" --edited-components hat --out bench_out
Tiny random models (plumbing and timing only; the numbers mean nothing):
    python -m bench.eval_edits --tiny --assets ../shared/assets/spot.obj --prompts edits.txt --out /tmp/eval
Speed of the metrics alone (random weights, real ViT-L/14 and ViT-S/16 sizes):
    python -m bench.eval_edits --metrics-timing --device cuda
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dreamedit3d_core import metrics  # noqa: E402

ASSET_SUFFIXES = {".glb", ".gltf", ".obj", ".ply"}
METRIC_KEYS = ("clip_directional", "clip_score", "clip_image", "dino_identity", "dino_identity_protected")


# ------------------------------------------------------------------------------------------------ measuring
class StageLog:
    """Wall time and peak memory of every stage (CUDA: peak allocated; CPU: the process's peak RSS so far)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.rows: list[dict] = []

    @contextmanager
    def stage(self, asset: str, name: str):
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        yield
        if cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**30
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        self.rows.append({"asset": asset, "stage": name, "time_s": round(time.perf_counter() - t0, 3),
                          "peak_mem_gb": round(peak, 3), "mem_kind": "cuda_allocated" if cuda else "process_rss"})


def header(args, device: torch.device) -> str:
    import subprocess

    import diffusers
    import transformers

    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except OSError:
        commit = "?"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    kind = "tiny" if args.tiny else ("random-real-size" if args.metrics_timing else "real")
    return (f"device={name} torch={torch.__version__} diffusers={diffusers.__version__} "
            f"transformers={transformers.__version__} dtype=fp32 commit={commit} models={kind}")


# ------------------------------------------------------------------------------------------------ inputs
def read_prompts(path: Path, source_caption: str) -> list[dict]:
    edits = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split("|")]
        prompt = fields[0]
        caption = fields[1] if len(fields) > 1 and fields[1] else re.sub(r"<([^<>]+)>", r"\1", prompt)
        source = fields[2] if len(fields) > 2 and fields[2] else source_caption
        edits.append({"prompt": prompt, "edit_caption": caption, "source_caption": source})
    if not edits:
        raise SystemExit(f"{path}: no edit prompts (one per line, '#' for comments)")
    return edits


def list_assets(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    found = sorted(p for p in path.iterdir() if p.suffix.lower() in ASSET_SUFFIXES)
    if not found:
        raise SystemExit(f"{path}: no assets ({', '.join(sorted(ASSET_SUFFIXES))})")
    return found


def tiny_metric_models(folder: Path, device):
    """Tiny random CLIP and DINO of the real architectures (the test helpers), for --tiny runs."""
    sys.path.insert(0, str(REPO / "tests"))
    from _metrics_helpers import write_tiny_clip_folder, write_tiny_dino_folder

    clip = metrics.load_metric_clip(write_tiny_clip_folder(folder / "clip"), device)
    dino = metrics.load_metric_dino(write_tiny_dino_folder(folder / "dino"), device)
    return clip, dino


# ------------------------------------------------------------------------------------------------ pipeline
def mesh_renders(lifted, render, resolution: int):
    """The lifted mesh rendered with the source cameras: float [V, 3, H, W]."""
    from dreamedit3d_core.assets import asset_from_arrays
    from dreamedit3d_core.render import render_views

    textured = lifted.uv is not None and lifted.texture is not None
    asset = asset_from_arrays(
        lifted.vertices.cpu().numpy(), lifted.faces.cpu().numpy(),
        uv=lifted.uv.cpu().numpy() if textured else None,
        vertex_colors=None if lifted.vertex_colors is None else lifted.vertex_colors.cpu().numpy(),
        textures=(lifted.texture.cpu().numpy(),) if textured else (),
        face_textures=[0] * int(lifted.faces.shape[0]) if textured else None, normalise=False)
    return render_views(asset, cameras=render.cameras, resolution=resolution, background=render.background,
                        device=render.rgb.device).rgb


def score(rows: list, asset: str, edit: dict, index: int, target: str, source_rgb, edited_rgb, clip, dino, mask):
    table = metrics.evaluate_edit(source_rgb, edited_rgb, edit["source_caption"], edit["edit_caption"], clip=clip,
                                  dino=dino, mask=mask)
    row = {"asset": asset, "edit": index, "prompt": edit["prompt"], "on": target}
    for key in METRIC_KEYS:
        row[key] = table["metrics"].get(key, {}).get("mean")
    row["note"] = ""
    rows.append(row)
    return table


def token_evidence(model, tokens, render, masks, out: Path, name: str, base_model=None, clip=None, dino=None,
                   config=None, ablation_config=None, overwrite: bool = True) -> list[dict]:
    """Token report of one personalisation, saved next to the other outputs; one summary row per token.

    Args:
        model, tokens: the personalised model and its tokens (phase 1, or after phase 2).
        render, masks: the views and component masks the tokens were learned from.
        out, name: folder and file stem: ``<name>_tokens.json`` and ``<name>_tokens_heatmap.png``.
        base_model: the base model (reference attention of the component names; the ablation trains copies of it).
        clip, dino: metric models for masked CLIP-I / DINO of the reconstruction (None: PSNR only).
        config: ``TokenReportConfig`` (default: its defaults).
        ablation_config: a ``TIConfig``: also learn the tokens with λ = 0 and with its λ on ``base_model`` and report
            each token's gain (None: no ablation).

    Returns:
        rows {"asset", "token", "component", "own_share", "reference_share", "gain_over_reference",
        "omission_inside", "ablation_gain", "verdict"} (None where not measured); the JSON holds everything.
    """
    from dreamedit3d_core.token_report import compare_attention_loss, save_token_report, token_report

    report = token_report(model, tokens, render, masks, config, reference_model=base_model, clip=clip, dino=dino)
    if ablation_config is not None:
        if base_model is None:
            raise SystemExit("the token ablation needs the base model")
        report.table["ablation"] = compare_attention_loss(base_model, render, masks, ablation_config, config)
    save_token_report(report, out, name, overwrite=overwrite)
    rows = []
    for i, token in enumerate(report.table["tokens"]):
        entry = report.table["attention"]["tokens"][token]
        omission = report.table.get("omission", {}).get(token, {})
        ablation = report.table.get("ablation", {}).get("tokens", {}).get(token, {})
        rows.append({"asset": name, "token": token, "component": entry["component"], "own_share": entry["own"]["mean"],
                     "reference_share": entry.get("reference_own"),
                     "gain_over_reference": entry.get("gain_over_reference"),
                     "omission_inside": omission.get("overall"), "ablation_gain": ablation.get("gain"),
                     "verdict": report.verdicts[i]})
    return rows


def run_asset(path: Path, edits: list, args, model_factory, clip, dino, log: StageLog, rows: list, out: Path,
              token_rows: list | None = None):
    from dreamedit3d_core.assets import load_asset
    from dreamedit3d_core.errors import LiftError
    from dreamedit3d_core.lifting import lift_to_mesh
    from dreamedit3d_core.personalize.finetune import FTConfig, finetune
    from dreamedit3d_core.personalize.textual_inversion import TIConfig, train_textual_inversion
    from dreamedit3d_core.prompts import compose_prompt
    from dreamedit3d_core.render import render_views
    from dreamedit3d_core.sampling import sample_views

    try:
        from dreamedit3d_core.masks import masks_from_parts
    except ImportError as exc:
        raise SystemExit(f"dreamedit3d_core.masks is not available yet ({exc}); the pipeline cannot run") from exc

    name = path.stem
    device = log.device
    with log.stage(name, "load_model"):
        model = model_factory()
    with log.stage(name, "load_asset"):
        asset = load_asset(path, device=device)
    with log.stage(name, "render"):
        render = render_views(asset, resolution=args.resolution, device=device)
    with log.stage(name, "masks"):
        masks = masks_from_parts(render, args.components)
    mask = metrics.protected_mask(masks, args.edited_components) if args.edited_components else None
    with log.stage(name, "textual_inversion"):
        tokens = train_textual_inversion(model, render, masks, TIConfig(steps=args.ti_steps, seed=args.seed))
    if args.ft_steps:
        with log.stage(name, "finetune"):
            model, tokens = finetune(model, render, masks, tokens, FTConfig(steps=args.ft_steps, seed=args.seed))
    if args.token_report and token_rows is not None:
        from dreamedit3d_core.personalize.textual_inversion import TIConfig as _TIConfig
        from dreamedit3d_core.token_report import TokenReportConfig

        with log.stage(name, "token_report"):
            config = TokenReportConfig(resolution=args.resolution, sample_steps=args.steps, cfg=args.cfg, seed=args.seed)
            ablation = _TIConfig(steps=args.ti_steps, seed=args.seed) if args.ablation else None
            token_rows.extend(token_evidence(model, tokens, render, masks, out, name, base_model=model_factory(),
                                             clip=clip, dino=dino, config=config, ablation_config=ablation))
    with log.stage(name, "compose_prompt"):
        cond = compose_prompt(model, "\n".join(e["prompt"] for e in edits), tokens=tokens)
    with log.stage(name, "sample"):
        samples = sample_views(model, cond, steps=args.steps, cfg=args.cfg, seed=args.seed, resolution=args.resolution)
    views = samples.images.reshape(len(edits), render.num_views, *samples.images.shape[1:])
    for i, edit in enumerate(edits):
        edited = views[i].to(device).clamp(0, 1)
        with log.stage(name, f"metrics_views[{i}]"):
            table = score(rows, name, edit, i, "views", render.rgb, edited, clip, dino, mask)
        save_chart(table, out / f"{name}_edit{i}_views.png")
        try:
            with log.stage(name, f"lift[{i}]"):
                # keep_source keeps the source geometry, so its silhouettes are the source's
                alpha = render.alpha if args.lift_mode == "keep_source" else None
                lifted = lift_to_mesh(edited, render.cameras, alpha=alpha, background=render.background, source=asset,
                                      mode=args.lift_mode, grid=args.grid, texture_size=args.texture_size)
        except LiftError as exc:  # e.g. views without a background (tiny random models): report, go on
            print(f"{name} edit {i}: not lifted: {exc}")
            rows.append({"asset": name, "edit": i, "prompt": edit["prompt"], "on": "mesh",
                         **{k: None for k in METRIC_KEYS}, "note": f"lift failed: {exc}"})
            continue
        with log.stage(name, f"metrics_mesh[{i}]"):
            rerender = mesh_renders(lifted, render, args.resolution)
            score(rows, name, edit, i, "mesh", render.rgb, rerender, clip, dino, mask)


# ------------------------------------------------------------------------------------------------ outputs
def save_chart(table: dict, path: Path) -> None:
    from PIL import Image

    img = metrics.render_metrics_chart(table)
    Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().cpu().numpy()).save(path)


def summary_chart(rows: list, path: Path) -> None:
    """One bar per (asset, edit, views/mesh) for each metric's mean (the chart's 'views' axis carries the edits)."""
    labels = [f"{r['asset']}#{r['edit']}:{r['on']}" for r in rows]
    table = {"views": labels, "metrics": {}}
    for key in METRIC_KEYS:
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            valid = [v for v in values if v is not None]
            table["metrics"][key] = {"label": metrics.METRIC_INFO[key][0], "per_view": values,
                                     "mean": sum(valid) / len(valid)}
    if table["metrics"]:
        save_chart(table, path)


def write_outputs(out: Path, rows: list, stages: list, head: str, token_rows: list | None = None) -> None:
    def write_csv(path: Path, data: list) -> None:
        if not data:
            return
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)

    def markdown(data: list) -> str:
        if not data:
            return "(none)\n"
        cols = list(data[0])
        fmt = lambda v: "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in data]
        return "\n".join(lines) + "\n"

    write_csv(out / "metrics.csv", rows)
    write_csv(out / "stages.csv", stages)
    tokens_md = ""
    if token_rows:
        write_csv(out / "tokens.csv", token_rows)
        tokens_md = (f"## Tokens (attention share inside the own mask, mean over views; details in "
                     f"<asset>_tokens.json)\n\n{markdown(token_rows)}\n")
    (out / "report.md").write_text(f"# Edit evaluation\n\n`{head}`\n\n## Metrics (mean over views)\n\n{markdown(rows)}\n"
                                   f"{tokens_md}## Stages\n\n{markdown(stages)}", encoding="utf-8")
    (out / "report.json").write_text(json.dumps({"header": head, "metrics": rows, "stages": stages,
                                                 "tokens": token_rows or []}, indent=2))
    summary_chart(rows, out / "metrics.png")


def time_metrics(args, device: torch.device) -> None:
    """Median time and peak memory of the metrics alone, on random weights of the real architectures.

    CLIP ViT-L/14 and DINO ViT-S/16 with the published configs (openai/clip-vit-large-patch14, facebook/dino-vits16),
    randomly initialised in memory (speed does not depend on the weights), 4 views at ``--resolution``.
    """
    import statistics

    from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

    clip_config = CLIPConfig(
        text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu"),
        projection_dim=768)
    dino_config = ViTConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
                            image_size=224, patch_size=16, qkv_bias=True, layer_norm_eps=1e-6)
    torch.manual_seed(0)
    clip = metrics.ClipMetricModel(CLIPModel(clip_config).to(device).eval(), metrics.OpenClipTokenize(77), 224,
                                   "random ViT-L/14")
    dino = metrics.DinoMetricModel(ViTModel(dino_config, add_pooling_layer=False).to(device).eval(), 224,
                                   "random ViT-S/16")
    g = torch.Generator().manual_seed(0)
    src = torch.rand(4, 3, args.resolution, args.resolution, generator=g).to(device)
    edit = torch.rand(4, 3, args.resolution, args.resolution, generator=g).to(device)
    mask = torch.zeros(4, args.resolution, args.resolution, dtype=torch.bool, device=device)
    mask[:, : args.resolution // 2] = True
    scenarios = {
        "clip_directional": lambda: metrics.clip_directional_similarity(src, edit, "a dog", "a dog with a hat", clip),
        "dino_identity": lambda: metrics.dino_identity(src, edit, dino),
        "evaluate_edit_all": lambda: metrics.evaluate_edit(src, edit, "a dog", "a dog with a hat", clip, dino, mask),
    }
    print(f"{'scenario':<22}{'median_ms':>12}{'min_ms':>10}{'peak_mem_gb':>13}")
    for name, fn in scenarios.items():
        fn()  # warm-up
        times = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append((time.perf_counter() - t0) * 1000)
        peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
        print(f"{name:<22}{statistics.median(times):>12.1f}{min(times):>10.1f}{peak:>13.3f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--assets", type=Path, help="a folder of .glb/.gltf/.obj/.ply assets, or one file")
    p.add_argument("--prompts", type=Path, help="edit prompts, one per line (see the module docstring)")
    p.add_argument("--out", type=Path, help="output folder (created; files in it are replaced)")
    p.add_argument("--metrics-timing", action="store_true",
                   help="only time the metrics on random real-size ViT-L/14 + ViT-S/16 (no pipeline)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per scenario (--metrics-timing)")
    p.add_argument("--tiny", action="store_true", help="tiny random MVDream/CLIP/DINO (timing and plumbing only)")
    p.add_argument("--mvdream", type=Path, help="the MVDream checkpoint (sd-v2.1-base-4view.pt)")
    p.add_argument("--clip", type=Path, help="CLIP ViT-L/14 (transformers folder or full CLIPModel file)")
    p.add_argument("--dino", type=Path, help="DINO ViT-S/16 transformers folder")
    p.add_argument("--components", default="object: *", help="component spec for the masks, e.g. 'hat: Hat; dog: *'")
    p.add_argument("--edited-components", default="", help="components the edits change (adds protected DINO identity)")
    p.add_argument("--source-caption", default="a 3D model of a {name}", help="caption of the source ({name} = stem)")
    p.add_argument("--ti-steps", type=int, default=400)
    p.add_argument("--ft-steps", type=int, default=400)
    p.add_argument("--steps", type=int, default=50, help="sampling steps")
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--lift-mode", default="source_guided", choices=["hull", "source_guided", "keep_source"])
    p.add_argument("--grid", type=int, default=128)
    p.add_argument("--texture-size", type=int, default=512)
    p.add_argument("--token-report", action="store_true",
                   help="also report each token's attention isolation, reconstruction, omission and swap (issue 18)")
    p.add_argument("--ablation", action="store_true",
                   help="with --token-report: also learn the tokens with λ = 0 and the default λ and compare")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.metrics_timing:
        print(header(args, device))
        time_metrics(args, device)
        return 0
    if not (args.assets and args.prompts and args.out):
        p.error("give --assets, --prompts and --out (or --metrics-timing)")
    if not args.tiny and not (args.mvdream and (args.clip or args.dino)):
        p.error("give --mvdream and --clip/--dino, or --tiny")

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = StageLog(device)
    head = header(args, device)
    print(head)
    with tempfile.TemporaryDirectory() as tmp:
        with log.stage("-", "load_metric_models"):
            if args.tiny:
                clip, dino = tiny_metric_models(Path(tmp), device)
            else:
                clip = metrics.load_metric_clip(args.clip, device) if args.clip else None
                dino = metrics.load_metric_dino(args.dino, device) if args.dino else None
        if args.tiny:
            from dreamedit3d_core.testing.tiny import load_tiny_mvdream

            model_factory = lambda: load_tiny_mvdream(seed=args.seed, device=device)  # noqa: E731
        else:
            from dreamedit3d_core.mvdream.checkpoint import load_mvdream

            model_factory = lambda: load_mvdream(args.mvdream, device=device)  # noqa: E731
        rows: list = []
        token_rows: list = []
        for asset in list_assets(args.assets):
            caption = args.source_caption.format(name=asset.stem.replace("_", " "))
            run_asset(asset, read_prompts(args.prompts, caption), args, model_factory, clip, dino, log, rows, out,
                      token_rows)
    write_outputs(out, rows, log.rows, head, token_rows)
    print((out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
