"""Finding, downloading, verifying and loading the published weight files.

Resolution order for a file: the local weights dir (`--weights-dir` / `SELVA_WEIGHTS_DIR`,
laid out like the hub repos: `weights/...`, `ext_weights/...`, `hub/<org>/<name>/...`), then the
Hugging Face cache, then a download when online. Every file with a published MD5 is checked;
digests are cached per (size, mtime) so a 4 GB checkpoint is hashed once, not at every start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import socket
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:  # torch is imported where checkpoints are read: `weights list` needs none
    import torch

log = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "SELVA_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = Path("~/.cache/selva-ray/weights")
MANIFEST_NAME = ".selva-verified.json"
HUB_TIMEOUT_ENV = "SELVA_HUB_TIMEOUT"
DEFAULT_HUB_TIMEOUT_S = 3.0
DEFAULT_HUB = "https://huggingface.co"
SELVA_REPO = "jnwnlee/SelVA"
MMAUDIO_REPO = "hkchengrex/MMAudio"


@dataclass(frozen=True)
class WeightFile:
    """One checkpoint file inside a hub repo."""

    key: str
    repo_id: str
    repo_path: str
    md5: str | None = None
    # Upstream names of the 44k SelVA generators are uncertain (`_44k_` vs `_44khz_`), and so
    # are their MD5s: a mismatch there warns instead of failing (strict loading still checks).
    alt_repo_paths: tuple[str, ...] = ()
    md5_uncertain: bool = False
    description: str = ""

    @property
    def filename(self) -> str:
        return Path(self.repo_path).name


@dataclass(frozen=True)
class HubSnapshot:
    """A whole hub model folder used through its own loader (vocoder config, CLIP, T5)."""

    key: str
    repo_id: str
    files: tuple[str, ...]
    optional: tuple[str, ...] = ()
    description: str = ""


def _selva(key: str, path: str, md5: str, desc: str, **kw) -> WeightFile:
    return WeightFile(key, SELVA_REPO, path, md5, description=desc, **kw)


def _selva_44k(size: str, md5: str) -> WeightFile:
    path = f"weights/generator_{size}_44k_sup_5.pth"
    return _selva(
        f"generator_{size}_44k",
        path,
        md5,
        f"SelVA generator {size} 44.1 kHz",
        alt_repo_paths=(path.replace("_44k_", "_44khz_"),),
        md5_uncertain=True,
    )


def _mmaudio(name: str, md5: str) -> WeightFile:
    return WeightFile(
        name, MMAUDIO_REPO, f"weights/{name}.pth", md5, description=f"MMAudio generator {name}"
    )


CATALOG: dict[str, WeightFile | HubSnapshot] = {
    e.key: e
    for e in (
        _selva(
            "textsynch",
            "weights/video_enc_sup_5.pth",
            "ff09a6dc36148536ee4db97eba081d05",
            "TextSynch video encoder (5 SUP tokens)",
        ),
        _selva(
            "generator_small_16k",
            "weights/generator_small_16k_sup_5.pth",
            "1cb0f0deec52de37f67b1fd9965337d0",
            "SelVA generator small 16 kHz",
        ),
        _selva_44k("small", "d4df8569624093ac80af99b8b7434525"),
        _selva_44k("medium", "e9157e62b4863ad306e89e8f3a587748"),
        _selva_44k("large", "ab3db08b124d3aaa53eb7a1f52f1fb3f"),
        _selva("vae_16k", "ext_weights/v1-16.pth", "69f56803f59a549a1a507c93859fd4d7", "VAE 16k"),
        _selva("vae_44k", "ext_weights/v1-44.pth", "fab020275fa44c6589820ce025191600", "VAE 44k"),
        _selva(
            "bigvgan_16k",
            "ext_weights/best_netG.pt",
            "eeaf372a38a9c31c362120aba2dde292",
            "BigVGAN 16 kHz vocoder",
        ),
        _selva(
            "synchformer",
            "ext_weights/synchformer_state_dict.pth",
            "5b2f5594b0730f70e41e549b7c94390c",
            "Synchformer (MMAudio sync features)",
        ),
        _mmaudio("mmaudio_small_16k", "af93cde404179f58e3919ac085b8033b"),
        _mmaudio("mmaudio_small_44k", "babd74c884783d13701ea2820a5f5b6d"),
        _mmaudio("mmaudio_medium_44k", "5a56b6665e45a1e65ada534defa903d0"),
        _mmaudio("mmaudio_large_44k", "fed96c325a6785b85ce75ae1aafd2673"),
        _mmaudio("mmaudio_large_44k_v2", "01ad4464f049b2d7efdaa4c1a59b8dfe"),
        HubSnapshot(
            "bigvgan_v2_44k",
            "nvidia/bigvgan_v2_44khz_128band_512x",
            ("config.json", "bigvgan_generator.pt"),
            description="BigVGAN-v2 44.1 kHz vocoder",
        ),
        HubSnapshot(
            "clip_dfn5b",
            "apple/DFN5B-CLIP-ViT-H-14-384",
            ("open_clip_config.json",),
            optional=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
            description="CLIP DFN5B ViT-H-14-384 (open_clip)",
        ),
        HubSnapshot(
            "flan_t5_base",
            "google/flan-t5-base",
            ("config.json", "tokenizer_config.json"),
            optional=(
                "model.safetensors",
                "pytorch_model.bin",
                "tokenizer.json",
                "spiece.model",
                "special_tokens_map.json",
            ),
            description="flan-T5 base text encoder",
        ),
    )
}


class WeightsError(RuntimeError):
    """A weight file is missing, corrupt or unreadable; the message says how to fix it."""


class MissingWeightsError(WeightsError, FileNotFoundError):
    pass


class CorruptWeightsError(WeightsError, ValueError):
    pass


class UntrustedCheckpointError(WeightsError):
    pass


def default_weights_dir() -> Path:
    env = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(env).expanduser() if env else DEFAULT_WEIGHTS_DIR.expanduser()


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def hub_endpoint() -> str:
    """The hub the downloads go to: $HF_ENDPOINT (a mirror, a test server) or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_HUB).rstrip("/")


