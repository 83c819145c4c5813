"""Video catalogs: a folder of videos (with optional prompts.txt) or a manifest table.

Every clip gets a stable id (the manifest's, or a hash of source + start + duration) so reruns
skip finished clips and joins between feature sets are exact, and an input hash (source,
prompt, negative prompt, start, duration, seed) so a rerun redoes a clip whose row changed.
Paths and URIs (local, s3://, gs://, file://) go through `pyarrow.fs`, so the same catalog
works on a laptop and a cluster.

Every value is validated and typed here, at read time: a row that cannot run (no video, a
value of the wrong type or out of range, a duplicate or unsafe id, a path outside the allowed
roots, an undecodable CSV line) becomes a `CatalogProblem` naming the row, column and value,
and the job records it as an error row; the rest of the catalog runs. Only a catalog that
cannot be read at all (missing, empty, not text, no `video`/`prompt` column) raises
`CatalogError` (exit status 2 in the CLI).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import posixpath
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace

import pyarrow as pa
import pyarrow.fs as pafs

from ..errors import MAX_CFG, MAX_SEED, MAX_STEPS, UsageError
from .names import clip_names, id_problem, source_name, span_suffix

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".json", ".parquet")
PROMPTS_FILE = "prompts.txt"
MANIFEST_COLUMNS = (
    "video",
    "prompt",
    "id",
    "negative_prompt",
    "start",
    "duration",
    "seed",
    "cfg",
    "steps",
    "mask",
)
# What a feature row depends on besides the job's settings: a change makes a rerun redo it.
IDENTITY_FIELDS = ("source", "prompt", "negative_prompt", "start", "duration", "seed")


class CatalogError(UsageError):
    """The catalog as a whole cannot be read (missing folder, unreadable manifest)."""


class MissingColumnError(CatalogError):
    """A manifest without a column every row needs (`column` names it)."""

    def __init__(self, message: str, column: str):
        super().__init__(message)
        self.column = column


@dataclass(frozen=True, slots=True)  # slots: a million records take a fifth of the memory
class ClipRecord:
    id: str
    source: str  # absolute path or URI
    prompt: str
    negative_prompt: str | None = None
    start: float = 0.0
    duration: float | None = None  # None: the job's max duration
    seed: int | None = None
    cfg: float | None = None  # generation only; None: the job's --cfg
    steps: int | None = None  # generation only; None: the job's --steps
    row: int = -1  # manifest row (0-based) or listing index, for error messages
    mask: str | None = None  # object mask (image or video aligned with the clip), path or URI
    name: str | None = None  # readable output name (names.clip_names); None: from the id

    def to_row(self) -> dict:
        # the fields are scalars: no deep copy (`asdict`) needed
        return {name: getattr(self, name) for name in _RECORD_FIELDS}

    def input_hash(self, fields: Iterable[str] = IDENTITY_FIELDS) -> str:
        """Digest of the fields an output row depends on (jobs that use cfg/steps add them).
        The source counts without its endpoint query: the same object, however it is reached."""
        values = [[f, getattr(self, f)] for f in fields]
        values = [[f, plain_source(v) if f == "source" else v] for f, v in values]
        return _digest(values)


_RECORD_FIELDS = tuple(f.name for f in fields(ClipRecord))


@dataclass(frozen=True)
class CatalogProblem:
    """A catalog row that cannot run; it goes to the errors table with stage 'catalog'.

    `clip=False` marks a problem of the catalog itself rather than of a clip (a prompts.txt
    line that names no video or has no colon, a symlink loop): every job logs it as a catalog
    warning on every run and writes no error row (`split_problems`).
    `input_hash` identifies the row's content, so a fixed row is tried again.
    """

    id: str
    source: str
    row: int
    message: str
    clip: bool = True
    input_hash: str = ""


def clip_id(source: str, start: float, duration: float | None) -> str:
    """Deterministic id from what defines the clip (16 hex chars of SHA-1); an endpoint
    query (`?endpoint_override=...`) is no part of it."""
    key = json.dumps(
        [plain_source(source), round(float(start), 6), duration], separators=(",", ":")
    )
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def _digest(value) -> str:
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """File system and path for a local path or URI. A URI's query (`s3://b/k?endpoint_override=
    host:port&scheme=http`) configures the file system; credentials in it are refused."""
    _refuse_credentials(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, ValueError):
        return pafs.LocalFileSystem(), _abspath(uri)


def _abspath(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def absolute(uri: str) -> str:
    """A local path made absolute (`~` expanded); a URI as it is. Jobs hand paths to Ray
    workers, whose working folder is not the command's: on a cluster started elsewhere a
    relative path would name another folder."""
    return uri if _is_uri(uri) else _abspath(uri)


def _is_uri(text: str) -> bool:
    return "://" in text


# Query keys of pyarrow's S3 URIs that hold secrets: a clip's source keeps its URI's query
# (so every worker reaches the same endpoint) and is stored in every output table.
CREDENTIAL_KEYS = ("access_key", "secret_key", "session_token")


def split_query(uri: str) -> tuple[str, str]:
    """(the URI without its query, the query); a local path has no query."""
    if not _is_uri(uri):
        return uri, ""
    base, _, query = uri.partition("?")
    return base, query


def plain_source(source: str) -> str:
    """A source without its endpoint query: what names the object (ids, file names)."""
    return split_query(source)[0]


def with_query(uri: str, query: str) -> str:
    """`uri` reached like the URI whose `query` is given: a URI of the same kind without a
    query of its own gets it, so it never falls back to another endpoint."""
    if not query or not _is_uri(uri) or "?" in uri:
        return uri
    return f"{uri}?{query}"


def _refuse_credentials(uri: str) -> None:
    base, query = split_query(uri)
    keys = {part.partition("=")[0] for part in query.split("&")}
    if keys & set(CREDENTIAL_KEYS):
        raise UsageError(
            f"{base}: credentials in a URI's query would be stored with every clip; give them "
            "in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) instead"
        )


def _join(base: str, rel: str) -> str:
    """`rel` against the folder `base` (both may be URIs); absolute `rel` wins."""
    if _is_uri(rel) or rel.startswith("/"):
        return rel
    if _is_uri(base):
        scheme, _, rest = base.partition("://")
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, rel))}"
    return posixpath.normpath(posixpath.join(base, rel))


def _display(fs: pafs.FileSystem, path: str, original: str) -> str:
    """The source string stored with a clip: a local absolute path, or a URI."""
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    return with_query(f"{original.partition('://')[0]}://{path}", split_query(original)[1])


def split_problems(problems: Iterable[CatalogProblem]) -> tuple[list[CatalogProblem], int]:
    """The one rule every job follows: a problem of the catalog itself (`clip=False`) is
    logged as a warning and counted, never a failed clip (it names no clip to fail); the rest
    are failed clips. Returns (clip problems, number of warnings)."""
    clips, warnings = [], 0
    for p in problems:
        if p.clip:
            clips.append(p)
        else:
            log.warning("catalog: %s", p.message)
            warnings += 1
    return clips, warnings


def blank_prompt(text: str) -> bool:
    """Nothing left once whitespace and control characters are removed (what the text
    encoders' cleaning removes): an empty prompt."""
    return all(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cs") for ch in text)


def _nfc(name: str) -> str:
    """File names compared in NFC: macOS writes NFD, most other systems NFC."""
    return unicodedata.normalize("NFC", name)


def fallback_prompt(source: str) -> str:
    """The parent folder's name, with '_' and '-' read as spaces."""
    parent = posixpath.basename(posixpath.dirname(source.rstrip("/")))
    return " ".join(parent.replace("_", " ").replace("-", " ").split())


def parse_prompts_file(text: str) -> dict[str, str]:
    """`filename: description` lines; `#` comments and blank lines are skipped."""
    return {name: prompt for name, (prompt, _) in parse_prompts_lines(text)[0].items()}


