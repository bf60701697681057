"""Workloads through the SAQ API, run the same way against SAQ (Redis) and saqlite (SQLite).

Each public ``run_*`` function does ONE run on a fresh queue and returns plain numbers; the
harness (``run.py``) repeats them and turns them into records.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import queue as thread_queue
import random
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import bench_jobs
from bench_common import (
    BENCH_DIR,
    dir_size,
    now_ns,
    percentile,
    process_cpu_seconds,
    spawn_python,
    stop_process,
)
from bench_redis import flush, used_memory

CONCURRENCY = 10
PREFILL_CHUNK = 1000


# --------------------------------------------------------------------------- backends


@dataclass
class Backend:
    """Where a queue lives: saqlite on a fresh file per run, or SAQ on a flushed Redis."""

    system: str  # "saqlite" or "saq"
    config: str  # "sqlite-normal", "sqlite-full", "redis-mem", "redis-aof", ...
    location: str  # a directory for saqlite, a redis:// URL for SAQ
    queue_kwargs: dict[str, Any] = field(default_factory=dict)
    _runs: int = 0
    db_path: str = ""

    @property
    def module(self) -> Any:
        return importlib.import_module(self.system)

    def fresh_url(self) -> str:
        """A URL for an empty queue: a new db file, or the flushed Redis."""
        self._runs += 1
        if self.system == "saqlite":
            self.db_path = os.path.join(self.location, f"{self.config}-{self._runs}.db")
            return "sqlite:///" + self.db_path  # absolute path: sqlite:////tmp/...
        flush(self.location)
        return self.location

    async def open_queue(self, url: str) -> Any:
        queue = self.module.Queue.from_url(url, name="bench", **self.queue_kwargs)
        await queue.connect()
        return queue

    def storage_sizes(self) -> dict[str, int]:
        if self.system != "saqlite":
            return {}
        return dir_size(self.location, os.path.basename(self.db_path))


# --------------------------------------------------------------------------- helpers


async def start_worker(backend: Backend, queue: Any) -> tuple[Any, asyncio.Task[Any]]:
    worker = backend.module.Worker(queue, functions=bench_jobs.FUNCTIONS, concurrency=CONCURRENCY)
    return worker, asyncio.create_task(worker.start())


async def stop_worker(worker: Any, task: asyncio.Task[Any]) -> None:
    await worker.stop()
    _, pending = await asyncio.wait({task}, timeout=10)
    for left in pending:
        left.cancel()


async def wait_incomplete_zero(queue: Any, timeout: float, interval: float = 0.001) -> float:
    """Poll ``count("incomplete")`` until 0; return the perf_counter time it was seen."""
    deadline = time.perf_counter() + timeout
    while await queue.count("incomplete"):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"jobs still incomplete after {timeout:.0f} s")
        await asyncio.sleep(interval)
    return time.perf_counter()


async def check_complete(
    backend: Backend, queue: Any, keys: Sequence[str], sample: int = 50
) -> int:
    """Read back a sample of jobs; saqlite's must all be COMPLETE. Returns how many are not.

    SAQ 0.26 on Redis has a race: the sweep that a Worker runs as it starts can mark a job
    it has just dequeued as aborted ("swept") although it runs; SAQ's count is reported only.
    """
    step = max(1, len(keys) // sample)
    jobs = await queue.jobs(list(keys[::step]))
    bad = [j for j in jobs if j is None or str(getattr(j.status, "value", j.status)) != "complete"]
    if bad and backend.system == "saqlite":
        raise AssertionError(f"{len(bad)} of {len(jobs)} sampled jobs not complete: {bad[:2]}")
    return len(bad)


async def prefill(
    queue: Any, module: Any, function: str, n: int, kwargs: dict[str, Any]
) -> list[str]:
    """Fill the queue (not measured): enqueue_many when the queue has it, else gathered enqueues."""
    keys: list[str] = []
    bulk = getattr(queue, "enqueue_many", None)
    for start in range(0, n, PREFILL_CHUNK):
        count = min(PREFILL_CHUNK, n - start)
        if bulk is not None:
            jobs = await bulk([module.Job(function, kwargs=dict(kwargs)) for _ in range(count)])
        else:
            jobs = await asyncio.gather(*(queue.enqueue(function, **kwargs) for _ in range(count)))
        keys.extend(j.key for j in jobs)
    return keys


def timeout_for(n: int, rate: float = 200.0) -> float:
    return 60.0 + n / rate


# --------------------------------------------------------------------------- 1. SAQ shape


async def drain_recorded(
    backend: Backend, queue: Any, jobs: int
) -> tuple[float, list[float], float]:
    """Start a worker on ``queue`` and wait until ``jobs`` jobs have ended in it, then until
    the queue has no incomplete job; the start time, each end's time (sorted, from the
    recorder) and when the queue was seen empty (all perf_counter)."""
    bench_jobs.RECORDER.reset(jobs)
    t0 = time.perf_counter()
    worker, task = await start_worker(backend, queue)
    try:
        assert bench_jobs.RECORDER.done is not None
        await asyncio.wait_for(bench_jobs.RECORDER.done.wait(), timeout_for(jobs))
        times = sorted(bench_jobs.RECORDER.times)
        confirmed = await wait_incomplete_zero(queue, 30)
    finally:
        await stop_worker(worker, task)
    return t0, times, confirmed


async def _enqueue_then_drain(
    backend: Backend, n: int, function: str, kwargs_list: list[dict[str, Any]]
) -> dict[str, float]:
    queue = await backend.open_queue(backend.fresh_url())
    try:
        start = time.perf_counter()
        jobs = await asyncio.gather(*(queue.enqueue(function, **kw) for kw in kwargs_list))
        enqueue_s = time.perf_counter() - start
        if any(j is None for j in jobs):
            raise AssertionError("enqueue returned None for a fresh key")
        t0, times, confirmed = await drain_recorded(backend, queue, n)
        last = times[-1]
        not_complete = await check_complete(backend, queue, [j.key for j in jobs])
        return {
            "sampled_not_complete": not_complete,
            "enqueue_jobs_s": n / enqueue_s,
            "drain_s": last - t0,
            "jobs_s": n / (last - t0),
            "confirmed_s": confirmed - t0,
        }
    finally:
        await queue.disconnect()


def run_noop(backend: Backend, n: int) -> dict[str, float]:
    """Enqueue N noop jobs with asyncio.gather, then drain them with one Worker(concurrency=10)."""
    return asyncio.run(_enqueue_then_drain(backend, n, "noop", [{} for _ in range(n)]))


def run_sleeper(backend: Backend, n: int, seed: int = 0) -> dict[str, float]:
    """Like ``run_noop`` with sleeps of U(0, 50 ms); reports the time against sum(sleeps)/10."""
    rng = random.Random(seed)
    kwargs_list = [{"s": rng.uniform(0.0, 0.05)} for _ in range(n)]
    result = asyncio.run(_enqueue_then_drain(backend, n, "sleeper", kwargs_list))
    result["floor_s"] = sum(kw["s"] for kw in kwargs_list) / CONCURRENCY
    result["x_floor"] = result["drain_s"] / result["floor_s"]
    return result


# --------------------------------------------------------------------------- 2. bulk enqueue


async def _bulk(backend: Backend, n: int) -> dict[str, float]:
    queue = await backend.open_queue(backend.fresh_url())
    try:
        bulk = getattr(queue, "enqueue_many", None)
        if bulk is None:
            raise NotImplementedError("Queue.enqueue_many not available")
        jobs = [backend.module.Job("noop") for _ in range(n)]
        start = time.perf_counter()
        enqueued = await bulk(jobs)
        took = time.perf_counter() - start
        count = await queue.count("queued")
        if count != n or len(list(enqueued)) != n:
            raise AssertionError(f"enqueue_many stored {count} of {n} jobs")
        return {"jobs_s": n / took}
    finally:
        await queue.disconnect()


def run_bulk(backend: Backend, n: int) -> dict[str, float]:
    """``await queue.enqueue_many([Job(...), ...])`` of N jobs in one call."""
    return asyncio.run(_bulk(backend, n))


# --------------------------------------------------------------------------- 2b. pipeline


async def _pipeline(backend: Backend, n: int) -> dict[str, float]:
    queue = await backend.open_queue(backend.fresh_url())
    try:
        job = backend.module.Job
        root = job("noop", key="root")
        middle = [job("noop", key=f"m{i}", depends_on=[root]) for i in range(n)]
        final = job("noop", key="final", depends_on=middle)
        start = time.perf_counter()
        await queue.enqueue_many([root, *middle, final])  # one transaction
        enqueue_s = time.perf_counter() - start
        t0, times, _ = await drain_recorded(backend, queue, n + 2)
        await final.refresh()
        if str(final.status) != "complete":
            raise AssertionError(f"the fan-in job ended {final.status}")
        return {
            "enqueue_jobs_s": (n + 2) / enqueue_s,
            "jobs_s": (n + 2) / (times[-1] - t0),
            # From the end of the last of the N to the end of the job that waited on them.
            "fan_in_ms": (times[-1] - times[-2]) * 1000,
        }
    finally:
        await queue.disconnect()


def run_pipeline(backend: Backend, n: int) -> dict[str, float]:
    """A fan-out/fan-in graph: one root, N jobs that depend on it, one job that depends
    on the N; enqueued in one ``enqueue_many``, drained by one Worker(concurrency=10)."""
    return asyncio.run(_pipeline(backend, n))


# --------------------------------------------------------------------------- 3. pickup latency


async def _paced_enqueues(
    queue: Any, count: int, interval: float
) -> tuple[list[Any], list[int], list[int]]:
    jobs, before, calls = [], [], []
    start = time.monotonic()
    for i in range(count):
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t_before = now_ns()
        job = await queue.enqueue("stamp")
        calls.append(now_ns() - t_before)
        before.append(t_before)
        jobs.append(job)
    return jobs, before, calls


async def _latencies(
    queue: Any, jobs: list[Any], before: list[int], calls: list[int]
) -> dict[str, float]:
    await wait_incomplete_zero(queue, 30, interval=0.01)
    done = await queue.jobs([j.key for j in jobs])
    lat = [(j.result[0] - t) / 1e6 for j, t in zip(done, before)]
    return {
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat),
        "enqueue_call_p50_ms": percentile([c / 1e6 for c in calls], 50),
    }


async def _pickup_inproc(
    backend: Backend, count: int, interval: float, idle_s: float
) -> dict[str, float]:
    queue = await backend.open_queue(backend.fresh_url())
    try:
        worker, task = await start_worker(backend, queue)
        try:
            await asyncio.sleep(idle_s)
            jobs, before, calls = await _paced_enqueues(queue, count, interval)
            return await _latencies(queue, jobs, before, calls)
        finally:
            await stop_worker(worker, task)
    finally:
        await queue.disconnect()


def run_pickup_inproc(
    backend: Backend, count: int, interval: float, idle_s: float
) -> dict[str, float]:
    """Idle worker in this process; one job every ``interval`` s; enqueue-call to function start."""
    return asyncio.run(_pickup_inproc(backend, count, interval, idle_s))


class Child:
    """A worker subprocess with a line reader thread, so every wait has a timeout."""

    def __init__(self, backend: Backend, url: str, wait_go: bool) -> None:
        args = [os.path.join(BENCH_DIR, "bench_worker.py"), "--module", backend.system]
        args += [
            "--url",
            url,
            "--name",
            "bench",
            "--queue-kwargs",
            json.dumps(backend.queue_kwargs),
        ]
        if wait_go:
            args.append("--wait-go")
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in close()
        self.proc = spawn_python(args, self.stderr)
        self.lines: thread_queue.Queue[str] = thread_queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("")

    def expect(self, timeout: float = 60.0) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except thread_queue.Empty:
            raise TimeoutError("worker subprocess did not answer") from None
        if not line:
            self.proc.wait(10)
            self.stderr.seek(0)
            raise RuntimeError(f"worker subprocess exited: {self.stderr.read()[-3000:]}")
        return line

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self) -> dict[str, Any]:
        """Send STOP and return the child's final JSON (peak RSS, CPU)."""
        self.send("STOP")
        stats: dict[str, Any] = json.loads(self.expect(30))
        self.proc.wait(10)
        return stats

    def close(self) -> None:
        stop_process(self.proc)
        for stream in (self.proc.stdin, self.proc.stdout, self.stderr):
            if stream is not None:
                with contextlib.suppress(BrokenPipeError, OSError):
                    stream.close()


