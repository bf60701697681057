"""Where a purge's time goes, and what it makes another process wait for.

    python benchmarks/bench_scale.py fill FILE 10000000   # keep a copy: a purge empties it
    python benchmarks/profile_purge.py FILE [--sweep-first]

Runs ``saqlite purge FILE --older-than 0s`` in this process with every statement timed,
beside another process that enqueues a job every 10 ms and notes how long each enqueue
took and how much of that it waited for the write lock (``Queue.worst_lock_wait``).
``--sweep-first`` runs the ttl sweep before (it deletes the expired 10% of a filled file
and gives their pages back, which leaves the file's free pages scattered, as months of
sweeps do). Prints, per kind of statement, how many ran and their p50, p99, max and total
time; the enqueues' p50, p99 and max; and the longest enqueues beside the statements
that overlapped them (times on the monotonic clock, which both processes share).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import time
from typing import Any

from bench_common import ensure_project_on_path, percentile
from bench_scale import timed_enqueues

ensure_project_on_path()
import saqlite  # noqa: E402

ENQUEUE_EVERY_S = 0.01
LONG_MS = 15.0


def enqueuer(path: str) -> None:
    """The child: enqueue every ENQUEUE_EVERY_S until a line on stdin; then print
    [start, ms, lock wait ms] per enqueue as JSON."""
    print(json.dumps(timed_enqueues(path, ENQUEUE_EVERY_S)), flush=True)


def _timed_statements() -> list[tuple[float, float, str]]:
    """Make every Queue._fetch note (start, end, its first two words); the list."""
    spans: list[tuple[float, float, str]] = []
    fetch = saqlite.Queue._fetch

    async def timed(self: saqlite.Queue, sql: str, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return await fetch(self, sql, *args, **kwargs)
        finally:
            kind = re.sub(r"\(\d+\)", "(N)", " ".join(sql.split()[:2]))  # slices' sizes vary
            spans.append((started, time.monotonic(), kind[:40]))

    setattr(saqlite.Queue, "_fetch", timed)  # noqa: B010 (a method, replaced)
    return spans


async def _sweep(path: str) -> None:
    queue = saqlite.Queue(path)
    try:
        await queue.sweep()
    finally:
        await queue.disconnect()


def _ms_line(name: str, values: list[float]) -> str:
    values = sorted(values)
    return (
        f"{name:40s} n={len(values):7d} p50={statistics.median(values):7.2f} "
        f"p99={percentile(values, 99):7.2f} max={values[-1]:7.1f} total={sum(values) / 1000:6.1f} s"
    )


def profile(path: str, sweep_first: bool) -> None:
    if sweep_first:
        started = time.monotonic()
        asyncio.run(_sweep(path))
        print(f"sweep: {time.monotonic() - started:.1f} s")
    spans = _timed_statements()
    child = subprocess.Popen(
        [sys.executable, __file__, "--enqueuer", path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    child.stdout.readline()
    started = time.monotonic()
    code = saqlite.main(["purge", path, "--older-than", "0s", "-q"])
    print(f"purge: exit {code}, {time.monotonic() - started:.1f} s")
    child.stdin.write("STOP\n")
    child.stdin.flush()
    rows: list[list[float]] = json.loads(child.stdout.readline())
    child.wait()

    print(_ms_line("another process's enqueue", [took for _, took, _ in rows]))
    by_kind: dict[str, list[float]] = {}
    for begun, ended, kind in spans:
        by_kind.setdefault(kind, []).append((ended - begun) * 1000)
    for kind, values in sorted(by_kind.items(), key=lambda item: -sum(item[1])):
        print(_ms_line(kind, values))
    long = sorted((row for row in rows if row[1] > LONG_MS), key=lambda row: -row[1])
    waited = sum(row[2] for row in long) / max(sum(row[1] for row in long), 1e-9)
    print(f"enqueues over {LONG_MS:g} ms: {len(long)}, {waited:.0%} of their time lock waits")
    for begun, took, lock in long[:20]:
        ended = begun + took / 1000
        beside = [
            f"{kind} {1000 * (end - start):.1f} ms"
            for start, end, kind in spans
            if start < ended and end > begun
        ]
        print(f"  {took:6.1f} ms (lock {lock:5.1f}) beside: {'; '.join(beside[:4])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file")
    parser.add_argument("--sweep-first", action="store_true")
    parser.add_argument("--enqueuer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.enqueuer:
        enqueuer(args.file)
    else:
        profile(args.file, args.sweep_first)


if __name__ == "__main__":
    main()
