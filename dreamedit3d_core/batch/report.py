"""The catalogue report: ``report.md`` + ``report.csv`` (one row per edit) + ``tokens.csv`` (one row per asset and
learned token: its token evidence) + one contact sheet per asset.

Rewritten by the driver every time a unit finishes, so it always shows the batch as far as it got: per edit its
status, files, metric means and times per stage; per asset each token's attention isolation, leak, gain over the
base model's plain word, omission share and verdict (:mod:`.evidence`); failures with their messages.
"""

from __future__ import annotations

import csv
import hashlib
import io
from typing import Mapping, Optional

import numpy as np
import torch

REPORT_MD = "report.md"
REPORT_CSV = "report.csv"
TOKENS_CSV = "tokens.csv"
SHEETS_DIR = "sheets"
CSV_COLUMNS = ("asset", "edit", "prompt", "status", "glb", "views", "render_s", "textual_inversion_s", "finetune_s",
               "sample_s", "lift_s", "metrics", "message", "unit_key")
# (no times: the same inputs give the same tokens.csv; the report's time is in report.md and the evidence's record)
TOKEN_COLUMNS = ("asset", "token", "component", "isolation", "mask_area", "largest_leak", "largest_leak_share",
                 "outside_all", "reference_isolation", "gain_over_reference", "omission_inside", "reconstruction_psnr",
                 "verdict", "json", "heatmap", "status", "message")


def _fmt_time(value) -> str:
    return "" if value is None else f"{float(value):.2f}"


def _fmt_share(value, digits: int = 4) -> str:
    return "" if value is None else f"{float(value):.{digits}f}"


def _two(value, signed: bool = False) -> str:
    """A share from a report row, two decimals for the Markdown table ("" stays "")."""
    return "" if value in ("", None) else (f"{float(value):+.2f}" if signed else f"{float(value):.2f}")