def hub_timeout() -> float:
    """Seconds a driver waits to connect to the hub before calling it unreachable
    ($SELVA_HUB_TIMEOUT, default 3)."""
    text = os.environ.get(HUB_TIMEOUT_ENV, "")
    try:
        value = float(text) if text else DEFAULT_HUB_TIMEOUT_S
    except ValueError:
        value = DEFAULT_HUB_TIMEOUT_S
    return value if value > 0 else DEFAULT_HUB_TIMEOUT_S


def hub_reachable(timeout: float | None = None) -> bool:
    """One TCP connection to the hub, so a machine without network is told so in seconds
    instead of after the hub library's retries (False when HF_HUB_OFFLINE is set)."""
    if offline():
        return False
    url = urlparse(hub_endpoint())
    if not url.hostname:
        return False
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout or hub_timeout()):
            return True
    except OSError:
        return False


def file_md5(path: Path, chunk: int = 16 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download_hint(key: str, root: Path) -> str:
    return f"selva-ray weights download --weights-dir {root} --only {key}"


@dataclass
class VerifyResult:
    key: str
    path: Path | None
    status: str  # "ok" | "missing" | "corrupt" | "unchecked"
    detail: str = ""


class WeightStore:
    """Resolves catalog entries to verified local paths, downloading only when allowed."""

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        allow_download: bool | None = None,
        token: str | None = None,
        cache_dir: str | Path | None = None,
        endpoint: str | None = None,
        catalog: Mapping[str, WeightFile | HubSnapshot] | None = None,
    ):
        self.root = Path(root).expanduser() if root else default_weights_dir()
        self.allow_download = (not offline()) if allow_download is None else allow_download
        self.token = token
        self.cache_dir = cache_dir
        self.endpoint = endpoint  # None: the hub library's default (honours $HF_ENDPOINT)
        self.catalog = dict(CATALOG if catalog is None else catalog)

    # ---- paths --------------------------------------------------------------------------------

    def entry(self, key: str) -> WeightFile | HubSnapshot:
        try:
            return self.catalog[key]
        except KeyError:
            known = ", ".join(self.catalog)
            raise KeyError(f"unknown weight entry {key!r}; known: {known}") from None

    def local_path(self, key: str) -> Path:
        e = self.entry(key)
        if isinstance(e, HubSnapshot):
            return self.root / "hub" / e.repo_id
        return self.root / e.repo_path

    def _candidates(self, e: WeightFile) -> list[Path]:
        return [self.root / p for p in (e.repo_path, *e.alt_repo_paths)]

    # ---- verification -------------------------------------------------------------------------

    def _manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    def _read_manifest(self) -> dict:
        try:
            return json.loads(self._manifest_path().read_text())
        except (OSError, ValueError):
            return {}

    def _write_manifest(self, manifest: dict) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self._manifest_path().with_suffix(".tmp")
            tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
            tmp.replace(self._manifest_path())
        except OSError as exc:  # a read-only weights dir still works, it just rehashes
            log.debug("could not record verified digests: %s", exc)

    def digest(self, path: Path) -> str:
        """MD5 of a file, from the manifest when its size and mtime are unchanged."""
        st = path.stat()
        ident = str(path.resolve())
        manifest = self._read_manifest()
        rec = manifest.get(ident)
        if rec and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
            return rec["md5"]
        log.info("verifying %s (%.1f MB)", path, st.st_size / 1e6)
        md5 = file_md5(path)
        manifest[ident] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": md5}
        self._write_manifest(manifest)
        return md5

    def check_file(self, key: str, path: Path) -> VerifyResult:
        e = self.entry(key)
        if not path.is_file():
            return VerifyResult(key, path, "missing", f"{path} does not exist")
        if not isinstance(e, WeightFile) or e.md5 is None:
            return VerifyResult(key, path, "unchecked", "no published checksum")
        actual = self.digest(path)
        if actual == e.md5:
            return VerifyResult(key, path, "ok")
        detail = f"md5 {actual} != expected {e.md5}"
        if e.md5_uncertain:
            return VerifyResult(key, path, "unchecked", detail + " (published checksum uncertain)")
        return VerifyResult(key, path, "corrupt", detail)

    # ---- resolution ---------------------------------------------------------------------------

    def find(self, key: str) -> Path | None:
        """Where an entry is present (weights dir or Hugging Face cache), without downloading
        or hashing; None when absent. Lets a driver name every missing file before starting."""
        e = self.entry(key)
        if isinstance(e, HubSnapshot):
            try:
                allow, self.allow_download = self.allow_download, False
                return self._resolve_snapshot(e)
            except MissingWeightsError:
                return None
            finally:
                self.allow_download = allow
        for path in self._candidates(e) + self._hf_cache_paths(e):
            if path.is_file():
                return path
        return None

    def resolve(self, key: str) -> Path:
        """Verified local path of a catalog entry (a file, or a folder for hub snapshots)."""
        e = self.entry(key)
        if isinstance(e, HubSnapshot):
            return self._resolve_snapshot(e)
        problems = []
        for path in self._candidates(e) + self._hf_cache_paths(e):
            if not path.is_file():
                continue
            result = self.check_file(key, path)
            if result.status == "corrupt":
                problems.append(f"{path}: {result.detail}")
                continue
            if result.status == "unchecked" and result.detail:
                log.warning("%s: %s", path, result.detail)
            return path
        if self.allow_download:
            return self.download(key, force=bool(problems))
        where = self._candidates(e)[0]
        if problems:
            raise CorruptWeightsError(
                f"{e.filename} ({e.description}) failed verification: {'; '.join(problems)}. "
                f"Delete it and re-fetch with: {download_hint(key, self.root)}"
            )
        raise MissingWeightsError(
            f"{e.filename} ({e.description}) not found at {where} nor in the Hugging Face cache, "
            f"and downloads are disabled (offline). Fetch it with: "
            f"{download_hint(key, self.root)}, or copy it to {where}"
        )

    def _hf_cache_paths(self, e: WeightFile) -> list[Path]:
        from huggingface_hub import hf_hub_download

        found = []
        for repo_path in (e.repo_path, *e.alt_repo_paths):
            try:
                found.append(
                    Path(
                        hf_hub_download(
                            e.repo_id,
                            repo_path,
                            cache_dir=self.cache_dir,
                            local_files_only=True,
                        )
                    )
                )
            except Exception:  # noqa: BLE001 - any cache miss just means "not cached"
                continue
        return found

    def _resolve_snapshot(self, e: HubSnapshot) -> Path:
        local = self.root / "hub" / e.repo_id
        if self._snapshot_complete(e, local):
            return local
        from huggingface_hub import snapshot_download

        patterns = list(e.files + e.optional)
        try:
            cached = Path(
                snapshot_download(
                    e.repo_id,
                    cache_dir=self.cache_dir,
                    allow_patterns=patterns,
                    local_files_only=True,
                )
            )
            if self._snapshot_complete(e, cached):
                return cached
        except Exception:  # noqa: BLE001 - not cached
            pass
        if self.allow_download:
            return self.download(e.key)
        raise MissingWeightsError(
            f"{e.repo_id} ({e.description}) not found at {local} nor in the Hugging Face cache, "
            f"and downloads are disabled (offline). Fetch it with: "
            f"{download_hint(e.key, self.root)}"
        )

    @staticmethod
    def _snapshot_complete(e: HubSnapshot, folder: Path) -> bool:
        if not all((folder / f).is_file() for f in e.files):
            return False
        return not e.optional or any((folder / f).is_file() for f in e.optional)

    # ---- download -----------------------------------------------------------------------------

    def download(self, key: str, *, force: bool = False) -> Path:
        """Fetch one entry into the weights dir and verify it; raises WeightsError on failure."""
        from huggingface_hub import errors as hf_errors
        from huggingface_hub import hf_hub_download, snapshot_download

        e = self.entry(key)
        if isinstance(e, HubSnapshot):
            target = self.root / "hub" / e.repo_id
            try:
                snapshot_download(
                    e.repo_id,
                    local_dir=target,
                    allow_patterns=list(e.files + e.optional),
                    token=self.token,
                    force_download=force,
                    endpoint=self.endpoint,
                )
            except Exception as exc:  # noqa: BLE001
                raise WeightsError(f"could not download {e.repo_id}: {exc}") from exc
            if not self._snapshot_complete(e, target):
                raise WeightsError(f"{e.repo_id}: download finished but files are missing")
            return target

        last_exc: Exception | None = None
        for repo_path in (e.repo_path, *e.alt_repo_paths):
            try:
                got = Path(
                    hf_hub_download(
                        e.repo_id,
                        repo_path,
                        local_dir=self.root,
                        token=self.token,
                        force_download=force,
                        endpoint=self.endpoint,
                    )
                )
            except hf_errors.RemoteEntryNotFoundError as exc:  # try the alternate name
                last_exc = exc
                continue
            except hf_errors.LocalEntryNotFoundError as exc:
                raise MissingWeightsError(
                    f"cannot reach the Hugging Face hub to fetch {e.repo_id}/{repo_path} "
                    f"(offline or no network); copy the file to {self.root / e.repo_path}"
                ) from exc
            except hf_errors.GatedRepoError as exc:
                raise WeightsError(
                    f"{e.repo_id} is gated: accept its terms on the hub and pass --token or set "
                    f"HF_TOKEN ({exc})"
                ) from exc
            except Exception as exc:  # noqa: BLE001 - network, auth, disk
                raise WeightsError(
                    f"could not download {e.repo_id}/{repo_path} to {self.root}: {exc}"
                ) from exc
            result = self.check_file(key, got)
            if result.status == "corrupt":
                raise CorruptWeightsError(f"downloaded {got} but {result.detail}")
            if result.status == "unchecked" and result.detail:
                log.warning("%s: %s", got, result.detail)
            return got
        tried = [e.repo_path, *e.alt_repo_paths]
        raise WeightsError(f"{e.repo_id} has none of {tried}: {last_exc}")

    def verify(self, keys: Iterable[str]) -> list[VerifyResult]:
        results = []
        for key in keys:
            e = self.entry(key)
            if isinstance(e, HubSnapshot):
                local = self.root / "hub" / e.repo_id
                ok = self._snapshot_complete(e, local)
                results.append(
                    VerifyResult(key, local, "ok" if ok else "missing", "" if ok else "incomplete")
                )
                continue
            present = [p for p in self._candidates(e) if p.is_file()]
            if not present:
                results.append(VerifyResult(key, self._candidates(e)[0], "missing", "not found"))
                continue
            results.append(self.check_file(key, present[0]))
        return results


