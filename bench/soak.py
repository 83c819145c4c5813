"""Soak: a catalog of tiny clips run through extract (and generate) while faults are injected.

    python bench/soak.py [--clips 500] [--bad-fraction 0.05] [--jobs extract,generate]
        [--kill-every 6] [--max-kills 60] [--driver-kill-at 0.3] [--steps 4] [--cpus 4] [--seed 0]
        [--work DIR] [--json soak.json]

On a local `ray.cluster_utils.Cluster` (one head node of --cpus logical CPUs), for each job:

1. the job's driver runs as its own process (the `selva-ray` command line) while a fault
   thread SIGKILLs a random worker process of the job every --kill-every s on average (an
   actor of a model pool, or a process running a decode / load / write task; at most
   --max-kills per job);
2. once --driver-kill-at of its shards are committed, the driver itself gets SIGKILL;
3. the same command runs again (faults still injected) and must finish.

The catalog is a CSV manifest: good clips (copies of a few short videos with an audio track)
and --bad-fraction bad ones (a text file, an empty file, a cut-off mp4, a video whose packets
do not decode, a seed outside 0..2^63-1). At the end it asserts: every good clip exactly once
(a feature row; a result row and a whole audio file), every bad clip exactly one error row,
no part file truncated, nothing left staged, leased or half written. Prints the figures and
writes them as JSON (clips, faults injected, retries, wall time, clips/s). Exit status 1 if
an assertion fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

STORE = 400 * 1024 * 1024
BAD_KINDS = ("text", "empty", "cut", "undecodable", "bad_seed")
# Processes the fault thread may kill: our stages' task workers and model-pool actors (never
# Ray Data's own coordinator actors, which a real node loss does not single out either).
TASK_MARKERS = ("decode", "write", "load_features", "measure")
ACTOR_MARKER = "MapWorker("


# ---- the catalog ----------------------------------------------------------------------------


def make_catalog(root: Path, clips: int, bad_fraction: float, rng: random.Random):
    """A manifest of `clips` rows; returns (manifest, good ids, {bad id: kind})."""
    from video_factory import (
        AudioSpec,
        write_empty_file,
        write_text_file,
        write_truncated,
        write_undecodable_video,
        write_video,
    )

    base = root / "base"
    base.mkdir(parents=True, exist_ok=True)
    originals = []
    for k in range(6):
        path = base / f"base{k}.mp4"
        write_video(
            path,
            duration=1.0 + 0.2 * k,
            fps=25,
            size=(64, 48),
            pattern="noise",
            seed=k,
            audio=AudioSpec(freq=200.0 + 150 * k, sample_rate=16000, channels=1),
        )
        originals.append(path)
    folder = root / "clips"
    folder.mkdir(exist_ok=True)
    n_bad = round(clips * bad_fraction)
    bad_at = set(rng.sample(range(clips), n_bad))
    lines = ["id,video,prompt,seed"]
    good, bad = [], {}
    for i in range(clips):
        cid = f"c{i:05d}"
        seed = str(i)
        src = originals[i % len(originals)]
        video = folder / f"{cid}.mp4"
        kind = BAD_KINDS[len(bad) % len(BAD_KINDS)] if i in bad_at else None
        if kind == "text":
            write_text_file(video)
        elif kind == "empty":
            write_empty_file(video)
        elif kind == "cut":
            write_truncated(src, video, fraction=0.3)
        elif kind == "undecodable":
            video = folder / f"{cid}.mkv"
            write_undecodable_video(video)
        else:
            os.link(src, video)  # a good clip (bad_seed: a good file, a bad catalog value)
            if kind == "bad_seed":
                seed = str(2**64)
        (bad.__setitem__(cid, kind) if kind else good.append(cid))
        lines.append(f"{cid},{video.relative_to(root)},sound of clip {i % 6},{seed}")
    manifest = root / "catalog.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, good, bad


# ---- faults ---------------------------------------------------------------------------------


def raylet_pids(cluster) -> set[int]:
    """Process ids of this soak's raylets: every worker process of its cluster is a child of
    one, and no process of another Ray instance on this machine is."""
    nodes = [cluster.head_node, *cluster.worker_nodes]
    return {p.process.pid for n in nodes for p in n.all_processes.get("raylet", [])}


def parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class FaultInjector:
    """SIGKILLs a random worker process of the running job every `mean_s` seconds on average.

    Only processes of this soak's own cluster: the state API is asked at the cluster's own
    address, and a victim must be a child of one of the cluster's raylets."""

    def __init__(self, mean_s: float, rng: random.Random, cluster, max_kills: int):
        self.mean_s = mean_s
        self.max_kills = max_kills
        self.rng = rng
        self.address = cluster.address
        self.raylets = raylet_pids(cluster)
        assert self.raylets, "no raylet process found for the soak's cluster"
        self.kills: list[dict] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="soak-faults", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _victims(self) -> list[tuple[str, str, int]]:
        from ray.util.state import list_actors, list_tasks

        found = []
        try:
            alive = [("state", "=", "ALIVE")]
            for a in list_actors(address=self.address, filters=alive, limit=1000):
                if a.class_name and ACTOR_MARKER in a.class_name and a.pid:
                    found.append(("actor", a.class_name, int(a.pid)))
            running = [("state", "=", "RUNNING")]
            for t in list_tasks(address=self.address, filters=running, limit=1000):
                name = t.name or ""
                ours = t.type == "NORMAL_TASK" and any(m in name for m in TASK_MARKERS)
                if ours and t.worker_pid:
                    found.append(("task", name, int(t.worker_pid)))
        except Exception as exc:  # noqa: BLE001 - the state API can time out under load
            print(f"[soak] state API: {exc}", flush=True)
        killed = {k["pid"] for k in self.kills}  # a dying process may still be listed
        return [v for v in found if v[2] not in killed and parent_pid(v[2]) in self.raylets]

    def _run(self) -> None:
        while not self._stop.wait(self.rng.expovariate(1.0 / self.mean_s)):
            if len(self.kills) >= self.max_kills:
                return
            victims = self._victims()
            if not victims:
                continue
            # an actor or a task worker with equal odds (tasks are far more numerous)
            kinds = sorted({v[0] for v in victims})
            kind = self.rng.choice(kinds)
            kind, name, pid = self.rng.choice([v for v in victims if v[0] == kind])
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills.append({"t": time.time(), "kind": kind, "name": name, "pid": pid})
            print(f"[soak] killed {kind} {name} (pid {pid})", flush=True)


