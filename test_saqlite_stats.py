"""Tests of the figures of finished jobs (issue 14): saqlite_stats and what reads it
(per-function stats, the chart's buckets, /metrics, ``saqlite stats``, ``saqlite tail``)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import saqlite
from saqlite import Queue, Status
from test_saqlite import _OPEN_QUEUES, async_test, make_queue, noop, running, wait_for, worker_for

HERE = Path(__file__).resolve().parent


async def fails(ctx: saqlite.Context) -> None:
    raise ValueError("no good")


async def store_of(queue: Queue) -> saqlite._Store:
    """The operator tooling's view of the queue's file (closed as the test ends)."""
    store = saqlite._Store(queue.path)
    _OPEN_QUEUES.append(store.reader)
    return store


def by_function(stats: list[saqlite._FunctionStats]) -> dict[str, saqlite._FunctionStats]:
    return {entry["function"]: entry for entry in stats}


async def end_jobs(queue: Queue) -> None:
    """Through a real worker: 3 complete noop (one with ttl -1: deleted as it ends),
    2 failed; and 1 waiting job aborted before it ran."""
    for _ in range(2):
        await queue.enqueue("noop")
    await queue.enqueue("noop", ttl=-1, key="gone")
    for _ in range(2):
        await queue.enqueue("fails")
    waiting = await queue.enqueue("noop", key="aborted", scheduled=int(time.time()) + 3600)
    assert waiting is not None
    await queue.abort(waiting, "not needed")
    async with running(worker_for(queue, [noop, fails])):

        async def all_ended() -> bool:
            return await queue.count("incomplete") == 0

        await wait_for(all_ended, timeout=30)


# -- the figures -----------------------------------------------------------------------


@async_test
async def test_every_end_is_counted_and_stays_counted_once_its_job_is_deleted(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    await end_jobs(queue)
    assert await queue.job("gone") is None  # ttl -1: gone at once, yet counted
    store = await store_of(queue)
    for since in (3600.0, 86400.0, saqlite._STATS_ALL):
        stats = by_function(await saqlite._stats(store, since_s=since))
        assert set(stats) == {"noop", "fails"}
        noop_stats, fail_stats = stats["noop"], stats["fails"]
        assert (noop_stats["runs"], noop_stats["complete"], noop_stats["aborted"]) == (4, 3, 1)
        assert noop_stats["failure_rate"] == 0.25  # the abort: 1 of 4 did not complete
        assert (fail_stats["runs"], fail_stats["failed"], fail_stats["failure_rate"]) == (2, 2, 1.0)
        for entry in (noop_stats, fail_stats):
            for name in ("wait_p50", "wait_p95", "run_p50", "run_p95"):
                value = entry[name]
                assert value is not None and 0 <= value <= 3600
    # The jobs go (purged as a ttl would), the figures stay.
    with sqlite3.connect(queue.path) as conn:
        conn.execute("DELETE FROM saqlite_jobs")
    conn.close()
    assert await queue.count("incomplete") == 0
    again = by_function(await saqlite._stats(store, since_s=3600))
    assert (again["noop"]["runs"], again["fails"]["runs"]) == (4, 2)
    assert await saqlite._stats(store, queue="other") == []


@async_test
async def test_wait_and_run_times_are_read_from_the_histogram(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    now_ms = int(time.time() * 1000)
    # Ten jobs due at t, started 20 ms later, ended 2 s after their start (an edit in
    # the sqlite3 shell is counted as a worker's finish is).
    for n in range(10):
        await queue.enqueue("timed", key=f"t{n}")
    with sqlite3.connect(queue.path) as conn:
        conn.execute(
            "UPDATE saqlite_jobs SET run_at = :due / 1000.0, started = :due + 20,"
            " status = 'active'",
            {"due": now_ms - 5000},
        )
        conn.execute("UPDATE saqlite_jobs SET status = 'complete', completed = started + 2000")
    conn.close()
    (entry,) = await saqlite._stats(await store_of(queue))
    assert (entry["runs"], entry["complete"]) == (10, 10)
    # All in the bucket (0.01, 0.025] for the wait and (1, 2.5] for the run; linear
    # within it, as Prometheus' histogram_quantile reads it.
    assert (entry["wait_p50"], entry["wait_p95"]) == pytest.approx((0.0175, 0.02425))
    assert (entry["run_p50"], entry["run_p95"]) == pytest.approx((1.75, 2.425))


@async_test
async def test_the_chart_has_the_ends_in_the_current_bucket_of_the_hour_and_the_day(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    await end_jobs(queue)
    store = await store_of(queue)
    hour = await saqlite._throughput(store)
    day = await saqlite._throughput(store, buckets=24, bucket_s=3600)
    assert len(hour) == 60 and len(day) == 24
    for chart, width in ((hour, 60), (day, 3600)):
        assert all(b["start"] + width == after["start"] for b, after in zip(chart, chart[1:]))
        assert chart[-1]["start"] <= time.time() < chart[-1]["start"] + width + 60
        totals = {name: sum(b[name] for b in chart) for name in ("complete", "failed", "aborted")}  # type: ignore[literal-required]
        assert totals == {"complete": 3, "failed": 2, "aborted": 1}
    assert sum(b["complete"] for b in await saqlite._throughput(store, queue="other")) == 0


@async_test
async def test_the_sweep_folds_minutes_older_than_a_day_into_the_totals(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    await end_jobs(queue)
    two_days_ago = int(time.time() * 1000) - 2 * 86400 * 1000
    await queue.enqueue("old", key="old")
    with sqlite3.connect(queue.path) as conn:
        conn.execute(
            "UPDATE saqlite_jobs SET status = 'complete', started = :t, completed = :t"
            " WHERE key = 'old'",
            {"t": two_days_ago},
        )
        minutes = conn.execute("SELECT COUNT(*) FROM saqlite_stats").fetchone()[0]
    conn.close()
    store = await store_of(queue)
    before = await saqlite._figures(store)
    await queue.sweep()
    with sqlite3.connect(queue.path) as conn:
        rows = conn.execute(
            "SELECT function, minute FROM saqlite_stats WHERE minute < :recent",
            {"recent": time.time() // 60 - 24 * 60},
        ).fetchall()
        after_rows = conn.execute("SELECT COUNT(*) FROM saqlite_stats").fetchone()[0]
    conn.close()
    assert rows == [("old", 0)]  # folded into its totals
    assert after_rows == minutes
    assert await saqlite._figures(store) == before  # every count kept, once
    assert "old" not in by_function(await saqlite._stats(store, since_s=86400))
    assert by_function(await saqlite._stats(store, since_s=saqlite._STATS_ALL))["old"]["runs"] == 1


# -- schema 7 ---------------------------------------------------------------------------


def test_a_version_5_file_gets_the_figures_table_and_counts_from_then_on(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    source = subprocess.run(
        ["git", "show", "8d9cf4b:saqlite.py"], cwd=HERE, capture_output=True, check=True
    ).stdout
    (old / "saqlite.py").write_bytes(source)
    path = tmp_path / "v5.db"
    script = textwrap.dedent(f"""
        import asyncio, saqlite
        assert saqlite.SCHEMA_VERSION == 5
        async def main():
            queue = saqlite.Queue({str(path)!r})
            for key in ("a", "b"):
                await queue.enqueue("f", key=key)
            job = await queue.dequeue(timeout=1)
            await queue.finish(job, saqlite.Status.COMPLETE)
            await queue.disconnect()
        asyncio.run(main())
    """)
    subprocess.run([sys.executable, "-c", script], cwd=old, check=True, env={
        **os.environ, "PYTHONPATH": str(old)
    })  # fmt: skip

    async def reopen() -> None:
        queue = make_queue(path)
        job = await queue.dequeue(timeout=1)
        assert job is not None and job.key == "b"
        await queue.finish(job, Status.FAILED, error="no")
        stats = await saqlite._stats(await store_of(queue))
        # Counting starts with schema 7: the job that ended before is not in it.
        assert [(s["function"], s["runs"], s["failed"]) for s in stats] == [("f", 1, 1)]

    async_test(reopen)()
    with sqlite3.connect(path) as conn:
        version = conn.execute(
            "SELECT value FROM saqlite_meta WHERE name = 'schema_version'"
        ).fetchone()[0]
    conn.close()
    assert int(version) == saqlite.SCHEMA_VERSION == 7
