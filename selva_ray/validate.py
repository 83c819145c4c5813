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
import logging
import math
import os
import re

from .errors import (  # noqa: F401 - the bounds and the error live in errors.py
    MAX_CFG,
    MAX_CLIP_SECONDS,
    MAX_QA_SECONDS,
    MAX_SEED,
    MAX_STEPS,
    MIN_LEVEL_DB,
    UsageError,
)

log = logging.getLogger(__name__)

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
ratio = float_range(0.0, 1.0)  # a share of frames or samples
level_db = float_range(MIN_LEVEL_DB, 0.0)  # a loudness (LUFS) or peak (dBTP) target
gain_db = float_range(-120.0, 0.0)  # a mixing gain
actor_count = int_range(1, 1024)
gpu_share = float_range(0.0, 64.0, low_open=True)
memory_gb = float_range(0.0, 4096.0, low_open=True)
shard_size = int_range(1, 1_000_000)


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


def check_weights(
    variant: str,
    weights_dir: str | None,
    *,
    offline: bool,
    keys: tuple[str, ...] | list[str] | None = None,
    notes: dict[str, str] | None = None,
) -> None:
    """Every file a real variant needs (or just `keys`) is present, or fetched now, in the
    driver: each missing file's download is tried once (after a connect probe of the hub with
    a short timeout, $SELVA_HUB_TIMEOUT), and every file still missing is named at once, with
    the command that fetches them, before Ray starts or an output folder is claimed (a worker
    finding it missing would fail the run after a minute, naming one file). Presence only;
    digests are checked when the models load. `notes`: why a key is needed, shown with it."""
    from selva_core.variants import get_spec
    from selva_core.weights import (
        HUB_TIMEOUT_ENV,
        WeightsError,
        WeightStore,
        hub_endpoint,
        hub_reachable,
        hub_timeout,
    )

    spec = get_spec(variant)
    if spec.is_tiny and keys is None:
        return
    # the hub probed is the hub downloaded from ($HF_ENDPOINT as it is now)
    store = WeightStore(
        weights_dir, allow_download=False if offline else None, endpoint=hub_endpoint()
    )
    needed = spec.weight_keys if keys is None else tuple(dict.fromkeys(keys))
    missing = [key for key in needed if store.find(key) is None]
    if not missing:
        return
    failed: dict[str, str] = {}
    if not store.allow_download:
        reason = "downloads are off (--offline or HF_HUB_OFFLINE=1)"
    elif not hub_reachable():
        reason = (
            f"the hub ({hub_endpoint()}) cannot be reached within {hub_timeout():g} s "
            f"(no network? ${HUB_TIMEOUT_ENV} waits longer, $HF_ENDPOINT names a mirror)"
        )
    else:
        for key in missing:
            log.info("downloading %s to %s", key, store.root)
            try:
                store.download(key)
            except WeightsError as exc:
                failed[key] = " ".join(str(exc).split())[:300]
        missing = list(failed)
        if not missing:
            return
        reason = "their download failed"
    notes = notes or {}
    where = ", ".join(
        f"{k} ({store.local_path(k)}{'; ' + notes[k] if k in notes else ''}"
        f"{': ' + failed[k] if k in failed else ''})"
        for k in missing
    )
    rest = list(missing)
    which = []
    if not spec.is_tiny and set(spec.weight_keys) <= set(missing):
        which.append(f"--variant {variant}")
        rest = [k for k in missing if k not in spec.weight_keys]
    which += [f"--only {k}" for k in rest]
    subject = "this job" if spec.is_tiny else f"variant {variant}"
    raise UsageError(
        f"{subject} is missing {len(missing)} weight file(s) and {reason}: {where}; fetch "
        f"them with: selva-ray weights download {' '.join(which)} --weights-dir {store.root} "
        f"(on a machine with network, then copy the folder here)"
    )


def desync_weight_keys(variant: str | None, desync: bool) -> tuple[str, ...]:
    """The DeSync model's file when a run scores DeSync with the published Synchformer
    (a tiny variant scores with the tiny model, which has none)."""
    from selva_core.variants import VARIANTS

    if not desync or (variant in VARIANTS and VARIANTS[variant].is_tiny):
        return ()
    return ("synchformer",)  # the catalog key (selva_core.model.desync imports torch)


DESYNC_NOTE = "DeSync; --no-desync skips it"


