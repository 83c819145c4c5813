"""The worst clips of a run as a terminal table (the report's ranking: flagged first), each
named by its source file (ids are hashes) with the path of what to listen to."""

from __future__ import annotations

from .build import fmt
from .run_folder import RunFolder, clip_name, rank_clips, source_root

COLUMNS = [
    # header, key, digits, width
    ("LUFS", "loudness_lufs", 1, 6),
    ("TP dBTP", "true_peak_dbtp", 1, 7),
    ("silent", "silence_ratio", 2, 6),
    ("clipped", "clipped_ratio", 4, 7),
    ("flat", "spectral_flatness", 3, 5),
    ("DeSync", "desync_s", 2, 6),
]


def ranking_lines(run: RunFolder, worst: int = 10) -> list[str]:
    ranked = rank_clips(run)
    flagged = sum(1 for r in run.results if r.get("qa_flags"))
    failed = len({e.get("id") for e in run.errors})
    lines = [
        f"{run.root}: {len(run.results)} clips ok, {flagged} flagged, {failed} failed; "
        f"the {min(worst, len(ranked))} worst:"
    ]
    if not ranked:
        return lines
    shown = ranked[:worst]
    root = source_root(run.results)
    id_w = max(4, *(len(str(r.get("id"))) for r in shown))
    flag_w = max(5, *(len(",".join(r.get("qa_flags") or [])) for r in shown))
    header = f"{'#':>3}  {'id':<{id_w}}  {'flags':<{flag_w}}  " + "  ".join(
        f"{h:>{w}}" for h, _, _, w in COLUMNS
    )
    name_w = max(6, *(len(clip_name(r, root)) for r in shown))
    lines += [f"{header}  {'source':<{name_w}}  media", "-" * (len(header) + name_w + 9)]
    for rank, r in enumerate(shown, 1):
        flags = ",".join(r.get("qa_flags") or []) or "-"
        values = "  ".join(f"{fmt(r.get(k), d) or '-':>{w}}" for _, k, d, w in COLUMNS)
        media = r.get("audio_path") or r.get("video_path") or ""
        name = clip_name(r, root) or "-"
        lines.append(
            f"{rank:>3}  {str(r.get('id')):<{id_w}}  {flags:<{flag_w}}  {values}  "
            f"{name:<{name_w}}  {media}".rstrip()
        )
    return lines
