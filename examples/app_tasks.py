"""The example app's settings module: one file that runs on saqlite or on SAQ.

    python -m saqlite app_tasks.settings     # a worker on ./app.db (run from examples/)
    python app_producer.py                   # from another shell: prints a JSON summary

To move it to SAQ (`pip install "saq[redis]"`), change the two lines marked "SAQ:" and
run the worker with `saq app_tasks.settings`; the producer stays as it is. The test
suite does exactly that against a real redis-server and compares the summaries.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from saqlite import CronJob, Queue  # SAQ: from saq import CronJob, Queue

URL = "sqlite:///app.db"  # SAQ: URL = "redis://localhost:6379"
queue = Queue.from_url(URL)


async def add(ctx: dict[str, Any], *, a: int, b: int) -> int:
    return a + b


async def flaky(ctx: dict[str, Any], *, failures: int) -> int:
    """Fails its first ``failures`` attempts (give it ``retries`` > failures)."""
    attempts: int = ctx["job"].attempts
    if attempts <= failures:
        raise ConnectionError(f"attempt {attempts} failed")
    return attempts


async def broken(ctx: dict[str, Any]) -> None:
    raise RuntimeError("broken on purpose")


async def report(ctx: dict[str, Any], *, gate: str) -> str:
    """Reports half done, then waits for the file ``gate`` before it finishes."""
    await ctx["job"].update(progress=0.5)
    while True:
        if _exists(gate):
            return "report ready"
        await asyncio.sleep(0.05)


def _exists(path: str) -> bool:
    return Path(path).exists()


async def wait_forever(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(3600)


def tick(ctx: dict[str, Any]) -> None:
    """A cron job, and a plain function (it runs in a thread): notes each run in ./ticks.txt."""
    with open("ticks.txt", "a") as ticks:
        ticks.write(f"{ctx['job'].function}\n")


settings = {
    "queue": queue,
    "functions": [add, flaky, broken, report, wait_forever],
    "cron_jobs": [CronJob(tick, cron="* * * * * *")],  # every second
    "concurrency": 8,
}
