"""Writes that must not fail for others: bad values refused at the call, one bad item
in a batch failing alone, enqueue_many all or nothing, claimed jobs that can't be
loaded, SyncQueue's locks, and map() results lined up with their inputs.

Run with ``python -m pytest test_saqlite_writes.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import typing as t
from pathlib import Path

import pytest

import saqlite
from saqlite import Context, CronJob, Job, Queue, Status, SyncQueue
from test_saqlite import (
    HERE,
    async_test,
    is_finished,
    make_queue,
    noop,
    running,
    stored,
    wait_for,
    worker_for,
    worker_thread,
)


def _deep(levels: int) -> list[t.Any]:
    """A list nested ``levels`` deep, beyond what json can dump or load."""
    value: list[t.Any] = []
    for _ in range(levels):
        value = [value]
    return value


def _row(path: Path, key: str) -> tuple[t.Any, ...]:
    """A job's status and error, read with sqlite3 (the job may not load)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        row = conn.execute(
            "SELECT status, error FROM saqlite_jobs WHERE key = ?", (key,)
        ).fetchone()
    assert row is not None, f"job {key!r} is missing"
    return t.cast("tuple[t.Any, ...]", row)


def _count_rows(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM saqlite_jobs").fetchone()[0])


# =============================================================================
# 10.4: values that can't work are refused at the call, naming the option
# =============================================================================

BAD_OPTIONS = [
    ("retry_delay", math.inf, "retry_delay"),
    ("retry_delay", math.nan, "retry_delay"),
    ("retry_delay", 1e300, "retry_delay"),
    ("retry_delay", "5", "retry_delay"),
    ("timeout", math.nan, "timeout"),
    ("heartbeat", math.inf, "heartbeat"),
    ("retries", math.nan, "retries"),
    ("ttl", 2**70, "ttl"),
    ("priority", "high", "priority"),
    ("priority", True, "priority"),
    ("priority", 1.5, "priority"),
    ("priority", 2**63, "priority"),
    ("priority", -(2**63) - 1, "priority"),
    ("key", 5, "key"),
    ("key", "bad\ud800key", "key"),
    ("group_key", "\udfff", "group_key"),
    ("scheduled", math.nan, "scheduled"),
    ("scheduled", math.inf, "scheduled"),
    ("scheduled", -1, "scheduled"),
    ("scheduled", 1e300, "scheduled"),
    ("retry_backoff", "yes", "retry_backoff"),
    ("retry_backoff", math.nan, "retry_backoff"),
    ("progress", math.nan, "progress"),
]


@pytest.mark.parametrize(("field", "value", "phrase"), BAD_OPTIONS)
@async_test
async def test_unstorable_option_is_value_error_naming_it_and_nothing_is_stored(
    tmp_path: Path, field: str, value: object, phrase: str
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    options = {field: value}
    with pytest.raises(ValueError, match=phrase):
        await queue.enqueue("f", **options)
    with pytest.raises(ValueError, match=phrase):
        await queue.enqueue(Job("f", **t.cast("dict[str, t.Any]", options)))
    with pytest.raises(ValueError, match=phrase):
        await queue.enqueue_many(["f", "f"], **options)
    with SyncQueue(tmp_path / "jobs.db") as client, pytest.raises(ValueError, match=phrase):
        client.enqueue("f", **options)
    assert await queue.count("incomplete") == 0
    assert await queue.enqueue("f", key="fine") is not None  # the queue still works


@async_test
async def test_good_edge_values_are_accepted(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    for options in (
        {"priority": -(2**63)},
        {"priority": 2**63 - 1},
        {"scheduled": time.time() + 0.5},
        {"retry_delay": 2.5, "retry_backoff": 60.0},
        {"retry_backoff": True},
        {"ttl": -1},
        {"key": "ключ ✓"},
        {"group_key": None},
    ):
        assert await queue.enqueue("f", **options) is not None, options


@async_test
async def test_update_refuses_unstorable_values_and_changes_nothing(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    job = await queue.enqueue("f", key="k")
    assert job is not None
    for options, phrase in (
        ({"progress": math.nan}, "progress"),
        ({"progress": math.inf}, "progress"),
        ({"retry_delay": 1e300}, "retry_delay"),
        ({"priority": "high"}, "priority"),
    ):
        with pytest.raises(ValueError, match=phrase):
            await job.update(**options)
        assert (job.progress, job.retry_delay, job.priority) == (0.0, 0.0, 0)
    await job.update(progress=0.5)
    assert (await stored(queue, "k")).progress == 0.5


@pytest.mark.parametrize("value", ["5", math.nan, -1, math.inf, None])
def test_lock_timeout_must_be_seconds(tmp_path: Path, value: object) -> None:
    for cls in (Queue, SyncQueue):
        with pytest.raises(ValueError, match="lock_timeout"):
            cls(tmp_path / "jobs.db", lock_timeout=t.cast(float, value))
    assert Queue(tmp_path / "jobs.db", lock_timeout=0).lock_timeout == 0


def test_cron_expression_that_never_fires_is_value_error() -> None:
    with pytest.raises(ValueError, match="never fires") as info:
        CronJob(noop, cron="0 0 30 2 *")  # 30 February
    assert "0 0 30 2 *" in str(info.value) and "noop" in str(info.value)
    with pytest.raises(ValueError, match="never fires"):
        saqlite.Worker(Queue("unused.db"), [noop], cron_jobs=[CronJob(noop, cron="0 0 31 4 * 0")])
    CronJob(noop, cron="0 0 29 2 *")  # leap days do come


@async_test
async def test_unencodable_kwargs_stay_type_error(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    with pytest.raises(TypeError, match="Cannot serialise"):
        await queue.enqueue("f", deep=_deep(100_000))  # RecursionError in json.dumps
    with pytest.raises(TypeError, match="Cannot serialise"):
        await queue.enqueue("f", thing=object())
    assert await queue.count("incomplete") == 0


# =============================================================================
# 10.1: one bad item in a group commit fails alone
# =============================================================================


@async_test
async def test_one_bad_enqueue_among_many_gathered_fails_alone(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")

    async def spoil(job: Job) -> None:  # user code that sets a value SQLite can't store
        if job.key == "spoilt":
            job.priority = 2**63

    queue.register_before_enqueue(spoil)
    keys = [f"k{i}" for i in range(40)]
    outcomes = await asyncio.gather(
        *[queue.enqueue("f", key=key) for key in keys[:20]],
        queue.enqueue("f", key="refused", priority=2**63),
        queue.enqueue("f", key="spoilt"),
        *[queue.enqueue("f", key=key) for key in keys[20:]],
        return_exceptions=True,
    )
    assert isinstance(outcomes[20], ValueError) and "priority" in str(outcomes[20])
    assert isinstance(outcomes[21], OverflowError)
    others = outcomes[:20] + outcomes[22:]
    assert all(isinstance(job, Job) for job in others), others
    assert await queue.count("incomplete") == 40
    assert await queue.job("spoilt") is None and await queue.job("refused") is None


@async_test
async def test_one_bad_write_among_many_gathered_fails_alone(tmp_path: Path) -> None:
    def dump(value: dict[str, t.Any]) -> t.Any:
        # What SQLite can't store and no check at the call can see: a dump's own output.
        return {"not": "text"} if value.get("meta", {}).get("poison") else json.dumps(value)

    queue = make_queue(tmp_path / "jobs.db", dump=dump)
    await queue.enqueue_many([Job("f", key=f"k{i}") for i in range(30)])
    jobs = [await queue.dequeue() for _ in range(30)]
    assert all(job is not None for job in jobs)
    bad = t.cast(Job, jobs[7])
    bad.meta = {"poison": True}
    outcomes = await asyncio.gather(
        *[
            queue.finish(t.cast(Job, job), Status.FAILED if job is bad else Status.COMPLETE)
            for job in jobs
        ],
        *[queue.update(t.cast(Job, job), meta={"seen": True}) for job in jobs[20:]],
        return_exceptions=True,
    )
    assert isinstance(outcomes[7], saqlite.StorageError)
    assert [o for i, o in enumerate(outcomes) if i != 7] == [None] * 39
    for i in range(30):
        job = await stored(queue, f"k{i}")
        assert job.status == (Status.ACTIVE if i == 7 else Status.COMPLETE), (i, job)
        assert job.meta == ({"seen": True} if i >= 20 else {})


@async_test
async def test_worker_finishes_land_beside_a_result_that_cannot_be_stored(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    release = asyncio.Event()

    async def job(ctx: Context, *, n: int) -> t.Any:
        await release.wait()  # all end together: their finishes share a batch
        return _deep(100_000) if n == 3 else n

    keys = [f"k{n}" for n in range(8)]
    await queue.enqueue_many([Job("job", key=key, kwargs={"n": n}) for n, key in enumerate(keys)])
    async with running(worker_for(queue, [("job", job)], concurrency=8)):
        await wait_for(lambda: _active_count_is(queue, 8), timeout=30)
        release.set()
        await wait_for(lambda: _all_finished(queue, keys), timeout=30)
    for n, key in enumerate(keys):
        done = await stored(queue, key)
        if n == 3:
            assert done.status == Status.FAILED
            assert done.error is not None and "Cannot serialise" in done.error
        else:
            assert (done.status, done.result) == (Status.COMPLETE, n)


async def _active_count_is(queue: Queue, count: int) -> bool:
    return await queue.count("active") == count


async def _all_finished(queue: Queue, keys: list[str]) -> bool:
    return all([await is_finished(queue, key) for key in keys])


# =============================================================================
# 10.3: a claimed job that can't be loaded or ordered fails alone
# =============================================================================


@async_test
async def test_claimed_jobs_that_cannot_be_loaded_fail_alone_and_the_others_run(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    queue = make_queue(path)
    good = [f"good{i}" for i in range(6)]
    bad = ["priority", "deep", "garbage"]
    await queue.enqueue_many([Job("noop", key=key) for key in bad + good])
    deep = json.dumps({"function": "noop", "key": "deep"})[:-1] + ', "kwargs": {"x": '
    deep += "[" * 100_000 + "]" * 100_000 + "}}"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        # as an old saqlite or a hand-written row could leave them
        conn.execute("UPDATE saqlite_jobs SET priority = 'high' WHERE key = 'priority'")
        conn.execute("UPDATE saqlite_jobs SET data = ? WHERE key = 'deep'", (deep,))
        conn.execute("UPDATE saqlite_jobs SET data = 'not json' WHERE key = 'garbage'")
    worker = worker_for(queue, [noop], concurrency=20)
    async with running(worker):
        await wait_for(lambda: _all_finished(queue, good), timeout=30)
        await wait_for(lambda: all(_row(path, key)[0] == "failed" for key in bad), timeout=30)
    for key in good:
        assert (await stored(queue, key)).status == Status.COMPLETE
    for key in bad:
        status, error = _row(path, key)
        assert status == "failed"
        assert error.startswith(f"saqlite could not load job {key!r} of queue 'default': ")
    assert "RecursionError" in _row(path, "deep")[1]
    assert "high" in _row(path, "priority")[1]
    assert queue.failed == 3


# =============================================================================
# 10.13: enqueue_many and map store all their jobs or none
# =============================================================================


@async_test
async def test_enqueue_many_with_a_bad_job_in_the_middle_stores_none(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    queue = make_queue(path)
    await queue.connect()
    jobs = [Job("f", key=f"k{i}") for i in range(1_200)]
    jobs[700].priority = 2**63
    with pytest.raises(ValueError, match="priority"):
        await queue.enqueue_many(jobs)
    assert _count_rows(path) == 0

    async def spoil(job: Job) -> None:  # past the checks: SQLite itself refuses it
        if job.key == "k900":
            job.priority = 2**63

    jobs[700].priority = 0
    queue.register_before_enqueue(spoil)
    with pytest.raises(OverflowError):
        await queue.enqueue_many(jobs)
    with pytest.raises(OverflowError):
        await queue.map("f", [{"key": f"m{i}"} for i in range(600)] + [{"key": "k900"}])
    assert _count_rows(path) == 0
    queue.unregister_before_enqueue(spoil)
    jobs[900].priority = 0  # enqueue_many set fields of the jobs given, as enqueue does
    assert len(await queue.enqueue_many(jobs)) == 1_200
    assert _count_rows(path) == 1_200

    with SyncQueue(tmp_path / "sync.db") as client:
        bad = [Job("f", key=f"k{i}") for i in range(1_200)]
        bad[1_100].scheduled = t.cast(int, math.nan)
        with pytest.raises(ValueError, match="scheduled"):
            client.enqueue_many(bad)
        assert client.count("incomplete") == 0
        assert len(client.enqueue_many([Job("f") for _ in range(1_200)])) == 1_200


@async_test
async def test_enqueue_many_transaction_keeps_other_statements_out(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    queue = make_queue(path)

    async def spoil(job: Job) -> None:
        if job.key == "last":
            job.priority = 2**63

    queue.register_before_enqueue(spoil)
    many = [Job("f", key=f"many{i}") for i in range(3_000)] + [Job("f", key="last")]
    singles = [f"single{i}" for i in range(50)]
    outcomes = await asyncio.gather(
        queue.enqueue_many(many),
        *[queue.enqueue("f", key=key) for key in singles],
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], OverflowError)
    assert all(isinstance(job, Job) for job in outcomes[1:]), outcomes[1:]
    # the singles were committed, not rolled back with the failed transaction
    with contextlib.closing(sqlite3.connect(path)) as conn:
        keys = {key for (key,) in conn.execute("SELECT key FROM saqlite_jobs")}
    assert keys == set(singles)


@async_test
async def test_cancelled_enqueue_many_stores_none_and_the_queue_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    queue = make_queue(path)
    await queue.connect()
    jobs = [Job("f") for _ in range(20_000)]
    enqueuing = asyncio.create_task(queue.enqueue_many(jobs))
    deadline = time.monotonic() + 30
    while queue._owner is None:  # until its transaction is open
        assert time.monotonic() < deadline, "enqueue_many never began"
        await asyncio.sleep(0)
    for _ in range(3):
        await asyncio.sleep(0)
    enqueuing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await enqueuing
    assert await queue.enqueue("f", key="after") is not None
    assert _count_rows(path) == 1  # seen by another connection: committed, alone


_PRODUCER = """
import asyncio, sys, saqlite
async def main():
    queue = saqlite.Queue(sys.argv[1])
    jobs = [saqlite.Job("f", kwargs={"padding": "x" * 200}) for _ in range(int(sys.argv[2]))]
    print("writing", flush=True)
    await queue.enqueue_many(jobs)
    print("done", flush=True)
asyncio.run(main())
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_enqueue_many_killed_while_writing_leaves_all_or_none(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    wal = Path(f"{path}-wal")
    count = 150_000
    with SyncQueue(path):  # the schema exists now: the WAL grows only with the jobs
        pass
    start_size = wal.stat().st_size if wal.exists() else 0
    env = {**os.environ, "PYTHONPATH": str(HERE), "PYTHONDONTWRITEBYTECODE": "1"}
    producer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_PRODUCER), str(path), str(count)],
        env=env,
        stdout=subprocess.PIPE,
    )
    try:
        assert producer.stdout is not None
        assert producer.stdout.readline().strip() == b"writing"
        deadline = time.monotonic() + 120
        while not (wal.exists() and wal.stat().st_size > start_size + 2_000_000):
            assert producer.poll() is None, "the producer ended before it was killed"
            assert time.monotonic() < deadline, "the WAL file did not grow"
            time.sleep(0.005)
        producer.send_signal(signal.SIGKILL)
    finally:
        producer.kill()
        producer.wait(30)
        if producer.stdout is not None:
            producer.stdout.close()
    stored_count = _count_rows(path)
    assert stored_count in (0, count), f"{stored_count} of {count} jobs stored"


# =============================================================================
# 10.15: SyncQueue from many threads, and beside an event loop
# =============================================================================


def _run_threads(targets: list[t.Callable[[], None]], timeout: float = 120) -> None:
    """Run each target in a daemon thread; fail on a hang (deadlock) or an exception."""
    errors: list[BaseException] = []

    def guarded(target: t.Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(target,), daemon=True) for target in targets]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
    assert not any(thread.is_alive() for thread in threads), "threads hang: a deadlock"
    assert not errors, errors


def test_sync_queue_enqueue_close_and_refresh_from_many_threads(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    client = SyncQueue(path)
    first = client.enqueue("never_runs", key="watched")
    assert first is not None
    rounds = 150

    def enqueue() -> None:
        for i in range(rounds):
            client.enqueue("f", key=f"{threading.get_ident()}-{i}")

    def close() -> None:
        for _ in range(rounds):
            client.close()

    def refresh() -> None:
        for _ in range(rounds // 5):
            with contextlib.suppress(TimeoutError):
                client.refresh(first, until_complete=0.01)
            client.count("incomplete")

    _run_threads([enqueue, enqueue, close, refresh, refresh])
    assert client.count("incomplete") == 1 + 2 * rounds
    client.close()


def test_event_loop_waking_sync_waiters_never_waits_for_the_database(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    client = SyncQueue(path, lock_timeout=60)
    job = client.enqueue("never_runs")
    assert job is not None
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process's long write transaction

    def wait_for_the_job() -> None:  # registers as a waiter: a write, held up by blocker
        with contextlib.suppress(TimeoutError, saqlite.StorageError):
            client.refresh(job, until_complete=0.2)

    waiter = threading.Thread(target=wait_for_the_job, daemon=True)
    try:
        waiter.start()
        asyncio.run(wait_for(lambda: client._wakeup._socket is not None, timeout=30))
        start = time.monotonic()
        saqlite._notify_local(client.queue, "changes")  # what a Queue's event loop calls
        assert time.monotonic() - start < 20  # not held for the lock_timeout of 60 s
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        waiter.join(30)
    assert not waiter.is_alive()
    client.close()


# =============================================================================
# 9.7: map() and apply() results line up with their inputs
# =============================================================================


async def echo(ctx: Context, *, n: int) -> int:
    return n


def test_sync_map_gives_none_for_jobs_deleted_on_finish(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with SyncQueue(path) as client, worker_thread(path, [echo]):
        results = client.map("echo", [{"n": 1}, {"n": 2, "ttl": -1}, {"n": 3}], timeout=30)
        assert results == [1, None, 3]
        assert client.apply("echo", n=4, ttl=-1, timeout=30) is None
        assert client.apply("echo", n=5, timeout=30) == 5


@async_test
async def test_apply_gives_none_for_a_job_deleted_on_finish(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    async with running(worker_for(queue, [echo])):
        assert await queue.apply("echo", n=4, ttl=-1, timeout=30) is None
        results = await queue.map("echo", [{"n": n, "ttl": -1 if n % 2 else 600} for n in range(6)])
        assert results == [0, None, 2, None, 4, None]
