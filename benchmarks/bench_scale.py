"""``run.py --scale``: how saqlite's costs grow with the file, beside SAQ on Redis.

For each size N (``--scale-sizes``, default 10000,1000000,10000000) a file is filled with
N jobs of one queue, written as a real enqueue writes them (the row of one real
``SyncQueue.enqueue``, copied with its own key, status and times by ``executemany``, 100,000
rows a transaction, so 10M jobs take minutes, not hours):

- 1% waiting and due, 1% scheduled a year ahead, 1% failed,
- 10% complete and past their ttl (what the sweep deletes),
- the rest complete, kept for a day.

Then, each in a fresh process where it matters:

- ``info()`` and ``count("incomplete")`` (median of 7 calls, ms);
- ``saqlite info FILE``, ``saqlite jobs FILE`` (newest first), ``--status failed``,
  ``--page 5000`` and the page after it by ``--after`` (a new process each, median of 3, s);
- the sweep deleting the expired 10% (s), while another process enqueues a job every 2 ms:
  its worst and p99 enqueue (ms);
- worker throughput: 5,000 no-op jobs enqueued ahead of the waiting ones (priority -1), then
  one in-process ``Worker(concurrency=10)`` drains them beside the waiting ones (jobs/s from
  its 500th job to its 5,000th), and that process's peak RSS;
- ``saqlite purge FILE --older-than 0s`` (every finished job, about 97% of the file), with the
  same enqueuing process beside it; and the size of the file (db + wal) filled, after the sweep
  and after the purge;
- ``Queue.enqueue_stream`` of N jobs from a generator into a new file (s), and that process's
  peak RSS (it should not grow with N).

SAQ on Redis gets the same numbers of jobs (the finished ones as job keys with a ttl, the
waiting and scheduled ones through ``Queue.enqueue``) and the same ``info()`` and ``count()``.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import bench_redis
from bench_common import BENCH_DIR, PROJECT_DIR, ensure_project_on_path, fmt_num, percentile

FILL_SLICE = 100_000
CLAIM_JOBS = 5_000
PROBE_INTERVAL_S = 0.002
QUEUE = "default"


def composition(n: int) -> list[tuple[str, int]]:
    """(kind, how many) of a file of n jobs."""
    small = max(n // 100, 1)
    expired = n // 10
    return [
        ("due", small),
        ("scheduled", small),
        ("failed", small),
        ("expired", expired),
        ("complete", n - 3 * small - expired),
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PROJECT_DIR, BENCH_DIR, env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _child(*args: str) -> dict[str, Any]:
    """Run ``python bench_scale.py <args>`` and return the JSON it prints last."""
    out = subprocess.run(
        [sys.executable, os.path.join(BENCH_DIR, "bench_scale.py"), *args],
        env=_env(),
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# -- filling ---------------------------------------------------------------------


def fill(path: str, n: int) -> dict[str, Any]:
    """Fill a new saqlite file with n jobs (see the module docstring)."""
    saqlite = importlib.import_module("saqlite")
    started = time.monotonic()
    with saqlite.SyncQueue(path, name=QUEUE) as queue:
        template = queue.enqueue("noop", key="template")
        assert template is not None
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    cursor = conn.execute("SELECT * FROM saqlite_jobs WHERE key = 'template'")
    columns = [d[0] for d in cursor.description]
    row = list(cursor.fetchone())
    conn.execute("DELETE FROM saqlite_jobs")
    col = {name: i for i, name in enumerate(columns)}
    data = row[col["data"]]
    text = data.decode() if isinstance(data, bytes) else data
    base_ms = int(time.time() * 1000) - n - 60_000
    now_s = time.time()
    marks = ", ".join("?" * len(columns))
    sql = f"INSERT INTO saqlite_jobs ({', '.join(columns)}) VALUES ({marks})"

    def rows() -> Any:
        i = 0
        for kind, count in composition(n):
            for _ in range(count):
                key = f"k{i:010d}"
                values = list(row)
                values[col["key"]] = key
                blob = text.replace("template", key)
                values[col["data"]] = blob.encode() if isinstance(data, bytes) else blob
                queued = base_ms + i
                values[col["queued"]] = queued
                values[col["run_at"]] = queued / 1000
                if kind == "scheduled":
                    values[col["run_at"]] = now_s + 365 * 86400
                if kind in ("failed", "expired", "complete"):
                    values[col["status"]] = "failed" if kind == "failed" else "complete"
                    values[col["attempts"]] = 1
                    values[col["started"]] = values[col["touched"]] = queued
                    values[col["completed"]] = queued + 1
                    values[col["expire_at"]] = now_s + (-60 if kind == "expired" else 86400)
                    if kind == "failed":
                        values[col["error"]] = "Traceback ...\nValueError: boom"
                yield values
                i += 1

    batch: list[Any] = []
    for values in rows():
        batch.append(values)
        if len(batch) == FILL_SLICE:
            conn.execute("BEGIN")
            conn.executemany(sql, batch)
            conn.execute("COMMIT")
            batch.clear()
    if batch:
        conn.execute("BEGIN")
        conn.executemany(sql, batch)
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return {"fill_s": time.monotonic() - started, "fill_bytes": _file_bytes(path)}


def _file_bytes(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


# -- measuring saqlite -----------------------------------------------------------


def _cli(path: str, *args: str, runs: int = 3) -> tuple[float, str]:
    """Median wall time (s) of ``python -m saqlite <args> FILE ...`` in a new process."""
    times, out = [], ""
    for _ in range(runs):
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "saqlite", args[0], path, *args[1:]],
            env=_env(),
            check=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        ).stdout
        times.append(time.monotonic() - started)
    return statistics.median(times), out


class _Probe:
    """Another process enqueuing a job every PROBE_INTERVAL_S, until stopped."""

    def __init__(self, path: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(BENCH_DIR, "bench_scale.py"), "probe", path],
            env=_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.proc.stdout.readline()  # READY

    def stop(self) -> dict[str, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("STOP\n")
        self.proc.stdin.flush()
        result: dict[str, float] = json.loads(self.proc.stdout.readline())
        self.proc.wait(30)
        return result


def timed_enqueues(path: str, every_s: float) -> list[tuple[float, float, float]]:
    """Print READY, then enqueue a job (queue "probe") every ``every_s`` until a line comes
    on stdin; per enqueue, its start (monotonic, s), how long it took and how much of that
    it waited for the write lock (ms)."""
    saqlite = importlib.import_module("saqlite")
    stop = threading.Event()
    rows: list[tuple[float, float, float]] = []
    with saqlite.SyncQueue(path, name="probe") as queue:
        queue.enqueue("noop", ttl=-1)
        print("READY", flush=True)

        def wait_for_stop() -> None:
            sys.stdin.readline()
            stop.set()

        threading.Thread(target=wait_for_stop, daemon=True).start()
        while not stop.wait(every_s):
            queue.queue.worst_lock_wait = 0.0
            started = time.monotonic()
            queue.enqueue("noop", ttl=-1)
            took = time.monotonic() - started
            rows.append((started, took * 1000, queue.queue.worst_lock_wait * 1000))
    return rows


def probe(path: str) -> None:
    """The ``probe`` child: enqueue every PROBE_INTERVAL_S until STOP on stdin."""
    latencies = [took for _, took, _ in timed_enqueues(path, PROBE_INTERVAL_S)]
    print(json.dumps({"max_ms": max(latencies), "p99_ms": percentile(latencies, 99),
                      "enqueues": len(latencies)}), flush=True)  # fmt: skip


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def _median_ms(call: Any, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def _measure_counts(path: str) -> dict[str, Any]:
    saqlite = importlib.import_module("saqlite")
    queue = saqlite.Queue(path, name=QUEUE)
    await queue.connect()
    result: dict[str, Any] = {}
    result["info_ms"] = await _median_ms(queue.info)
    result["count_ms"] = await _median_ms(lambda: queue.count("incomplete"))
    info = await queue.info()
    result["info"] = {k: info[k] for k in ("queued", "scheduled", "active")}
    await queue.disconnect()
    return result


async def _measure_worker(path: str) -> dict[str, Any]:
    """Jobs/s of a worker from its 500th job to its 5,000th (start-up left out)."""
    saqlite = importlib.import_module("saqlite")
    queue = saqlite.Queue(path, name=QUEUE)
    result: dict[str, Any] = {}
    done = 0
    started = 0.0
    finished = asyncio.Event()

    async def noop(ctx: Any) -> None:
        nonlocal done, started
        done += 1
        if done == CLAIM_JOBS // 10:
            started = time.perf_counter()
        if done == CLAIM_JOBS:
            finished.set()

    # Ahead of the file's waiting jobs (priority -1): every size runs the same jobs, which
    # claims find beside the waiting ones (else a big file's worker would run old jobs
    # that are kept as they end, and a small file's these, deleted as they end).
    jobs = [saqlite.Job("noop", ttl=-1, priority=-1) for _ in range(CLAIM_JOBS)]
    await queue.enqueue_many(jobs)
    worker = saqlite.Worker(queue, [("noop", noop)], concurrency=10, handle_signals=False,
                            timers={"sweep": 10**6})  # fmt: skip
    task = asyncio.ensure_future(worker.start())
    await finished.wait()
    result["claims_per_s"] = (CLAIM_JOBS - CLAIM_JOBS // 10) / (time.perf_counter() - started)
    await worker.stop()
    await task
    result["worker_rss_mib"] = _peak_rss_mib()
    await queue.disconnect()
    return result


def measure(path: str) -> dict[str, Any]:
    """The ``measure`` child: every saqlite figure on a filled file."""
    saqlite = importlib.import_module("saqlite")
    result = asyncio.run(_measure_counts(path))
    result["cli_info_s"], _ = _cli(path, "info")
    result["cli_jobs_s"], _ = _cli(path, "jobs")
    result["cli_failed_s"], _ = _cli(path, "jobs", "--status", "failed")
    result["cli_page_s"], _ = _cli(path, "jobs", "--page", "5000", runs=1)
    try:
        _, out = _cli(path, "jobs", "--page", "5000", "--json", runs=1)
        cursor = json.loads(out).get("next")
    except (subprocess.CalledProcessError, ValueError):
        cursor = None
    result["cli_after_s"] = (
        _cli(path, "jobs", "--after", cursor)[0] if cursor else float("nan")
    )  # saqlite before --after: none

    result["bytes_filled"] = _file_bytes(path)
    probe = _Probe(path)
    started = time.perf_counter()

    async def sweep() -> None:
        queue = saqlite.Queue(path, name=QUEUE)
        await queue.sweep()
        await queue.disconnect()

    asyncio.run(sweep())
    result["sweep_s"] = time.perf_counter() - started
    result["sweep_probe"] = probe.stop()
    result["bytes_swept"] = _file_bytes(path)
    result.update(asyncio.run(_measure_worker(path)))

    probe = _Probe(path)
    result["purge_s"], _ = _cli(path, "purge", "--older-than", "0s", "-q", runs=1)
    result["purge_probe"] = probe.stop()
    result["bytes_purged"] = _file_bytes(path)
    return result


def stream(path: str, n: int) -> dict[str, Any]:
    """The ``stream`` child: enqueue_stream n jobs from a generator into a new file."""
    saqlite = importlib.import_module("saqlite")

    async def run() -> int:
        queue = saqlite.Queue(path, name=QUEUE)
        jobs = (saqlite.Job("noop", key=f"s{i:010d}") for i in range(n))
        stored: int = await queue.enqueue_stream(jobs)
        await queue.disconnect()
        return stored

    started = time.perf_counter()
    stored = asyncio.run(run())
    assert stored == n, (stored, n)
    return {"stream_s": time.perf_counter() - started, "stream_rss_mib": _peak_rss_mib()}


# -- measuring SAQ on Redis -----------------------------------------------------------


async def _saq_measure(url: str, n: int) -> dict[str, Any]:
    redis = importlib.import_module("redis")
    saq = importlib.import_module("saq")
    Job, Queue = saq.Job, saq.Queue
    queue = Queue.from_url(url, name=QUEUE)
    await queue.connect()
    client = redis.Redis.from_url(url)
    counts = dict(composition(n))
    finished = n - counts["due"] - counts["scheduled"]
    job = Job("noop", queue=queue, status="complete")
    payload = queue.serialize(job)
    pipe = client.pipeline(transaction=False)
    for i in range(finished):
        pipe.set(f"saq:job:{QUEUE}:f{i:010d}", payload, ex=86400)
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    scheduled_at = int(time.time()) + 365 * 86400
    for kind in ("due", "scheduled"):
        for start in range(0, counts[kind], 1000):
            size = min(1000, counts[kind] - start)
            await asyncio.gather(*(
                queue.enqueue("noop", key=f"{kind}{start + i}",
                              scheduled=scheduled_at if kind == "scheduled" else 0)
                for i in range(size)
            ))  # fmt: skip
    client.close()
    result = {
        "info_ms": await _median_ms(queue.info),
        "count_ms": await _median_ms(lambda: queue.count("incomplete")),
    }
    await queue.disconnect()
    return result


# -- the report -----------------------------------------------------------------------


def _size_name(n: int) -> str:
    for unit, name in ((1_000_000, "M"), (1_000, "k")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{name}"
    return str(n)


def _mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


ROWS: list[tuple[str, str, Any]] = [
    ("fill (executemany), s", "fill_s", fmt_num),
    ("`queue.info()`, ms", "info_ms", fmt_num),
    ("`queue.count('incomplete')`, ms", "count_ms", fmt_num),
    ("`saqlite info FILE` (new process), s", "cli_info_s", fmt_num),
    ("`saqlite jobs FILE` (new process), s", "cli_jobs_s", fmt_num),
    ("`saqlite jobs FILE --status failed`, s", "cli_failed_s", fmt_num),
    ("`saqlite jobs FILE --page 5000`, s", "cli_page_s", fmt_num),
    ("`saqlite jobs FILE --after` (page 5001), s", "cli_after_s", fmt_num),
    ("worker, 5,000 noop jobs beside the waiting ones, jobs/s", "claims_per_s", fmt_num),
    ("that worker process's peak RSS, MiB", "worker_rss_mib", fmt_num),
    ("sweep deleting 10% expired, s", "sweep_s", fmt_num),
    ("another process's worst enqueue during the sweep, ms", "sweep_probe.max_ms", fmt_num),
    ("... its p99 enqueue, ms", "sweep_probe.p99_ms", fmt_num),
    ("`saqlite purge --older-than 0s` (~97% of the file), s", "purge_s", fmt_num),
    ("another process's worst enqueue during the purge, ms", "purge_probe.max_ms", fmt_num),
    ("... its p99 enqueue, ms", "purge_probe.p99_ms", fmt_num),
    ("file (db + wal) filled", "bytes_filled", _mib),
    ("file after the sweep", "bytes_swept", _mib),
    ("file after the purge", "bytes_purged", _mib),
    ("`enqueue_stream` of N jobs from a generator (new file), s", "stream_s", fmt_num),
    ("... that process's peak RSS, MiB", "stream_rss_mib", fmt_num),
    ("SAQ on Redis: `queue.info()`, ms", "saq.info_ms", fmt_num),
    ("SAQ on Redis: `queue.count('incomplete')`, ms", "saq.count_ms", fmt_num),
]


def _get(result: dict[str, Any], name: str) -> Any:
    value: Any = result
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def render(results: dict[int, dict[str, Any]]) -> str:
    sizes = sorted(results)
    lines = [
        "| figure | " + " | ".join(f"{_size_name(n)} jobs" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for label, name, fmt in ROWS:
        cells = []
        for n in sizes:
            value = _get(results[n], name)
            cells.append("-" if value is None or math.isnan(value) else fmt(value))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_scale(sizes: list[int], tmp: str, saq: bool = True) -> tuple[str, dict[int, Any]]:
    """Fill, measure and report every size; SAQ beside it if Redis is there."""
    results: dict[int, dict[str, Any]] = {}
    reason = bench_redis.redis_available() if saq else "not asked"
    for n in sizes:
        path = os.path.join(tmp, f"scale-{n}.db")
        print(f"[scale] filling {n:,} jobs", file=sys.stderr, flush=True)
        results[n] = _child("fill", path, str(n))
        print(f"[scale] measuring {n:,} jobs", file=sys.stderr, flush=True)
        results[n].update(_child("measure", path))
        print(f"[scale] enqueue_stream of {n:,} jobs", file=sys.stderr, flush=True)
        results[n].update(_child("stream", path + ".stream", str(n)))
        for name in (path, path + ".stream"):
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(name + suffix):
                    os.remove(name + suffix)
        if not reason:
            with bench_redis.redis_server("redis-mem", tmp) as url:
                print(f"[scale] SAQ on Redis, {n:,} jobs", file=sys.stderr, flush=True)
                results[n]["saq"] = asyncio.run(_saq_measure(url, n))
    note = f"SAQ on Redis skipped: {reason}" if reason else ""
    return render(results) + ("\n\n" + note if note else ""), results


def main(argv: list[str]) -> None:
    ensure_project_on_path()
    command, path = argv[0], argv[1]
    if command == "fill":
        print(json.dumps(fill(path, int(argv[2]))))
    elif command == "measure":
        print(json.dumps(measure(path)))
    elif command == "probe":
        probe(path)
    elif command == "stream":
        print(json.dumps(stream(path, int(argv[2]))))


if __name__ == "__main__":
    main(sys.argv[1:])