def parse_prompts_lines(text: str) -> tuple[dict[str, tuple[str, int]], list[tuple[int, str]]]:
    """`filename: description` lines as {name: (prompt, line number)}, and the lines that
    are neither comments nor blank but have no colon (line number, text)."""
    prompts: dict[str, tuple[str, int]] = {}
    bad: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if ":" not in line:
            bad.append((number, line))
            continue
        name, prompt = line.split(":", 1)
        prompts[_nfc(name.strip())] = (prompt.strip(), number)
    return prompts, bad


def read_catalog(
    source: str,
    *,
    max_duration: float = 8.0,
    allow_roots: Iterable[str] | None = None,
    default_prompt: str | None = None,
    require_prompt: bool = False,
) -> tuple[list[ClipRecord], list[CatalogProblem]]:
    """Clips of a folder or manifest (path or URI), and the rows that cannot run.

    `allow_roots`: folders or buckets manifest rows may point into (None: the manifest's own
    folder, and for URIs the bucket they name; "/" allows any local path).
    `default_prompt`: the prompt of manifest rows without one, or with an empty one (a job's
    `--prompt`); with it a manifest needs no `prompt` column.
    `require_prompt`: a clip whose prompt is empty or whitespace (after `default_prompt` and
    the folder-name fallback) is a problem now, not a failure at the text encoder after its
    video was decoded (the SelVA family needs a prompt; MMAudio and qa do not).
    """
    fs, path = resolve(source)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise CatalogError(f"catalog {source} cannot be read: {exc}") from exc
    if info.type == pafs.FileType.NotFound:
        raise CatalogError(f"catalog {source} does not exist")
    if info.type == pafs.FileType.Directory:
        records, problems = _read_folder(fs, path, source, require_prompt)
    elif path.lower().endswith(MANIFEST_EXTENSIONS):
        if info.size == 0:
            raise CatalogError(f"manifest {source} is empty")
        records, problems = _read_manifest(
            fs, path, source, max_duration, allow_roots, default_prompt, require_prompt
        )
    else:
        raise CatalogError(
            f"{source} is neither a folder nor a manifest ({', '.join(MANIFEST_EXTENSIONS)})"
        )
    return _validate(records, problems, max_duration)


