"""Long videos: windows, per-window seeds, streaming decode, joins and the seam metric.

See `windows` (planning, seeds, decoding), `join` (crossfade / continue joins) and `seams`
(the seam metric). `Pipeline.sample_latents(known_latents=...)` does the `continue` sampling.
"""

from selva_core.long.generate import (
    LongTrack,
    generate_long,
    pipe_quantum,
    sample_windows,
    window_features,
)
from selva_core.long.join import (
    DEFAULT_SEAM_FADE,
    JOIN_MODES,
    JoinMode,
    continuation_prefix,
    continue_join,
    crossfade_join,
    join_windows,
    latent_shift,
    overlap_spans,
    seam_spans,
    track_samples,
)
from selva_core.long.seams import SeamReport, seam_report, spectral_flux
from selva_core.long.windows import (
    DEFAULT_OVERLAP,
    DEFAULT_WINDOW,
    Window,
    iter_window_clips,
    latent_quantum,
    plan_windows,
    video_duration,
    window_seed,
)

__all__ = [
    "DEFAULT_OVERLAP",
    "DEFAULT_SEAM_FADE",
    "DEFAULT_WINDOW",
    "JOIN_MODES",
    "JoinMode",
    "LongTrack",
    "SeamReport",
    "Window",
    "continuation_prefix",
    "continue_join",
    "crossfade_join",
    "generate_long",
    "iter_window_clips",
    "join_windows",
    "latent_quantum",
    "latent_shift",
    "overlap_spans",
    "pipe_quantum",
    "plan_windows",
    "sample_windows",
    "seam_report",
    "seam_spans",
    "spectral_flux",
    "track_samples",
    "video_duration",
    "window_features",
    "window_seed",
]
