"""Tests of the figures of finished jobs (issue 14): saqlite_stats and what reads it
(per-function stats, the chart's buckets, /metrics, ``saqlite stats``, ``saqlite tail``)."""

from __future__ import annotations

import asyncio
import json
import queue as queue_module
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import typing as t
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import saqlite
from saqlite import Queue, Status
from test_saqlite import _OPEN_QUEUES, async_test, make_queue, noop, running, wait_for, worker_for
from test_saqlite_ops import CLI, cli, env, start, stop
from test_saqlite_processes import run_old_saqlite

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
    path = tmp_path / "v5.db"
    run_old_saqlite(
        tmp_path,
        "8d9cf4b",
        f"""
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
    """,
    )

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
    assert int(version) == saqlite.SCHEMA_VERSION


def test_the_figures_are_read_through_indexes_never_by_scanning_the_jobs(tmp_path: Path) -> None:
    async def make() -> None:
        await make_queue(tmp_path / "jobs.db").connect()

    async_test(make)()
    statements = [
        saqlite._SQL_OPS_FIGURES, saqlite._SQL_OPS_THROUGHPUT, saqlite._SQL_TAIL_ENQUEUED,
        saqlite._SQL_TAIL_NEW,
        saqlite._SQL_TAIL_RUNNING, saqlite._SQL_TAIL_JOBS, saqlite._SQL_TAIL_ENDS,
        saqlite.Queue._SQL_FOLD_STATS, saqlite.Queue._SQL_DROP_OLD_STATS,
    ]  # fmt: skip
    params = {"since": 1, "queue": "default", "per": 60, "rowids": "[]", "limit": 10, "jobs": "[]",
              "kept": 1500}  # fmt: skip
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        for sql in statements:
            names = {name for name in params if f":{name}" in sql}
            plan = conn.execute(
                "EXPLAIN QUERY PLAN " + sql, {name: params[name] for name in names}
            ).fetchall()
            details = [row[-1] for row in plan]
            assert not any(
                detail.startswith(("SCAN saqlite_jobs", "SCAN jobs")) for detail in details
            ), (sql, details)
            assert not any(detail.startswith("SCAN saqlite_stats") for detail in details), (
                sql,
                details,
            )
    conn.close()


# -- /metrics --------------------------------------------------------------------------


def made_jobs(path: Path) -> None:
    """The jobs of end_jobs, and a live worker registered, in a file at ``path``."""

    async def make() -> None:
        queue = make_queue(path)
        await end_jobs(queue)
        await queue.worker_info("worker-1", "default", {"host": "test"}, ttl=600)

    async_test(make)()


