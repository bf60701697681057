"""The example app's producer: enqueues work for a worker of ``app_tasks.settings``
and prints a JSON summary of what came back. The same file runs against saqlite or
SAQ: only app_tasks.py names the queue (see its docstring).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from app_tasks import queue


async def _until(check: Any, timeout: float = 30.0) -> None:
    """Poll an async check until it is true (both systems' refresh, no waiting API)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not get there in time: is it running?")
        await asyncio.sleep(0.05)


def _lines(path: str) -> list[str]:
    return Path(path).read_text().split() if Path(path).exists() else []


def _touch(path: str) -> None:
    Path(path).touch()


async def main() -> dict[str, Any]:
    await queue.connect()
    summary: dict[str, Any] = {}

    async def worker_up() -> bool:
        return bool((await queue.info())["workers"])

    async def ticked() -> bool:
        return len(_lines("ticks.txt")) >= 1

    # A worker is up, and past its start: its cron job has run once. (SAQ's Redis
    # sweeper, which runs as a worker starts, can sweep a job taken at that moment.)
    await _until(worker_up)
    await _until(ticked)

    summary["apply"] = await queue.apply("add", a=2, b=3, timeout=30)
    summary["map"] = await queue.map("add", [{"a": 1, "b": 2}, {"a": 3, "b": 4}], timeout=30)

    job = await queue.enqueue("flaky", failures=2, retries=3, timeout=30)
    assert job is not None
    await job.refresh(until_complete=30)
    summary["retried"] = {
        "status": job.status.value,
        "result": job.result,
        "attempts": job.attempts,
    }

    [failure] = await queue.map("broken", [{}], timeout=30, return_exceptions=True)
    summary["failed"] = {
        "status": failure.job.status.value,
        "error": failure.job.error.strip().splitlines()[-1],
    }

    gate = "report.go"  # the worker runs in this folder too
    report = await queue.enqueue("report", gate=gate, timeout=30)
    assert report is not None
    progress = [report.progress]

    async def half_done() -> bool:
        assert report is not None
        await report.refresh()
        return bool(report.progress == 0.5)

    await _until(half_done)
    progress.append(report.progress)
    _touch(gate)
    await report.refresh(until_complete=30)
    progress.append(report.progress)
    summary["report"] = {"result": report.result, "progress_seen": progress}

    waiter = await queue.enqueue("wait_forever", timeout=60)
    assert waiter is not None

    async def status() -> str:
        assert waiter is not None
        await waiter.refresh()
        return str(waiter.status.value)

    async def running() -> bool:
        return await status() == "active"

    async def finished() -> bool:
        return await status() in ("complete", "failed", "aborted")

    await _until(running)
    await waiter.abort("user abort")
    await _until(finished)
    summary["aborted"] = {"status": waiter.status.value, "error": waiter.error}

    start = time.time()
    job = await queue.enqueue("add", a=10, b=20, scheduled=int(start) + 2)
    assert job is not None
    await job.refresh(until_complete=30)
    summary["scheduled"] = {"result": job.result, "waited": job.started / 1000 >= int(start) + 2}

    async def ticked_twice() -> bool:
        return len(_lines("ticks.txt")) >= 2

    await _until(ticked_twice)
    summary["cron"] = sorted(set(_lines("ticks.txt")))

    await queue.disconnect()
    return summary


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main()), sort_keys=True))
