"""Fixtures the pack builds itself, for tests, benchmarks, CI and the no-asset example run — not part of the editing API.

* :mod:`.tiny`: seeded tiny MVDream checkpoints in the released key layout (no real weights exist where this is tested).
* :mod:`.lgm`: seeded tiny LGM networks in the released key layout (the LGM loader, reconstructor and node tests).
* :mod:`.examples`: a toy multi-part GLB, so the example workflow runs on a machine with no assets at all.
* :mod:`.sam`: a tiny seeded Segment Anything model (the SAM mask source in tests and example hosts).
"""