def check_generate_weights(
    variant: str,
    weights_dir: str | None,
    *,
    offline: bool,
    from_features: bool,
    negative_text: bool,
    desync: bool,
) -> None:
    """`check_weights` over every file a generation run loads: the encoders for a catalog
    (from features only the decoding side, plus CLIP for a negative prompt given as text),
    generator, VAE, vocoder, and the Synchformer when DeSync scores the tracks."""
    if from_features:
        keys = decoder_weight_keys(variant)
        if negative_text and keys:
            keys += ("clip_dfn5b",)  # a negative prompt given as text goes through CLIP
    else:
        keys = real_weight_keys(variant)
    extra = desync_weight_keys(variant, desync)
    check_weights(
        variant,
        weights_dir,
        offline=offline,
        keys=keys + extra,
        notes={k: DESYNC_NOTE for k in extra if k not in keys},
    )


def real_weight_keys(variant: str) -> tuple[str, ...]:
    """Every file a variant's inference loads (encoders, generator, VAE, vocoder); none for
    a tiny variant (random weights)."""
    from selva_core.variants import get_spec

    return get_spec(variant).weight_keys


def encoder_weight_keys(variant: str, *, with_vae: bool) -> tuple[str, ...]:
    """The files that turn clips into features (sync encoder, CLIP, T5 for SelVA; the VAE
    for audio latents): what extraction loads; no generator or vocoder."""
    from selva_core.variants import get_spec

    spec = get_spec(variant)
    return tuple(
        k
        for k in spec.weight_keys
        if k.startswith(("textsynch", "synchformer", "clip_", "flan_t5"))
        or (with_vae and k.startswith("vae_"))
    )


def check_extract_weights(
    variant: str, weights_dir: str | None, *, offline: bool, with_vae: bool
) -> None:
    """`check_weights` over the files an extraction loads (`encoder_weight_keys`)."""
    keys = encoder_weight_keys(variant, with_vae=with_vae)
    check_weights(variant, weights_dir, offline=offline, keys=keys)


def decoder_weight_keys(variant: str) -> tuple[str, ...]:
    """The files that turn features into audio (generator, VAE, vocoder): what generation from
    stored features and LoRA training load; the encoders are not needed there."""
    from selva_core.variants import get_spec

    spec = get_spec(variant)
    return tuple(
        k
        for k in spec.weight_keys
        if k == spec.generator_weights or k.startswith(("vae_", "bigvgan"))
    )


def check_gpu(flag: str, *, local: bool = True) -> None:
    """A flag asking for GPUs on this machine (not a remote cluster, checked once connected)
    when there is none: `--use-gpu`, `--device cuda`."""
    if not local:
        return
    import torch

    if not (torch.cuda.is_available() and torch.cuda.device_count() > 0):
        raise UsageError(f"{flag}: this machine has no usable GPU; drop {flag}")


