"""Long videos: windows, per-window seeds, streaming decode, joins and the seam metric.

See `windows` (planning, seeds, decoding), `join` (crossfade / continue joins) and `seams`
(the seam metric). `Pipeline.sample_latents(known_latents=...)` does the `continue` sampling.
"""

from selva_core.long import generate, join, seams, windows
from selva_core.long.generate import *  # noqa: F403
from selva_core.long.join import *  # noqa: F403
from selva_core.long.seams import *  # noqa: F403
from selva_core.long.windows import *  # noqa: F403

# Each module declares its public names once, in its own __all__; the package serves them all.
__all__ = [*generate.__all__, *join.__all__, *seams.__all__, *windows.__all__]