def _md_cells(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _views_from_row(path, num_views: int) -> torch.Tensor:
    """A views PNG (V views side by side) -> float [V, 3, H, W] in 0..1."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    row = torch.from_numpy(arr).permute(2, 0, 1)
    return torch.stack(row.chunk(num_views, dim=2))


class CatalogueReport:
    """Report state of one batch run (driver side).

    Args:
        store: the :class:`~.store.OutputStore`.
        plan: the :class:`~.plan.BatchPlan`.
    """

    def __init__(self, store, plan):
        self.store, self.plan = store, plan
        self.outcomes: dict = {}  # unit key -> {"status", "record", "message"}
        self.evidence: dict = {}  # personalisation key -> {"status", "record"?, "message"?} of its token evidence

    def note(self, unit, status: str, record: Optional[Mapping] = None, message: str = "") -> None:
        self.outcomes[unit.key] = {"status": status, "record": dict(record or {}), "message": message}

    def note_evidence(self, unit, evidence: Mapping) -> None:
        """The token evidence of a personalisation: {"status": "done", "record"} or {"status": "failed", "message"}."""
        self.evidence[unit.key] = dict(evidence)

    def token_rows(self) -> list:
        """One row per asset and token (assets in plan order); an asset whose evidence failed gets one row with the
        message; assets without evidence (off, not yet made, personalisation failed) get none."""
        out = []
        for unit in self.plan.personalizations:
            evidence = self.evidence.get(unit.key)
            if evidence is None:
                continue
            if evidence["status"] != "done":
                out.append({**{k: "" for k in TOKEN_COLUMNS}, "token_report_s": "", "asset": unit.asset.name,
                            "status": "failed", "message": evidence.get("message", "")})
                continue
            record = evidence["record"]
            for token in record.get("tokens", []):
                row = {k: _fmt_share(token.get(k)) for k in ("isolation", "mask_area", "largest_leak_share",
                                                             "outside_all", "reference_isolation",
                                                             "gain_over_reference", "omission_inside",
                                                             "reconstruction_psnr")}
                out.append({**row, "asset": unit.asset.name, "token": token["token"], "component": token["component"],
                            "largest_leak": token.get("largest_leak") or "", "verdict": token["verdict"],
                            "token_report_s": _fmt_time(record.get("times_s", {}).get("token_report_s")),
                            "json": record.get("json", ""), "heatmap": record.get("heatmap", ""), "status": "done",
                            "message": ""})
        return out

    def rows(self) -> list:
        out = []
        for edit in self.plan.edits:
            parent = self.outcomes.get(edit.parent.key, {})
            mine = self.outcomes.get(edit.key, {})
            record = mine.get("record", {})
            ptimes = parent.get("record", {}).get("times_s", {})
            etimes = record.get("times_s", {})
            status = mine.get("status", "pending")
            message = mine.get("message", "")
            if parent.get("status") == "failed":
                status, message = "skipped", f"personalisation failed: {parent.get('message', '')}"
            metrics = record.get("metrics") or {}
            out.append({
                "asset": edit.parent.asset.name, "edit": edit.index + 1, "prompt": edit.prompt, "status": status,
                "glb": f"{edit.folder}/edited.glb" if status == "done" else "",
                "views": f"{edit.folder}/views.png" if status == "done" else "",
                "render_s": _fmt_time(ptimes.get("render_s")),
                "textual_inversion_s": _fmt_time(ptimes.get("textual_inversion_s")),
                "finetune_s": _fmt_time(ptimes.get("finetune_s")),
                "sample_s": _fmt_time(etimes.get("sample_s")), "lift_s": _fmt_time(etimes.get("lift_s")),
                "metrics": "; ".join(f"{k}={v:.4f}" for k, v in metrics.items() if v is not None),
                "message": message, "unit_key": edit.key[:12],
            })
        return out

    # ------------------------------------------------------------------------------------------------ files
    def write(self) -> None:
        rows = self.rows()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        self.store.write_bytes(REPORT_CSV, buf.getvalue().encode("utf-8"))
        token_rows = self.token_rows()
        if token_rows or self.store.exists(TOKENS_CSV):
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(TOKEN_COLUMNS), lineterminator="\n", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(token_rows)
            data = buf.getvalue().encode("utf-8")
            if self.store.sha256(TOKENS_CSV) != hashlib.sha256(data).hexdigest():  # unchanged: left alone
                self.store.write_bytes(TOKENS_CSV, data)
        self.store.write_bytes(REPORT_MD, self.markdown(rows, token_rows).encode("utf-8"))

    def markdown(self, rows: list, token_rows: Optional[list] = None) -> str:
        plan, s = self.plan, self.plan.settings
        counts = {k: sum(1 for r in rows if r["status"] == k) for k in ("done", "failed", "skipped", "pending")}
        failed_assets = [u for u in plan.personalizations if self.outcomes.get(u.key, {}).get("status") == "failed"]
        lines = [
            "# DreamEdit3D catalogue report", "",
            f"{len(plan.personalizations)} assets × {len(plan.prompts)} prompts = {len(plan.edits)} edits: "
            f"**{counts['done']} done**, {counts['failed']} failed, {counts['skipped']} skipped, {counts['pending']} pending.",
            "",
            f"Checkpoint `{plan.checkpoint}` (sha256 {plan.checkpoint_sha256[:12]}); phase 1 {s.ti_steps} steps, phase 2 "
            f"{s.ft_steps} steps ({s.ft_mode}); {s.sampler} {s.steps} steps, cfg {s.cfg}, seed {s.seed}; lift {s.lift_mode}, "
            f"{s.resolution} px.", "",
        ]
        if failed_assets:
            lines += ["## Failed assets", ""]
            for u in failed_assets:
                lines.append(f"- **{u.asset.name}** (`{u.asset.path}`): {self.outcomes[u.key]['message']}")
            lines.append("")
        lines += ["## Edits", "",
                  "| asset | # | prompt | status | GLB | render s | TI s | FT s | sample s | lift s | metrics | message |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            glb = f"[glb]({r['glb']})" if r["glb"] else ""
            cells = [r["asset"], str(r["edit"]), r["prompt"], r["status"], glb, r["render_s"], r["textual_inversion_s"],
                     r["finetune_s"], r["sample_s"], r["lift_s"], r["metrics"], r["message"]]
            lines.append(_md_cells(cells))
        lines += self._token_markdown(self.token_rows() if token_rows is None else token_rows)
        sheets = [u for u in plan.personalizations if self.store.exists(f"{SHEETS_DIR}/{u.asset.name}.png")]
        if sheets:
            lines += ["", "## Contact sheets", ""]
            for u in sheets:
                lines += [f"### {u.asset.name}", "", f"![{u.asset.name}]({SHEETS_DIR}/{u.asset.name}.png)", ""]
        return "\n".join(lines) + "\n"

    @staticmethod
    def _token_markdown(token_rows: list) -> list:
        """The "Token evidence" section: a row per asset and token, then each asset's heat map."""
        if not token_rows:
            return []
        lines = ["", "## Token evidence", "",
                 "Did each learned token learn its part? Isolation: the share of the token's cross-attention inside "
                 "its own component's mask (mean over views; the mask's area is what attention spread evenly would "
                 "score); base word: the same share for the component's name on the base model; omission: the share "
                 "of the image change inside the mask when the token is dropped from the prompt; PSNR: the component's masked "
                 "PSNR (dB) between the source views and the views sampled with every token.", "",
                 "| asset | token | component | isolation | mask area | largest leak | base word | gain | omission inside "
                 "| PSNR | verdict | report s |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        heatmaps = {}
        for r in token_rows:
            if r["status"] != "done":
                lines.append(_md_cells([r["asset"], *[""] * 9, f"failed: {r['message']}", ""]))
                continue
            heatmaps.setdefault(r["asset"], (r["heatmap"], r["json"]))
            leak = f"{r['largest_leak']} {_two(r['largest_leak_share'])}" if r["largest_leak"] else ""
            verdict = r["verdict"][len(r["token"]) + 2:] if r["verdict"].startswith(r["token"] + ": ") else r["verdict"]
            lines.append(_md_cells([r["asset"], f"`{r['token']}`", r["component"], _two(r["isolation"]),
                                    _two(r["mask_area"]), leak, _two(r["reference_isolation"]),
                                    _two(r["gain_over_reference"], signed=True), _two(r["omission_inside"]),
                                    _two(r["reconstruction_psnr"]), verdict, r["token_report_s"]]))
        for asset, (heatmap, table) in heatmaps.items():
            lines += ["", f"### {asset}: token attention", "", f"![{asset} token attention]({heatmap}) ([table]({table}))"]
        return lines

    def write_sheet(self, unit) -> Optional[str]:
        """The asset's contact sheet (rows = its finished edits, columns = views), when it has any finished edit."""
        from ..contact_sheet import contact_sheet
        from ..provenance import build_record, save_png

        done = [e for e in self.plan.edits_of(unit) if self.outcomes.get(e.key, {}).get("status") == "done"]
        if not done:
            return None
        images = []
        for e in done:
            local = self.store.fetch(f"{e.folder}/views.png")
            images.append(_views_from_row(local, 4))
        sheet, _ = contact_sheet(torch.cat(images), labels=[e.prompt for e in done])
        rel = f"{SHEETS_DIR}/{unit.asset.name}.png"
        record = build_record(asset=unit.asset.name, prompts=[e.prompt for e in done])
        self.store.write_with(rel, lambda folder: save_png(sheet, folder / "sheet.png", record))
        return rel