def idle_cpu_percent(pid: int, seconds: float) -> float:
    start_cpu, start = process_cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (process_cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


async def _pickup_subproc(
    backend: Backend, count: int, interval: float, idle_s: float, cpu_s: float
) -> dict[str, float]:
    url = backend.fresh_url()
    queue = await backend.open_queue(url)
    child = Child(backend, url, wait_go=False)
    try:
        child.expect()
        await asyncio.sleep(idle_s)
        idle_cpu = idle_cpu_percent(child.proc.pid, cpu_s)  # blocks this loop: it has no worker
        jobs, before, calls = await _paced_enqueues(queue, count, interval)
        result = await _latencies(queue, jobs, before, calls)
        result["idle_cpu_pct"] = idle_cpu
        child.finish()
        return result
    finally:
        child.close()
        await queue.disconnect()


def run_pickup_subproc(
    backend: Backend, count: int, interval: float, idle_s: float, cpu_s: float
) -> dict[str, float]:
    """Same as in-process, worker in another process; also its idle CPU as % of one core."""
    return asyncio.run(_pickup_subproc(backend, count, interval, idle_s, cpu_s))


# --------------------------------------------------------------------------- 4./6. processes


async def _with_children(
    backend: Backend,
    procs: int,
    n: int,
    function: str,
    kwargs: dict[str, Any],
    *,
    after: Callable[[Any], Awaitable[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    url = backend.fresh_url()
    queue = await backend.open_queue(url)
    children: list[Child] = []
    try:
        keys = await prefill(queue, backend.module, function, n, kwargs)
        children = [Child(backend, url, wait_go=True) for _ in range(procs)]
        for child in children:
            child.expect()
        t0 = now_ns()
        for child in children:
            child.send("GO")
        await wait_incomplete_zero(queue, timeout_for(n, 100), interval=0.05)
        stats = [child.finish() for child in children]
        result: dict[str, Any] = {"maxrss_kb": max(s["maxrss_kb"] for s in stats)}
        waits = [s["worst_lock_wait_ms"] for s in stats if "worst_lock_wait_ms" in s]
        if waits:
            result["worst_lock_wait_ms"] = max(waits)
        if function in ("noop_mp", "cpu"):
            result.update(_stamped_throughput(await queue.jobs(keys), t0))
        else:
            result["sampled_not_complete"] = await check_complete(backend, queue, keys)
        if after is not None:
            result.update(await after(queue))
        return result
    finally:
        for child in children:
            child.close()
        await queue.disconnect()


def _stamped_throughput(done: list[Any], t0: int) -> dict[str, Any]:
    """Jobs/s from the end stamps of the jobs that completed; counts those that did not.

    A job can end up not complete although it ran: a sweep in another worker process can
    take it for an orphan and abort it (seen with SAQ and saqlite); that count is reported.
    """
    ok = [j for j in done if j is not None and isinstance(j.result, list)]
    ends = [j.result[0] for j in ok]
    pids = [j.result[1] for j in ok]
    return {
        "jobs_s": len(ok) / ((max(ends) - t0) / 1e9),
        "not_complete": len(done) - len(ok),
        "per_process": sorted(pids.count(p) for p in set(pids)),
    }


def run_processes(
    backend: Backend, procs: int, n: int, function: str, iters: int = 0
) -> dict[str, Any]:
    """N jobs prefilled, then ``procs`` worker processes started together on the same queue."""
    kwargs = {"iters": iters} if function == "cpu" else {}
    return asyncio.run(_with_children(backend, procs, n, function, kwargs))


def run_memory(backend: Backend, n: int) -> dict[str, Any]:
    """Peak RSS of one worker process that processed N noop jobs; storage size afterwards."""

    async def sizes(queue: Any) -> dict[str, Any]:
        if backend.system == "saqlite":
            files = backend.storage_sizes()
            return {"storage_bytes": sum(files.values()), "files": files}
        return {"storage_bytes": used_memory(backend.location)}

    return asyncio.run(_with_children(backend, 1, n, "noop", {}, after=sizes))