def check_not_empty(source: str, records: list[ClipRecord], problems: list[CatalogProblem]) -> None:
    """Refuse a catalog without a single clip (nothing to do is a mistake, not a success)."""
    if records or any(p.clip for p in problems):
        return
    kinds = f"{', '.join(VIDEO_EXTENSIONS)} files" if not _looks_like_manifest(source) else "rows"
    raise CatalogError(f"catalog {source} has no clips (no {kinds} found)")


def _looks_like_manifest(source: str) -> bool:
    return source.lower().endswith(MANIFEST_EXTENSIONS)


# ---- folders ----------------------------------------------------------------------------------


def _read_folder(
    fs: pafs.FileSystem, root: str, original: str, require_prompt: bool = False
) -> tuple[list[ClipRecord], list[CatalogProblem]]:
    problems: list[CatalogProblem] = []
    if isinstance(fs, pafs.LocalFileSystem):
        files = _walk_local(root, problems)
    else:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        files = sorted(i.path for i in infos if i.type == pafs.FileType.File)
    videos = [p for p in files if p.lower().endswith(VIDEO_EXTENSIONS)]
    prompt_files: dict[str, dict[str, tuple[str, int]]] = {}
    for p in files:
        if posixpath.basename(p) != PROMPTS_FILE:
            continue
        try:
            table, bad = parse_prompts_lines(_read_text(fs, p))
        except UnicodeDecodeError as exc:
            problems.append(_file_problem(p, 0, f"{p} is not UTF-8 text ({exc.reason}); ignored"))
            continue
        prompt_files[posixpath.dirname(p)] = table
        for number, text in bad:
            problems.append(
                _file_problem(
                    p, number, f"{p} line {number} has no colon ('filename: description'): {text!r}"
                )
            )
    records = []
    for index, path in enumerate(videos):
        source = _display(fs, path, original)
        prompt, origin = _folder_prompt(path, prompt_files)
        record = ClipRecord(
            id=clip_id(source, 0.0, None),
            source=source,
            prompt=prompt,
            row=index,
            name=source_name(source, _display(fs, root, original)),
        )
        if require_prompt and blank_prompt(prompt):
            problems.append(
                CatalogProblem(
                    record.id,
                    source,
                    index,
                    f"{source}: empty prompt ({origin}); say which sound to generate",
                    input_hash=record.input_hash(),
                )
            )
            continue
        records.append(record)
    problems += _unmatched_prompt_lines(prompt_files, videos)
    return records, problems


