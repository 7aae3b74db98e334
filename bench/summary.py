"""The goals of `make bench` in one table: each figure from the JSON the benchmarks wrote in one run, beside the
design it replaces where the run measured one, and its goal from bench/goals.toml: met, NOT met, or machine-bound
(the figure needs more busy processes than the machine had cores).

    .venv/bin/python bench/summary.py [--check] FOLDER   (the folder `make bench` gave each benchmark's --json)

With --check (`make bench-smoke`) it exits 1 when a benchmark's JSON is missing or lacks a figure the table reads,
naming each; the verdicts are printed, not checked.
"""

from __future__ import annotations

import argparse
import json
import operator
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framewatch.ops.load import print_table

HERE = Path(__file__).resolve().parent
GOALS = HERE / "goals.toml"
BENCHES = sorted(path.stem for path in HERE.glob("*.py") if path.name != Path(__file__).name)
CORES = "cores/available"  # every benchmark's JSON has it (print_figures)
COMPARE: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, "<": operator.lt, ">=": operator.ge,
                                                      ">": operator.gt}


@dataclass(frozen=True)
class Figure:
    """One row of bench/goals.toml (its header says what each field means)."""

    bench: str
    name: str
    figure: str
    goal: str = ""
    processes: str = ""

    def __post_init__(self) -> None:
        if self.goal and (len(self.goal.split()) != 2 or self.goal.split()[0] not in COMPARE):
            raise ValueError(f"{GOALS}: goal {self.goal!r} of {self.figure!r} is not like '<= 1.0'")

    def verdict(self, value: float, run: dict[str, Any]) -> str:
        if not self.goal:
            return ""
        if self.processes:
            processes, cores = lookup(run, self.processes), lookup(run, CORES)
            if processes > cores:
                return f"{self.goal} machine-bound ({processes} busy processes, {cores} cores)"
        sign, bound = self.goal.split()
        return f"{self.goal} {'met' if COMPARE[sign](value, float(bound)) else 'NOT met'}"


def lookup(run: dict[str, Any], path: str) -> Any:
    """The figure at `path` ("key/key"); KeyError when it is missing or was not measured (null)."""
    value: Any = run
    for key in path.split("/"):
        if not isinstance(value, dict) or value.get(key) is None:
            raise KeyError(path)
        value = value[key]
    return value


def unmeasured(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Each benchmark that wrote no JSON, or a JSON without the cores it had."""
    return [f"{bench}: {'no JSON' if bench not in runs else CORES}" for bench in BENCHES
            if bench not in runs or not has(runs[bench], CORES)]


def has(run: dict[str, Any], path: str) -> bool:
    try:
        lookup(run, path)
        return True
    except KeyError:
        return False


def table(runs: dict[str, dict[str, Any]], figures: list[Figure]) -> tuple[list[tuple[str, Any, str]], list[str]]:
    """The summary's rows, and each figure missing from the JSON, as "bench: key"."""
    rows: list[tuple[str, Any, str]] = []
    missing = unmeasured(runs)
    for figure in figures:
        run = runs.get(figure.bench, {})
        try:
            value = lookup(run, figure.figure)
            rows.append((figure.name, value, figure.verdict(value, run)))
        except KeyError as error:
            missing.append(f"{figure.bench}: {error.args[0]}")
            rows.append((figure.name, "not measured", figure.goal))
    return rows, missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 when a figure is missing")
    args = parser.parse_args()
    figures = [Figure(**entry) for entry in tomllib.loads(GOALS.read_text())["figure"]]
    runs = {path.stem: json.loads(path.read_text()) for path in args.folder.glob("*.json")}
    rows, missing = table(runs, figures)
    print_table(rows)
    if args.check and missing:
        print(f"\nmissing from {args.folder}:\n" + "\n".join(f"  {m}" for m in missing), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
