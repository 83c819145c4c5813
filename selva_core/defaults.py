"""The defaults of the official code that the whole project shares, defined once (no torch:
the command line reads them too): sampling (seed, guidance, Euler steps), the windows of long
videos, and the default model."""

DEFAULT_SEED = 42
DEFAULT_CFG = 4.5  # classifier-free guidance strength
DEFAULT_STEPS = 25  # Euler steps of the flow-matching sampler
DEFAULT_WINDOW = 8.0  # seconds per window of a long video (the models' training length)
DEFAULT_OVERLAP = 1.0  # seconds shared by consecutive windows
DEFAULT_VARIANT = "small_16k"
