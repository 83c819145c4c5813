"""Training data: a features folder -> a stable train/validation split by clip id -> Ray
Datasets that every worker reads into memory -> deterministic global batches.

Why every worker holds the whole (small) training set: a LoRA data set is tens to a few
thousand clips (about 1 MB each at small_16k in fp32), and holding it lets the global batch be
a function of (seed, step) alone. Step k of epoch e takes clips perm_e[kB:(k+1)B] (sampling
without replacement within an epoch over the global batch); worker r runs positions
[r*B/W, (r+1)*B/W) of it. Every clip's random draws (CFG dropout, t, noise) come from a
generator seeded by (seed, step, position), so a run gives the same updates on 1 or N workers
and a resumed run continues exactly.

Short clips: the extractor zero-pads every tensor to the folder's max duration and records
the valid rows (`latent_len`). Training masks the loss to the valid latent frames (see
`selva_core.flow_loss.flow_matching_loss(lengths=...)`) instead of bucketing by length:
every batch keeps one shape (one compiled graph, no per-bucket batch sizes), the global
batch stays a plain permutation of the clips (bucketing would make batch composition depend
on the length mix and break the 1-vs-N-worker equivalence), and LoRA data sets are too small
to fill many buckets. The padded latent frames are set to zero in normalised space, and they
add nothing to the loss, so padding is never taught as if it were audio.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UsageError
from ..io.feature_schema import feature_files, read_features, read_tensor
from ..io.output_dir import OutputDir
from .config import extract_command

SCALAR_COLUMNS = ("id", "prompt", "duration", "latent_len", "sync_len")


class FeatureFolderError(UsageError):
    """The features folder cannot be trained on (the command exits 2)."""


@dataclass(frozen=True)
class FeatureInfo:
    """What training needs to know about a features folder (from its `_meta.json`)."""

    path: str
    variant: str
    family: str
    max_duration: float
    settings_hash: str
    has_clip_f: bool
    latent_len: int
    latent_dim: int
    window: float = 0.0  # long videos were cut into windows of this length (0: never)
    overlap: float = 0.0

    def tensor_columns(self) -> list[str]:
        cols = ["sync_f", "text_f", "latent_mean"]
        return cols + (["clip_f"] if self.has_clip_f else [])

    def columns(self) -> list[str]:
        lengths = ["clip_len"] if self.has_clip_f else []
        return [*SCALAR_COLUMNS, *lengths, *self.tensor_columns()]


def inspect_features(path: str, variant: str | None = None) -> FeatureInfo:
    """Check that `path` holds features with audio latents (for `variant`, if given)."""
    meta = OutputDir(path).read_meta()
    if meta is None or "settings" not in meta:
        raise FeatureFolderError(
            f"{path}: not a features folder (no _meta.json); make one with: "
            f"{extract_command(path, variant)}"
        )
    s = meta["settings"]
    if not s.get("with_audio_latents") or not s.get("latent_len"):
        raise FeatureFolderError(
            f"{path}: features have no audio latents (extracted without --with-audio-latents), "
            f"and training needs the latent of each clip's own audio; make them with: "
            f"{extract_command(path, variant or s.get('variant'), suffix='-latents')}"
        )
    if variant is not None and s["variant"] != variant:
        raise FeatureFolderError(
            f"{path}: features were extracted for variant {s['variant']!r}, not {variant!r} "
            f"(sync features depend on the variant's encoders); extract again with "
            f"--variant {variant} or train with --variant {s['variant']}"
        )
    return FeatureInfo(
        path=path,
        variant=s["variant"],
        family=s["family"],
        max_duration=float(s["max_duration"]),
        settings_hash=meta.get("settings_hash", ""),
        has_clip_f=bool(s.get("clip_len")),
        latent_len=int(s["latent_len"]),
        latent_dim=int(s["latent_dim"]),
        window=float(s.get("window") or 0.0),
        overlap=float(s.get("overlap") or 0.0),
    )


def check_windows(info: FeatureInfo, window: float | None, overlap: float | None) -> None:
    """`--window`/`--overlap` of train must describe the folder's windows: training uses the
    window rows extract wrote (one sample each, with its own audio); it cannot re-cut them."""
    bad = (window is not None and abs(window - info.window) > 1e-6) or (
        overlap is not None and info.window and abs(overlap - info.overlap) > 1e-6
    )
    if bad:
        raise FeatureFolderError(
            f"{info.path}: features were cut into windows of {info.window:g} s with "
            f"{info.overlap:g} s overlap (0: none), not --window {window} --overlap {overlap}; "
            "drop the flags, or extract again with: "
            f"{extract_command(info.path, info.variant, suffix=f'-w{window or 8:g}')} "
            f"--window {window or 8} --overlap {overlap if overlap is not None else 1}"
        )


# ---- split ------------------------------------------------------------------------------------


def id_rank(clip_id: str) -> str:
    return hashlib.sha256(f"selva-split:{clip_id}".encode()).hexdigest()


def split_ids(
    ids: Iterable[str], val_fraction: float, groups: dict[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """(train, val): the round(f * N) clips with the smallest id hashes validate (at least one
    when f > 0 and there are two clips). Depends on the ids only, never on file order.

    `groups` (id -> video, for the windows of long videos): whole videos are split, so no
    window validates a video whose neighbouring windows (sharing a second) were trained on;
    N counts videos then. Ids without a group are their own video."""
    ids = set(ids)
    groups = groups or {}
    members: dict[str, list[str]] = {}
    for i in ids:
        members.setdefault(groups.get(i) or i, []).append(i)
    ordered = sorted(members, key=id_rank)
    n = len(ordered)
    n_val = 0
    if val_fraction > 0 and n >= 2:
        n_val = min(max(1, round(val_fraction * n)), n - 1)
    train = [i for g in ordered[n_val:] for i in members[g]]
    val = [i for g in ordered[:n_val] for i in members[g]]
    return sorted(train), sorted(val)


@dataclass(frozen=True)
class ClipListing:
    usable: list[str]  # clips (or windows of long videos) with audio latents
    silent: list[str]  # clips without an audio track (latent_len 0): nothing to learn
    groups: dict | None = None  # window row id -> its video's id (split by video)


def list_clips(info: FeatureInfo) -> ClipListing:
    table = read_features(info.path, columns=["id", "latent_len", "parent_id"])
    ids = table["id"].to_pylist()
    lengths = table["latent_len"].to_pylist()
    usable = sorted({i for i, n in zip(ids, lengths, strict=True) if n and n > 0})
    silent = sorted({i for i, n in zip(ids, lengths, strict=True) if not n})
    parents = table["parent_id"].to_pylist()
    groups = {i: p for i, p in zip(ids, parents, strict=True) if p}
    return ClipListing(usable, silent, groups)


# ---- Ray Data ---------------------------------------------------------------------------------


def _read_parts(
    batch: dict[str, np.ndarray], *, root: str, columns: list[str], keep: frozenset, tensors: list
) -> dict[str, np.ndarray]:
    """Read feature part files, keep the requested clips, decode their tensors to float32."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fs = OutputDir(root).fs
    tables = [pq.read_table(str(p), columns=columns, filesystem=fs) for p in batch["path"]]
    table = pa.concat_tables(tables)
    table = table.filter(pc.is_in(table["id"], value_set=pa.array(sorted(keep), pa.string())))
    out = {n: table[n].to_numpy(zero_copy_only=False) for n in columns if n not in tensors}
    for name in tensors:
        out[name] = read_tensor(table, name).numpy()
    return out