def retries(address: str) -> dict:
    """Work Ray did again: task attempts after the first, actor restarts."""
    from ray.util.state import list_actors, list_tasks

    attempts = Counter()
    for t in list_tasks(address=address, limit=10000, raise_on_missing_output=False):
        if t.attempt_number and t.attempt_number > 0:
            attempts[t.type] += 1
    restarts = sum(
        int(a.num_restarts or 0)
        for a in list_actors(address=address, limit=10000, raise_on_missing_output=False)
    )
    return {
        "task_retries": attempts.get("NORMAL_TASK", 0),
        "actor_task_retries": attempts.get("ACTOR_TASK", 0),
        "actor_restarts": restarts,
    }


# ---- one job: driver killed, then rerun -----------------------------------------------------


def ledgers(output: Path) -> int:
    return len(list((output / "_ledger").glob("*.json")))


def run_job(name: str, command: list[str], output: Path, shards: int, args, faults) -> dict:
    """Run `command` under faults; SIGKILL it once `--driver-kill-at` of `shards` are
    committed; rerun it until it exits (at most --max-reruns times)."""
    log = output.parent / f"{name}.log"
    record = {"driver_kills": 0, "runs": [], "wall_s": 0.0}
    t0 = time.perf_counter()
    kill_at = max(1, int(shards * args.driver_kill_at))
    faults.start()
    try:
        for attempt in range(1 + args.max_reruns):
            start = time.perf_counter()
            with open(log, "a") as f:
                driver = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT)
                killed = False
                while driver.poll() is None:
                    if attempt == 0 and not killed and ledgers(output) >= kill_at:
                        os.kill(driver.pid, signal.SIGKILL)
                        killed = True
                        record["driver_kills"] += 1
                        print(
                            f"[soak] {name}: killed the driver after {ledgers(output)} of "
                            f"{shards} shards",
                            flush=True,
                        )
                    if time.perf_counter() - start > args.run_timeout:
                        driver.kill()
                        print(f"[soak] {name}: run timed out", flush=True)
                    time.sleep(0.2)
            rc = driver.returncode
            record["runs"].append(
                {"rc": rc, "wall_s": round(time.perf_counter() - start, 1), "killed": killed}
            )
            print(f"[soak] {name} run {attempt + 1}: exit {rc}", flush=True)
            if rc in (0, 1) and not killed:  # 1: some clips failed (the bad ones)
                break
    finally:
        faults.stop()
    record["wall_s"] = round(time.perf_counter() - t0, 1)
    return record


