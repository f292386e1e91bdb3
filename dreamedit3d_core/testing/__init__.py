"""Fixtures the pack builds itself, for tests, benchmarks, CI and the no-asset example run — not part of the editing API.

* :mod:`.tiny`: seeded tiny MVDream checkpoints in the released key layout (no real weights exist where this is tested).
* :mod:`.examples`: a toy multi-part GLB, so the example workflow runs on a machine with no assets at all.
"""