def clip_dataset(info: FeatureInfo, ids: Iterable[str], num_cpus: float = 1.0):
    """A Ray Dataset of the given clips with float32 tensors (storage dtypes decoded).

    One read task per part file, on pyarrow directly: Ray Data's Parquet reader would also
    work, but its footer-indexing actor pool (32 actors by default) costs more than it saves
    for the few hundred MB a LoRA data set is, and stalls small CI machines. `num_cpus`: what
    each read task reserves (the planner keeps that much free of the training workers)."""
    import ray

    files = feature_files(info.path)
    if not files:
        raise FeatureFolderError(f"{info.path}: no feature part files")
    ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files))
    return ds.map_batches(
        _read_parts,
        fn_kwargs={
            "root": info.path,
            "columns": info.columns(),
            "keep": frozenset(ids),
            "tensors": info.tensor_columns(),
        },
        batch_size=1,
        num_cpus=num_cpus,
    )


# ---- in memory on a worker --------------------------------------------------------------------


@dataclass
class ClipSet:
    """Clips in id order, float32 on the CPU; tensors padded to the training duration."""

    ids: list[str]
    prompts: list[str]
    durations: torch.Tensor  # (N,) seconds
    lengths: torch.Tensor  # (N,) valid latent frames
    sync_lengths: torch.Tensor  # (N,)
    latent: torch.Tensor  # (N, L, C) VAE posterior mean, not normalised
    sync_f: torch.Tensor
    text_f: torch.Tensor
    clip_f: torch.Tensor | None  # MMAudio family only

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_batches(cls, batches: Iterable[dict]) -> ClipSet:
        parts: dict[str, list] = {}
        for batch in batches:
            if len(batch["id"]) == 0:
                continue
            for k, v in batch.items():
                parts.setdefault(k, []).append(np.asarray(v))
        if not parts:
            return cls.empty()
        cols = {k: np.concatenate(v) for k, v in parts.items()}
        order = np.argsort(cols["id"].astype(str), kind="stable")
        ids = [str(i) for i in cols["id"][order]]
        if len(set(ids)) != len(ids):
            raise FeatureFolderError("the features folder holds a clip id twice")

        def t(name: str, dtype=torch.float32) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(cols[name][order])).to(dtype)

        return cls(
            ids=ids,
            prompts=[str(p) for p in cols["prompt"][order]],
            durations=t("duration", torch.float64),
            lengths=t("latent_len", torch.long),
            sync_lengths=t("sync_len", torch.long),
            latent=t("latent_mean"),
            sync_f=t("sync_f"),
            text_f=t("text_f"),
            clip_f=t("clip_f") if "clip_f" in cols else None,
        )

    @classmethod
    def empty(cls) -> ClipSet:
        z = torch.zeros(0)
        return cls([], [], z.double(), z.long(), z.long(), z, z, z, None)

    def select(self, index: torch.Tensor | list[int]) -> ClipSet:
        index = torch.as_tensor(index, dtype=torch.long)
        pick = index.tolist()
        return ClipSet(
            ids=[self.ids[i] for i in pick],
            prompts=[self.prompts[i] for i in pick],
            durations=self.durations[index],
            lengths=self.lengths[index],
            sync_lengths=self.sync_lengths[index],
            latent=self.latent[index],
            sync_f=self.sync_f[index],
            text_f=self.text_f[index],
            clip_f=self.clip_f[index] if self.clip_f is not None else None,
        )

    def conditions(self, generator) -> tuple[torch.Tensor, ...]:
        """(clip_f, sync_f, text_f) on the CPU; SelVA clips get the generator's learned empty
        clip feature, as inference does."""
        clip_f = self.clip_f
        if clip_f is None:
            empty = generator.empty_clip_feat.detach().float().cpu()  # (1, clip_dim)
            clip_f = empty[None].expand(len(self), generator.clip_seq_len, -1)
        return clip_f, self.sync_f, self.text_f


def normalized_targets(latent: torch.Tensor, lengths: torch.Tensor, generator) -> torch.Tensor:
    """Normalised x1 on the CPU, with the padding after each clip's valid frames set to 0."""
    mean = generator.latent_mean.detach().float().cpu()
    std = generator.latent_std.detach().float().cpu()
    x1 = (latent.float() - mean) / std
    frames = torch.arange(x1.shape[1])
    valid = frames[None, :] < lengths[:, None]
    return x1 * valid[..., None]


# ---- sampling ---------------------------------------------------------------------------------


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from any labelled tuple (independent streams without shared state)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def steps_per_epoch(num_clips: int, batch_size: int) -> int:
    return num_clips // batch_size


def global_batch(num_clips: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Clip indices of optimizer step `step` (0-based): a slice of that epoch's permutation."""
    per_epoch = steps_per_epoch(num_clips, batch_size)
    if per_epoch < 1:
        raise FeatureFolderError(
            f"global batch {batch_size} is larger than the {num_clips} training clips"
        )
    epoch, k = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(derived_seed("epoch", seed, epoch))
    perm = torch.randperm(num_clips, generator=gen)
    return perm[k * batch_size : (k + 1) * batch_size]