# ---- checks ---------------------------------------------------------------------------------


def check_common(output: Path, problems: list[str]) -> None:
    import pyarrow.parquet as pq

    for part in sorted(output.rglob("part-*.parquet")):
        try:
            pq.read_table(part)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{part} is not whole: {exc}")
    if (output / "_staging").exists():
        problems.append("fragments left in _staging/")
    if list((output / "_lease").glob("*.json")):
        problems.append("a lease is left in _lease/")
    hidden = [p for p in output.rglob(".*") if p.is_file()]
    if hidden:
        problems.append(f"{len(hidden)} hidden partial file(s) left, e.g. {hidden[0]}")


def check_errors(output: Path, bad: dict, problems: list[str]) -> Counter:
    import pyarrow.parquet as pq

    errors = pq.read_table(output / "errors").to_pylist() if (output / "errors").exists() else []
    count = Counter(r["id"] for r in errors)
    missing = sorted(set(bad) - set(count))
    twice = sorted(cid for cid, n in count.items() if n > 1)
    extra = sorted(set(count) - set(bad))
    if missing:
        problems.append(f"{len(missing)} bad clip(s) without an error row: {missing[:5]}")
    if twice:
        problems.append(f"{len(twice)} clip(s) with several error rows: {twice[:5]}")
    if extra:
        reasons = Counter((r["stage"], r["error_type"]) for r in errors if r["id"] in extra)
        problems.append(f"{len(extra)} good clip(s) recorded as errors: {dict(reasons)}")
    return Counter(r["stage"] for r in errors)


def check_once(ids: list[str], good: list[str], what: str, problems: list[str]) -> None:
    count = Counter(ids)
    missing = sorted(set(good) - set(count))
    twice = sorted(cid for cid, n in count.items() if n > 1)
    if missing:
        problems.append(f"{len(missing)} good clip(s) without {what}: {missing[:5]}")
    if twice:
        problems.append(f"{len(twice)} clip(s) with several {what}s: {twice[:5]}")


def check_features(output: Path, good, bad, problems) -> dict:
    from selva_ray.io.feature_schema import read_features

    check_common(output, problems)
    ids = read_features(str(output))["id"].to_pylist()
    check_once(ids, good, "feature row", problems)
    stray = sorted(set(ids) & set(bad))
    if stray:
        problems.append(f"{len(stray)} bad clip(s) have features: {stray[:5]}")
    return {"rows": len(ids), "errors_by_stage": dict(check_errors(output, bad, problems))}


def check_results(output: Path, good, problems) -> dict:
    import av
    import pyarrow.parquet as pq

    check_common(output, problems)
    rows = pq.read_table(output / "results").to_pylist()
    check_once([r["id"] for r in rows], good, "result row", problems)
    on_disk = sorted(p.relative_to(output).as_posix() for p in (output / "audio").iterdir())
    if on_disk != sorted(r["audio_path"] for r in rows):
        problems.append("audio/ does not hold exactly one file per result row")
    broken = []
    for rel in on_disk:
        try:
            with av.open(str(output / rel)) as c:
                if sum(f.samples for f in c.decode(c.streams.audio[0])) == 0:
                    broken.append(rel)
        except Exception:  # noqa: BLE001
            broken.append(rel)
    if broken:
        problems.append(f"{len(broken)} audio file(s) do not decode whole: {broken[:5]}")
    return {"rows": len(rows), "errors_by_stage": dict(check_errors(output, {}, problems))}


