"""Long videos in the Ray jobs: which catalog rows are cut into windows, and their plan rows.

A catalog row without a `duration` covers its video from `start` to the end. When that span
is longer than the run's `--window`, the row becomes one plan row per window
(`selva_core.long.plan_windows` on the model's latent grid, so `continue` joins work from
stored features too): id "<clip id>#w<index:03d>", `start`/`duration` the window's span in
the source, `pad_to` the window's length (the last window may end up to one latent frame past
the video's end; its frames are padded there), and the window columns of the feature schema
(`selva_ray.io.feature_schema.WINDOW_SCALARS`). Each window is decoded by its own task, one
window of frames at a time, so memory is bounded whatever the video's length. A span no
longer than one window, or a row with an explicit `duration`, is an ordinary clip row.

The driver reads each candidate video's length from its container (`video_duration`: the
last frame's end, from the packets near the header's end, or the whole stream without one);
a video that cannot be probed stays an ordinary row, and the decode stage reports what is
wrong with it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from selva_core.defaults import DEFAULT_OVERLAP, DEFAULT_WINDOW

from .. import errors as validate

log = logging.getLogger(__name__)

WINDOW_SEP = "#w"
_EPS = 1e-6


def window_id(parent_id: str, index: int) -> str:
    return f"{parent_id}{WINDOW_SEP}{index:03d}"


@dataclass(frozen=True)
class WindowSettings:
    """Effective window and overlap of a run (window 0: no windows, the old behaviour)."""

    window: float = 0.0
    overlap: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.window > 0

    @classmethod
    def for_run(cls, window: float | None, overlap: float | None, max_duration: float):
        """`window` longer than the run's `max_duration` (the stored tensors' length) is cut to
        it, and `overlap` to half the window; `window` 0 or None turns windows off."""
        check_window_args(window, overlap)
        if not window:
            return cls()
        w = min(float(window), float(max_duration))
        o = DEFAULT_OVERLAP if overlap is None else float(overlap)
        return cls(round(w, 6), round(min(o, w / 2), 6))


def check_window_args(window: float | None, overlap: float | None) -> None:
    """`--window` >= 0 (0: off), `--overlap` in [0, window / 2]."""
    if window is not None and not (window >= 0 and window <= 24 * 3600):
        raise validate.UsageError(f"--window must be >= 0 seconds (0: no windows), got {window}")
    if overlap is not None:
        if not overlap >= 0:
            raise validate.UsageError(f"--overlap must be >= 0 seconds, got {overlap}")
        if window and overlap > window / 2:
            raise validate.UsageError(
                f"--overlap must be at most half the window ({window / 2:g} s), got {overlap}"
            )


def probe_length(source: str) -> float | None:
    """Seconds of `source`'s video stream; None if the file cannot be probed."""
    from selva_core.long import video_duration

    from .rows import local_copy

    try:
        with local_copy(source) as path:
            return video_duration(path)
    except Exception as exc:  # noqa: BLE001 - the decode stage reports it properly
        log.debug("cannot probe %s: %s", source, exc)
        return None


def probe_lengths(sources: Iterable[str]) -> dict[str, float | None]:
    """`probe_length` of each distinct source, once: a catalog of a million rows over a few
    long videos (clips at different starts) probes a few files."""
    distinct = list(dict.fromkeys(sources))
    if not distinct:
        return {}
    with ThreadPoolExecutor(8) as pool:
        return dict(zip(distinct, pool.map(probe_length, distinct), strict=True))


def probe_spans(rows: list[dict], settings: WindowSettings) -> list[float | None]:
    """The span of each row that may need windows (no explicit duration), else None."""
    if not settings.enabled:
        return [None] * len(rows)
    todo = [i for i, r in enumerate(rows) if r.get("catalog_duration") is None]
    lengths = probe_lengths(rows[i]["source"] for i in todo)
    spans: list[float | None] = [None] * len(rows)
    for i in todo:
        length = lengths[rows[i]["source"]]
        if length is not None:
            spans[i] = max(0.0, length - float(rows[i]["start"] or 0.0))
    return spans


def clip_windows(span: float | None, settings: WindowSettings, spec) -> list | None:
    """The windows of a clip spanning `span` seconds, or None for an ordinary clip."""
    if not settings.enabled or span is None or span <= settings.window + _EPS:
        return None
    from selva_core.long import latent_quantum, plan_windows

    quantum = latent_quantum(spec.sequence(settings.window))
    return plan_windows(span, settings.window, settings.overlap, quantum=quantum)


def window_rows(row: dict, windows: list, span: float) -> list[dict]:
    """One plan row per window of a clip row (see module doc); the caller sets seeds."""
    out = []
    for w in windows:
        length = round(w.end - w.start, 6)  # 8.0, not 8.000000000000002 (sequence lengths)
        item = dict(row)
        item.update(
            id=window_id(row["id"], w.index),
            start=float(row.get("start") or 0.0) + w.start,
            duration=length,
            pad_to=length,
            parent_id=row["id"],
            window_index=w.index,
            window_count=len(windows),
            window_start=w.start,
            window_end=w.end,
            parent_duration=float(span),
        )
        out.append(item)
    return out


