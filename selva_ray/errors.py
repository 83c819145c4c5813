"""The project's usage error and the bounds every layer checks against.

A module of its own so that the I/O package can raise `UsageError` and apply the limits
without importing the CLI's validators (`selva_ray.validate` builds on this module, never
the other way round). Imports nothing but the standard library.
"""

from __future__ import annotations

# Longest clip a job accepts. The models were trained on 8 s clips; sequence lengths grow
# linearly with duration, so an unbounded value would try to allocate absurd buffers.
MAX_CLIP_SECONDS = 60.0
MAX_SEED = 2**63 - 1  # stored as Parquet int64
MAX_STEPS = 1000
MAX_CFG = 100.0
MAX_ID_BYTES = 128  # clip ids become file names in generation jobs
# QA measures whole tracks (default 600 s); an hour of 48 kHz audio is ~0.7 GB of float32.
MAX_QA_SECONDS = 3600.0
MIN_LEVEL_DB = -70.0  # BS.1770's absolute gate: a loudness or peak target below it is silence


class UsageError(ValueError):
    """Unusable input or settings: the message is one line naming the flag, file or column."""
