"""Access to the official-code fixtures in SELVA_GOLDEN_DIR (default ../shared/golden).

Tests discover fixtures by file-name prefix and build modules from each fixture's `config`
metadata, so the same tests pass on any fixture set made the same way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from selva_core.model.motionformer import MotionFormerConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
# What the official code computes in bf16 on a fp32 fixture's weights and inputs
# (scripts/make_bf16_golden.py): <family>/<fixture>_bf16.safetensors, outputs only, one folder
# per family of CPU bf16 kernels (`selva_ray.runtime.bf16_kernel_family`): the official code's
# own bf16 outputs differ between families by far more than the checks allow (docs/benchmarks.md,
# "bf16 golden"), so each machine is held to the outputs of its own family.
BF16_DIR = Path(__file__).resolve().parent / "golden_bf16"


REQUIRE_ENV = "SELVA_REQUIRE_GOLDEN"


def golden_dir() -> Path:
    """The fixture folder. Where it is absent (a clone on its own), the tests that need it skip
    with the reason; with SELVA_REQUIRE_GOLDEN=1 (set by .ci/run) they fail instead, so CI can
    never pass without the fixtures."""
    env = os.environ.get("SELVA_GOLDEN_DIR")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "golden"
    if not path.is_dir():
        reason = (
            f"golden fixture folder not found at {path}: set SELVA_GOLDEN_DIR to the folder that "
            "holds generator_*.safetensors, textsynch_*, vae*, bigvgan*, mel*, seqcfg.json, keys/"
        )
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_ENV}=1 forbids skipping)", pytrace=False)
        pytest.skip(reason, allow_module_level=True)
    return path


def find_fixtures(prefix: str) -> list[Path]:
    """Fixture files whose name starts with `prefix` (at least one must exist)."""
    found = sorted(p for p in golden_dir().glob(f"{prefix}*.safetensors"))
    if not found:
        raise FileNotFoundError(f"no fixture named {prefix}*.safetensors in {golden_dir()}")
    return found


def fixture_ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


@dataclass
class Fixture:
    path: Path
    config: dict
    groups: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        return self.groups.get(prefix, {})

    @property
    def state(self) -> dict[str, torch.Tensor]:
        return self.group("state")

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        return self.group("in")

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        return self.group("out")


def load_fixture(path: Path) -> Fixture:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(path), "pt") as f:
        config = json.loads((f.metadata() or {}).get("config", "{}"))
        for key in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
            prefix, _, name = key.partition(".")
            groups.setdefault(prefix, {})[name] = f.get_tensor(key)
    return Fixture(path=path, config=config, groups=groups)


def rel_l2(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    return float((got - ref).norm() / ref.norm().clamp_min(1e-30))


def assert_golden_close(
    got: torch.Tensor,
    ref: torch.Tensor,
    name: str,
    *,
    rel_tol: float = 1e-5,
    peak_tol: float = 2e-5,
    abs_peak_tol: float | None = None,
) -> None:
    """The fixture README's check: rel_l2 <= 1e-5 and max|a-b| <= 2e-5 * max|ref|.

    `abs_peak_tol` replaces the relative peak bound by an absolute one (the DeSync spectrogram).
    """
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    if ref.dtype in (torch.bool, torch.uint8) or not ref.is_floating_point():
        assert torch.equal(got.cpu().to(ref.dtype), ref), f"{name}: exact mismatch"
        return
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    r = rel_l2(got, ref)
    peak = float((got.detach().double().cpu() - ref.double()).abs().max())
    bound = peak_tol * float(ref.double().abs().max()) if abs_peak_tol is None else abs_peak_tol
    assert r <= rel_tol and peak <= bound, (
        f"{name}: rel_l2={r:.3e} (tol {rel_tol:.0e}), peak={peak:.3e} (tol {bound:.3e})"
    )


def key_table(name: str) -> dict:
    """A real-size state-dict table from the fixture folder's keys/ (file stem or name)."""
    path = golden_dir() / "keys" / (name if name.endswith(".json") else f"{name}.json")
    with open(path) as f:
        return json.load(f)


