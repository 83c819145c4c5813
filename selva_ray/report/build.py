"""`RUN_DIR/report/index.html` (or `--out DIR/index.html`): a static page about a run that
opens from disk.

No server and no external URL: CSS and the small sorting script are inline, figures are PNG
files next to the page, local audio and video are linked by paths relative to it (a run on
object storage is read through pyarrow; its tracks are fetched only to draw spectrograms, and
are named, not linked). The page is built in a hidden sibling folder and swapped in when whole.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from selva_core.qa import QA_METRICS

from ..io.catalog import resolve
from ..io.names import file_stem
from . import plots
from .run_folder import RunFolder, RunFolderError, clip_name, load_run, rank_clips, source_root

log = logging.getLogger(__name__)
REPORT_DIR = "report"
SPECTROGRAM_SECONDS = 30.0
REMOTE_AUDIO_MAX_BYTES = 64 << 20  # a remote track larger than this gets no spectrogram
GENERATOR = "<meta name='generator' content='selva-ray report'>"

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.muted{color:#777}.grid{display:flex;flex-wrap:wrap;gap:8px}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:3px 6px;
vertical-align:middle;text-align:left}th{background:#f3f3f3;position:sticky;top:0}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:hover{background:#e6e6e6}
th[data-dir=asc]::after{content:" \\25B2"}th[data-dir=desc]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.flag{display:inline-block;background:#c00000;color:#fff;border-radius:3px;padding:0 4px;
margin:1px;font-size:11px}.ok{color:#2a7a2a}.kv td:first-child{color:#555}
.summary{display:flex;gap:24px;flex-wrap:wrap}.big{font-size:24px;font-weight:600}
figure{margin:0;max-width:400px}img.spec{display:block;width:200px;height:68px}
audio{display:block;width:200px;height:32px}td.media{width:200px}
.why{max-width:200px;overflow-wrap:anywhere;font-size:11px}td.why{max-width:120px}td.prompt{min-width:120px;max-width:220px;overflow-wrap:break-word}
td.clip{min-width:140px;max-width:220px;overflow-wrap:anywhere}
.id{font:11px ui-monospace,monospace}
.wide{max-width:100%;overflow-x:auto}table.kv td{overflow-wrap:anywhere}
table.kv td:last-child{max-width:900px}.grid img{max-width:100%}
"""

JS = """
function cellValue(row, col) {
  const c = row.cells[col];
  return c.dataset.v !== undefined ? c.dataset.v : c.textContent.trim();
}
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      const asc = th.dataset.dir !== "asc";
      table.querySelectorAll("th").forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = asc ? "asc" : "desc";
      const body = table.tBodies[0];
      const rows = Array.from(body.rows);
      const numeric = rows.every(function (r) {
        const v = cellValue(r, col); return v === "" || !isNaN(Number(v));
      });
      rows.sort(function (a, b) {
        const x = cellValue(a, col), y = cellValue(b, col);
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        const d = numeric ? Number(x) - Number(y) : x.localeCompare(y);
        return asc ? d : -d;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
// index.html#sort=KEY or #sort=KEY:desc opens the clips table sorted by that column
(function () {
  const m = location.hash.match(/^#sort=([^:]+)(?::(asc|desc))?$/);
  if (!m) { return; }
  const key = decodeURIComponent(m[1]);
  const th = document.querySelector("#clips th[data-key='" + key.replace(/'/g, "") + "']");
  if (th) { th.click(); if (m[2] === "desc") { th.click(); } }
})();
window.addEventListener("load", function () {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  const s = document.getElementById("img-status");
  s.dataset.loaded = ok;
  s.dataset.total = imgs.length;
  s.textContent = ok === imgs.length ? "all " + ok + " images loaded"
    : (imgs.length - ok) + " of " + imgs.length + " images did not load";
});
"""

