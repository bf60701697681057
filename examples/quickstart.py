"""Run one real job end to end on the default file, ./saqlite.db.

    python examples/quickstart.py

It enqueues a job, starts a worker in this process, waits for the result and prints it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from saqlite import Queue, Worker


async def add(ctx: dict[str, Any], *, a: int, b: int) -> int:
    """The job: any async (or plain) function taking ctx and keyword arguments."""
    return a + b


async def main() -> None:
    queue = Queue()  # ./saqlite.db, queue "default"
    worker = Worker(queue, functions=[add])
    running = asyncio.create_task(worker.start())
    try:
        job = await queue.enqueue("add", a=2, b=3)
        assert job is not None
        await job.refresh(until_complete=10)
        print(f"add(a=2, b=3) = {job.result}")
        print(f"stored in {queue.path}: a {job.status} job with key {job.key}")
    finally:
        await worker.stop()
        await running


if __name__ == "__main__":
    asyncio.run(main())
