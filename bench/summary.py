"""The goals of `make bench` in one table: each figure from the JSON the benchmarks wrote in one run, beside the
design it replaces where the run measured one, and its goal.

    .venv/bin/python bench/summary.py FOLDER   (the folder `make bench` gave each benchmark's --json)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from framewatch.ops.load import print_table

Figures = dict[str, Any]
# (benchmark, row name, value from its figures, goal, whether the value meets it)
ROWS: list[tuple[str, str, Callable[[Figures], Any], str, Callable[[Any], bool]]] = [
    ("ingest", "extractor CPU per camera / decode floor (14 x 25 fps 576p sampled at 5 fps)",
     lambda f: f["ratio_to_decode_floor"], "<= 1.3", lambda v: v <= 1.3),
    ("ingest", "extractor CPU per camera / an ffmpeg process per camera (Frigate-style)",
     lambda f: f["ratio_to_ffmpeg"], "", lambda v: True),
    ("ingest", "seed load 14 x 5 fps: extractor cores", lambda f: f["seed_14x200ms"]["cores"], "< 1",
     lambda v: v < 1),
    ("ingest", "seed load: capture -> event p99 (ms)", lambda f: f["seed_14x200ms"]["capture_to_event_p99_ms"],
     "< 300", lambda v: v is not None and v < 300),
    ("sink", "idempotent sink at batch 100 vs one INSERT per alert", lambda f: f["ms_per_alert"]["speedup_at_100"]
     ["framewatch"], ">= 20x", lambda v: v >= 20),
    ("sink", "  raw COPY at batch 100 vs one INSERT per alert (the floor)",
     lambda f: f["ms_per_alert"]["speedup_at_100"]["copy_floor"], "", lambda v: True),
    ("sink", "alert emitted -> published p99, batch interval 1 s (ms)",
     lambda f: f["end_to_end"]["emitted_to_published_ms_p99"], "< 1100", lambda v: v < 1100),
    ("inference", "pipeline overhead outside the detector, p99 at 30 frames/s (ms)",
     lambda f: f["fleet_6x140ms"]["overhead_at_30fps_ms_p99"], "< 15", lambda v: v < 15),
    ("inference", "overload 13.7:1: age at dispatch p99 (ms)",
     lambda f: f["overload_13.7_to_1"]["age_at_dispatch_ms_p99_steady"], "< 1000", lambda v: v < 1000),
    ("inference", "  the seed's FIFO under the same overload (ms)",
     lambda f: f["seed_fifo_13.7_to_1"]["age_at_dispatch_ms_p99"], "", lambda v: True),
    ("detector", "ONNX service through the worker, 16 cameras / its batch-16 rate alone",
     lambda f: f["through_worker"]["utilisation"], ">= 0.9", lambda v: v >= 0.9),
]


def main() -> int:
    folder = Path(sys.argv[1])
    runs = {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}
    rows = []
    for bench, name, value_of, goal, meets in ROWS:
        try:
            value = value_of(runs[bench])
        except (KeyError, TypeError):
            rows.append((name, "not measured", goal))
            continue
        rows.append((name, value, f"{goal} {'met' if meets(value) else 'NOT met'}" if goal else ""))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
