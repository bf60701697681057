"""A worker process for the cross-process benchmarks (SAQ or saqlite, same API).

Run by the harness, not by hand:

    python benchmarks/bench_worker.py --module saqlite --url sqlite:////tmp/x.db [--wait-go]

Line protocol: prints ``READY`` once connected; with ``--wait-go`` waits for ``GO`` on stdin
before starting the worker; stops on ``STOP`` (or end of stdin) and prints one JSON line with
its peak RSS (VmHWM, KiB) and CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import resource
import sys
from typing import Any

import bench_jobs
from bench_common import ensure_project_on_path


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--module", required=True, choices=["saq", "saqlite"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--name", default="default")
    parser.add_argument("--queue-kwargs", default="{}", help="JSON dict for Queue.from_url")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--wait-go", action="store_true")
    return parser.parse_args(argv)


async def read_line() -> str:
    loop = asyncio.get_running_loop()
    line: str = await loop.run_in_executor(None, sys.stdin.readline)
    return line.strip()


def peak_rss_kb() -> int:
    """VmHWM of this process: its peak RSS since exec.

    ``ru_maxrss`` is not used: Linux keeps it across execve, so a child started by a big
    parent reports at least the parent's size.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def usage() -> dict[str, Any]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"maxrss_kb": peak_rss_kb(), "cpu_s": ru.ru_utime + ru.ru_stime}


async def main(args: argparse.Namespace) -> None:
    logging.getLogger("saq").setLevel(logging.ERROR)
    ensure_project_on_path()  # saqlite.py sits one level up
    mod = importlib.import_module(args.module)
    queue = mod.Queue.from_url(args.url, name=args.name, **json.loads(args.queue_kwargs))
    await queue.connect()
    worker = mod.Worker(queue, functions=bench_jobs.FUNCTIONS, concurrency=args.concurrency)
    print("READY", flush=True)
    if args.wait_go:
        await read_line()
    task = asyncio.create_task(worker.start())
    await read_line()  # STOP or EOF
    await worker.stop()
    _, pending = await asyncio.wait({task}, timeout=10)
    for left in pending:
        left.cancel()
    await queue.disconnect()
    result = usage()
    worst_wait = getattr(queue, "worst_lock_wait", None)  # saqlite: seconds, longest lock wait
    if worst_wait is not None:
        result["worst_lock_wait_ms"] = worst_wait * 1000
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