def _file_problem(path: str, line: int, message: str) -> CatalogProblem:
    return CatalogProblem(clip_id(f"{path}:{line}", 0.0, None), path, line, message, clip=False)


def _walk_local(root: str, problems: list[CatalogProblem]) -> list[str]:
    """Files under `root`, following symlinks once: a folder reached again by its resolved path
    is skipped, and a link back into its own ancestry is reported as a loop."""
    files: list[str] = []
    seen_dirs = {os.path.realpath(root)}
    seen_files: set[str] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            problems.append(_file_problem(folder, 0, f"cannot list {folder}: {exc.strerror}"))
            continue
        subdirs = []
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
                is_file = not is_dir and entry.is_file(follow_symlinks=True)
            except OSError:  # a loop of links to links, or a vanished entry
                is_dir = is_file = False
            if is_dir:
                real = os.path.realpath(entry.path)
                if real in seen_dirs:
                    here = os.path.realpath(folder)
                    if entry.is_symlink() and (here == real or here.startswith(real + "/")):
                        target = os.readlink(entry.path)
                        problems.append(
                            _file_problem(
                                entry.path,
                                0,
                                f"symlink loop: {entry.path} -> {target} (its folder was "
                                "listed once already; skipped)",
                            )
                        )
                    else:
                        log.debug("%s: folder already listed by its resolved path", entry.path)
                    continue
                seen_dirs.add(real)
                subdirs.append(entry.path)
            elif is_file:
                real = os.path.realpath(entry.path)
                if real in seen_files:
                    log.debug("%s: file already listed by its resolved path", entry.path)
                    continue
                seen_files.add(real)
                files.append(entry.path)
        stack.extend(reversed(subdirs))
    return sorted(files)


def _prompt_keys(path: str, folder: str) -> tuple[str, ...]:
    rel = _nfc(posixpath.relpath(path, folder))
    name = posixpath.basename(rel)
    return (rel, name, posixpath.splitext(rel)[0], posixpath.splitext(name)[0])


def _folder_prompt(
    path: str, prompt_files: dict[str, dict[str, tuple[str, int]]]
) -> tuple[str, str]:
    """The nearest prompts.txt (this folder, then its parents) naming the file decides, else
    the folder's name. Returns (prompt, where it came from, for messages)."""
    folder = posixpath.dirname(path)
    while True:
        table = prompt_files.get(folder)
        if table:
            for key in _prompt_keys(path, folder):
                if key in table:
                    prompt, number = table[key]
                    return prompt, f"{posixpath.join(folder, PROMPTS_FILE)} line {number}"
        parent = posixpath.dirname(folder)
        if parent == folder:
            name = posixpath.basename(posixpath.dirname(path))
            return fallback_prompt(path), f"no prompts.txt line names it; folder name {name!r}"
        folder = parent


