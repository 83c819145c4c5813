"""`--precision auto` (selva_ray.runtime): bf16 on a GPU and on a CPU with native bf16 (AMX or
AVX-512 BF16), fp32 elsewhere, with the reason logged; the default (None) is unchanged."""

from __future__ import annotations

import logging

import pytest
import torch

from selva_ray import runtime
from selva_ray.cli import parse


def _cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test cpu\nflags\t\t: fpu sse2 {flags}\n\n")
    return str(path)


def _host_flags() -> set[str]:
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, monkeypatch):
    # torch's own probe also answers; give it nothing so only the file speaks
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {})
    assert runtime.native_bf16_flags(_cpuinfo(tmp_path, "avx2 avx512f")) == []
    assert not runtime.cpu_has_native_bf16(_cpuinfo(tmp_path, "avx2 avx512f"))
    assert runtime.native_bf16_flags(_cpuinfo(tmp_path, "avx512f avx512_bf16")) == ["avx512_bf16"]
    both = _cpuinfo(tmp_path, "amx_tile amx_bf16 avx512_bf16")
    assert runtime.native_bf16_flags(both) == ["amx_bf16", "avx512_bf16"]
    assert runtime.cpu_has_native_bf16(both) == torch.backends.mkldnn.is_available()
    assert runtime.native_bf16_flags(str(tmp_path / "missing")) == []


def test_the_bf16_kernel_family_is_the_strongest_native_bf16_flag(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {})
    amx = _cpuinfo(tmp_path, "amx_tile amx_bf16 avx512_bf16")
    assert runtime.bf16_kernel_family(amx) == "amx_bf16"
    assert runtime.bf16_kernel_family(_cpuinfo(tmp_path, "avx512f avx512_bf16")) == "avx512_bf16"
    assert runtime.bf16_kernel_family(_cpuinfo(tmp_path, "avx2 avx512f")) == "emulated"


def test_this_host_is_judged_by_its_own_flags():
    native = bool(_host_flags() & {"amx_bf16", "avx512_bf16"})
    if native:  # otherwise torch's probe may still see what /proc/cpuinfo hides (not Linux)
        assert runtime.cpu_has_native_bf16() == torch.backends.mkldnn.is_available()
    want = torch.bfloat16 if runtime.cpu_has_native_bf16() else torch.float32
    assert runtime.resolve_dtype("auto", "cpu") == want


def test_auto_picks_bf16_on_gpus_and_by_the_cpu_flags_on_cpus(caplog, monkeypatch):
    with caplog.at_level(logging.INFO, logger="selva_ray.runtime"):
        assert runtime.resolve_dtype("auto", "cuda") is torch.bfloat16
    assert "--precision auto: bf16 (device cuda)" in caplog.text

    caplog.clear()
    monkeypatch.setattr(runtime, "native_bf16_flags", lambda cpuinfo="": [])
    with caplog.at_level(logging.INFO, logger="selva_ray.runtime"):
        assert runtime.resolve_dtype("auto", "cpu") is torch.float32
    assert "fp32 (CPU without native bf16" in caplog.text

    caplog.clear()
    monkeypatch.setattr(runtime, "native_bf16_flags", lambda cpuinfo="": ["amx_bf16"])
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda cpuinfo="": True)
    with caplog.at_level(logging.INFO, logger="selva_ray.runtime"):
        assert runtime.resolve_dtype("auto", "cpu") is torch.bfloat16
    assert "bf16 (CPU with native bf16 (amx_bf16))" in caplog.text


def test_default_and_named_precisions_are_unchanged():
    assert runtime.resolve_dtype(None, "cpu") is torch.float32
    assert runtime.resolve_dtype(None, "cuda") is torch.bfloat16
    assert runtime.resolve_dtype("fp16", "cpu") is torch.float16
    with pytest.raises(ValueError, match="precision must be one of .*'auto'.*got 'int8'"):
        runtime.resolve_dtype("int8", "cpu")


@pytest.mark.parametrize("job", ["extract", "generate", "generate-one"])
def test_cli_accepts_auto(job):
    base = (
        ["v.mp4", "--prompt", "p"] if job == "generate-one" else ["--input", "a", "--output", "b"]
    )
    assert parse([job, *base, "--precision", "auto"]).precision == "auto"
    assert parse([job, *base]).precision is None
    with pytest.raises(SystemExit):
        parse([job, *base, "--precision", "int8"])


def test_the_planner_resolves_auto_for_the_model_actors():
    from selva_ray.runner.plan import resolve_precision

    assert resolve_precision("auto", use_gpu=True) == "bf16"
    assert resolve_precision("auto", use_gpu=False) == runtime.auto_precision("cpu")[0]
    assert resolve_precision(None, use_gpu=False) == "fp32"