def scrape(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics text, read by Prometheus' own client's parser."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_has_counts_counters_histograms_and_workers_that_prometheus_reads(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    made_jobs(path)
    server = start([CLI, "web", str(path), "--port", "0"])
    try:
        status, headers, text = server.request("/metrics")
        assert status == 200
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        samples = scrape(text)

        def value(name: str, **labels: str) -> float:
            return samples[(name, frozenset(labels.items()))]

        noop, fails = (
            {"queue": "default", "function": "noop"},
            {"queue": "default", "function": "fails"},
        )
        assert value("saqlite_jobs", queue="default", status="complete") == 2  # 1 deleted (ttl -1)
        assert value("saqlite_jobs", queue="default", status="failed") == 2
        assert value("saqlite_jobs", queue="default", status="aborted") == 1
        assert value("saqlite_jobs", queue="default", status="queued") == 0
        assert value("saqlite_workers", queue="default") == 1
        assert value("saqlite_jobs_completed_total", **noop) == 3  # the deleted one too
        assert value("saqlite_jobs_aborted_total", **noop) == 1
        assert value("saqlite_jobs_failed_total", **fails) == 2
        assert value("saqlite_jobs_completed_total", **fails) == 0
        for name in ("saqlite_job_wait_seconds", "saqlite_job_run_seconds"):
            assert value(f"{name}_count", **noop) == 3  # the aborted job never ran
            assert value(f"{name}_bucket", **noop, le="+Inf") == 3
            assert value(f"{name}_count", **fails) == 2
            buckets = [
                (float(dict(labels)["le"]), count)
                for (sample, labels), count in samples.items()
                if sample == f"{name}_bucket" and dict(labels)["function"] == "noop"
            ]
            counts = [count for _, count in sorted(buckets)]
            assert counts == sorted(counts) and len(counts) == len(saqlite._STATS_BOUNDS) + 1
            assert 0 <= value(f"{name}_sum", **noop) < 3 * 3600
        # The jobs go (their ttl ran out): the counters do not go down.
        with sqlite3.connect(path) as conn:
            conn.execute("DELETE FROM saqlite_jobs")
        conn.close()
        after = scrape(server.request("/metrics")[2])
        for key, count in samples.items():
            if key[0].endswith(("_total", "_count", "_sum", "_bucket")):
                assert after[key] == count, key
        assert (
            after[("saqlite_jobs", frozenset({("queue", "default"), ("status", "complete")}))] == 0
        )
    finally:
        assert stop(server) == 0


def test_metrics_label_values_are_escaped(tmp_path: Path) -> None:
    text = saqlite._metrics_text(
        [({}, {"queues": []}, [
            saqlite._Figures('q"\\\n', "f", 1, 0, 0, 0, 0.0, 0.0,
                             (0,) * len(saqlite._STATS_BOUNDS), (0,) * len(saqlite._STATS_BOUNDS)),
        ])]
    )  # fmt: skip
    samples = scrape(text)
    assert (
        samples[
            ("saqlite_jobs_completed_total", frozenset({("queue", 'q"\\\n'), ("function", "f")}))
        ]
        == 1
    )


# -- saqlite stats -----------------------------------------------------------------------


def test_stats_command_prints_a_line_per_function_and_json(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    made_jobs(path)
    result = cli("stats", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path}: jobs that ended in the last 1h"
    assert lines[1].split() == [
        "QUEUE", "FUNCTION", "RUNS", "COMPLETE", "FAILED", "ABORTED", "FAILURE",
        "WAIT", "P50", "WAIT", "P95", "RUN", "P50", "RUN", "P95",
    ]  # fmt: skip
    rows = {line.split()[1]: line.split() for line in lines[2:]}
    assert rows["fails"][:7] == ["default", "fails", "2", "0", "2", "0", "100.0%"]
    assert rows["noop"][:7] == ["default", "noop", "4", "3", "0", "1", "25.0%"]

    result = cli("stats", str(path), "--json", "--since", "all", "--queue", "default")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["path"], report["since_s"]) == (str(path), None)
    noop_stats = by_function(report["functions"])["noop"]
    assert (noop_stats["runs"], noop_stats["complete"], noop_stats["failure_rate"]) == (4, 3, 0.25)
    assert noop_stats["run_p50"] is not None and noop_stats["run_p50"] >= 0

    quiet = cli("stats", str(path), "--since", "1s", "--json")  # long ago now: maybe nothing
    assert quiet.returncode == 0, quiet.stderr


def test_stats_command_refuses_a_window_it_has_no_figures_for_and_an_unknown_queue(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    made_jobs(path)
    for since in ("2d", "0", "soon"):
        result = cli("stats", str(path), "--since", since)
        assert result.returncode == 2
        assert "saqlite stats: " in result.stderr
        assert since in result.stderr
    assert "give an age from 1s to 1d" in cli("stats", str(path), "--since", "2d").stderr
    result = cli("stats", str(path), "--queue", "nope")
    assert (result.returncode, result.stderr.strip()) == (
        1, f"saqlite stats: {path} has no queue named 'nope'",
    )  # fmt: skip
    empty = cli("stats", str(path), "--queue", "default", "--since", "30s")
    assert empty.returncode == 0


# -- saqlite tail ------------------------------------------------------------------------


class Tail:
    """``saqlite tail`` as a real process, its lines read as they come."""

    def __init__(self, path: Path, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", CLI, "tail", str(path), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
        )  # fmt: skip
        assert self.process.stdout is not None and self.process.stderr is not None
        ready = self.process.stderr.readline()
        assert ready.startswith("saqlite tail: following"), ready + self.process.stderr.read()
        self.lines: queue_module.Queue[str] = queue_module.Queue()
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()
        self.read: list[str] = []

    def _read(self, stdout: t.IO[str]) -> None:
        for line in stdout:
            self.lines.put(line)

    def until(self, done: t.Callable[[list[str]], bool], timeout: float = 30.0) -> list[str]:
        """The lines read, once ``done(lines)`` (fails after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while not done(self.read):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"tail printed only: {self.read}")
            try:
                self.read.append(self.lines.get(timeout=remaining).rstrip("\n"))
            except queue_module.Empty:
                continue
        return self.read

    def drain(self, quiet_s: float) -> list[str]:
        """The lines read, once none came for ``quiet_s`` seconds."""
        while True:
            try:
                self.read.append(self.lines.get(timeout=quiet_s).rstrip("\n"))
            except queue_module.Empty:
                return self.read

    def stop(self, number: int) -> int:
        self.process.send_signal(number)
        try:
            return self.process.wait(timeout=20)
        finally:
            self.process.kill()
            self.process.communicate()


def run_jobs(path: Path, **extra: t.Any) -> None:
    """From this process (not tail's): 2 noop jobs (a, b), 1 failing (bad), 1 deleted as
    it ends (gone), run by a real worker."""

    async def work() -> None:
        queue = make_queue(path)
        for key in ("a", "b"):
            await queue.enqueue("noop", key=key)
        await queue.enqueue("fails", key="bad")
        await queue.enqueue("noop", key="gone", ttl=-1)
        async with running(worker_for(queue, [noop, fails])):

            async def ended() -> bool:
                return await queue.count("incomplete") == 0

            await wait_for(ended, timeout=30)

    async_test(work)()


posix_signals = pytest.mark.skipif(
    sys.platform == "win32", reason="SIGTERM and SIGINT to a process; Windows has CTRL_BREAK"
)


@posix_signals
def test_tail_prints_a_line_per_event_until_sigterm(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    made_jobs(path)  # jobs that ended before the tail: not shown
    tail = Tail(path)
    try:
        run_jobs(path)

        def complete(lines: list[str]) -> bool:
            words = [line.split("  ") for line in lines]
            ends = {(w[3], w[4]) for w in words if len(w) > 4}
            return {("a", "complete"), ("b", "complete"), ("bad", "failed")} <= ends and any(
                "1 more ended complete" in line for line in lines
            )

        lines = tail.until(complete)
    finally:
        code = tail.stop(signal.SIGTERM)
    assert code == 0
    events = [line.split("  ")[1:] for line in lines]
    by_key: dict[str, list[str]] = {}
    for event in events:
        if len(event) > 3 and event[2] in ("a", "b", "bad", "gone"):
            by_key.setdefault(event[2], []).append(event[3])
    assert by_key["a"] == by_key["b"] == ["queued", "active", "complete"]
    assert by_key["bad"] == ["queued", "active", "failed"]
    (failed,) = [event for event in events if event[2:4] == ["bad", "failed"]]
    assert failed == ["default", "fails", "bad", "failed", "attempt 1", "ValueError: no good"]
    # gone was deleted as it ended: its end is in the figures, as one more
    assert ["default", "noop", "1 more ended complete", "(not seen one by one)"] in events
    assert not any("more ended" in line for line in lines if "noop  1 more" not in line)


@posix_signals
def test_tail_filters_by_status_and_function_and_prints_json_until_sigint(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"

    async def create() -> None:
        await make_queue(path).connect()

    async_test(create)()
    tail = Tail(path, "--status", "failed,complete", "--function", "fails", "--json")
    try:
        run_jobs(path)
        tail.until(bool)
        lines = tail.drain(1.0)  # anything else it would (wrongly) print comes with it
    finally:
        code = tail.stop(signal.SIGINT)
    assert code == 0
    (event,) = [json.loads(line) for line in lines]
    assert {k: event[k] for k in ("queue", "function", "key", "status", "attempts")} == {
        "queue": "default", "function": "fails", "key": "bad", "status": "failed", "attempts": 1,
    }  # fmt: skip
    assert event["error"] == "ValueError: no good"
    assert time.time() - 60 < event["time"] <= time.time()


@posix_signals
def test_tail_shows_a_burst_of_new_jobs_bigger_than_a_look(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"

    async def create() -> None:
        await make_queue(path).connect()

    async_test(create)()
    tail = Tail(path, "--json")
    try:
        count = saqlite._TAIL_NEW * 2 + 500

        async def burst() -> None:
            await make_queue(path).enqueue_many([saqlite.Job("noop") for _ in range(count)])

        async_test(burst)()
        lines = tail.until(lambda lines: len(lines) >= count, timeout=60)
    finally:
        assert tail.stop(signal.SIGTERM) == 0
    events = [json.loads(line) for line in lines]
    assert len({event["key"] for event in events}) == len(events) == count
    assert {event["status"] for event in events} == {"queued"}


@posix_signals
def test_tail_shows_a_running_jobs_progress(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"

    async def watch() -> None:
        queue = make_queue(path)
        await queue.connect()
        tail = Tail(path)
        release = asyncio.Event()

        async def halfway(ctx: saqlite.Context) -> None:
            await ctx["job"].update(progress=0.5)
            await release.wait()

        def shown(words: str) -> t.Callable[[list[str]], bool]:
            return lambda lines: any(words in line for line in lines)

        loop = asyncio.get_running_loop()
        try:
            async with running(worker_for(queue, [halfway])):
                await queue.enqueue(halfway, key="h")
                # Still running while tail shows its progress: release it only then.
                await loop.run_in_executor(
                    None, tail.until, shown("h  active  attempt 1  progress 50%")
                )
                release.set()
                await loop.run_in_executor(None, tail.until, shown("h  complete  attempt 1"))
        finally:
            release.set()
            assert await loop.run_in_executor(None, tail.stop, signal.SIGTERM) == 0

    async_test(watch)()
