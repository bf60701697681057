"""huey with its SQLite storage (``huey.SqliteHuey``): the noop workload, for comparison.

One run = a subprocess (huey's consumer installs signal handlers): enqueue N noop tasks (huey's
enqueue is synchronous, so one after another), then start a consumer with 10 thread workers in
that process (default polling: 0.1 s growing to 10 s) and time from consumer start to the end of
the last task. Prints one JSON line.

    python benchmarks/bench_huey.py --db /tmp/h.db --n 1000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

try:
    from huey import SqliteHuey
except ImportError:  # optional peer: skipped
    SqliteHuey = None


def available() -> str:
    """An empty string when huey is importable, else the reason."""
    return "" if SqliteHuey is not None else "huey not installed (pip install huey)"


def one_run(db: str, n: int, workers: int) -> dict[str, Any]:
    logging.getLogger("huey").setLevel(logging.ERROR)
    huey = SqliteHuey("bench", filename=db)
    times: list[float] = []
    done = threading.Event()
    lock = threading.Lock()

    @huey.task()  # type: ignore[untyped-decorator]
    def noop() -> None:
        with lock:
            times.append(time.perf_counter())
            if len(times) >= n:
                done.set()

    start = time.perf_counter()
    for _ in range(n):
        noop()
    enqueue_s = time.perf_counter() - start
    consumer = huey.create_consumer(workers=workers, worker_type="thread", periodic=False)
    t0 = time.perf_counter()
    consumer.start()
    try:
        if not done.wait(60 + n / 200):
            raise TimeoutError(f"huey ran {len(times)} of {n} tasks")
        last = max(times)
    finally:
        consumer.stop(graceful=True)
    pending = huey.pending_count()
    if pending:
        raise AssertionError(f"huey left {pending} tasks pending")
    return {"enqueue_jobs_s": n / enqueue_s, "jobs_s": n / (last - t0), "drain_s": last - t0}


def run_huey(db: str, n: int, workers: int = 10) -> dict[str, Any]:
    """Run one measurement in a fresh subprocess; remove the db afterwards."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--db",
        db,
        "--n",
        str(n),
        "--workers",
        str(workers),
    ]
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=120 + n / 100, check=False
        )
        if out.returncode != 0:
            raise RuntimeError(f"huey run failed: {out.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result
    finally:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db + suffix):
                os.remove(db + suffix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--workers", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps(one_run(args.db, args.n, args.workers)), flush=True)


if __name__ == "__main__":
    main()
