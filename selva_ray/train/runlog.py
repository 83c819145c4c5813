"""The run folder's human-facing files: `metrics.jsonl` (one JSON object per line), the loss
plot `loss.png`, `summary.json`. Written by rank 0 only; whole files go through a hidden
temporary name and a rename.

A resumed run first cuts `metrics.jsonl` back to the checkpoint's step, so the lines written
between that checkpoint and the interruption are replaced by the re-run steps, not doubled.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

METRICS = "metrics.jsonl"
RESUMES = "resumes.jsonl"
LOSS_PNG = "loss.png"
SUMMARY = "summary.json"
EMA = 0.9


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_json(path: Path, value: dict) -> None:
    write_atomic(path, json.dumps(value, indent=1, sort_keys=True, default=str).encode())


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


class RunLog:
    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.path = self.dir / METRICS

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-write
        return out

    def truncate(self, step: int) -> None:
        """Keep only the records of steps <= `step` (the checkpoint a resumed run starts at)."""
        kept = [r for r in self.records() if r.get("step", 0) <= step]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def append(self, record: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def note_resume(self, step: int) -> None:
        """Record that training continued from the checkpoint of `step`."""
        with (self.dir / RESUMES).open("a") as f:
            f.write(json.dumps({"step": step, "time": time.time()}) + "\n")

    def resumes(self) -> list[int]:
        path = self.dir / RESUMES
        if not path.exists():
            return []
        return [json.loads(line)["step"] for line in path.read_text().splitlines() if line]

    def plot(self) -> Path:
        """loss.png: raw and EMA-smoothed train loss, and validation loss, against step."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = self.records()
        train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
        val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
        fig, ax = plt.subplots(figsize=(8, 4.5))
        if train:
            steps, losses = zip(*train, strict=True)
            ax.plot(steps, losses, color="tab:blue", alpha=0.3, lw=0.8, label="train (raw)")
            ax.plot(steps, smooth(losses), color="tab:blue", lw=1.6, label=f"train (EMA {EMA})")
        if val:
            steps, losses = zip(*val, strict=True)
            ax.plot(steps, losses, "o-", color="tab:orange", lw=1.4, ms=4, label="validation")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("flow-matching loss")
        ax.grid(alpha=0.3)
        if train or val:
            ax.legend()
        fig.tight_layout()
        out = self.dir / LOSS_PNG
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.png")
        fig.savefig(tmp, dpi=90)
        plt.close(fig)
        tmp.replace(out)
        return out


def smooth(values, decay: float = EMA) -> list[float]:
    """Bias-corrected exponential moving average (the first points are not pulled to 0)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = decay * avg + (1 - decay) * v
        out.append(avg / (1 - decay**i))
    return out


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
