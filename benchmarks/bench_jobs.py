"""Job functions used by the benchmarks, identical for SAQ and saqlite.

In-process workloads read completion times from ``RECORDER``; functions run in a worker
subprocess return ``[time.monotonic_ns(), pid]`` as the job result instead, which the parent
reads back through the queue (CLOCK_MONOTONIC is system-wide on Linux).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any


class Recorder:
    """Collects ``time.perf_counter()`` at the end of each job run in this process."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.target = 0
        self.done: asyncio.Event | None = None

    def reset(self, target: int) -> None:
        """Expect ``target`` hits; call inside the running event loop."""
        self.times = []
        self.target = target
        self.done = asyncio.Event()

    def hit(self) -> None:
        self.times.append(time.perf_counter())
        if self.done is not None and len(self.times) >= self.target:
            self.done.set()


RECORDER = Recorder()


def burn(iters: int) -> int:
    """Pure-Python CPU work that holds the GIL."""
    acc = 0
    for i in range(iters):
        acc += i * i % 7
    return acc


def calibrate_burn(target_s: float = 0.002) -> int:
    """Iterations of ``burn`` that take about ``target_s`` seconds here (median of 5 tries)."""
    iters = 10_000
    while True:
        start = time.perf_counter()
        burn(iters)
        took = time.perf_counter() - start
        if took > 0.02:
            break
        iters *= 2
    per_iter = took / iters
    tries = []
    guess = max(1, int(target_s / per_iter))
    for _ in range(5):
        start = time.perf_counter()
        burn(guess)
        tries.append(time.perf_counter() - start)
    tries.sort()
    return max(1, int(guess * target_s / tries[2]))


def _stamp() -> list[int]:
    return [time.monotonic_ns(), os.getpid()]


async def noop(ctx: Any) -> None:
    """Does nothing; records its end time in this process."""
    RECORDER.hit()


async def sleeper(ctx: Any, *, s: float) -> None:
    """Sleeps ``s`` seconds (drawn by the enqueuer, so the floor is known exactly)."""
    await asyncio.sleep(s)
    RECORDER.hit()


async def stamp(ctx: Any) -> list[int]:
    """Returns its start time; used for pickup latency in and across processes."""
    result = _stamp()
    RECORDER.hit()
    return result


async def noop_mp(ctx: Any) -> list[int]:
    """No work; returns its end time and pid (multi-process runs)."""
    return _stamp()


async def cpu(ctx: Any, *, iters: int) -> list[int]:
    """About 2 ms of pure-Python work inside the event loop (async def: no thread pool)."""
    burn(iters)
    return _stamp()


FUNCTIONS = [noop, sleeper, stamp, noop_mp, cpu]