def _unmatched_prompt_lines(
    prompt_files: dict[str, dict[str, tuple[str, int]]], videos: list[str]
) -> list[CatalogProblem]:
    problems = []
    for folder, table in sorted(prompt_files.items()):
        prefix = folder.rstrip("/") + "/"
        matched = set()
        for path in videos:
            if path.startswith(prefix):
                matched.update(k for k in _prompt_keys(path, folder) if k in table)
        for name, (_, number) in table.items():
            if name not in matched:
                where = f"{prefix}{PROMPTS_FILE}"
                problems.append(
                    _file_problem(
                        where,
                        number,
                        f"{where} line {number}: {name!r} matches no video under {folder}",
                    )
                )
    return problems


def _read_text(fs: pafs.FileSystem, path: str) -> str:
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")


# ---- manifests --------------------------------------------------------------------------------


def _read_manifest(
    fs: pafs.FileSystem,
    path: str,
    original: str,
    max_duration: float,
    allow_roots: Iterable[str] | None,
    default_prompt: str | None = None,
    require_prompt: bool = False,
) -> tuple[list[ClipRecord], list[CatalogProblem]]:
    rows, columns = _read_rows(fs, path, original)
    needed = ("video",) if default_prompt is not None else ("video", "prompt")
    if columns:  # known before the rows (CSV, Parquet): refuse before reading them
        _check_columns(columns, needed, original)
    local = isinstance(fs, pafs.LocalFileSystem)
    plain, query = split_query(original)
    base = posixpath.dirname(path) if local else plain.rsplit("/", 1)[0]
    roots = _allowed_roots(allow_roots, base)
    records, problems = [], []
    paths = _Paths(base, roots, query)
    texts: dict[str, str] = {}  # one string object per distinct prompt
    for row, item in enumerate(rows):
        given = item.get("prompt")
        if default_prompt is not None and (
            given is None or (isinstance(given, str) and blank_prompt(given))
        ):
            item["prompt"] = default_prompt
        result = _typed_row(row, item, base, roots, max_duration, require_prompt, paths)
        if isinstance(result, CatalogProblem):
            problems.append(result)
        else:
            if len(texts) < 1 << 16:
                texts.setdefault(result.prompt, result.prompt)
            prompt = texts.get(result.prompt)
            if prompt is not None and prompt is not result.prompt:
                object.__setattr__(result, "prompt", prompt)
            records.append(result)
    _check_columns(columns, needed, original)  # JSON: known once every row was read
    unknown = [c for c in columns if c not in MANIFEST_COLUMNS]
    if unknown:
        log.warning("manifest %s: ignoring unknown columns %s", original, unknown)
    return records, problems


def _check_columns(columns: list[str], needed: tuple[str, ...], original: str) -> None:
    for name in needed:
        if name not in columns:
            raise MissingColumnError(
                f"manifest {original} has no {name!r} column (columns: {columns}); "
                f"expected video, prompt and optional {', '.join(MANIFEST_COLUMNS[2:])}",
                name,
            )


class _Paths:
    """A manifest's `video`/`mask` cells resolved once per distinct value (a million rows
    over a few files resolve a few paths): the source, or the `_RowError` it raises."""

    def __init__(self, base: str, roots: list[str] | None, query: str = ""):
        self.base, self.roots, self.query = base, roots, query
        self.known: dict[tuple[str, str], str | _RowError] = {}

    def source(self, column: str, value: str) -> str:
        key = (column, value)
        found = self.known.get(key)
        if found is None:
            try:
                found = self._resolve(column, value)
            except _RowError as exc:
                found = exc
            if len(self.known) < 1 << 20:
                self.known[key] = found
        if isinstance(found, _RowError):
            raise _RowError(*found.args)
        return found

    def _resolve(self, column: str, value: str) -> str:
        source = _row_source(self.base, value.strip(), self.query)
        if self.roots is not None and not _inside(source, self.roots):
            raise _RowError(
                f"column {column!r}: {value!r} is outside the allowed roots "
                f"{[r for r in self.roots if r != '*://']} (add its folder with --allow-root)"
            )
        return source


