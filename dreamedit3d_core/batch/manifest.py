"""Which units of a batch are finished: per-unit done records and the batch manifest, both with content hashes.

A worker writes ``done.json`` into a unit's folder *after* every output of the unit is in place; it lists each output
with its SHA-256. A unit counts as finished only when its record exists, carries the unit's content key, and every
listed file is present with that hash: a unit killed half-way (no record), or whose files were deleted or damaged
since, is done again. ``manifest.json`` at the output root is the driver's index of all records (and of failures
with their messages); it is rewritten as units finish, and read by people and tools, never trusted over the records.
"""

from __future__ import annotations

from typing import Optional

DONE_RECORD = "done.json"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "dreamedit3d.batch-manifest"
RECORD_FORMAT = "dreamedit3d.batch-unit"


def done_record_path(folder: str) -> str:
    return f"{folder}/{DONE_RECORD}"


def finished_record(store, unit) -> Optional[dict]:
    """The done record of ``unit`` if the unit is finished and intact (files present with their hashes), else None."""
    record = store.read_json(done_record_path(unit.folder))
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or record.get("key") != unit.key:
        return None
    outputs = record.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        return None
    for rel, digest in outputs.items():
        if store.sha256(rel) != digest:
            return None
    return record


def make_record(unit_dict: dict, outputs: dict, **facts) -> dict:
    """A done record: the unit's identity, {relative path: sha256} of its outputs, and plain facts (times, ...)."""
    return {"format": RECORD_FORMAT, "kind": unit_dict["kind"], "unit_id": unit_dict["unit_id"], "key": unit_dict["key"],
            "folder": unit_dict["folder"], "outputs": dict(outputs), **facts}


class Manifest:
    """The driver's index of unit records and failures, kept in ``manifest.json`` (one writer: the driver)."""

    def __init__(self, store, plan):
        self.store = store
        old = store.read_json(MANIFEST)
        self.units = dict(old.get("units", {})) if isinstance(old, dict) and old.get("format") == MANIFEST_FORMAT else {}
        self.header = {"format": MANIFEST_FORMAT, "version": 1, "checkpoint": plan.checkpoint,
                       "checkpoint_sha256": plan.checkpoint_sha256, "settings": plan.settings.to_dict(),
                       "prompts": list(plan.prompts)}

    def input_error(self, unit) -> Optional[str]:
        """The message of an earlier run's failure of ``unit`` caused by its inputs (same content key), else None."""
        entry = self.units.get(unit.key)
        if isinstance(entry, dict) and entry.get("status") == "failed" and entry.get("input_error"):
            return str(entry.get("message", ""))
        return None

    def record(self, unit, status: str, record: Optional[dict] = None, message: str = "",
               input_error: bool = False) -> None:
        """Note the outcome of ``unit`` ("done", "failed" or "skipped") under its content key (saved by :meth:`save`)."""
        entry = {"unit_id": unit.unit_id, "kind": "edit" if hasattr(unit, "prompt") else "personalize",
                 "folder": unit.folder, "status": status}
        if input_error:
            entry["input_error"] = True
        if record:
            entry["outputs"] = record.get("outputs", {})
            entry["times_s"] = record.get("times_s", {})
        if message:
            entry["message"] = message
        self.units[unit.key] = entry

    def evidence_error(self, unit, evidence_key: str) -> Optional[str]:
        """The message of an earlier run's failure of ``unit``'s token evidence caused by its inputs (same evidence
        key), else None."""
        entry = self.units.get(unit.key)
        evidence = entry.get("token_evidence") if isinstance(entry, dict) else None
        if isinstance(evidence, dict) and evidence.get("status") == "failed" and evidence.get("input_error") \
                and evidence.get("key") == evidence_key:
            return str(evidence.get("message", ""))
        return None

    def record_evidence(self, unit, evidence: dict) -> None:
        """Note the outcome of a personalisation's token evidence (after :meth:`record` of the unit itself)."""
        entry = self.units.setdefault(unit.key, {"unit_id": unit.unit_id, "kind": "personalize", "folder": unit.folder,
                                                 "status": "done"})
        if evidence["status"] == "done":
            record = evidence["record"]
            entry["token_evidence"] = {"status": "done", "key": record.get("key"), "outputs": record.get("outputs", {}),
                                       "times_s": record.get("times_s", {})}
        else:
            entry["token_evidence"] = {"status": "failed", "key": evidence.get("key"),
                                       "message": evidence.get("message", ""),
                                       "input_error": bool(evidence.get("input_error"))}

    def save(self) -> None:
        self.store.write_json(MANIFEST, {**self.header, "units": self.units})
