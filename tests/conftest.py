"""Suite-wide settings: deterministic CPU torch, and no network for hub libraries."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import torch  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
# The models under test are small: one intra-op thread avoids oversubscribing the 2-core CI
# machine while Ray workers (separate processes) run beside the test process.
torch.set_num_threads(1)