def assert_state_matches_table(state: dict[str, torch.Tensor], table: dict) -> None:
    """Exact key set and shapes, float32 dtype, as the published checkpoint holds them."""
    expected = table["keys"]
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    assert not missing and not extra, (
        f"{table.get('module')}: missing {missing[:8]} ({len(missing)}), "
        f"unexpected {extra[:8]} ({len(extra)})"
    )
    wrong = [
        (k, list(state[k].shape), expected[k]["shape"])
        for k in expected
        if list(state[k].shape) != list(expected[k]["shape"])
    ]
    assert not wrong, f"{table.get('module')}: shape mismatches {wrong[:8]} ({len(wrong)})"
    bad_dtype = [
        k for k in expected if str(state[k].dtype).replace("torch.", "") != expected[k]["dtype"]
    ]
    assert not bad_dtype, f"dtype mismatches: {bad_dtype[:8]}"


def zeros_from_table(table: dict) -> dict[str, torch.Tensor]:
    """A checkpoint of zeros with the table's exact keys and shapes (for loader round trips)."""
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    return {
        k: torch.zeros(v["shape"], dtype=dtypes.get(v["dtype"], torch.float32))
        for k, v in table["keys"].items()
    }


# Config field of each MotionFormer size in the section-9 fixture, and in the section-10 one
# (whose video tower fields carry a `vis_` prefix and whose width is the shared `dim`).
_MOTIONFORMER_FIELDS = {
    "video": {
        "embed_dim": "embed_dim",
        "num_heads": "num_heads",
        "depth": "depth",
        "mlp_ratio": "mlp_ratio",
        "img_size": "img_size",
        "patch_size": "patch_size",
        "patch_size_temp": "patch_size_temp",
        "num_frames": "segment_size",
        "window_stride": "step_size",
        "eps": "layer_norm_eps",
    },
}
_MOTIONFORMER_FIELDS["desync"] = {
    k: "dim" if k == "embed_dim" else "vis_heads" if k == "num_heads" else f"vis_{v}"
    for k, v in _MOTIONFORMER_FIELDS["video"].items()
}


def motionformer_config(cfg: dict, kind: str = "video") -> MotionFormerConfig:
    """The MotionFormer sizes in a Synchformer fixture's config (`kind`: "video" or "desync")."""
    fields = _MOTIONFORMER_FIELDS[kind]
    mf = MotionFormerConfig(**{ours: cfg[theirs] for ours, theirs in fields.items()})
    slots = cfg["temporal_resolution" if kind == "video" else "vis_temporal_resolution"]
    assert mf.temporal_resolution == slots, f"config: {slots} slots, ours {mf.temporal_resolution}"
    return mf


def video_frames(fx: Fixture) -> torch.Tensor:
    """The uint8 video (B, T, 3, H, W) of a fixture stored as a frame bank plus indices."""
    return fx.inputs["frame_bank_u8"][fx.inputs["frame_index"]]


def load_official_bf16(fp32_path: Path, regenerate: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The bf16 fixture made from the fp32 fixture at `fp32_path` on a CPU of this machine's bf16
    kernel family: (metadata, outputs)."""
    from selva_ray.runtime import bf16_kernel_family

    family = bf16_kernel_family()
    folder = BF16_DIR / family
    if not folder.is_dir():
        made = sorted(p.name for p in BF16_DIR.iterdir() if p.is_dir())
        raise AssertionError(
            f"no official bf16 fixtures for this CPU's bf16 kernels ({family}; made for: "
            f"{', '.join(made)}): bf16 outputs differ between kernel families, so run "
            f"{regenerate} on a machine of this family"
        )
    path = folder / fp32_path.name.replace(".safetensors", "_bf16.safetensors")
    assert path.is_file(), f"no bf16 fixture {path} for {fp32_path.name}: run {regenerate}"
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["config"])
        outs = {k.partition(".")[2]: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return meta, outs


def assert_bf16_pairs_with(
    fx: Fixture, meta: dict, official: dict[str, torch.Tensor], names: set[str], regenerate: str
) -> None:
    """The bf16 fixture was made from exactly this fp32 fixture by the official commit, and
    holds the outputs `names` in bf16 with the fp32 outputs' shapes."""
    import hashlib

    digest = hashlib.sha256(fx.path.read_bytes()).hexdigest()
    assert meta["source_sha256"] == digest, (
        f"{fx.path.name} is not the fixture tests/golden_bf16 was made from: run {regenerate}"
    )
    assert meta["fixture_config"] == fx.config
    assert meta["official_commit"].startswith("70a8589")
    assert set(official) == names
    for name, value in official.items():
        assert value.dtype == torch.bfloat16 and value.shape == fx.outputs[name].shape, name
