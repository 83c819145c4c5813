"""Shared helpers of the bench scripts: the machine, timing, peak RSS, tables, JSON, inputs.

Every script measures its figures in one run on one machine; `machine_info()` and
`LoadSampler` record what that machine was and how busy it was while the figures were taken,
so a table is never read without its context.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROMPTS = ["a dog barking", "rain on a tin roof", "a car engine idling", "birds chirping"]
ISA_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "neon",
    "asimd",
    "sve",
)


def setup_paths() -> None:
    """Import the package and the test helpers from this checkout, here and in Ray workers
    (which inherit PYTHONPATH)."""
    paths = [str(ROOT), str(HERE), str(ROOT / "tests")]
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)
    old = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, *([old] if old else [])])


# ---- the machine ----------------------------------------------------------------------------


def cpuinfo() -> tuple[str, set[str]]:
    """This CPU's model name and ISA flags (/proc/cpuinfo; off Linux the machine type and no
    flags)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and value.strip():
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def physical_cores() -> int:
    """Cores (not hyper-threads) this process may run on."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    for c in cpus:
        try:
            text = Path(f"/sys/devices/system/cpu/cpu{c}/topology/core_cpus_list").read_text()
            pkg = Path(f"/sys/devices/system/cpu/cpu{c}/topology/physical_package_id").read_text()
            cores.add((pkg.strip(), text.strip()))
        except OSError:
            cores.add(("", str(c)))
    return max(1, len(cores))


def machine_info() -> dict:
    import torch

    model, flags = cpuinfo()
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": list(os.getloadavg()),
    }


def machine_line(info: dict) -> str:
    isa = " ".join(info["isa"]) or "-"
    return (
        f"{info['cpu']}, {info['physical_cores']} cores / {info['logical_cpus']} logical CPUs, "
        f"{info['memory_gib']} GiB, ISA: {isa}; torch {info['torch']}"
    )


class LoadSampler:
    """The 1-minute load average, sampled every few seconds while a bench runs (other work on
    the machine inflates every figure; the table says by how much load it was taken)."""

    def __init__(self, every_s: float = 5.0):
        self.every_s = every_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        s = self.samples or [os.getloadavg()[0]]
        return {"min": min(s), "mean": sum(s) / len(s), "max": max(s), "samples": len(s)}


# ---- time and memory ------------------------------------------------------------------------


@contextmanager
def timed(into: dict, key: str):
    """`with timed(d, "x"):` stores the block's wall seconds in d["x"]."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        into[key] = time.perf_counter() - t0


def own_peak_rss_mib() -> float:
    """This process's peak RSS (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        for c in children.get(pid, []):
            out.append(c)
            todo.append(c)
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class RssMonitor:
    """Peak RSS (VmHWM) of this driver and of every Ray worker process it started (a local
    cluster's processes are the driver's descendants), polled every `every_s` so workers that
    exit early are counted too. Ray's own daemons (raylet, GCS, ...) are reported apart."""

    def __init__(self, every_s: float = 0.5):
        self.every_s = every_s
        self.workers: dict[int, int] = {}  # pid -> peak KiB
        self.titles: dict[int, str] = {}  # worker pid -> its latest title (ray::<actor or task>)
        self.daemons: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-monitor", daemon=True)
        self._base_driver = _status_kib(os.getpid(), "VmRSS") or 0

    def _poll(self) -> None:
        for pid in _descendants(os.getpid()):
            hwm = _status_kib(pid, "VmHWM")
            if hwm is None:
                continue
            cmd = _cmdline(pid)
            table = self.workers if ("default_worker" in cmd or cmd.startswith("ray::")) else None
            if table is None:
                table = self.daemons
            else:
                self.titles[pid] = cmd
            table[pid] = max(table.get(pid, 0), hwm)

    def _run(self) -> None:
        while True:
            self._poll()
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> RssMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()

    def summary(self) -> dict:
        w = sorted(self.workers.values())
        return {
            "driver_peak_mib": (_status_kib(os.getpid(), "VmHWM") or 0) / 1024,
            "driver_start_mib": self._base_driver / 1024,
            "worker_peak_mib": (w[-1] / 1024) if w else 0.0,
            "workers_seen": len(w),
            "workers_peak_sum_mib": sum(w) / 1024,
            "ray_daemons_peak_sum_mib": sum(self.daemons.values()) / 1024,
        }


