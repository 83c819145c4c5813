"""`selva-ray demo`: the embedded default catalog (a few small synthetic videos with sound, made
on the spot, so the chain runs anywhere without data or weights) and the whole chain over it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from selva_core.defaults import DEFAULT_STEPS

# folder (the fallback prompt) -> clips (name, seconds, tone Hz)
DEMO_CLIPS = {
    "dog_barking": [("park", 4.0, 440.0), ("yard", 2.5, 520.0)],
    "rain_on_a_roof": [("storm", 6.0, 180.0), ("drizzle", 3.0, 250.0)],
    "car_engine": [("idle", 8.5, 90.0), ("pass_by", 1.2, 130.0)],
}
PROMPTS = "# filename: description\ndog_barking/park.mp4: a dog barks in a park\n"


def write_demo_video(path: Path, seconds: float, tone: float, fps: int = 25) -> Path:
    """A moving square over a gradient, with a sine tone: 160x96 H.264 + AAC."""
    width, height, rate = 160, 96, 16000
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.options = {"preset": "veryfast"}
        audio = out.add_stream("aac", rate=rate, layout="mono")
        ys, xs = np.mgrid[0:height, 0:width]
        for i in range(int(seconds * fps)):
            img = np.stack([xs * 255 // width, ys * 255 // height, np.full_like(xs, 60)], -1)
            x = (i * 4) % (width - 24)
            img[30:54, x : x + 24] = (250, 250, 250)
            frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        t = np.arange(int(seconds * rate)) / rate
        wave = 0.3 * np.sin(2 * np.pi * tone * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
        frame = av.AudioFrame.from_ndarray(
            wave.astype(np.float32)[None], format="fltp", layout="mono"
        )
        frame.sample_rate, frame.pts = rate, 0
        out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    return path


def write_demo_catalog(root: str | Path) -> Path:
    """The demo catalog under `root` (kept if already there)."""
    root = Path(root)
    for folder, clips in DEMO_CLIPS.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name, seconds, tone in clips:
            path = root / folder / f"{name}.mp4"
            if not path.exists():
                write_demo_video(path, seconds, tone)
    (root / "prompts.txt").write_text(PROMPTS)
    return root


# ---- the chain ------------------------------------------------------------------------------
#
# Every stage builds the command line a user would type, parses it with the `selva-ray` parser
# and calls the same job function the command calls (`commands.common.job_config` ->
# `run_<job>`), so the demo exercises exactly the CLI's code path and records the same
# `_meta.json` settings. Ray is started once for the whole chain: a local cluster costs several
# seconds to start on a small machine, and worker processes that already imported torch are
# reused by the next stage. The jobs only connect (`runner.connect` attaches when Ray is up) and
# never shut Ray down.


@dataclass
class StageResult:
    name: str
    status: str  # "ran" or "skipped" (finished before: the stage's own resume found it done)
    seconds: float
    output: str
    note: str = ""


@dataclass
class DemoConfig:
    output: Path
    variant: str = "tiny"
    weights_dir: str | None = None
    ray_address: str | None = None
    workers: int = 2  # Ray Train workers of the LoRA stage
    train_steps: int = 4
    generate_steps: int = DEFAULT_STEPS
    num_cpus: int | None = None  # logical CPUs of the demo's own cluster (None: the cores)


@dataclass
class DemoResult:
    stages: list[StageResult] = field(default_factory=list)
    report: str = ""
    exit_code: int = 0

    def table(self) -> list[str]:
        width = max(len(s.name) for s in self.stages)
        lines = [f"report page: {self.report}", ""]
        lines.append(f"{'stage':<{width}}  {'status':<7}  {'seconds':>7}  output")
        for s in self.stages:
            note = f"  ({s.note})" if s.note else ""
            lines.append(f"{s.name:<{width}}  {s.status:<7}  {s.seconds:7.1f}  {s.output}{note}")
        total = sum(s.seconds for s in self.stages)
        lines.append(f"{'total':<{width}}  {'':<7}  {total:7.1f}")
        if all(s.status == "skipped" for s in self.stages if s.name != "ray"):
            lines.append(
                "every stage was finished before and skipped (use another --output to start over)"
            )
        return lines


class DemoStageError(RuntimeError):
    """A stage refused its input or failed; the message names the stage."""

    def __init__(self, stage: str, exc: BaseException, exit_code: int = 2):
        super().__init__(f"demo stage {stage}: {' '.join(str(exc).split())}")
        self.exit_code = exit_code


def _job_config(argv: list[str]):
    """The job config of a `selva-ray` command line, built by the command's own code."""
    from .cli import parse
    from .commands.common import job_config

    return job_config(parse(argv))


