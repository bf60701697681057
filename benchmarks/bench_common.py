"""Shared helpers for the saqlite benchmarks: statistics, records, clocks, subprocesses.

Not a benchmark itself; imported by ``run.py`` and the other ``bench_*`` modules.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
PROJECT_DIR = os.path.dirname(BENCH_DIR)


def ensure_project_on_path() -> None:
    """Make ``import saqlite`` (one level up) and the sibling bench modules importable."""
    for path in (PROJECT_DIR, BENCH_DIR):
        if path not in sys.path:
            sys.path.insert(0, path)


def now_ns() -> int:
    """A clock valid across processes: CLOCK_MONOTONIC is system-wide on Linux."""
    return time.monotonic_ns()


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Record:
    """One measured figure, with one value per run."""

    system: str  # saqlite, saq, huey, raw-sqlite3, raw-aiosqlite
    config: str  # e.g. sqlite-normal, redis-mem, redis-aof
    workload: str  # e.g. "noop N=10000"
    metric: str  # e.g. "jobs/s"
    values: list[float] = field(default_factory=list)
    higher_is_better: bool = True
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def key(self) -> str:
        return f"{self.workload}|{self.metric}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.values:
            data.update(median=self.median, min=self.low, max=self.high)
        return data


@dataclass
class Failure:
    """A workload that raised, kept for the report instead of aborting the whole run."""

    system: str
    config: str
    workload: str
    error: str


def fmt_num(value: float) -> str:
    """Thousands separators for big numbers, 2-3 significant digits for small ones."""
    if math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def spawn_python(args: list[str], stderr: IO[str]) -> subprocess.Popen[str]:
    """Start ``python <args>`` with pipes for a line protocol on stdin/stdout.

    stderr goes to a file, so a chatty child can never block on a full pipe.
    """
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(
        [PROJECT_DIR, BENCH_DIR, child_env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    child_env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=child_env,
    )


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Terminate one child we started, by its handle; kill it if it does not go."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def process_cpu_seconds(pid: int) -> float:
    """utime+stime of a process (all its threads) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        stat = fh.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def dir_size(path: str, prefix: str) -> dict[str, int]:
    """Sizes of the files in ``path`` whose name starts with ``prefix`` (db, -wal, -shm)."""
    sizes: dict[str, int] = {}
    for name in sorted(os.listdir(path)):
        if name.startswith(prefix):
            sizes[name] = os.path.getsize(os.path.join(path, name))
    return sizes
