"""Scale benchmark: what one worker process costs per frame, and how throughput grows with workers.

    .venv/bin/python bench/scale.py [--seconds 20] [--rate 300] [--workers 3] [--json out.json]

The fleet never limits: 4 misbehaving services of capacity 16 answering in 5 ms (one process). For 1, 2 …
`--workers` (3) workers in one consumer group (a namespace of their own per run, side by side in one run), 30
cameras offer `--rate` frames/s for `--seconds`. Measured after a 5 s warm-up: frames inferred per second (through
inference and the rules), frames ended per second (inferred or dropped), the workers' CPU time (utime + stime from
/proc) per frame ended, and the ratio to one worker. On a 2-core machine the load generator, the fleet and the
workers share the cores, so the total is CPU-bound: CPU ms per frame is the figure that carries to bigger machines.
Prints a readable table, then the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from framewatch.ops.demo import ServiceProcess
from framewatch.ops.load import (
    Fleet,
    FrameLoad,
    TopicFollower,
    free_port,
    inferred_per_s,
    print_figures,
    print_table,
    start_fleet,
)
from framewatch.schemas.events import FrameOutcome, now_ms
from framewatch.schemas.topics import DETECTIONS, FRAME_OUTCOMES
from framewatch.stack import LocalStack

WARM_UP_MS = 5000
SETTLE_S = 12.0  # the group's rebalance after the extra workers join
CAMERAS = 30
FLEET = "[ai_analysis]\nmax_concurrent_infer = 64\n"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(fleet: Fleet, pids: list[int], rate: float, seconds: float) -> dict[str, Any]:
    follower = TopicFollower(fleet.run.config, [DETECTIONS, FRAME_OUTCOMES])
    await follower.start()
    load = FrameLoad(fleet.run.config, cameras=CAMERAS, fps_per_camera=rate / CAMERAS)
    started = now_ms()
    cpu_before: list[float] = []
    sending = asyncio.create_task(load.run(seconds))
    await asyncio.sleep(WARM_UP_MS / 1000)
    cpu_before = [cpu_seconds(pid) for pid in pids]
    measured_from = now_ms()
    await sending
    measured_to = now_ms()
    cpu = sum(cpu_seconds(pid) for pid in pids) - sum(cpu_before)
    await follower.collect_until(lambda events: sum(isinstance(e, FrameOutcome) for e in events) >= load.sent, 60)
    await follower.stop()
    window_s = (measured_to - measured_from) / 1000
    ended = sum(1 for e in follower.events if isinstance(e, FrameOutcome) and measured_from <= e.emitted_at
                < measured_to)
    return {"offered_per_s": round(load.sent / ((measured_to - started) / 1000), 1),
            "inferred_per_s": round(inferred_per_s(follower.events, measured_from, measured_to), 1),
            "ended_per_s": round(ended / window_s, 1),
            "cpu_ms_per_frame": round(1000 * cpu / max(1, ended), 2),
            "worker_cpu_cores": round(cpu / window_s, 2)}


def run(workers: int, folder: Path, env: dict[str, str], rate: float, seconds: float) -> dict[str, Any]:
    with start_fleet(folder, env, 4, FLEET, latency_ms=5) as fleet:
        extra = [ServiceProcess(f"worker-{i}", ["worker", "-c", str(fleet.run.config_path)],
                                {**fleet.run.env, "FRAMEWATCH_WORKER_PORT": str(free_port())}, folder / "logs")
                 for i in range(2, workers + 1)]
        try:
            time.sleep(SETTLE_S if extra else 2)
            pids = [fleet.run.processes[-1].process.pid, *(p.process.pid for p in extra)]
            return {"workers": workers, **asyncio.run(measure(fleet, pids, rate, seconds))}
        finally:
            for process in extra:
                process.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=float, default=300, help="frames per second offered (all cameras)")
    parser.add_argument("--workers", type=int, default=3, help="runs with 1, 2 … this many workers")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    stack = LocalStack()
    stack.up()
    env = {**os.environ, **stack.env()}
    folder = Path(tempfile.mkdtemp(prefix="framewatch-bench-scale-"))
    results = [run(n, folder / f"w{n}", env, args.rate, args.seconds) for n in range(1, args.workers + 1)]
    one = results[0]["ended_per_s"] or 1
    for result in results:
        result["ratio_to_one"] = round(result["ended_per_s"] / one, 2)
    rows = []
    for r in results:
        n = r["workers"]
        rows += [(f"{n} worker(s): inferred frames/s", r["inferred_per_s"], f"offered {r['offered_per_s']}"),
                 (f"{n} worker(s): ended frames/s", r["ended_per_s"], "grows with workers while cores are free"),
                 (f"{n} worker(s): CPU ms per frame", r["cpu_ms_per_frame"], "flat as workers are added"),
                 (f"{n} worker(s): CPU cores used", r["worker_cpu_cores"], ""),
                 (f"{n} worker(s): ratio to one", r["ratio_to_one"], "")]
    print_table(rows)
    print_figures({"rate": args.rate, "seconds": args.seconds, "runs": results},
                  args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