# ---- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=500, help="catalog size")
    p.add_argument("--bad-fraction", type=float, default=0.05, help="share of bad clips")
    p.add_argument("--jobs", default="extract,generate", help="extract[,generate]")
    p.add_argument("--kill-every", type=float, default=6.0, help="mean s between worker kills")
    p.add_argument("--max-kills", type=int, default=60, help="worker kills per job at most")
    p.add_argument("--driver-kill-at", type=float, default=0.3, help="share of shards")
    p.add_argument("--shard-size", type=int, default=0, help="0: about clips/10")
    p.add_argument("--steps", type=int, default=4, help="generation sampling steps")
    p.add_argument("--cpus", type=int, default=4, help="logical CPUs of the cluster")
    p.add_argument("--actors", type=int, default=2, help="model actors per pool")
    p.add_argument("--max-reruns", type=int, default=3)
    p.add_argument("--run-timeout", type=float, default=3600.0, help="s per driver run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="working folder (default: a new temp folder, removed)")
    p.add_argument("--json", default="soak.json", help="where to write the figures")
    args = p.parse_args(argv)
    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    if not set(jobs) <= {"extract", "generate"} or "extract" not in jobs:
        p.error("--jobs: extract, optionally followed by generate")

    import ray
    from ray.cluster_utils import Cluster

    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="selva-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    manifest, good, bad = make_catalog(work / "catalog", args.clips, args.bad_fraction, rng)
    shard = args.shard_size or max(2, args.clips // 10)
    print(f"[soak] {args.clips} clips ({len(bad)} bad) in {work}; shards of {shard}", flush=True)
    figures: dict = {
        "clips": args.clips,
        "good": len(good),
        "bad": len(bad),
        "bad_kinds": dict(Counter(bad.values())),
        "settings": vars(args),
        "jobs": {},
    }
    problems: list[str] = []
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": args.cpus, "object_store_memory": STORE}
    )
    try:
        ray.init(address=cluster.address)
        # SIGTERM ends the soak through its finally blocks (after ray.init, which sets its own)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        cli = [sys.executable, "-m", "selva_ray.cli"]
        common = ["--variant", "tiny", "--actors", str(args.actors), "--shard-size", str(shard)]
        common += ["--ray-address", cluster.address, "--no-progress"]
        features, generated = work / "features", work / "generated"
        shards = -(-args.clips // shard)
        runs = {
            "extract": (
                cli
                + ["extract", "--input", str(manifest), "--output", str(features)]
                + ["--with-audio-latents", "--max-duration", "2", "--batch-size", "4"]
                + common,
                features,
            ),
            "generate": (
                cli
                + ["generate", "--input", str(features), "--output", str(generated)]
                + ["--steps", str(args.steps), "--batch-size", "4"]
                + common,
                generated,
            ),
        }
        for job in jobs:
            command, output = runs[job]
            faults = FaultInjector(args.kill_every, rng, cluster, args.max_kills)
            before = retries(cluster.address)
            record = run_job(job, command, output, shards, args, faults)
            after = retries(cluster.address)
            record["worker_kills"] = dict(Counter(k["kind"] for k in faults.kills))
            record["retries"] = {k: after[k] - before[k] for k in after}
            if job == "extract":
                record["check"] = check_features(output, good, bad, problems)
            else:
                record["check"] = check_results(output, good, problems)
            record["clips_per_s"] = round(len(good) / record["wall_s"], 3)
            figures["jobs"][job] = record
    finally:
        ray.shutdown()
        cluster.shutdown()
    figures["wall_s"] = round(time.perf_counter() - t_all, 1)
    figures["problems"] = problems
    figures["passed"] = not problems

    print(f"\nsoak: {args.clips} clips ({len(good)} good, {len(bad)} bad), seed {args.seed}")
    print(
        f"{'job':<9} {'wall s':>7} {'clips/s':>8} {'kills':>6} {'driver':>6} {'runs':>5} "
        f"{'task retries':>12} {'actor restarts':>14}"
    )
    for job, r in figures["jobs"].items():
        print(
            f"{job:<9} {r['wall_s']:>7.1f} {r['clips_per_s']:>8.3f} "
            f"{sum(r['worker_kills'].values()):>6} {r['driver_kills']:>6} {len(r['runs']):>5} "
            f"{r['retries']['task_retries'] + r['retries']['actor_task_retries']:>12} "
            f"{r['retries']['actor_restarts']:>14}"
        )
    print(f"total wall time {figures['wall_s']:.1f} s (catalog included)")
    print(
        "PASSED: every good clip exactly once, every bad one an error row, no half file"
        if not problems
        else "FAILED:\n  " + "\n  ".join(problems)
    )
    Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    print(f"figures in {args.json}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
