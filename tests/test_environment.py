"""The install contract: exact pins, the lock, drift detection, `doctor`, the torchaudio guard,
and golden tests that skip (or, in CI, fail) without their fixtures."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from golden_support import REPO_ROOT

from selva_core.compat import TORCH_STACK
from selva_ray.environment import (
    LOCK_NAME,
    Drift,
    closure,
    installed_extras,
    lock_drift,
    read_lock,
)

LOCK = REPO_ROOT / LOCK_NAME
EXACT = {**TORCH_STACK, "ray": "2.60.0"}


def _pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        name, _, version = dep.partition("==")
        if version:
            pins[name.split("[")[0]] = version
    return pins


def test_torch_family_and_ray_are_pinned_exactly_everywhere():
    assert _pyproject_pins() == EXACT
    lock = read_lock(LOCK)
    for name, version in EXACT.items():
        assert lock[name] == version, f"{LOCK_NAME} pins {name}=={lock.get(name)}, not {version}"


def test_installed_packages_match_the_lock():
    drifts = lock_drift(read_lock(LOCK), closure(extras=installed_extras()))
    assert not drifts, (
        "installed packages differ from the lock (reinstall with "
        f"`python3 -m pip install -e '.[dev]' -c {LOCK_NAME}`, or regenerate the lock with "
        "scripts/update_lock.py after the suite passes):\n" + "\n".join(d.line() for d in drifts)
    )


def test_drift_is_reported_by_package_name():
    lock = {"torch": "2.11.0", "torchaudio": "2.11.0", "numpy": "2.4.6"}
    needed = {"torch": "2.11.0", "torchaudio": "2.11.1", "numpy": "2.4.6", "einops": "0.8.2"}
    drifts = lock_drift(lock, needed)
    assert drifts == [Drift("einops", None, "0.8.2"), Drift("torchaudio", "2.11.0", "2.11.1")]
    assert "torchaudio 2.11.1 is installed, the lock says 2.11.0" in drifts[1].line()
    assert "einops 0.8.2 is installed and needed but not in" in drifts[0].line()
    # local build labels (+cu130) are the same release
    assert lock_drift({"torch": "2.11.0"}, {"torch": "2.11.0+cu130"}) == []


def test_closure_follows_extras_and_markers():
    runtime = closure(extras=())
    assert {"torch", "torchaudio", "ray", "pyarrow", "av", "pandas"} <= set(runtime)  # ray[data]
    assert "pytest" not in runtime
    assert "pytest" in closure(extras=("dev",))


def test_doctor_prints_versions_and_the_lock_check():
    out = subprocess.run(
        [sys.executable, "-m", "selva_ray.cli", "doctor"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("torch", "torchaudio", "ray", "pyarrow", "av", "transformers", "open_clip"):
        assert f"  {name} " in out.stdout
    assert "CUDA: " in out.stdout
    assert "torchaudio native library: loads" in out.stdout
    assert "lock: every needed package matches" in out.stdout


def _broken_torchaudio(tmp_path: Path) -> dict:
    """An environment whose `torchaudio` fails to load as a mismatched wheel does."""
    pkg = tmp_path / "shadow" / "torchaudio"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "raise OSError('libtorchaudio.so: undefined symbol: "
        "torch_exception_get_what_without_backtrace')\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(pkg.parent), str(REPO_ROOT)])
    return env


def test_a_torchaudio_that_does_not_load_gives_one_clear_line(tmp_path):
    env = _broken_torchaudio(tmp_path)
    code = (
        "from selva_core.compat import TorchaudioLoadError, torchaudio_functional\n"
        "try:\n    torchaudio_functional()\n"
        "except TorchaudioLoadError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    line = out.stdout.strip()
    assert len(line.splitlines()) == 1, out.stdout + out.stderr
    assert "torchaudio 2.11.0 does not load with torch 2.11.0" in line
    assert "undefined symbol" in line and "torchaudio==2.11.0" in line
    assert "pip install -c constraints.txt" in line

    doctor = subprocess.run(
        [sys.executable, "-m", "selva_ray.cli", "doctor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert doctor.returncode == 1
    assert "torchaudio native library: torchaudio 2.11.0 does not load" in doctor.stdout
    assert "Traceback" not in doctor.stdout + doctor.stderr


def test_decoding_audio_with_a_broken_torchaudio_names_the_mismatch(tmp_path):
    from video_factory import AudioSpec, write_video

    video = write_video(tmp_path / "v.mp4", duration=1.0, audio=AudioSpec(sample_rate=48000))
    env = _broken_torchaudio(tmp_path)
    code = (
        "import sys\n"
        "from selva_core.video.decode import decode_clip\n"
        f"decode_clip({str(video)!r}, audio_rate=16000)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("selva_core.compat.TorchaudioLoadError: torchaudio 2.11.0 does not")


def _pytest(env_extra: dict, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(env_extra)
    return subprocess.run(
        # -n0: in one process (the addopts' -n would start worker processes for one module)
        [sys.executable, "-m", "pytest", "-q", "-rs", "-n0", "-p", "no:cacheprovider", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_golden_tests_skip_without_fixtures_and_fail_when_required(tmp_path):
    target = "tests/test_audio_golden.py"
    missing = str(tmp_path / "no-fixtures-here")
    skipped = _pytest({"SELVA_GOLDEN_DIR": missing, "SELVA_REQUIRE_GOLDEN": "0"}, target)
    # rc 5: pytest's "nothing ran" when the only module skipped; the suite as a whole passes
    assert skipped.returncode in (0, 5), skipped.stdout[-2000:]
    assert "skipped" in skipped.stdout and "SELVA_GOLDEN_DIR" in skipped.stdout
    assert "failed" not in skipped.stdout and "error" not in skipped.stdout
    required = _pytest({"SELVA_GOLDEN_DIR": missing, "SELVA_REQUIRE_GOLDEN": "1"}, target)
    assert required.returncode not in (0, 5), required.stdout[-2000:]
    assert "SELVA_REQUIRE_GOLDEN=1" in required.stdout
