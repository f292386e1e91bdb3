"""Batch editing of a catalogue: assets × edit prompts through the whole pipeline, resumable, in-process or on Ray.

    from dreamedit3d_core.batch import BatchSettings, run_batch
    result = run_batch("catalogue/", "prompts.txt", "sd-v2.1-base-4view.pt", "out/", components="body: *")

Command line: ``python -m dreamedit3d_core.batch --help``. Ray is optional (``pip install "ray>=2.52"``) and only
needed for ``--workers N`` / ``--ray-address``.
"""

from .plan import AssetSpec, BatchPlan, BatchSettings, EditUnit, PersonalizeUnit, build_plan, read_prompts
from .runner import BatchResult, run_batch

__all__ = ["AssetSpec", "BatchPlan", "BatchResult", "BatchSettings", "EditUnit", "PersonalizeUnit", "build_plan",
           "read_prompts", "run_batch"]
