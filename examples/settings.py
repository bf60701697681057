"""A settings module for the worker command line, as with SAQ:

    saqlite examples.settings            # one worker process
    saqlite examples.settings --workers 2 -v

Then, from another shell, enqueue work:

    python examples/settings.py
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from saqlite import CronJob, Queue, SettingsDict

queue = Queue.from_url("sqlite:///saqlite.db", name="default")
log = logging.getLogger("examples")


async def resize(ctx: dict[str, Any], *, image: str, width: int) -> str:
    """A job that reports progress as it goes."""
    job = ctx["job"]
    for step in range(1, 5):
        await asyncio.sleep(0.1)
        await job.update(progress=step / 4)
    return f"{image} at {width}px"


def checksum(ctx: dict[str, Any], *, text: str) -> int:
    """A plain function: runs in a thread, so it may block."""
    return sum(text.encode())


async def tick(ctx: dict[str, Any]) -> None:
    """A cron job."""
    log.info("tick from worker %s", ctx["worker"].id)


async def startup(ctx: dict[str, Any]) -> None:
    ctx["greeting"] = "hello"  # every job's ctx sees what startup puts here


settings: SettingsDict = {
    "queue": queue,
    "functions": [resize, checksum],
    "concurrency": 10,
    "cron_jobs": [CronJob(tick, cron="* * * * * */30")],  # every 30 s
    "startup": startup,
}


async def _enqueue_some() -> None:
    print(await queue.apply("checksum", text="saqlite", timeout=30))
    print(
        await queue.map("resize", [{"image": "a.png", "width": w} for w in (64, 128)], timeout=30)
    )
    await queue.disconnect()


if __name__ == "__main__":
    sys.exit(asyncio.run(_enqueue_some()))