def local_cluster(ray_address: str | None) -> bool:
    """Whether the job will start its own Ray on this machine (so its devices are ours): no
    address, and no Ray already connected in this process (`runner.connect`)."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return False
    return (ray_address or os.environ.get("RAY_ADDRESS") or "local") == "local"


def check_output_writable(uri: str, *, flag: str = "--output") -> None:
    """The output folder is a folder (or can become one) that we may write to. On an object
    store, its bucket exists (permission errors come at the first write)."""
    if "://" in uri and not uri.startswith("file://"):
        check_output_bucket(uri, flag=flag)
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


def check_output_bucket(uri: str, *, flag: str = "--output") -> None:
    """An object-store output's bucket exists: jobs never create buckets (pyarrow would
    refuse at the first write, with a traceback, after Ray started)."""
    import pyarrow.fs as pafs

    from .io.catalog import resolve, split_query

    fs, path = resolve(uri)
    if fs.type_name == "local":
        return
    bucket = path.split("/", 1)[0]
    scheme = split_query(uri)[0].partition("://")[0]
    how = f" (e.g. `aws s3 mb s3://{bucket}`)" if scheme == "s3" else ""
    try:
        found = fs.get_file_info(bucket).type != pafs.FileType.NotFound
    except OSError as exc:
        raise UsageError(
            f"{flag} {split_query(uri)[0]}: cannot reach bucket {bucket!r} "
            f"({' '.join(str(exc).split())})"
        ) from None
    if not found:
        raise UsageError(
            f"{flag} {split_query(uri)[0]}: bucket {bucket!r} does not exist; create it{how} "
            "or name an existing one"
        )


# ---- inputs and outputs, read before the cluster starts -----------------------------------------


def check_output_folder(uri: str, *, kind: str, flag: str = "--output") -> None:
    """The output is writable, and what it already holds can be read: a corrupt `_meta.json`
    or part file (of the main table or of errors/) is named now, not after Ray started."""
    from .io.output_dir import OutputDir

    check_output_writable(uri, flag=flag)
    out = OutputDir(uri, kind=kind)
    out.read_meta()
    out.finished()


def read_input_catalog(
    source: str,
    *,
    max_duration: float,
    allow_roots: list[str] | None,
    default_prompt: str | None = None,
    prompt_flag: str | None = None,
    variant: str | None = None,
) -> tuple[list, list]:
    """The catalog a job runs over, read once by the driver: missing, unreadable, not UTF-8,
    without a needed column or without a single clip is a one-line CatalogError.
    `prompt_flag`: the job's flag that supplies a prompt (named as the fix when a manifest
    has no prompt column). `variant`: the model the clips are for; a SelVA variant needs a
    prompt, so an empty one fails its clip here, before decoding.

    Returns (records, clip problems): problems of the catalog itself (a prompts.txt line
    naming no video) are logged as warnings, never failed clips (`catalog.split_problems`)."""
    from .io.catalog import MissingColumnError, check_not_empty, read_catalog, split_problems

    try:
        records, problems = read_catalog(
            source,
            max_duration=max_duration,
            allow_roots=allow_roots,
            default_prompt=default_prompt,
            require_prompt=prompt_required(variant),
        )
    except MissingColumnError as exc:
        if exc.column != "prompt" or not prompt_flag:
            raise
        raise UsageError(
            f"{exc}; or pass {prompt_flag} TEXT to give every clip that prompt"
        ) from None
    check_not_empty(source, records, problems)
    return records, split_problems(problems)[0]


def prompt_required(variant: str | None) -> bool:
    """Whether a variant's clips need a prompt: SelVA's selects the sound to generate;
    MMAudio runs without one (its official demo accepts an empty prompt)."""
    if variant is None:
        return False
    from selva_core.variants import get_spec

    return get_spec(variant).family == "selva"


def features_meta(uri: str) -> dict | None:
    """The `_meta.json` of a folder written by `extract` (None: `uri` is not one, e.g. a
    catalog); a corrupt one is named."""
    from .io.output_dir import OutputDir

    out = OutputDir(uri)
    import pyarrow.fs as pafs

    if out.fs.get_file_info(out.root).type != pafs.FileType.Directory:
        return None
    meta = out.read_meta()
    if not meta or "tensors" not in meta or "settings" not in meta:
        return None
    return meta


def check_features_clips(uri: str) -> int:
    """Clips committed in a features folder (a torn part file is named); none is an error."""
    from .io.output_dir import OutputDir

    clips = len(OutputDir(uri).finished(include_errors=False))
    if not clips:
        raise UsageError(f"features folder {uri} holds no clips (no part-*.parquet rows)")
    return clips


ADAPTER_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
ADAPTER_METADATA_KEY = "selva_lora"


def check_adapter_header(path: str, *, flag: str) -> None:
    """A LoRA adapter file exists, has a known suffix and, for safetensors, a readable header
    holding selva's adapter metadata (no tensors are read, no torch is imported)."""
    import json
    import struct

    if not os.path.isfile(path):
        what = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
        raise UsageError(f"{flag} {path} {what}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in ADAPTER_SUFFIXES:
        raise UsageError(
            f"{flag} {path}: unknown adapter file type {suffix!r} "
            f"(expected {', '.join(ADAPTER_SUFFIXES)})"
        )
    if suffix != ".safetensors":
        return  # legacy files are unpickled safely (weights_only) by the job
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            (length,) = struct.unpack("<Q", f.read(8))
            if not 2 <= length <= size - 8:
                raise ValueError("bad header length")
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise UsageError(f"{flag} {path} is not a safetensors file ({reason})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or ADAPTER_METADATA_KEY not in meta:
        raise UsageError(
            f"{flag} {path} has no {ADAPTER_METADATA_KEY!r} metadata: not a selva LoRA adapter "
            "(train one with `selva-ray train`)"
        )