TABLE_METRICS = [
    ("loudness_lufs", "LUFS", 1),
    ("true_peak_dbtp", "true peak dBTP", 1),
    ("peak_dbfs", "peak dBFS", 1),
    ("rms_dbfs", "RMS dBFS", 1),
    ("clipped_ratio", "clipped", 4),
    ("silence_ratio", "silent", 2),
    ("spectral_flatness", "flatness", 3),
    ("desync_s", "DeSync s", 2),
    ("duration", "s", 2),
]


@dataclass
class ReportSummary:
    path: Path
    clips: int
    shown: int
    failed: int
    flagged: int
    images: int
    wall_s: float


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}f}"
    return str(value)


def href(target: str, report_dir: Path) -> str | None:
    """A link to `target` relative to the page, or None for a remote object (no URL leaves
    the page)."""
    if "://" in target:
        return None
    return quote(os.path.relpath(target, report_dir))


class ReportOutError(RunFolderError):
    """The page cannot be written where asked (a remote or read-only run without `--out`, or
    an `--out` folder that holds other files)."""


def build_report(
    run_dir: str | os.PathLike[str], *, max_clips: int = 500, out: str | None = None
) -> ReportSummary:
    """Read a run folder (local path or URI) and write its page to `RUN_DIR/report/`, or to
    the local folder `out` (needed for a run on object storage or a read-only one)."""
    t0 = time.perf_counter()
    run = load_run(run_dir)
    final = report_folder(run, out)
    work = final.parent / f".{final.name}-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    try:
        # paths in the page are relative to where it will live (final), files go to `work`
        with tempfile.TemporaryDirectory(prefix="selva-report-") as fetched:
            page, counts = _page(run, work, final, max_clips, Path(fetched))
        (work / "index.html").write_text(page, encoding="utf-8")
        old = None
        if final.exists():
            old = final.parent / f".{final.name}-old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        os.replace(work, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ReportSummary(path=final / "index.html", wall_s=time.perf_counter() - t0, **counts)


def report_folder(run: RunFolder, out: str | os.PathLike[str] | None) -> Path:
    """Where the page goes: `out` (local; absent, empty or an earlier page, since the folder
    is replaced whole), else `RUN_DIR/report` of a local, writable run folder."""
    from ..validate import UsageError, check_output_writable

    if out is None:
        if not run.is_local:
            raise ReportOutError(
                f"run folder {run.root} is not on this machine's disk: give --out DIR "
                "to write the page to a local folder"
            )
        final = Path(run.path) / REPORT_DIR
        try:
            check_output_writable(str(final), flag="run folder")
        except UsageError as exc:
            raise ReportOutError(f"{exc}; give --out DIR to write the page elsewhere") from None
        return final
    text = os.fspath(out)
    if "://" in text:
        raise ReportOutError(f"--out {text}: the page is written to a local folder, not a URI")
    final = Path(text).expanduser().resolve()
    if run.is_local:
        root = Path(run.path).resolve()
        if final == root or final in root.parents:
            raise ReportOutError(
                f"--out {final} holds the run folder {root}; the page folder is replaced "
                "whole, give a new folder"
            )
    if final.exists() and not _replaceable(final):
        raise ReportOutError(
            f"--out {final} holds files that are not a report page; the page folder is "
            "replaced whole, give a new or empty folder"
        )
    try:
        check_output_writable(str(final), flag="--out")
    except UsageError as exc:
        raise ReportOutError(str(exc)) from None
    return final


def _replaceable(folder: Path) -> bool:
    """An empty folder, or a page this module wrote."""
    if not folder.is_dir():
        return False
    if not any(folder.iterdir()):
        return True
    index = folder / "index.html"
    try:
        with index.open(encoding="utf-8", errors="replace") as f:
            return GENERATOR in f.read(4096)
    except OSError:
        return False


