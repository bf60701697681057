"""The cost of saqlite's durable steps (``saqlite.step``) against plain calls.

One job at a time (``concurrency=1``, nothing else running) calls a trivial async
function K times, either directly or as K steps; it times its own loop. The steps
job then fails once, so its second attempt replays the K steps from the record. The
figures are microseconds per call: plain, step (a first run: two writes each, its
start and its result) and replay (one read of the record per run, then none), and
the overhead of a step (step - plain).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench_queue import Backend

#: (mode, attempt) -> seconds the job's loop took, filled by the job function.
TOOK: dict[tuple[str, int], float] = {}


async def nothing(i: int) -> int:
    return i


async def loop(ctx: Any, *, mode: str, k: int) -> None:
    """K plain calls or K steps; a steps job fails its first attempt, to replay after."""
    import saqlite  # noqa: PLC0415 (the benchmark puts the project on the path first)

    attempt = ctx["job"].attempts
    start = time.perf_counter()
    for i in range(k):
        if mode == "plain":
            await nothing(i)
        else:
            await saqlite.step(ctx, f"call-{i}", nothing, i)
    TOOK[(mode, attempt)] = time.perf_counter() - start
    if mode == "step" and attempt == 1:
        raise RuntimeError("fails once, to be replayed")


async def _steps(backend: Backend, k: int) -> dict[str, float]:
    saqlite = backend.module
    TOOK.clear()
    queue = await backend.open_queue(backend.fresh_url())
    worker = saqlite.Worker(queue, functions=[loop], concurrency=1)
    task = asyncio.create_task(worker.start())
    try:
        for mode in ("plain", "step"):
            job = await queue.enqueue("loop", mode=mode, k=k, retries=2, timeout=0)
            await job.refresh(until_complete=300)
            if job.status != "complete":
                raise AssertionError(f"{mode} job ended {job.status}: {job.error}")
    finally:
        await worker.stop()
        await asyncio.wait({task}, timeout=10)
        await queue.disconnect()
    per_call = {key: took / k * 1e6 for key, took in TOOK.items()}
    return {
        "plain_us": per_call[("plain", 1)],
        "step_us": per_call[("step", 1)],
        "replay_us": per_call[("step", 2)],
        "overhead_us": per_call[("step", 1)] - per_call[("plain", 1)],
    }


def run_steps(backend: Backend, k: int) -> dict[str, float]:
    """Microseconds per plain call, per step, per replayed step, and a step's overhead."""
    return asyncio.run(_steps(backend, k))