def expand(rows: list[dict], settings: WindowSettings, spec) -> tuple[list[dict], int]:
    """Plan rows with every long clip cut into its windows; also the number of long clips.
    Each row needs `id, source, start` and `catalog_duration` (the catalog's own duration)."""
    spans = probe_spans(rows, settings)
    out, long_clips = [], 0
    for row, span in zip(rows, spans, strict=True):
        windows = clip_windows(span, settings, spec)
        if windows is None:
            out.append(row)
            continue
        long_clips += 1
        out.extend(window_rows(row, windows, span))
    return out, long_clips


def clip_extents(records, settings: WindowSettings, spec, max_duration: float) -> list:
    """(seconds, windows) of each catalog record, for a dry run's estimate: an ordinary clip
    has 0 windows and its duration (the catalog's, else what its video leaves after its start,
    at most `max_duration`); a long one is cut into windows. Each distinct file is probed
    once; records are not copied into rows."""
    lengths = probe_lengths(r.source for r in records if r.duration is None)
    cuts: dict[float, int] = {}
    out = []
    for r in records:
        if r.duration is not None:
            out.append((r.duration, 0))
            continue
        length = lengths[r.source]
        span = None if length is None else max(0.0, length - float(r.start or 0.0))
        if span is None:
            out.append((max_duration, 0))
            continue
        if span not in cuts:
            windows = clip_windows(span, settings, spec)
            cuts[span] = len(windows) if windows else 0
        n = cuts[span]
        out.append((span, n) if n else (min(span, max_duration), 0))
    return out


def check_long_settings(config) -> None:
    """The window and mask flags of a job config (`window`, `overlap`, `mask_strength`,
    `mask_paths`): one-line `UsageError`s."""
    from selva_core.video.mask import MASK_PATHS

    check_window_args(getattr(config, "window", None), getattr(config, "overlap", None))
    strength = getattr(config, "mask_strength", 1.0)
    if not 0.0 <= strength <= 1.0:
        raise validate.UsageError(f"--mask-strength must be in [0, 1], got {strength}")
    paths = tuple(getattr(config, "mask_paths", MASK_PATHS))
    if not paths or any(p not in MASK_PATHS for p in paths):
        raise validate.UsageError(
            f"--mask-paths must be a non-empty subset of {','.join(MASK_PATHS)}, got "
            f"{','.join(paths) or '(none)'}"
        )


def parse_mask_paths(text: str) -> tuple[str, ...]:
    """argparse type of `--mask-paths clip,sync`."""
    import argparse

    from selva_core.video.mask import MASK_PATHS

    paths = tuple(p.strip() for p in text.split(",") if p.strip())
    if not paths or any(p not in MASK_PATHS for p in paths):
        raise argparse.ArgumentTypeError(
            f"must be a comma-separated subset of {','.join(MASK_PATHS)}, got {text!r}"
        )
    return tuple(p for p in MASK_PATHS if p in paths)


def catalog_rows(records, config) -> list[dict]:
    """Plan rows of catalog records (before windows): the record's fields, `duration` (the
    catalog's, else the run's max duration), `catalog_duration`, and `input_hash`
    (`identity.stamp_rows`: the catalog values, the source file's identity and the mask's
    digest; a change redoes the clip)."""
    rows = []
    for r in records:
        row = r.to_row()
        row["catalog_duration"] = r.duration
        rows.append(row)
    # hashed with the catalog's duration (None: to the end), as before windows existed
    from .identity import EXTRACT_FIELDS, stamp_rows  # pyarrow: not on the `--help` path

    stamp_rows(
        rows, EXTRACT_FIELDS, mask_strength=config.mask_strength, mask_paths=config.mask_paths
    )
    for row in rows:
        row["duration"] = row["catalog_duration"] or config.max_duration
    return rows


def plan_rows(records, config, settings: WindowSettings, spec) -> list[dict]:
    """Extraction plan rows: one per ordinary clip, one per window of a long one."""
    rows, long_clips = expand(catalog_rows(records, config), settings, spec)
    if long_clips:
        log.info(
            "%d video(s) longer than the %g s window cut into %d window rows (overlap %g s)",
            long_clips,
            settings.window,
            sum(1 for r in rows if r.get("parent_id")),
            settings.overlap,
        )
    return rows


def parent_of(clip_id: str) -> str:
    """The video a (window) row id belongs to."""
    head, sep, tail = clip_id.rpartition(WINDOW_SEP)
    return head if sep and tail.isdigit() else clip_id


def stale_windows(finished: dict, rows: list[dict], stale: set[str]) -> set[str]:
    """Committed rows of a redone video that the new plan no longer has (its other windows,
    or its old single row): removed with the stale ones so no reader mixes two versions."""
    if not stale:
        return set()
    current = {r["id"] for r in rows}
    changed = {parent_of(i) for i in stale}
    return {i for i in finished if i not in current and parent_of(i) in changed}


__all__ = [
    "DEFAULT_OVERLAP",
    "DEFAULT_WINDOW",
    "WINDOW_SEP",
    "WindowSettings",
    "catalog_rows",
    "check_long_settings",
    "check_window_args",
    "clip_extents",
    "clip_windows",
    "expand",
    "parent_of",
    "parse_mask_paths",
    "plan_rows",
    "probe_length",
    "probe_lengths",
    "stale_windows",
    "window_id",
    "window_rows",
]