# ---- Ray ------------------------------------------------------------------------------------


def start_ray(num_cpus: int | None = None, store_mib: int = 1024) -> None:
    """A fresh local cluster (never someone else's), no dashboard; quiet Ray Data."""
    import ray

    for attempt in range(4):  # Ray gives its raylet 30 s to start: not always enough on a
        try:  # loaded machine
            ray.init(
                address="local",
                num_cpus=num_cpus,
                object_store_memory=store_mib << 20,
                include_dashboard=False,
                log_to_driver=False,
            )
            break
        except Exception as exc:  # noqa: BLE001
            if attempt == 3 or "timed out during startup" not in str(exc):
                raise
            ray.shutdown()
            print(f"Ray did not start ({exc}); again", file=sys.stderr)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


# ---- output ---------------------------------------------------------------------------------


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "-"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.{digits}f}"
    return str(value)


def table(rows: list[dict], columns: list[tuple[str, str]], digits: int = 3) -> str:
    """A Markdown table of `rows`: `columns` = [(key, header), ...]."""
    lines = [
        "| " + " | ".join(h for _, h in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k), digits) for k, _ in columns) + " |")
    return "\n".join(lines)


def write_json(path: str | None, data: dict) -> None:
    """Write the results (to a hidden name, renamed when whole); None: nowhere."""
    if not path:
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(target)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


# ---- inputs ---------------------------------------------------------------------------------


def write_clips(folder: Path, n: int, duration: float, size=(96, 64)) -> list[Path]:
    """`n` small real videos in prompt-named folders (the folder name is the prompt)."""
    from video_factory import write_video

    paths = []
    for i in range(n):
        sub = folder / PROMPTS[i % len(PROMPTS)].replace(" ", "_")
        sub.mkdir(parents=True, exist_ok=True)
        paths.append(write_video(sub / f"clip{i:03d}.mp4", duration=duration, fps=25, size=size))
    return paths


def small_components(device: str, dtype, role: str = "all"):
    """small_16k components at published sizes, random weights (nothing downloaded); the
    generator role builds only what it runs. Also the jobs' `components_factory`."""
    from selva_core import build
    from selva_core.audio import bigvgan, vae
    from selva_core.pipeline import Components

    if role == "generator":
        parts = Components(
            generator=build.random_generator("small_16k").eval(),
            sync_encoder=None,
            clip=None,
            t5=None,
            vae=vae.random_vae(vae.VAE_16K, 0, decoder_only=True).eval(),
            vocoder=bigvgan.random_vocoder(bigvgan.BIGVGAN_16K, 0),
            mel=None,
        )
    else:
        from bench_one_clip import real_size_components

        parts = real_size_components()
        if role == "encoder":
            parts.generator = parts.vae = parts.vocoder = None
    for name in ("generator", "sync_encoder", "clip", "t5", "vae", "vocoder"):
        module = getattr(parts, name)
        if module is not None:
            setattr(parts, name, module.to(device=device, dtype=dtype).eval())
    _mark_ready(role)
    return parts


def tiny_components(device: str, dtype, role: str = "all"):
    """The `tiny` variant's seeded random components, as a `components_factory` (so the
    bench learns when a job actor is ready, as with `small_components`)."""
    from selva_core.pipeline import PipelineConfig, load_components

    config = PipelineConfig(
        variant="tiny", dtype=dtype, device=device, generation=role != "encoder"
    )
    parts = load_components(config)
    if role == "generator":
        parts.sync_encoder = parts.clip = parts.t5 = parts.mel = None
    _mark_ready(role)
    return parts


def components_factory(size: str):
    return tiny_components if size == "tiny" else small_components


def _mark_ready(role: str) -> None:
    mark = os.environ.get("SELVA_BENCH_READY_DIR")
    if mark:  # the bench learns when each job actor finished building its models
        Path(mark, f"{role}-{os.getpid()}-{time.time():.6f}").touch()


