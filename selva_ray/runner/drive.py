"""The one drive/commit loop: consume the status rows a job's last stage reports (shard, id,
status, stage; optionally `flags` and `batch_clips`), commit each shard once all of its clips
are accounted for, count, and print progress every few seconds."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from ..io.output_dir import OutputDir

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 10.0


@dataclass
class Tally:
    """What came back from a pipeline: clips ok, failures by stage, QA flags by name (the key
    "" counts flagged clips), and generator batches for the batch fill."""

    ok: int = 0
    failed: Counter = field(default_factory=Counter)
    flags: Counter = field(default_factory=Counter)
    fill_rows: int = 0
    fill_batches: float = 0.0

    @property
    def done(self) -> int:
        return self.ok + sum(self.failed.values())

    def add(self, other: Tally) -> None:
        self.ok += other.ok
        self.failed.update(other.failed)
        self.flags.update(other.flags)
        self.fill_rows += other.fill_rows
        self.fill_batches += other.fill_batches

    def batch_fill(self, batch_size: int) -> tuple[float, int]:
        """(average clips per generator batch / batch size, batches)."""
        if not self.fill_batches:
            return 0.0, 0
        return self.fill_rows / (self.fill_batches * batch_size), round(self.fill_batches)


def drive(
    ds,
    out: OutputDir,
    expected: Counter,
    *,
    label: str,
    interval_s: float = PROGRESS_EVERY_S,
) -> Tally:
    """Run the dataset to the end, committing shards as they complete; shards that lost rows
    upstream are committed with what was written, then leftovers are recovered."""
    total = sum(expected.values())
    tally = Tally()
    seen: Counter = Counter()
    committed: set[str] = set()
    t0 = time.perf_counter()
    stop = threading.Event()

    def progress() -> None:
        elapsed = time.perf_counter() - t0
        rate = tally.done / elapsed if elapsed > 0 else 0.0
        left = total - tally.done
        eta = f"{left / rate:.0f} s" if rate > 0 else "unknown"
        log.info(
            "%s: %d done, %d failed, %d left; %.2f clips/s, ETA %s",
            label,
            tally.ok,
            sum(tally.failed.values()),
            left,
            rate,
            eta,
        )

    def ticker() -> None:
        while not stop.wait(interval_s):
            progress()

    thread = threading.Thread(target=ticker, name=f"{label}-progress", daemon=True)
    thread.start()
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            names = batch.column_names
            none = [None] * batch.num_rows
            flags = batch["flags"].to_pylist() if "flags" in names else none
            sizes = batch["batch_clips"].to_pylist() if "batch_clips" in names else none
            for shard, status, stage, clip_flags, n in zip(
                batch["shard"].to_pylist(),
                batch["status"].to_pylist(),
                batch["stage"].to_pylist(),
                flags,
                sizes,
                strict=True,
            ):
                seen[shard] += 1
                if status == "ok":
                    tally.ok += 1
                    if clip_flags:
                        tally.flags[""] += 1
                        tally.flags.update(clip_flags.split(","))
                else:
                    tally.failed[stage] += 1
                if n:
                    tally.fill_rows += 1
                    tally.fill_batches += 1.0 / n
                if seen[shard] == expected[shard] and shard not in committed:
                    commit = out.commit(shard)
                    committed.add(shard)
                    log.info(
                        "committed shard %s: %d ok, %d failed", shard, commit.ok, commit.failed
                    )
    finally:
        stop.set()
        thread.join()
    progress()
    for shard in sorted(set(expected) - committed):
        log.warning(
            "shard %s saw %d/%d clips; committing what was written",
            shard,
            seen[shard],
            expected[shard],
        )
        out.commit(shard)
    out.recover()  # nothing should be left; also removes the empty staging folder
    return tally