class _RowError(ValueError):
    pass


def _typed_row(
    row: int,
    item: dict,
    base: str,
    roots: list[str] | None,
    max_duration: float,
    require_prompt: bool = False,
    paths: _Paths | None = None,
) -> ClipRecord | CatalogProblem:
    line = item.pop("__line__", None)
    where = f"row {row}" + (f" (line {line})" if line else "")
    if "__error__" in item:
        return CatalogProblem(
            f"row-{row}", "", row, f"{where}: {item['__error__']}", True, _digest(item)
        )
    paths = paths or _Paths(base, roots)
    raw_id = item.get("id")
    bad_id = id_problem(raw_id) if isinstance(raw_id, str) and raw_id else None
    fallback_id = f"row-{row}"
    if isinstance(raw_id, str) and raw_id and not bad_id:
        fallback_id = raw_id
    elif isinstance(raw_id, int) and not isinstance(raw_id, bool):
        fallback_id = str(raw_id)
    source = ""
    try:
        video = item.get("video")
        if not isinstance(video, str) or not video.strip():
            raise _RowError(f"column 'video': no 'video' value ({video!r})")
        source = paths.source("video", video)
        prompt = item.get("prompt")
        if prompt is None:
            raise _RowError("column 'prompt': no prompt")
        if not isinstance(prompt, str):
            raise _RowError(f"column 'prompt': must be text, got {prompt!r}")
        if require_prompt and blank_prompt(prompt):
            raise _RowError(
                f"column 'prompt': empty prompt {prompt!r}; say which sound to generate"
            )
        negative = item.get("negative_prompt")
        if negative is not None and not isinstance(negative, str):
            raise _RowError(f"column 'negative_prompt': must be text, got {negative!r}")
        start = _number(item.get("start"), 0.0, "start", low=0.0)
        duration = _number(item.get("duration"), None, "duration", low=0.0, low_open=True)
        if duration is not None and duration > max_duration:
            raise _RowError(f"column 'duration': must be in (0, {max_duration}], got {duration}")
        seed = _integer(item.get("seed"), "seed", 0, MAX_SEED)
        cfg = _number(item.get("cfg"), None, "cfg", low=0.0, high=MAX_CFG)
        steps = _integer(item.get("steps"), "steps", 1, MAX_STEPS)
        mask = _mask_source(item.get("mask"), base, roots, paths)
        if raw_id in (None, ""):
            cid = clip_id(source, start, duration)
        elif isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            raise _RowError(f"column 'id': must be text or an integer, got {raw_id!r}")
        else:
            cid = raw_id if isinstance(raw_id, str) else str(raw_id)
            if not isinstance(raw_id, str):
                bad_id = id_problem(cid)
            if bad_id:
                raise _RowError(f"column 'id': {bad_id}")
    except _RowError as exc:
        return CatalogProblem(fallback_id, source, row, f"{where}, {exc}", True, _digest(item))
    return ClipRecord(
        id=cid,
        source=source,
        prompt=prompt,
        negative_prompt=negative or None,  # empty cell: not given
        start=start,
        duration=duration,
        seed=seed,
        cfg=cfg,
        steps=steps,
        row=row,
        mask=mask,
        name=cid
        if raw_id not in (None, "")
        else source_name(source, base) + span_suffix(start, duration),
    )


def _row_source(base: str, value: str, query: str) -> str:
    """A manifest cell as a path or URI; a URI of the manifest's own kind is reached through
    the manifest's endpoint (its query), unless the cell gives its own."""
    source = _local_source(_join(base, value))
    if query and source.partition("://")[0] == base.partition("://")[0]:
        return with_query(source, query)
    return source