# ---- loading ------------------------------------------------------------------------------------


def load_state_dict(path: str | Path, *, trusted: bool = False) -> dict[str, torch.Tensor]:
    """Read a checkpoint without executing pickled code.

    `.safetensors` files load directly; `.pt/.pth` files load with `weights_only=True`. Only a
    file whose bytes matched a published MD5 (`trusted=True`) may fall back to full unpickling,
    for old official files that store non-tensor objects.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001
            raise CorruptWeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
    # Zip-format checkpoints can be memory-mapped; legacy ones cannot.
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc):  # not a pickle of tensors at all: an HTML page, garbage
            raise CorruptWeightsError(
                f"{path}: not a torch checkpoint ({_first_line(exc)})"
            ) from exc
        if not trusted:
            raise UntrustedCheckpointError(
                f"{path} holds objects other than tensors and was refused (weights_only=True): "
                f"{_first_line(exc)}. Only verified official checkpoints are unpickled."
            ) from exc
        log.warning("%s: verified official file with pickled objects; loading it fully", path)
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - weights_only parsing of garbage fails many ways
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise CorruptWeightsError(
            f"{path}: truncated or not a torch checkpoint ({reason})"
        ) from exc


def _first_line(exc: Exception) -> str:
    lines = [ln for ln in str(exc).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
    return (lines or str(exc).splitlines() or [type(exc).__name__])[0].strip().rstrip(".")


def load_verified(store: WeightStore, key: str) -> dict[str, torch.Tensor]:
    """Resolve, verify and read a catalog checkpoint."""
    path = store.resolve(key)
    return load_state_dict(path, trusted=store.check_file(key, path).status == "ok")