def _page(
    run: RunFolder, work: Path, final: Path, max_clips: int, fetched: Path
) -> tuple[str, dict]:
    ranked = rank_clips(run)
    shown = ranked[:max_clips]
    thresholds = run.thresholds()
    flagged = sum(1 for r in run.results if r.get("qa_flags"))
    failed_ids = {e.get("id") for e in run.errors}
    kind = (
        run.meta.get("kind")
        or run.meta.get("job")
        or run.settings.get("job")
        or ("training" if run.is_training else "run")
    )
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>{GENERATOR}",
        f"<title>selva-ray report: {esc(run.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(run.name)}</h1>",
        f"<p class='muted'>{esc(kind)} run folder {esc(run.root)}; report written "
        f"{esc(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>",
    ]
    images = 0
    if run.results or run.errors or not run.is_training:
        parts.append(_summary(run, flagged, len(failed_ids)))
        hist_html, n = _histograms(run, thresholds, work)
        parts.append(hist_html)
        images += n
        table_html, n = _clips_table(run, shown, len(ranked), work, final, fetched)
        parts.append(table_html)
        images += n
        parts.append(_errors_table(run))
    if run.is_training:
        training_html, n = _training(run, work)
        parts.append(training_html)
        images += n
    parts.append(_settings(run))
    if run.problems:
        items = "".join(f"<li>{esc(p)}</li>" for p in run.problems)
        parts.append(f"<h2>Skipped input</h2><ul>{items}</ul>")
    parts.append(f"<p id='img-status' class='muted'>{images} images</p>")
    parts.append(f"<script>{JS}</script></body></html>")
    counts = {
        "clips": len(run.results),
        "shown": len(shown),
        "failed": len(failed_ids),
        "flagged": flagged,
        "images": images,
    }
    return "\n".join(parts), counts


def _kv_table(items: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in items)
    return f"<table class='kv'>{rows}</table>"