def _mask_source(
    value, base: str, roots: list[str] | None, paths: _Paths | None = None
) -> str | None:
    """The `mask` cell resolved like `video` (relative to the manifest, allowed roots)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise _RowError(f"column 'mask': must be a path or URI, got {value!r}")
    return (paths or _Paths(base, roots)).source("mask", value)


def _allowed_roots(allow_roots: Iterable[str] | None, base: str) -> list[str] | None:
    if allow_roots is None:
        return [base if _is_uri(base) else os.path.realpath(base), "*://"]
    roots = []
    for root in allow_roots:
        root = _local_source(plain_source(root))
        roots.append(root.rstrip("/") if _is_uri(root) else os.path.realpath(_abspath(root)))
    return roots


def _inside(source: str, roots: list[str]) -> bool:
    source = plain_source(source)
    if _is_uri(source):
        scheme = source.partition("://")[0]
        return any(
            r == "*://" and scheme not in ("file",) or (_is_uri(r) and _under(source, r))
            for r in roots
        )
    real = os.path.realpath(source)
    return any(not _is_uri(r) and r != "*://" and _under(real, r) for r in roots)


def _under(path: str, root: str) -> bool:
    root = root.rstrip("/")
    return root == "" or path == root or path.startswith(root + "/")


def _integer(value, name: str, low: int, high: int) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _RowError(f"column {name!r}: must be an integer, got {value!r}")
    try:
        if isinstance(value, str):
            text = value.strip()
            number = int(text) if text.lstrip("+-").isdigit() else float(text)
        else:
            number = value
        if isinstance(number, float):
            if not math.isfinite(number) or number != int(number):
                raise ValueError
            number = int(number)
        number = int(number)
    except (TypeError, ValueError, OverflowError):
        raise _RowError(f"column {name!r}: must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise _RowError(f"column {name!r}: must be in {low}..{high}, got {value!r}")
    return number


def _number(value, default, name: str, *, low=None, high=None, low_open=False):
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise _RowError(f"column {name!r}: must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise _RowError(f"column {name!r}: must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise _RowError(f"column {name!r}: must be a finite number, got {value!r}")
    if low is not None and (x <= low if low_open else x < low):
        raise _RowError(f"column {name!r}: must be {'>' if low_open else '>='} {low:g}, got {x:g}")
    if high is not None and x > high:
        raise _RowError(f"column {name!r}: must be <= {high:g}, got {x:g}")
    return x


def _read_rows(fs: pafs.FileSystem, path: str, original: str) -> tuple[Iterable[dict], list[str]]:
    """Manifest rows as dicts (an iterator: Parquet and CSV rows are made one batch at a time,
    so a million rows never exist as dicts together) and the column names (JSON: filled in
    as the rows are read). Text formats are parsed row by row, so a bad line (bad bytes,
    wrong field count, not JSON) becomes that row's problem (`{"__error__": ...}`) instead of
    failing the catalog."""
    import pyarrow.parquet as pq

    lower = path.lower()
    if lower.endswith(".parquet"):
        try:
            file = pq.ParquetFile(fs.open_input_file(path))
        except (pa.ArrowInvalid, OSError) as exc:
            raise CatalogError(f"cannot read manifest {original}: {exc}") from exc
        return _parquet_rows(file, original), file.schema_arrow.names
    try:
        with fs.open_input_stream(path) as f:
            data = f.read()
    except OSError as exc:
        raise CatalogError(f"cannot read manifest {original}: {exc}") from exc
    if not data.strip():
        raise CatalogError(f"manifest {original} is empty")
    if b"\x00" in data[: 1 << 16]:
        raise CatalogError(f"manifest {original} is not UTF-8 text (binary or UTF-16 data)")
    text = data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    if lower.endswith(".csv"):
        return _csv_rows(text, original)
    if lower.endswith(".json"):
        return _json_array_rows(text, original)
    return _jsonl_rows(text, original)


def _parquet_rows(file, original: str) -> Iterable[dict]:
    try:
        for batch in file.iter_batches(batch_size=1 << 16):
            yield from batch.to_pylist()
    except (pa.ArrowInvalid, OSError) as exc:
        raise CatalogError(f"cannot read manifest {original}: {exc}") from exc


def _bad_bytes(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _csv_rows(text: str, original: str) -> tuple[Iterable[dict], list[str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as exc:
        raise CatalogError(f"manifest {original}: no CSV header ({exc})") from exc
    header = [h.strip() for h in header]
    if _bad_bytes("".join(header)):
        raise CatalogError(f"manifest {original}: the header line is not UTF-8 text")
    return _csv_items(reader, header), header


def _csv_items(reader, header: list[str]) -> Iterable[dict]:
    line = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield {"__line__": line, "__error__": f"not valid CSV: {exc}"}
            line = reader.line_num + 1
            continue
        first, line = line, reader.line_num + 1
        if not cells or not any(f.strip() for f in cells):
            continue
        if _bad_bytes("".join(cells)):
            yield {"__line__": first, "__error__": "not UTF-8 text (a bad byte)"}
        elif len(cells) != len(header):
            yield {
                "__line__": first,
                "__error__": f"{len(cells)} fields, but the header has {len(header)}",
            }
        else:
            item = {k: (v if v != "" else None) for k, v in zip(header, cells, strict=True)}
            item["__line__"] = first
            yield item


def _jsonl_rows(text: str, original: str) -> tuple[Iterable[dict], list[str]]:
    columns: list[str] = []  # filled as the rows are read
    return _jsonl_items(text, columns), columns


def _jsonl_items(text: str, columns: list[str]) -> Iterable[dict]:
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if _bad_bytes(line):
            yield {"__line__": number, "__error__": "not UTF-8 text (a bad byte)"}
            continue
        try:
            item = json.loads(line)
            if not isinstance(item, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            yield {"__line__": number, "__error__": f"not a JSON object: {exc}"}
            continue
        for key in item:
            if key not in seen:
                seen.add(key)
                columns.append(key)
        item["__line__"] = number
        yield item


def _json_array_rows(text: str, original: str) -> tuple[list[dict], list[str]]:
    if _bad_bytes(text):
        raise CatalogError(f"manifest {original} is not UTF-8 text")
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise CatalogError(f"manifest {original} is not valid JSON: {exc}") from exc
    if not isinstance(items, list):
        raise CatalogError(f"manifest {original} must hold a JSON array of objects")
    rows, columns = [], {}
    for item in items:
        if isinstance(item, dict):
            columns.update(dict.fromkeys(item))
            rows.append(dict(item))
        else:
            rows.append({"__error__": f"not a JSON object: {item!r}"[:200]})
    return rows, list(columns)


def _local_source(source: str) -> str:
    """file:// URIs as plain absolute paths, so a clip's id does not depend on the spelling."""
    return source[len("file://") :] if source.startswith("file://") else source


def _validate(
    records: Iterable[ClipRecord], problems: list[CatalogProblem], max_duration: float
) -> tuple[list[ClipRecord], list[CatalogProblem]]:
    ok: list[ClipRecord] = []
    seen: dict[str, int] = {}
    for r in records:
        reason = None
        if r.id in seen:
            problems.append(
                CatalogProblem(
                    f"{r.id}@row{r.row}",
                    r.source,
                    r.row,
                    f"duplicate id {r.id!r} (first used by row {seen[r.id]})",
                    input_hash=r.input_hash(),
                )
            )
            continue
        if r.start < 0:
            reason = f"start must be >= 0, got {r.start}"
        elif r.duration is not None and not 0 < r.duration <= max_duration:
            reason = f"duration must be in (0, {max_duration}], got {r.duration}"
        if reason:
            problems.append(
                CatalogProblem(r.id, r.source, r.row, reason, input_hash=r.input_hash())
            )
            continue
        seen[r.id] = r.row
        ok.append(r)
    names = clip_names([(r.id, r.name or r.id) for r in ok])
    return [replace(r, name=names[r.id]) for r in ok], problems
