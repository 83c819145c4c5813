"""SelVA / MMAudio video-to-audio model in pure PyTorch (no Ray)."""

__version__ = "0.1.0"