def _flatten(data, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    if isinstance(data, dict) and data:
        for k in sorted(data):
            out.extend(_flatten(data[k], f"{prefix}{k}."))
    else:
        text = data if isinstance(data, str) else json.dumps(data)
        out.append((prefix.rstrip("."), text if len(text) < 300 else text[:297] + "..."))
    return out


def _summary(run: RunFolder, flagged: int, failed: int) -> str:
    flags = Counter(f for r in run.results for f in (r.get("qa_flags") or []))
    flag_text = ", ".join(f"{k}: {v}" for k, v in flags.most_common()) or "none"
    boxes = [
        ("clips ok", len(run.results)),
        ("failed", failed),
        ("flagged", flagged),
    ]
    html_boxes = "".join(
        f"<div><div class='big' id='count-{esc(k.split()[0])}'>{v}</div>"
        f"<div class='muted'>{esc(k)}</div></div>"
        for k, v in boxes
    )
    out = [f"<h2>Summary</h2><div class='summary'>{html_boxes}</div>"]
    out.append(f"<p>Flags: {esc(flag_text)}. Thresholds: ")
    out.append(esc(", ".join(f"{k}={v}" for k, v in run.thresholds().describe().items())))
    out.append("</p>")
    adapters = _adapters(run)
    out.append("<p>Adapters: " + (esc("; ".join(adapters)) if adapters else "none") + "</p>")
    runs = run.meta.get("runs") or []
    if runs:
        rows = []
        for r in runs:
            attempted = (r.get("ok") or 0) + (r.get("failed") or 0)
            wall = r.get("wall_s") or 0.0
            rate = r.get("clips_per_s") or (attempted / wall if wall else 0.0)
            when = r.get("finished_at")
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(when)) if when else ""
            cells = [esc(r.get("run")), esc(stamp)]
            nums = [r.get("ok"), r.get("failed"), r.get("skipped"), fmt(float(wall), 1)]
            nums.append(fmt(float(rate), 2))
            rows.append(
                "<tr>"
                + "".join(f"<td>{c}</td>" for c in cells)
                + "".join(f"<td class='num'>{esc(n)}</td>" for n in nums)
                + "</tr>"
            )
        out.append(
            "<h3>Throughput</h3><table><thead><tr><th>run</th><th>finished</th><th>ok</th>"
            "<th>failed</th><th>skipped</th><th>wall s</th><th>clips/s</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
    return "".join(out)


def _adapters(run: RunFolder) -> list[str]:
    found: dict[str, None] = {}
    for source in [run.settings.get("adapters")] + [r.get("adapters") for r in run.results]:
        if not source:
            continue
        if isinstance(source, str):
            try:
                source = json.loads(source)
            except ValueError:
                found[source] = None
                continue
        for a in source if isinstance(source, list) else [source]:
            if isinstance(a, dict):
                name = a.get("name") or a.get("path") or json.dumps(a, sort_keys=True)
                strength = a.get("strength")
                found[f"{name}@{strength}" if strength is not None else str(name)] = None
            else:
                found[str(a)] = None
    return list(found)


def _threshold_lines(metric: str, t) -> list[float]:
    if metric == "loudness_lufs" and t.target_lufs is not None:
        return [t.target_lufs - t.loudness_tolerance_lu, t.target_lufs + t.loudness_tolerance_lu]
    single = {
        "silence_ratio": t.max_silence_ratio,
        "clipped_ratio": t.max_clipped_ratio,
        "true_peak_dbtp": t.max_true_peak_dbtp,
        "spectral_flatness": t.max_spectral_flatness,
    }
    if metric == "desync_s" and t.max_abs_desync_s is not None:
        return [-t.max_abs_desync_s, t.max_abs_desync_s]
    return [single[metric]] if single.get(metric) is not None else []


def _histograms(run: RunFolder, thresholds, work: Path) -> tuple[str, int]:
    figures = []
    for metric, (unit, meaning) in QA_METRICS.items():
        values = [r.get(metric) for r in run.results]
        present = [v for v in values if v is not None]
        if not present:
            continue
        name = f"hist_{metric}.png"
        plots.histogram(present, work / name, metric, unit, _threshold_lines(metric, thresholds))
        missing = len(values) - len(present)
        note = f"; {missing} clip(s) without a value" if missing else ""
        figures.append(
            f"<figure><img src='{name}' alt='{esc(metric)} histogram'>"
            f"<figcaption class='muted'>{esc(meaning)}{esc(note)}</figcaption></figure>"
        )
    if not figures:
        return "", 0
    return "<h2>QA metrics</h2><div class='grid'>" + "".join(figures) + "</div>", len(figures)


def _clips_table(
    run: RunFolder, rows: list[dict], total: int, work: Path, final: Path, fetched: Path
) -> tuple[str, int]:
    if not rows:
        return "<h2>Clips</h2><p>No results rows.</p>", 0
    (work / "spec").mkdir(exist_ok=True)
    head = [("#", "rank"), ("clip", "source"), ("flags", "flags"), ("spectrogram, listen", "")]
    head += [(label, key) for key, label, _ in TABLE_METRICS]
    head += [("prompt", "prompt"), ("video", "")]
    body = []
    images = 0
    root = source_root(run.results)
    for rank, r in enumerate(rows, 1):
        media = run.media_path(r)
        spec = "<div>no audio</div>"
        if media:
            try:
                samples, rate = _spectrogram_audio(media, fetched)
                name = f"spec/{file_stem(r['id'])}.png"
                plots.spectrogram(samples, rate, work / name)
                spec = f"<img class='spec' src='{name}' alt='spectrogram'>"
                images += 1
            except Exception as exc:  # noqa: BLE001 - a bad file shows as text, not a broken img
                spec = f"<div class='why'>{esc(exc)}</div>"
        link = href(media, final) if media else None
        if link:
            player = f"<audio controls preload='none' src='{link}'></audio>"
        else:  # a remote track: named, not linked (no URL leaves the page)
            player = f"<div class='muted why'>{esc(media or '')}</div>"
        flags = r.get("qa_flags") or []
        flag_html = "".join(f"<span class='flag'>{esc(f)}</span>" for f in flags) or (
            "<span class='ok'>ok</span>"
        )
        name = clip_name(r, root)
        clip_html = (f"<b>{esc(name)}</b><div class='muted id'>{esc(r.get('id'))}</div>"
                     if name else f"<span class='id'>{esc(r.get('id'))}</span>")  # fmt: skip
        cells = [
            f"<td class='num'>{rank}</td>",
            f"<td class='clip' data-v='{esc(name or r.get('id'))}' "
            f"title='{esc(r.get('source'))}'>{clip_html}</td>",
            f"<td data-v='{len(flags)}'>{flag_html}</td>",
            f"<td class='media' data-v=''>{spec}{player}</td>",
        ]
        for key, _, digits in TABLE_METRICS:
            value = r.get(key)
            cells.append(
                f"<td class='num' data-v='{esc(value if value is not None else '')}'>"
                f"{esc(fmt(value, digits))}</td>"
            )
        cells.append(f"<td class='prompt'>{esc(r.get('prompt'))}</td>")
        video = r.get("video_path")
        video_link = href(run.resolve(video), final) if video else None
        if video_link:
            cells.append(f"<td><a href='{video_link}'>video</a></td>")
        else:  # remote (named, not linked) or none
            cells.append(f"<td class='why'>{esc(run.resolve(video) if video else '')}</td>")
        body.append(f"<tr class='clip' data-id='{esc(r.get('id'))}'>{''.join(cells)}</tr>")
    heading = "<h2>Clips, worst first</h2>"
    note = (
        f"<p class='muted'>{len(rows)} of {total} clips (the worst; `--max-clips` shows more). "
        "Click a column header to sort; <code>index.html#sort=loudness_lufs:desc</code> opens "
        "the page sorted by a column.</p>"
    )
    header = "".join(f"<th data-key='{esc(k)}'>{esc(h)}</th>" for h, k in head)
    table = (
        f"<div class='wide'><table class='sortable' id='clips'><thead><tr>{header}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )
    return heading + note + table, images


def _spectrogram_audio(media: str, fetched: Path):
    """Samples of a clip's track for its spectrogram; a remote one (s3://...) is copied to
    `fetched` first (decoders read local files), up to `REMOTE_AUDIO_MAX_BYTES`."""
    from ..stages.decode import read_source_audio

    if "://" not in media:
        return read_source_audio(media, 0.0, SPECTROGRAM_SECONDS)
    fs, path = resolve(media)
    size = fs.get_file_info(path).size
    if size is None:
        raise FileNotFoundError(f"{media} does not exist")
    if size > REMOTE_AUDIO_MAX_BYTES:
        raise ValueError(f"{media}: {size >> 20} MiB, not fetched for a spectrogram")
    local = fetched / f"{uuid.uuid4().hex[:8]}{Path(path).suffix}"
    with fs.open_input_stream(path) as src, local.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    try:
        return read_source_audio(str(local), 0.0, SPECTROGRAM_SECONDS)
    finally:
        local.unlink(missing_ok=True)


def _errors_table(run: RunFolder) -> str:
    if not run.errors:
        return ""
    rows = "".join(
        f"<tr><td>{esc(e.get('id'))}</td><td>{esc(e.get('stage'))}</td>"
        f"<td>{esc(e.get('error_type'))}</td><td>{esc(e.get('message'))}</td>"
        f"<td>{esc(e.get('source'))}</td></tr>"
        for e in run.errors[:1000]
    )
    return (
        f"<h2>Failed clips ({len(run.errors)})</h2><div class='wide'>"
        "<table class='sortable' id='errors'><thead><tr><th>id</th><th>stage</th><th>error</th>"
        f"<th>message</th><th>source</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, r in enumerate(rows):
        y = r.get(key)
        if isinstance(y, int | float) and not isinstance(y, bool) and math.isfinite(y):
            xs.append(float(r.get("step", i)))
            ys.append(float(y))
    return xs, ys


def _training(run: RunFolder, work: Path) -> tuple[str, int]:
    out = ["<h2>Training</h2>"]
    figures = []
    loss = {k: _series(run.training, k) for k in ("loss", "val_loss")}
    loss = {k: v for k, v in loss.items() if v[0]}
    if loss:
        plots.curves(loss, work / "train_loss.png", "loss", log_y=True)
        figures.append("train_loss.png")
    for key, title in (
        ("grad_norm", "gradient norm"),
        ("lr", "learning rate"),
        ("clips_per_s", "clips per second"),
    ):
        series = _series(run.training, key)
        if series[0]:
            plots.curves({key: series}, work / f"train_{key}.png", title)
            figures.append(f"train_{key}.png")
    if run.training:
        last = run.training[-1]
        out.append(
            f"<p>{len(run.training)} logged steps; last: "
            + esc(", ".join(f"{k}={log_value(k, v)}" for k, v in last.items()))
            + "</p>"
        )
    else:
        out.append("<p>metrics.jsonl holds no rows yet.</p>")
    if figures:
        out.append(
            "<div class='grid'>"
            + "".join(f"<img src='{f}' alt='{esc(f)}'>" for f in figures)
            + "</div>"
        )
    images = len(figures)
    if run.evals:
        steps = sorted(run.evals)
        names = sorted({k for v in run.evals.values() for k in v} - {"step"})
        header = "".join(f"<th>{_breakable(n)}</th>" for n in ["step", *names])
        rows = "".join(
            f"<tr><td class='num'>{s}</td>"
            + "".join(f"<td class='num'>{esc(metric(run.evals[s].get(n)))}</td>" for n in names)
            + "</tr>"
            for s in steps
        )
        out.append(
            "<h3>Evaluator metrics per checkpoint</h3>"
            f"<div class='wide'><table class='sortable' id='evals'><thead><tr>{header}</tr>"
            f"</thead><tbody>{rows}</tbody></table></div>"
        )
        eval_figs = []
        for n in names[:12]:
            xs = [float(s) for s in steps if n in run.evals[s]]
            ys = [run.evals[s][n] for s in steps if n in run.evals[s]]
            name = f"eval_{file_stem(n)}.png"
            plots.curves({n: (xs, ys)}, work / name, n)
            eval_figs.append(name)
        out.append(
            "<div class='grid'>"
            + "".join(f"<img src='{f}' alt='{esc(f)}'>" for f in eval_figs)
            + "</div>"
        )
        images += len(eval_figs)
    return "".join(out), images


def log_value(key: str, value) -> str:
    """A metrics.jsonl value for people: Unix times (`time`, `*_at`) as local dates, numbers
    to 4 significant digits."""
    if (key == "time" or key.endswith("_at")) and isinstance(value, int | float):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def metric(value) -> str:
    """An evaluator metric: 4 decimals, or 4 significant digits when that would hide it."""
    finite = isinstance(value, float) and math.isfinite(value) and value != 0
    if finite and not 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return fmt(value, 4)


def _breakable(name: str) -> str:
    """A long metric name (`mean.spectral_centroid_hz`) as header text that may wrap after
    each `_`, so many columns fit the page (the dotted path itself stays whole)."""
    return esc(name).replace("_", "_<wbr>")


def _settings(run: RunFolder) -> str:
    if not run.meta:
        return ""
    items = _flatten(run.settings) if run.settings else []
    if run.meta.get("settings_hash"):
        items.append(("settings_hash", run.meta["settings_hash"]))
    return "<h2>Settings</h2>" + _kv_table(items) if items else ""


__all__ = ["ReportSummary", "build_report"]
