"""saqlite's flow control (pauses and limits): what limits cost, and how exactly they hold.

- ``noop under a limit``: the SAQ-shape noop workload (N gathered enqueues, then one
  Worker(concurrency=10) drains them) with a limit in force: ``other`` (a concurrency
  limit on another function: the claim under limits, no start logged), ``rate`` (a
  rate on ``noop`` itself that never binds, 2,000,000,000/s: every start is logged
  and pruned). Compare with the plain ``noop c10`` of the same run.
- ``rate 100/s, 4 procs``: N noop_mp jobs prefilled, ``limit("noop_mp",
  rate="100/s")``, 4 worker processes released together. From the ``started`` times
  the claims stored (SQLite's clock, ms): starts per second after the first ``rate``
  (which start at once, the window being empty), the most
  starts in any 1 s window, and the delay from a token freeing (a start leaving its
  1 s window while jobs wait) to the next start: ``started[i + 100] - started[i] - 1000``.
- ``concurrency 1, 4 procs``: N sleeper jobs of 5 ms prefilled, ``limit("sleeper",
  concurrency=1)``, 4 worker processes: the delay from a job's function returning
  (its ``completed``) to the next job's start, in whichever process it is claimed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench_common import percentile
from bench_queue import Backend, Child, drain_recorded, prefill, timeout_for

#: Limits that are in force but never bind, by name (see the module docstring).
IDLE_LIMITS: dict[str, dict[str, Any]] = {
    "other": {"function": "other", "concurrency": 5},
    "rate": {"function": "noop", "rate": (2_000_000_000, 1.0)},
}


async def _noop_under(backend: Backend, n: int, limit: str) -> dict[str, float]:
    queue = await backend.open_queue(backend.fresh_url())
    try:
        await queue.limit(**IDLE_LIMITS[limit])
        jobs = await asyncio.gather(*(queue.enqueue("noop") for _ in range(n)))
        t0, times, _ = await drain_recorded(backend, queue, n)
        last = times[-1]
        done = await queue.jobs([job.key for job in jobs[:: max(1, n // 50)]])
        if any(job is None or job.status != "complete" for job in done):
            raise AssertionError("sampled jobs not complete")
        return {"jobs_s": n / (last - t0)}
    finally:
        await queue.disconnect()


def run_noop_under(backend: Backend, n: int, limit: str) -> dict[str, float]:
    return asyncio.run(_noop_under(backend, n, limit))


async def _limited_procs(
    backend: Backend, procs: int, n: int, function: str, kwargs: dict[str, Any], **limit: Any
) -> list[Any]:
    """Prefill, set the limit, release ``procs`` worker processes; the jobs as stored."""
    url = backend.fresh_url()
    queue = await backend.open_queue(url)
    children: list[Child] = []
    try:
        keys = await prefill(queue, backend.module, function, n, kwargs)
        await queue.limit(function, **limit)
        children = [Child(backend, url, wait_go=True) for _ in range(procs)]
        for child in children:
            child.expect()
        for child in children:
            child.send("GO")
        deadline = time.monotonic() + timeout_for(n, 20)
        while await queue.count("incomplete"):
            if time.monotonic() > deadline:
                raise TimeoutError("limited jobs still incomplete")
            await asyncio.sleep(0.05)
        for child in children:
            child.finish()
        jobs: list[Any] = await queue.jobs(keys)
        if any(job is None or job.status != "complete" for job in jobs):
            raise AssertionError("limited jobs not complete")
        return jobs
    finally:
        for child in children:
            child.close()
        await queue.disconnect()


def _most_in_window(starts: list[int], window_ms: float) -> int:
    most = first = 0
    for last, start in enumerate(starts):
        while starts[first] <= start - window_ms:
            first += 1
        most = max(most, last - first + 1)
    return most


def _delays(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values, 50),
        "p99_ms": percentile(values, 99),
        "max_ms": max(values),
    }


def run_rate_procs(backend: Backend, procs: int, n: int, rate: int) -> dict[str, float]:
    jobs = asyncio.run(_limited_procs(backend, procs, n, "noop_mp", {}, rate=f"{rate}/s"))
    starts = sorted(job.started for job in jobs)
    token_delays = [starts[i + rate] - starts[i] - 1000 for i in range(len(starts) - rate)]
    # The first `rate` start at once (the window is empty); the rest are paced by it.
    paced = (len(starts) - rate) / ((starts[-1] - starts[rate - 1]) / 1000)
    return {
        "starts_s": paced,
        "worst_window": _most_in_window(starts, 1000),
        **{f"token_{name}": value for name, value in _delays(token_delays).items()},
    }


def run_slot_procs(backend: Backend, procs: int, n: int) -> dict[str, float]:
    jobs = asyncio.run(_limited_procs(backend, procs, n, "sleeper", {"s": 0.005}, concurrency=1))
    # (Whole ms of two clocks' readings: SQLite's `started`, Python's `completed`.)
    runs = sorted((job.started, job.completed) for job in jobs)
    slot_delays = [runs[i + 1][0] - runs[i][1] for i in range(len(runs) - 1)]
    return {f"slot_{k}": v for k, v in _delays(slot_delays).items()}