def run_demo(config: DemoConfig, echo=print) -> DemoResult:
    """extract (+ audio latents) -> LoRA training on `workers` Ray Train workers -> generate the
    catalog with and without the adapter, muxed -> report pages. Each stage resumes: a second
    run finds its work done and skips it."""
    from .runner.connect import connect

    out = config.output
    model = ["--variant", config.variant, "--offline"]
    if config.weights_dir:
        model += ["--weights-dir", config.weights_dir]
    result = DemoResult()

    def stage(name: str, output: Path, work) -> StageResult:
        echo(f"== {name}")
        t0 = time.perf_counter()
        status, note = work()
        done = StageResult(name, status, time.perf_counter() - t0, str(output), note)
        result.stages.append(done)
        echo(f"== {name}: {status} in {done.seconds:.1f} s")
        return done

    def catalog():
        fresh = not (out / "catalog" / "prompts.txt").exists()
        write_demo_catalog(out / "catalog")
        return ("ran" if fresh else "skipped"), f"{sum(map(len, DEMO_CLIPS.values()))} videos"

    stage("catalog", out / "catalog", catalog)

    def ray_up():
        connect(config.ray_address, progress=False, num_cpus=config.num_cpus)
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 0))
        return "ran", f"{cpus} CPUs" + (f", {config.ray_address}" if config.ray_address else "")

    stage("ray", Path(config.ray_address or "local cluster"), ray_up)

    features = out / "features"

    def extract():
        from .extract import run_extract

        argv = ["extract", "--input", str(out / "catalog"), "--output", str(features)]
        argv += model + ["--with-audio-latents", "--shard-size", "2", "--batch-size", "2"]
        argv += ["--window", "0"]  # one row per demo clip (the 9 s one is cut at 8 s)
        summary = _run("extract", run_extract, _job_config(argv + ["--no-progress"]), echo)
        result.exit_code |= summary.exit_code(fail_on_error=True)
        return _status(summary.ok + summary.failed), f"{summary.ok} new, {summary.skipped} done"

    stage("extract", features, extract)

    train_dir = out / "train"
    adapter = train_dir / "adapter.safetensors"

    def train():
        from .train import run_train

        steps = str(config.train_steps)
        argv = ["train", "--features", str(features), "--output", str(train_dir)]
        argv += ["--variant", config.variant, "--offline", "--workers", str(config.workers)]
        argv += ["--steps", steps, "--batch-size", str(config.workers), "--warmup", "0"]
        argv += ["--eval-every", steps, "--save-every", steps, "--preview-clips", "1"]
        argv += ["--rank", "8", "--lr", "1e-3"]
        if config.weights_dir:
            argv += ["--weights-dir", config.weights_dir]
        if _gpus() >= config.workers:
            argv.append("--use-gpu")
        if (train_dir / "_meta.json").exists():
            argv.append("--resume")  # the run's own resume: done, or on from its checkpoint
        summary = _run("train", run_train, _job_config(argv), echo)
        status = "skipped" if summary.status == "already complete" else "ran"
        return status, f"{summary.steps} steps, {config.workers} workers"

    trained = stage("train (LoRA)", adapter, train)

    runs = {"generate": out / "generate", "generate + adapter": out / "generate-lora"}

    def generate(folder: Path, extra: list[str]):
        from .generate import run_generate

        def work():
            argv = ["generate", "--input", str(features), "--output", str(folder), "--mux"]
            argv += model + ["--steps", str(config.generate_steps), "--no-progress"] + extra
            summary = _run("generate", run_generate, _job_config(argv), echo)
            result.exit_code |= summary.exit_code(fail_on_error=True)
            note = f"{summary.ok} new, {summary.skipped} done; tracks + videos"
            return _status(summary.ok + summary.failed), note

        return work

    ran = {}
    for name, folder in runs.items():
        extra = ["--adapter", str(adapter)] if "adapter" in name else []
        ran[name] = stage(name, folder, generate(folder, extra)).status == "ran"

    pages = [
        (runs["generate + adapter"], ran["generate + adapter"]),
        (runs["generate"], ran["generate"]),
        (train_dir, trained.status == "ran"),
    ]
    result.report = str(pages[0][0] / "report" / "index.html")

    def report():
        from .report import build_report

        built = 0
        for folder, changed in pages:
            if changed or not (folder / "report" / "index.html").exists():
                _run("report", build_report, str(folder), echo)
                built += 1
        return _status(built), f"{built}/{len(pages)} pages: generate-lora, generate, train"

    stage("report", Path(result.report), report)
    return result


def _status(done: int) -> str:
    return "ran" if done else "skipped"


def _gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def _run(stage: str, job, arg, echo):
    """Run a job function; its own refusals become one `demo stage ...` line."""
    from selva_core.variants import UnknownVariantError
    from selva_core.weights import WeightsError

    from .generate import GenerateInputError
    from .report import RunFolderError
    from .train import FeatureFolderError, TrainConfigError, TrainFailed
    from .validate import UsageError

    refused = (
        UsageError,
        UnknownVariantError,
        WeightsError,
        GenerateInputError,
        RunFolderError,
        FeatureFolderError,
        TrainConfigError,
    )
    try:
        summary = job(arg)
    except refused as exc:
        raise DemoStageError(stage, exc) from exc
    except TrainFailed as exc:
        raise DemoStageError(stage, exc, exit_code=1) from exc
    if hasattr(summary, "lines"):
        lines = summary.lines()
    else:  # report
        lines = [f"{summary.path}: {summary.clips} clips, {summary.wall_s:.1f} s"]
    for line in lines:
        echo(f"   {line}")
    return summary