def ready_times(folder: Path) -> dict[str, float]:
    """Latest time each role's actor finished building its models (epoch seconds)."""
    out: dict[str, float] = {}
    for p in folder.iterdir():
        role, _, stamp = p.name.split("-", 2)
        out[role] = max(out.get(role, 0.0), float(stamp))
    return out


def pipeline(size: str):
    """A `Pipeline` at `size` ("tiny": seeded random weights; "small_16k": published sizes)."""
    import torch

    from selva_core.pipeline import Pipeline, PipelineConfig

    config = PipelineConfig(variant=size)
    if size == "tiny":
        return Pipeline(config)
    return Pipeline(config, components=small_components("cpu", torch.float32))


def generator_rows(feats: list, steps: int, seed: int = 42) -> list[dict]:
    """The generator actor's input rows for features held in memory."""
    nan = float("nan")
    return [
        {
            "id": f"clip{i:03d}",
            "shard": "s",
            "row": i,
            "source": f.source,
            "prompt": f.prompt,
            "negative_prompt": None,
            "seed": seed,
            "start": 0.0,
            "cfg": 4.5,
            "steps": steps,
            "duration": f.duration,
            "status": "ok",
            "stage": "",
            "error_type": "",
            "message": "",
            "decode_s": nan,
            "features_s": nan,
            "sync_f": f.sync_f.numpy(),
            "sync_len": f.sync_f.shape[0],
            "text_f": f.text_f.numpy(),
        }
        for i, f in enumerate(feats)
    ]


def as_batch(rows: list[dict]) -> dict:
    """Rows -> a numpy batch as Ray Data hands it to a map_batches UDF."""
    import numpy as np

    return {
        key: np.stack([r[key] for r in rows])
        if isinstance(rows[0][key], np.ndarray)
        else np.array([r[key] for r in rows], dtype=object)
        for key in rows[0]
    }


def write_features(size: str, feats: list, folder: Path, max_duration: float = 8.0) -> None:
    """Features held in memory as an `extract` output folder (float32), through the I/O
    package, so a job can read them back exactly."""
    import pyarrow as pa

    from selva_core.pipeline import fit_length
    from selva_core.variants import get_spec
    from selva_ray.io.feature_schema import FeatureLayout, tensor_array, to_storage
    from selva_ray.io.output_dir import OutputDir

    layout = FeatureLayout.for_run(
        get_spec(size), max_duration=max_duration, storage_dtype="float32"
    )
    shapes = layout.tensor_shapes()
    schema = layout.arrow_schema()
    n = len(feats)
    given = {
        "id": [f"clip{i:03d}" for i in range(n)],
        "source": [f.source for f in feats],
        "prompt": [f.prompt for f in feats],
        "seed": [42] * n,
        "start": [0.0] * n,
        "duration": [f.duration for f in feats],
        "fps": [25.0] * n,
        "family": [layout.family] * n,
        "variant": [layout.variant] * n,
        "encoder_checksum": ["bench"] * n,
        "settings_hash": [layout.settings_hash] * n,
        "sync_len": [f.sync_f.shape[0] for f in feats],
    }
    tensors = {
        "sync_f": [fit_length(f.sync_f, shapes["sync_f"][0]) for f in feats],
        "text_f": [f.text_f for f in feats],
    }
    if "clip_f" in shapes:
        tensors["clip_f"] = [fit_length(f.clip_f, shapes["clip_f"][0]) for f in feats]
        given["clip_len"] = [f.clip_f.shape[0] for f in feats]
    values = {}
    for field in schema:
        if field.name in tensors:
            import numpy as np

            array = np.stack([to_storage(t, "float32") for t in tensors[field.name]])
            values[field.name] = tensor_array(array, tuple(field.type.shape))
        elif field.name in given:
            values[field.name] = pa.array(given[field.name], field.type)
        elif pa.types.is_boolean(field.type):
            values[field.name] = pa.array([False] * n, field.type)
        elif pa.types.is_integer(field.type):
            values[field.name] = pa.array([0] * n, field.type)
        else:
            values[field.name] = pa.array([None] * n, field.type)
    out = OutputDir(str(folder))
    out.claim(layout.describe())
    out.stage("bench", "features", pa.table(values, schema=schema))
    out.commit("bench")
