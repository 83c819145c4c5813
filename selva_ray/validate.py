"""Checks every job runs in its driver before Ray or a model starts: one clear line per mistake.

Two layers, both cheap to import (no torch, no Ray, no pyarrow at module level):

- argparse types (`positive_int`, `seconds`, `seed`, ...) reject bad flag values while parsing,
  so `selva-ray X --shard-size 0` fails in milliseconds with the flag named;
- `UsageError` and the checks that need the environment (`check_variant`, `check_device`,
  `check_weights`, `check_output_writable`) raise one-line messages that the CLI prints as
  `error: ...` with exit status 2. Jobs call them from their driver, before `ray.init`.

The same bounds apply to values read from catalogs (see `selva_ray.io.catalog`).
"""

from __future__ import annotations

import argparse
import math
import os
import re

# Longest clip a job accepts. The models were trained on 8 s clips; sequence lengths grow
# linearly with duration, so an unbounded value would try to allocate absurd buffers.
MAX_CLIP_SECONDS = 60.0
MAX_SEED = 2**63 - 1  # stored as Parquet int64
MAX_STEPS = 1000
MAX_CFG = 100.0
MAX_ID_BYTES = 128  # clip ids become file names in generation jobs


class UsageError(ValueError):
    """Unusable input or settings: the message is one line naming the flag, file or column."""


# ---- argparse types ----------------------------------------------------------------------------


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{'an integer' if kind is int else 'a number'} is required, got {text!r}"
        ) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"a finite number is required, got {text!r}")
    return value


def int_range(low: int, high: int | None = None):
    """argparse type: an integer in [low, high]."""

    def parse(text: str) -> int:
        value = _number(text, int)
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = "integer"
    return parse


def float_range(low: float, high: float | None = None, *, low_open: bool = False):
    """argparse type: a finite number in [low, high] (or (low, high] with low_open)."""

    def parse(text: str) -> float:
        value = float(_number(text, float))
        too_low = value <= low if low_open else value < low
        if too_low or (high is not None and value > high):
            left = f"> {low:g}" if low_open else f">= {low:g}"
            bound = f"{left} and <= {high:g}" if high is not None else left
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_range(1)
positive_float = float_range(0.0, low_open=True)
non_negative_float = float_range(0.0)
seconds = float_range(0.0, MAX_CLIP_SECONDS, low_open=True)  # a clip duration
seed = int_range(0, MAX_SEED)
steps = int_range(1, MAX_STEPS)
cfg = float_range(0.0, MAX_CFG)


# ---- checks that need the environment -----------------------------------------------------------


def check_variant(name: str, *, tiny_only: bool = False) -> None:
    from selva_core.variants import VARIANTS

    if name not in VARIANTS:
        raise UsageError(f"--variant: unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    if tiny_only and not VARIANTS[name].is_tiny:
        tiny = [n for n, s in VARIANTS.items() if s.is_tiny]
        raise UsageError(
            f"--variant: {name!r} needs real weights; this command runs {', '.join(tiny)} only"
        )


DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def check_device(name: str, *, local: bool = True) -> None:
    """A device name we know; with `local`, one this machine has (a remote cluster's GPUs are
    checked by the job once connected)."""
    if not DEVICE_PATTERN.match(name):
        raise UsageError(f"--device: expected auto, cpu, cuda, cuda:N or mps, got {name!r}")
    if not local or name in ("auto", "cpu"):
        return
    import torch

    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.split(":")[1]) if ":" in name else 0
        if count == 0:
            raise UsageError("--device cuda: this machine has no usable GPU; use --device cpu")
        if index >= count:
            raise UsageError(f"--device {name}: this machine has {count} GPU(s)")
    elif name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: MPS is not available here; use --device cpu")


def check_weights(variant: str, weights_dir: str | None, *, offline: bool) -> None:
    """Every file a real variant needs is present (or may be downloaded): all missing files
    named at once, with the command that fetches them. Presence only; digests are checked when
    the models load."""
    from selva_core.variants import get_spec
    from selva_core.weights import WeightStore

    spec = get_spec(variant)
    if spec.is_tiny:
        return
    store = WeightStore(weights_dir, allow_download=False if offline else None)
    missing = [key for key in spec.weight_keys if store.find(key) is None]
    if not missing or store.allow_download:
        return
    where = ", ".join(f"{k} ({store.local_path(k)})" for k in missing)
    raise UsageError(
        f"variant {variant} is missing {len(missing)} weight file(s) and downloads are off: "
        f"{where}; fetch them with: selva-ray weights download --variant {variant} "
        f"--weights-dir {store.root}"
    )


def check_output_writable(uri: str, *, flag: str = "--output") -> None:
    """The output folder is a folder (or can become one) that we may write to. Local paths
    only; object stores report permission errors at the first write."""
    if "://" in uri and not uri.startswith("file://"):
        return
    path = os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {uri} is a file, not a folder")
    probe_dir = path
    while not os.path.exists(probe_dir):
        parent = os.path.dirname(probe_dir)
        if parent == probe_dir:
            break
        probe_dir = parent
    if not os.path.isdir(probe_dir):
        raise UsageError(f"{flag} {uri}: {probe_dir} is a file, not a folder")
    import tempfile

    try:  # os.access is not enough: root ignores modes, read-only mounts refuse anyway
        fd, name = tempfile.mkstemp(prefix=".selva-probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise UsageError(f"{flag} {uri} is not writable ({exc.strerror} in {probe_dir})") from None


# ---- clip ids as file names --------------------------------------------------------------------

_UNSAFE_ID = re.compile(r"[/\\\x00-\x1f\x7f]")


def id_problem(clip_id: str) -> str | None:
    """Why a clip id cannot be used as a file name under an output folder (None: it can)."""
    if not clip_id.strip():
        return "id is empty"
    if _UNSAFE_ID.search(clip_id):
        return f"id {clip_id!r} contains '/', '\\' or a control character"
    if clip_id in (".", "..") or clip_id.startswith("."):
        return f"id {clip_id!r} starts with '.'"
    if len(clip_id.encode()) > MAX_ID_BYTES:
        return f"id is longer than {MAX_ID_BYTES} bytes ({clip_id[:24]}...)"
    return None


def safe_file_stem(clip_id: str) -> str:
    """The file-name stem for a clip id; refuses ids that `id_problem` rejects (the catalog
    refuses them earlier, so a job only sees this for ids it built itself)."""
    problem = id_problem(clip_id)
    if problem:
        raise UsageError(problem)
    return clip_id
