"""Tests of saqlite against the SAQ 0.26 behaviour described in SAQ_API.md.

Every test uses real SQLite files in ``tmp_path`` (no mocks of the database). Async tests are
plain functions wrapped by ``@async_test``, which runs them with ``asyncio.run`` and disconnects
every queue made through the ``queue`` fixture or ``make_queue`` afterwards. Workers run as tasks
through the ``running`` async context manager; conditions are awaited with ``wait_for`` (a poll
loop with a generous deadline), never with sleeps that decide correctness.

The command-line tests start real ``python -m saqlite`` subprocesses with a settings module
written into ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import typing as t
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import saqlite
from saqlite import (
    Context,
    CronJob,
    Job,
    JobError,
    Queue,
    Status,
    StorageError,
    Worker,
)

if t.TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator

HERE = Path(__file__).resolve().parent

#: Short upkeep periods so tests see sweeps, aborts and cron quickly.
TIMERS: saqlite.TimersDict = {"sweep": 0.2, "abort": 0.1, "schedule": 0.1, "worker_info": 0.5}
#: The same, with sweeping effectively off (for tests where a sweep would race the worker).
NO_SWEEP: saqlite.TimersDict = {"sweep": 600, "abort": 0.1, "schedule": 0.1, "worker_info": 0.5}

# =============================================================================
# Helpers
# =============================================================================

_OPEN_QUEUES: list[Queue] = []


def make_queue(path: t.Union[str, os.PathLike[str]], **kwargs: t.Any) -> Queue:
    """A Queue that ``@async_test`` disconnects when the test ends."""
    queue = Queue(path, **kwargs)
    _OPEN_QUEUES.append(queue)
    return queue


def async_test(fn: Callable[..., Coroutine[t.Any, t.Any, None]]) -> Callable[..., None]:
    """Run an async test function in a fresh event loop; disconnect its queues after."""

    @functools.wraps(fn)
    def wrapper(*args: t.Any, **kwargs: t.Any) -> None:
        async def main() -> None:
            try:
                await fn(*args, **kwargs)
            finally:
                while _OPEN_QUEUES:
                    await _OPEN_QUEUES.pop().disconnect()

        try:
            asyncio.run(main())
        finally:
            _OPEN_QUEUES.clear()

    return wrapper


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[Queue]:
    """A fresh queue on ``tmp_path / "jobs.db"`` (disconnected by ``@async_test``)."""
    q = make_queue(tmp_path / "jobs.db")
    yield q
    assert q._conn is None, "use @async_test so that the queue is disconnected in its loop"


async def wait_for(
    condition: Callable[[], t.Union[bool, Awaitable[bool]]],
    timeout: float = 10.0,
    interval: float = 0.02,
) -> None:
    """Poll ``condition`` (sync or async) until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = condition()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def stored(queue: Queue, key: str) -> Job:
    """The stored job with this key (it must exist)."""
    job = await queue.job(key)
    assert job is not None, f"job {key!r} is missing"
    return job


async def has_status(queue: Queue, key: str, *statuses: Status) -> bool:
    job = await queue.job(key)
    return job is not None and job.status in statuses


async def is_finished(queue: Queue, key: str) -> bool:
    return await has_status(queue, key, Status.COMPLETE, Status.FAILED, Status.ABORTED)


@contextlib.asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[None]:
    """Run workers as tasks until the block ends, then stop them and await their tasks."""
    tasks = [asyncio.create_task(worker.start()) for worker in workers]

    async def registered() -> bool:
        if any(task.done() for task in tasks):
            return True  # start() ended early: its exception surfaces below
        infos = [await worker.queue.info() for worker in workers]
        return all(worker.id in info["workers"] for worker, info in zip(workers, infos))

    try:
        await wait_for(registered)
        yield
    finally:
        for worker in workers:
            await worker.stop()
        for task in tasks:
            await asyncio.wait_for(task, 30)


def worker_for(queue: Queue, functions: t.Iterable[t.Any], **kwargs: t.Any) -> Worker:
    kwargs.setdefault("timers", TIMERS)
    return Worker(queue, functions, **kwargs)


async def noop(ctx: Context) -> None:
    return None


def sleeps_until_cancelled(cancelled: asyncio.Event) -> Callable[[Context], Awaitable[None]]:
    """A job function that sleeps 30 s, and sets ``cancelled`` when it is cancelled."""

    async def job(ctx: Context) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    return job


async def sleeper(ctx: Context, seconds: float = 30.0) -> str:
    await asyncio.sleep(seconds)
    return "slept"


# =============================================================================
# Status and Job helpers
# =============================================================================


def test_status_values_groups_and_conversion_from_str() -> None:
    assert [s.value for s in Status] == [
        "new", "queued", "active", "aborting", "aborted", "failed", "complete",
    ]  # fmt: skip
    assert isinstance(Status.QUEUED, str)
    assert Status("queued") is Status.QUEUED
    assert str(Status.QUEUED) == "queued"
    assert {Status.NEW, Status.QUEUED, Status.ACTIVE} == saqlite.ACTIVE_STATUSES
    assert {Status.COMPLETE, Status.FAILED, Status.ABORTED} == saqlite.TERMINAL_STATUSES
    assert {Status.FAILED, Status.ABORTED} == saqlite.UNSUCCESSFUL_TERMINAL_STATUSES
    job = Job("f", status=t.cast(Status, "queued"))
    assert job.status is Status.QUEUED


def test_public_names_importable() -> None:
    for name in (
        "Job", "CronJob", "Queue", "Worker", "Status", "JobError", "StorageError", "Context",
        "WorkerInfo", "WorkerStats", "QueueInfo", "TimersDict", "CountKind", "main",
    ):  # fmt: skip
        assert hasattr(saqlite, name), name
        assert name in saqlite.__all__, name


def test_job_fields_order_and_defaults() -> None:
    names = [field.name for field in dataclasses.fields(Job)]
    assert names == [  # SAQ 0.26's order
        "function", "kwargs", "queue", "key", "timeout", "heartbeat", "retries", "ttl",
        "retry_delay", "retry_backoff", "scheduled", "progress", "attempts", "completed",
        "queued", "started", "touched", "result", "error", "status", "priority", "group_key",
        "meta", "worker_id",
        "depends_on", "allow_failed_dependencies",  # saqlite's own, after SAQ's
    ]  # fmt: skip
    job = Job("f")
    assert (job.kwargs, job.queue, job.timeout, job.heartbeat, job.retries, job.ttl) == (
        None, None, 10, 0, 1, 600,
    )  # fmt: skip
    assert (job.retry_delay, job.retry_backoff, job.scheduled, job.progress, job.meta) == (
        0.0, False, 0, 0.0, {},
    )  # fmt: skip
    assert (job.attempts, job.completed, job.queued, job.started, job.touched) == (0, 0, 0, 0, 0)
    assert (job.result, job.error, job.status, job.priority, job.group_key, job.worker_id) == (
        None, None, Status.NEW, 0, None, None,
    )  # fmt: skip
    assert isinstance(job.key, str) and job.key
    assert Job("f").key != job.key
    assert Job("f").meta is not job.meta


def test_job_to_dict_omits_defaults_and_empty_meta_and_names_queue() -> None:
    q = Queue("unused.db", name="mail")
    job = Job("send", key="k1")
    assert job.to_dict() == {"function": "send", "key": "k1"}
    job = Job("send", kwargs={"to": "a"}, queue=q, key="k2", timeout=5, meta={}, priority=3)
    assert job.to_dict() == {
        "function": "send", "kwargs": {"to": "a"}, "queue": "mail", "key": "k2",
        "timeout": 5, "priority": 3,
    }  # fmt: skip
    job.meta["x"] = 1
    job.status = Status.COMPLETE
    assert job.to_dict()["meta"] == {"x": 1}
    assert job.to_dict()["status"] == "complete"
    json.dumps(job.to_dict())  # serialisable as is


def test_job_equality_and_hash_by_key() -> None:
    a = Job("f", key="same", kwargs={"x": 1})
    b = Job("g", key="same", timeout=3)
    c = Job("f", key="other", kwargs={"x": 1})
    assert a == b
    assert hash(a) == hash(b)
    assert a != c
    assert len({a, b, c}) == 2
    assert a != "same"


def test_job_duration_kinds() -> None:
    job = Job("f", queued=1_000, started=1_500, completed=4_000)
    assert job.duration("process") == 2_500
    assert job.duration("start") == 500
    assert job.duration("total") == 3_000
    running = job.duration("running")
    assert running is not None and running >= saqlite.now() - 1_500 - 1_000
    fresh = Job("f")
    for kind in ("process", "start", "total", "running"):
        assert fresh.duration(kind) is None
    with pytest.raises(ValueError, match="nonsense"):
        job.duration("nonsense")


def test_job_stuck() -> None:
    current = saqlite.now()
    assert not Job("f", status=Status.ACTIVE, started=current, touched=current).stuck
    assert Job("f", status=Status.ACTIVE, timeout=1, started=current - 5_000, touched=current).stuck
    assert Job("f", status=Status.ABORTING, timeout=1, started=current - 5_000).stuck
    assert not Job("f", status=Status.ACTIVE, timeout=0, started=current - 50_000).stuck
    assert Job(
        "f", status=Status.ACTIVE, timeout=0, heartbeat=1, started=current, touched=current - 3_000
    ).stuck
    assert not Job(
        "f", status=Status.ACTIVE, timeout=0, heartbeat=5, started=current, touched=current - 3_000
    ).stuck
    for status in (Status.QUEUED, Status.COMPLETE, Status.FAILED, Status.NEW, Status.ABORTED):
        assert not Job("f", status=status, timeout=1, started=current - 5_000).stuck


def test_job_retryable() -> None:
    assert Job("f").retryable  # retries 1 > attempts 0
    assert not Job("f", attempts=1).retryable
    assert Job("f", retries=3, attempts=2).retryable
    assert not Job("f", retries=3, attempts=3).retryable


def test_next_retry_delay_values(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Job("f").next_retry_delay() == 0.0
    assert Job("f", retry_delay=2.5, attempts=4).next_retry_delay() == 2.5  # no backoff: fixed
    monkeypatch.setattr(random, "random", lambda: 0.5)
    # retry_delay * 2 ** (attempts - 1) * jitter
    assert Job("f", retry_delay=1.0, retry_backoff=True, attempts=1).next_retry_delay() == 0.5
    assert Job("f", retry_delay=1.0, retry_backoff=True, attempts=3).next_retry_delay() == 2.0
    assert Job("f", retry_delay=1.0, retry_backoff=True, attempts=11).next_retry_delay() == 512.0
    assert Job("f", retry_delay=1.0, retry_backoff=True, attempts=0).next_retry_delay() == 0.5
    # a number caps the backoff
    assert Job("f", retry_delay=1.0, retry_backoff=3.0, attempts=3).next_retry_delay() == 1.5
    assert Job("f", retry_delay=1.0, retry_backoff=3.0, attempts=2).next_retry_delay() == 1.0
    monkeypatch.undo()
    for _ in range(50):  # real jitter: in [0, capped)
        delay = Job("f", retry_delay=1.0, retry_backoff=5.0, attempts=10).next_retry_delay()
        assert 0.0 <= delay < 5.0


def test_job_info_and_repr() -> None:
    q = Queue("unused.db")
    job = Job("add", kwargs={"a": 1}, queue=q, key="k1", timeout=5, retries=3)
    short = job.info()
    assert short.startswith("Job<") and short.endswith(">")
    assert "function: add" in short and "key: k1" in short
    assert "kwargs" not in short
    job.result, job.error, job.status = 42, "boom", Status.FAILED
    full = job.info(True)
    for part in ("function: add", "key: k1", "kwargs: {'a': 1}", "result: 42", "error: boom"):
        assert part in full, (part, full)
    # full lists the fields that differ from their defaults, and only those
    assert "timeout: 5" in full and "retries: 3" in full, full
    assert "ttl:" not in full and "heartbeat:" not in full
    assert repr(job) == job.info(True)
    assert Job("f", key="k").info() == "Job<function: f, key: k>"


def test_job_id_names_queue_and_key() -> None:
    q = Queue("unused.db", name="mail")
    job = Job("f", key="k1", queue=q)
    assert job.id == q.job_id("k1")
    assert "mail" in job.id and job.id.endswith("k1")
    assert Queue("unused.db").job_id("k1") != job.id


# =============================================================================
# Queue: enqueue, dedup, dequeue order, reading
# =============================================================================


@async_test
async def test_enqueue_sets_fields_and_splits_job_fields_from_kwargs(queue: Queue) -> None:
    before = saqlite.now()
    job = await queue.enqueue("add", a=1, b=2, key="k1", timeout=5, priority=2, retries=3)
    assert job is not None
    assert job.kwargs == {"a": 1, "b": 2}
    assert (job.key, job.timeout, job.priority, job.retries) == ("k1", 5, 2, 3)
    assert job.status is Status.QUEUED
    assert job.queue is queue
    assert before <= job.queued <= saqlite.now()  # milliseconds
    loaded = await stored(queue, "k1")
    assert loaded.to_dict() == job.to_dict()
    assert loaded.queue is queue
    # a function object is registered by its qualified name
    by_func = await queue.enqueue(noop)
    assert by_func is not None and by_func.function == "noop"
    # a Job object, plus kwargs that name fields or function kwargs
    given = await queue.enqueue(Job("add", kwargs={"a": 1}), b=5, ttl=0)
    assert given is not None
    assert given.kwargs == {"a": 1, "b": 5} and given.ttl == 0
    assert given.id == queue.job_id(given.key)


@async_test
async def test_enqueue_dedups_waiting_and_running_keys_and_reuses_finished(queue: Queue) -> None:
    first = await queue.enqueue("f", key="k", x=1)
    assert first is not None
    assert await queue.enqueue("f", key="k", x=2) is None  # waiting
    assert (await stored(queue, "k")).kwargs == {"x": 1}
    assert await queue.count("incomplete") == 1
    active = await queue.dequeue()
    assert active is not None and active.key == "k"
    assert await queue.enqueue("f", key="k", x=3) is None  # running
    assert (await stored(queue, "k")).status is Status.ACTIVE
    await queue.finish(active, Status.COMPLETE, result=1)
    again = await queue.enqueue("f", key="k", x=4)  # finished: may be enqueued again
    assert again is not None
    fresh = await stored(queue, "k")
    assert (fresh.status, fresh.kwargs, fresh.attempts, fresh.result) == (
        Status.QUEUED, {"x": 4}, 0, None,
    )  # fmt: skip
    # same key twice in one batch of enqueues: stored once
    results = await asyncio.gather(queue.enqueue("f", key="dup"), queue.enqueue("f", key="dup"))
    assert sum(r is not None for r in results) == 1


@async_test
async def test_job_enqueue_loads_stored_job_when_key_is_taken(queue: Queue) -> None:
    await queue.enqueue("f", key="k", x=1)
    duplicate = Job("f", kwargs={"x": 2}, key="k", queue=queue)
    await duplicate.enqueue()
    assert duplicate.kwargs == {"x": 1}
    assert duplicate.status is Status.QUEUED
    other = Job("f", key="k2")
    await other.enqueue(queue)
    assert other.queue is queue
    assert (await stored(queue, "k2")).status is Status.QUEUED


@async_test
async def test_before_enqueue_callbacks_register_and_unregister(queue: Queue) -> None:
    seen: list[tuple[str, Status]] = []

    async def callback(job: Job) -> None:
        seen.append((job.key, job.status))
        job.meta["tagged"] = True

    queue.register_before_enqueue(callback)
    await queue.enqueue("f", key="a")
    assert seen == [("a", Status.QUEUED)]
    assert (await stored(queue, "a")).meta == {"tagged": True}  # before it is stored
    queue.unregister_before_enqueue(callback)
    await queue.enqueue("f", key="b")
    assert seen == [("a", Status.QUEUED)]
    queue.unregister_before_enqueue(callback)  # twice is harmless


@async_test
async def test_dequeue_order_priority_then_scheduled_then_enqueue_order(queue: Queue) -> None:
    current = int(time.time())
    await queue.enqueue("f", key="late-low", priority=5)
    await queue.enqueue("f", key="first", priority=0)
    await queue.enqueue("f", key="second", priority=0)
    await queue.enqueue("f", key="third", priority=0)
    await queue.enqueue("f", key="old-scheduled", priority=0, scheduled=current - 100)
    await queue.enqueue("f", key="urgent", priority=-1)
    await queue.enqueue("f", key="future", priority=-10, scheduled=current + 3600)
    order = []
    for _ in range(6):
        job = await queue.dequeue(timeout=1)
        assert job is not None
        assert job.status is Status.ACTIVE and job.attempts == 1
        assert job.started and job.started >= job.queued
        order.append(job.key)
    assert order == ["urgent", "old-scheduled", "first", "second", "third", "late-low"]
    # the job scheduled in an hour is not due: dequeue waits, then gives None
    began = time.monotonic()
    assert await queue.dequeue(timeout=0.3) is None
    assert time.monotonic() - began >= 0.25
    assert (await stored(queue, "urgent")).status is Status.ACTIVE


@async_test
async def test_dequeue_waits_for_a_job_enqueued_later(queue: Queue) -> None:
    waiter = asyncio.create_task(queue.dequeue(timeout=10))
    await asyncio.sleep(0.1)
    await queue.enqueue("f", key="late")
    job = await asyncio.wait_for(waiter, 10)
    assert job is not None and job.key == "late"


@async_test
async def test_job_of_another_queue_is_value_error(tmp_path: Path, queue: Queue) -> None:
    other = make_queue(tmp_path / "jobs.db", name="other")
    job = Job("f", key="k", queue=other)
    with pytest.raises(ValueError, match="other"):
        await queue.enqueue(job)
    assert await queue.count("incomplete") == 0
    assert await other.count("incomplete") == 0


@async_test
async def test_named_queues_in_one_file_do_not_see_each_others_jobs(tmp_path: Path) -> None:
    mail = make_queue(tmp_path / "shared.db", name="mail")
    sms = make_queue(tmp_path / "shared.db", name="sms")
    await mail.enqueue("send", key="same-key", to="a@b")
    assert await sms.enqueue("send", key="same-key", to="123") is not None  # no dedup across
    await mail.enqueue("send", key="mail-only")
    assert await mail.count("queued") == 2
    assert await sms.count("queued") == 1
    assert await sms.job("mail-only") is None
    assert (await stored(sms, "same-key")).kwargs == {"to": "123"}
    job = await sms.dequeue(timeout=1)
    assert job is not None and job.kwargs == {"to": "123"}
    assert await sms.dequeue(timeout=0.2) is None
    assert [j.key async for j in sms.iter_jobs()] == ["same-key"]
    assert (await mail.info())["queued"] == 2
    assert (await sms.info())["name"] == "sms"


@async_test
async def test_jobs_in_order_asked_with_none_for_missing(queue: Queue) -> None:
    for key in ("a", "b", "c"):
        await queue.enqueue("f", key=key)
    jobs = await queue.jobs(["c", "missing", "a"])
    assert [j.key if j else None for j in jobs] == ["c", None, "a"]
    assert await queue.jobs([]) == []
    assert await queue.job("missing") is None
    many = [f"k{i}" for i in range(700)]  # more than one statement's worth
    await queue.enqueue_many([Job("f", key=key) for key in many])
    found = await queue.jobs(reversed(many))
    assert [j.key if j else None for j in found] == list(reversed(many))


@async_test
async def test_iter_jobs_by_status_in_batches(queue: Queue) -> None:
    for i in range(7):
        await queue.enqueue("f", key=f"k{i}")
    first = await queue.dequeue(timeout=1)
    assert first is not None
    await queue.finish(first, Status.COMPLETE)
    every = [job.key async for job in queue.iter_jobs(batch_size=2)]
    assert every == [f"k{i}" for i in range(7)]
    queued = [job.key async for job in queue.iter_jobs([Status.QUEUED], batch_size=3)]
    assert queued == [f"k{i}" for i in range(1, 7)]
    done = [job async for job in queue.iter_jobs(statuses=[Status.COMPLETE])]
    assert [(j.key, j.status) for j in done] == [("k0", Status.COMPLETE)]


@async_test
async def test_count_kinds_and_unknown_kind_is_value_error(queue: Queue) -> None:
    assert await queue.count("queued") == 0
    await queue.enqueue("f", key="a")
    await queue.enqueue("f", key="b")
    await queue.enqueue("f", key="later", scheduled=int(time.time()) + 3600)
    await queue.dequeue(timeout=1)
    assert await queue.count("queued") == 1  # due now only
    assert await queue.count("active") == 1
    assert await queue.count("incomplete") == 3  # queued + scheduled + active
    with pytest.raises(ValueError, match="'finished'"):
        await queue.count(t.cast(t.Any, "finished"))


@async_test
async def test_info_counts_and_job_list(queue: Queue) -> None:
    for i in range(4):
        await queue.enqueue("f", key=f"k{i}", n=i)
    await queue.enqueue("f", key="later", scheduled=int(time.time()) + 3600)
    await queue.dequeue(timeout=1)
    info = await queue.info()
    assert info == {
        "workers": {}, "name": "default", "queued": 3, "active": 1, "scheduled": 1, "jobs": [],
    }  # fmt: skip
    listed = (await queue.info(jobs=True))["jobs"]
    # Unfinished jobs, as in SAQ: the running ones, then the waiting ones in claim order.
    assert [j["key"] for j in listed] == ["k0", "k1", "k2", "k3", "later"]
    assert listed[3] == {
        "function": "f", "kwargs": {"n": 3}, "queue": "default", "key": "k3",
        "queued": listed[3]["queued"], "status": "queued",
    }  # fmt: skip
    page = (await queue.info(jobs=True, offset=1, limit=2))["jobs"]
    assert [j["key"] for j in page] == ["k1", "k2"]


@async_test
async def test_update_sets_fields_touches_and_keeps_status(queue: Queue) -> None:
    await queue.enqueue("f", key="k")
    job = await queue.dequeue(timeout=1)
    assert job is not None
    touched = job.touched
    await asyncio.sleep(0.01)
    await job.update(progress=0.5, meta={"step": 1})
    loaded = await stored(queue, "k")
    assert (loaded.progress, loaded.meta, loaded.status) == (0.5, {"step": 1}, Status.ACTIVE)
    assert loaded.touched > touched
    await queue.update(job, status=Status.COMPLETE, result="ok")  # status only when given
    loaded = await stored(queue, "k")
    assert (loaded.status, loaded.result) == (Status.COMPLETE, "ok")
    with pytest.raises(ValueError, match="nope"):
        await queue.update(job, nope=1)


@async_test
async def test_finish_retry_abort_public_methods_and_counters(queue: Queue) -> None:
    for key in ("a", "b", "c"):
        await queue.enqueue("f", key=key, retries=2)
    a = await queue.dequeue(timeout=1)
    b = await queue.dequeue(timeout=1)
    c = await queue.dequeue(timeout=1)
    assert a is not None and b is not None and c is not None
    await a.finish(Status.COMPLETE, result={"n": 1})
    loaded = await stored(queue, "a")
    assert (loaded.status, loaded.result, loaded.progress) == (Status.COMPLETE, {"n": 1}, 1.0)
    assert loaded.completed >= loaded.started > 0
    await b.retry("flaky")
    loaded = await stored(queue, "b")
    assert (loaded.status, loaded.error, loaded.attempts) == (Status.QUEUED, "flaky", 1)
    await queue.finish(c, Status.FAILED, error="broken")
    assert (await stored(queue, "c")).error == "broken"
    again = await queue.dequeue(timeout=1)
    assert again is not None and again.key == "b" and again.attempts == 2
    await again.abort("stop it")
    assert (queue.complete, queue.failed, queue.retried) == (1, 1, 1)
    # retry with a delay schedules the next attempt later
    await queue.enqueue("f", key="d", retry_delay=100.0, retries=2)
    d = await queue.dequeue(timeout=1)
    assert d is not None
    await queue.retry(d, "later")
    loaded = await stored(queue, "d")
    assert loaded.status is Status.QUEUED
    assert loaded.scheduled >= time.time() + 98
    # "b" is ABORTING: as in SAQ, not incomplete any more; "d" waits for its retry.
    assert await queue.count("queued") == 0 and await queue.count("incomplete") == 1
    # backoff: delay * 2**(attempts-1) * jitter, capped
    await queue.enqueue("f", key="e", retry_delay=100.0, retry_backoff=True, retries=2)
    e = await queue.dequeue(timeout=1)
    assert e is not None
    await queue.retry(e, "later")
    assert (await stored(queue, "e")).scheduled <= time.time() + 101


@async_test
async def test_serialize_deserialize_copy(tmp_path: Path, queue: Queue) -> None:
    job = Job("f", kwargs={"x": [1, 2]}, key="k", queue=queue, meta={"m": 1})
    payload = queue.serialize(job)
    assert json.loads(payload) == job.to_dict()
    back = queue.deserialize(payload)
    assert back is not None
    assert back.to_dict() == job.to_dict() and back.queue is queue
    assert queue.deserialize(None) is None
    copy = queue.copy(job)
    assert copy == job and copy is not job
    copy.kwargs = {"x": 3}
    assert job.kwargs == {"x": [1, 2]}
    other = Queue(tmp_path / "jobs.db", name="other")
    with pytest.raises(ValueError, match="other"):
        queue.deserialize(other.serialize(Job("f", queue=other)))


@async_test
async def test_custom_dump_and_load(tmp_path: Path) -> None:
    calls: list[str] = []

    def dump(data: dict[str, t.Any]) -> str:
        calls.append("dump")
        return json.dumps(data, default=sorted)  # sets become sorted lists

    def load(payload: t.Union[str, bytes]) -> t.Any:
        calls.append("load")
        return json.loads(payload)

    q = make_queue(tmp_path / "jobs.db", dump=dump, load=load)
    await q.enqueue("f", key="k", tags={"b", "a"})
    assert (await stored(q, "k")).kwargs == {"tags": ["a", "b"]}
    assert "dump" in calls and "load" in calls


# =============================================================================
# Queue: URLs, files, schema, bad input
# =============================================================================


@async_test
async def test_from_url_relative_and_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = Queue.from_url("sqlite:///rel.db", name="mail")
    _OPEN_QUEUES.append(relative)
    assert relative.name == "mail"
    await relative.enqueue("f", key="k")
    assert (tmp_path / "rel.db").is_file()
    nested = Queue.from_url("sqlite:///sub/dir.db")
    assert nested.path == os.path.join("sub", "dir.db")
    absolute_path = tmp_path / "abs" / "path.db"
    absolute_path.parent.mkdir()
    absolute = Queue.from_url(f"sqlite:///{absolute_path}")
    _OPEN_QUEUES.append(absolute)
    assert f"sqlite:///{absolute_path}".startswith("sqlite:////")
    assert Path(absolute.path) == absolute_path
    await absolute.connect()
    assert absolute_path.is_file()


@pytest.mark.parametrize(
    "url", ["redis://localhost", "postgres://db/x", "sqlite://", "sqlite:///", "rel.db", ""]
)
def test_from_url_invalid_is_value_error(url: str) -> None:
    with pytest.raises(ValueError, match="sqlite:///"):
        Queue.from_url(url)


@async_test
async def test_connect_and_disconnect_are_idempotent(queue: Queue) -> None:
    await queue.connect()
    await queue.connect()
    await asyncio.gather(queue.connect(), queue.connect())
    await queue.enqueue("f", key="k")
    await queue.disconnect()
    await queue.disconnect()
    assert await queue.job("k") is not None  # usable again after reconnecting
    await queue.disconnect()
    await queue.connect()
    assert await queue.count("queued") == 1


def test_concurrent_first_connects_to_a_new_file(tmp_path: Path) -> None:
    """Workers that start together on a new file must all connect (threads, as processes
    would; the race is short, so it is tried on many new files)."""
    errors: list[str] = []
    for i in range(150):
        path = tmp_path / f"new{i}.db"
        barrier = threading.Barrier(4)

        async def connect(path: Path = path, barrier: threading.Barrier = barrier) -> None:
            queue = Queue(path)
            barrier.wait()
            try:
                await queue.connect()
            except StorageError as exc:
                errors.append(str(exc))
            finally:
                await queue.disconnect()

        threads = [threading.Thread(target=asyncio.run, args=(connect(),)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert errors == []


@async_test
async def test_schema_version_stored_and_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    q = make_queue(path)
    await q.connect()
    await q.disconnect()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (version,) = conn.execute(
            "SELECT value FROM saqlite_meta WHERE name = 'schema_version'"
        ).fetchone()
        assert int(version) == saqlite.SCHEMA_VERSION >= 1
        with conn:
            conn.execute(
                "UPDATE saqlite_meta SET value = ? WHERE name = 'schema_version'",
                (saqlite.SCHEMA_VERSION + 1,),
            )
    newer = make_queue(path)
    with pytest.raises(StorageError, match="newer") as info:
        await newer.connect()
    assert "upgrade saqlite" in str(info.value)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    # an older saqlite file (same version) still opens: reconnecting migrates nothing
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "UPDATE saqlite_meta SET value = ? WHERE name = 'schema_version'",
            (saqlite.SCHEMA_VERSION,),
        )
    await make_queue(path).connect()


@async_test
async def test_unserialisable_kwargs_is_type_error_naming_job_and_nothing_stored(
    queue: Queue,
) -> None:
    with pytest.raises(TypeError) as info:
        await queue.enqueue("send_mail", key="mail-1", attachment=object())
    message = str(info.value)
    assert "send_mail" in message and "mail-1" in message
    assert "JSON" in message and "dump=" in message
    assert await queue.count("incomplete") == 0
    assert await queue.job("mail-1") is None
    with pytest.raises(TypeError, match="JSON"):
        await queue.enqueue(Job("f", meta={"when": datetime.now()}))
    assert await queue.count("incomplete") == 0
    # the queue still works afterwards
    assert await queue.enqueue("send_mail", key="mail-2") is not None


@pytest.mark.parametrize(
    ("field", "value", "phrase"),
    [
        ("timeout", -1, "timeout"),
        ("retries", -1, "retries"),
        ("heartbeat", -5, "heartbeat"),
        ("ttl", -2, "ttl"),
    ],
)
@async_test
async def test_negative_options_are_value_error_at_enqueue(
    queue: Queue, field: str, value: int, phrase: str
) -> None:
    with pytest.raises(ValueError, match=phrase):
        await queue.enqueue("f", key="k", **{field: value})
    with pytest.raises(ValueError, match=phrase):
        await queue.enqueue(Job("f", key="k2", **t.cast("dict[str, t.Any]", {field: value})))
    assert await queue.count("incomplete") == 0


@async_test
async def test_path_that_is_a_folder_is_storage_error(tmp_path: Path) -> None:
    folder = tmp_path / "a_folder"
    folder.mkdir()
    with pytest.raises(StorageError, match="folder") as info:
        await make_queue(folder).connect()
    assert str(folder) in str(info.value)
    missing = tmp_path / "no" / "such" / "dir" / "jobs.db"
    with pytest.raises(StorageError, match="does not exist") as info:
        await make_queue(missing).connect()
    assert str(missing) in str(info.value)


@async_test
async def test_file_that_is_not_a_database_is_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "random.bin"
    path.write_bytes(random.Random(1).randbytes(8192))
    with pytest.raises(StorageError, match="not a SQLite database") as info:
        await make_queue(path).connect()
    assert str(path) in str(info.value)
    assert path.read_bytes() == random.Random(1).randbytes(8192)  # left alone


def _connect_without_root_powers(path: Path) -> subprocess.CompletedProcess[str]:
    """Connect a Queue to ``path`` in a child that cannot bypass file permissions.

    As root, permission bits are ignored (CAP_DAC_OVERRIDE); the child drops those
    capabilities with setpriv, so a read-only folder is read-only for it.
    """
    script = textwrap.dedent(f"""
        import asyncio, saqlite
        async def main():
            queue = saqlite.Queue({str(path)!r})
            try:
                await queue.connect()
                await queue.enqueue("f", key="k")
            except saqlite.StorageError as exc:
                print("StorageError:", exc)
            else:
                print("connected")
            finally:
                await queue.disconnect()
        asyncio.run(main())
    """)
    command = [sys.executable, "-c", script]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: permission bits cannot be enforced")
        command = [setpriv, "--bounding-set", "-dac_override,-dac_read_search",
                   "--inh-caps=-all", *command]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(HERE), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=60)


@async_test
async def test_read_only_folder_is_storage_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    existing = folder / "existing.db"
    q = make_queue(existing)
    await q.enqueue("f", key="before")
    await q.disconnect()
    for name in ("existing.db-wal", "existing.db-shm"):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    existing.chmod(0o444)
    folder.chmod(0o555)
    try:
        for path in (folder / "new.db", existing):
            outcome = _connect_without_root_powers(path)
            assert outcome.returncode == 0, outcome.stderr
            assert outcome.stdout.startswith("StorageError:"), (path, outcome.stdout)
            assert str(path) in outcome.stdout
            assert "writable" in outcome.stdout
    finally:
        folder.chmod(0o755)
        existing.chmod(0o644)


def test_worker_options_that_are_value_errors(tmp_path: Path) -> None:
    q = Queue(tmp_path / "jobs.db")
    with pytest.raises(ValueError, match="dequeue_timeout"):
        Worker(q, [noop], burst=True)
    with pytest.raises(ValueError, match="concurrency"):
        Worker(q, [noop], concurrency=0)
    with pytest.raises(ValueError, match="sweep"):
        Worker(q, [noop], timers={"sweep": 0})
    for expression in ("not a cron", "61 * * * *", "* * * * * * * *", ""):
        with pytest.raises(ValueError, match="cron"):
            Worker(q, [noop], cron_jobs=[CronJob(noop, expression)])
    cron = CronJob(noop, "* * * * *")
    assert (cron.unique, cron.timeout, cron.heartbeat, cron.retries, cron.ttl, cron.kwargs) == (
        True, None, None, None, None, None,
    )  # fmt: skip
    assert Worker(q, [noop], burst=True, dequeue_timeout=1).burst
    assert Worker(q, [noop]).timers == {"schedule": 1, "worker_info": 10, "sweep": 60, "abort": 1}


# =============================================================================
# Worker: running functions, hooks, context
# =============================================================================


@async_test
async def test_worker_runs_functions_registered_by_qualname_or_name(queue: Queue) -> None:
    async def add(ctx: Context, a: int, b: int) -> int:
        assert ctx["job"].kwargs == {"a": a, "b": b}
        return a + b

    def multiply(ctx: Context, a: int, b: int) -> int:
        return a * b

    worker = worker_for(queue, [add, ("times", multiply)])
    assert set(worker.functions) == {add.__qualname__, "times"}
    async with running(worker):
        added = await queue.enqueue(add, a=2, b=3)
        timesed = await queue.enqueue("times", a=2, b=3)
        assert added is not None and timesed is not None
        await added.refresh(10)
        await timesed.refresh(10)
    assert (added.status, added.result) == (Status.COMPLETE, 5)
    assert (timesed.status, timesed.result) == (Status.COMPLETE, 6)
    assert added.attempts == 1 and added.worker_id == worker.id
    assert added.completed >= added.started >= added.queued > 0
    assert added.progress == 1.0


VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


@async_test
async def test_sync_functions_run_in_a_thread_with_callers_contextvars(queue: Queue) -> None:
    loop_thread = threading.get_ident()

    def sync_job(ctx: Context) -> dict[str, t.Any]:
        return {"thread": threading.get_ident(), "var": VAR.get()}

    async def async_job(ctx: Context) -> dict[str, t.Any]:
        return {"thread": threading.get_ident(), "var": VAR.get()}

    VAR.set("set before start")
    async with running(worker_for(queue, [("sync", sync_job), ("async", async_job)])):
        results = await queue.map("sync", [{}, {}], timeout=10)
        async_result = await queue.apply("async", timeout=10)
    for result in results:
        assert result["thread"] != loop_thread
        assert result["var"] == "set before start"
    assert async_result == {"thread": loop_thread, "var": "set before start"}


@async_test
async def test_hooks_one_or_list_sync_or_async_with_ctx(queue: Queue) -> None:
    events: list[tuple[str, t.Any]] = []

    def startup_sync(ctx: Context) -> None:
        events.append(("startup_sync", sorted(ctx)))
        t.cast("dict[str, t.Any]", ctx)["db"] = "connection"

    async def startup_async(ctx: Context) -> None:
        t.cast("dict[str, t.Any]", ctx)["cache"] = {"warm": True}
        events.append(("startup_async", None))

    async def shutdown(ctx: Context) -> None:
        events.append(("shutdown", t.cast("dict[str, t.Any]", ctx)["db"]))

    def before_sync(ctx: Context) -> None:
        events.append(("before_sync", ctx["job"].function))

    async def before_async(ctx: Context) -> None:
        events.append(("before_async", ctx["job"].status))

    async def after(ctx: Context) -> None:
        events.append(("after", (ctx["job"].function, ctx["job"].status,
                                 repr(ctx.get("exception")))))  # fmt: skip

    async def good(ctx: Context) -> str:
        extra = t.cast("dict[str, t.Any]", ctx)
        assert ctx["worker"] is worker and ctx["queue"] is queue
        assert ctx["job"].function == "good"
        return f"{extra['db']} {extra['cache']['warm']}"

    async def bad(ctx: Context) -> None:
        raise ValueError("bad job")

    worker = worker_for(
        queue, [("good", good), ("bad", bad)],
        startup=[startup_sync, startup_async], shutdown=shutdown,
        before_process=[before_sync, before_async], after_process=after,
    )  # fmt: skip
    async with running(worker):
        assert await queue.apply("good", timeout=10) == "connection True"
        with pytest.raises(JobError):
            await queue.apply("bad", timeout=10)
        await wait_for(lambda: sum(name == "after" for name, _ in events) == 2)
    names = [name for name, _ in events]
    assert names[:2] == ["startup_sync", "startup_async"]
    assert events[0][1] == ["queue", "worker"]
    assert names[-1] == "shutdown" and events[-1][1] == "connection"
    assert names.count("shutdown") == 1
    assert ("before_sync", "good") in events and ("before_sync", "bad") in events
    assert ("before_async", Status.ACTIVE) in events
    assert names.index("before_sync") < names.index("before_async") < names.index("after")
    afters = [value for name, value in events if name == "after"]
    assert afters[0] == ("good", Status.COMPLETE, "None")
    assert afters[1][0] == "bad" and afters[1][1] is Status.FAILED
    assert "ValueError('bad job')" in afters[1][2]


@async_test
async def test_failing_job_is_retried_then_failed_with_traceback(queue: Queue) -> None:
    attempts: list[int] = []

    async def flaky(ctx: Context) -> None:
        attempts.append(ctx["job"].attempts)
        raise RuntimeError(f"attempt {ctx['job'].attempts} broke")

    async with running(worker := worker_for(queue, [("flaky", flaky)])):
        job = await queue.enqueue("flaky", retries=3)
        assert job is not None
        await job.refresh(10)
        await wait_for(lambda: worker.queue.failed == 1)
    assert attempts == [1, 2, 3]
    assert job.status is Status.FAILED and job.attempts == 3
    assert job.error is not None
    assert "Traceback" in job.error and "RuntimeError: attempt 3 broke" in job.error
    assert (queue.retried, queue.failed) == (2, 1)


@async_test
async def test_retry_delay_and_backoff_postpone_the_next_attempt(queue: Queue) -> None:
    starts: list[float] = []

    async def flaky(ctx: Context) -> str:
        starts.append(time.time())
        if len(starts) < 2:
            raise RuntimeError("first try fails")
        return "ok"

    async with running(worker_for(queue, [("flaky", flaky)])):
        job = await queue.enqueue("flaky", retries=2, retry_delay=2.0)
        assert job is not None

        async def retried() -> bool:
            return bool(starts) and (await stored(queue, job.key)).error is not None

        await wait_for(retried)
        assert (await stored(queue, job.key)).status is Status.QUEUED
        waiting = await stored(queue, job.key)
        assert waiting.error is not None and "first try fails" in waiting.error
        assert waiting.scheduled >= int(starts[0]) + 1  # seconds
        await job.refresh(10)
    assert job.status is Status.COMPLETE and job.result == "ok"
    assert starts[1] >= waiting.scheduled - 0.01
    assert starts[1] - starts[0] >= 1.0


@async_test
async def test_timeout_cancels_job_retries_then_fails_with_timeout_error(queue: Queue) -> None:
    cancelled: list[int] = []

    async def slow(ctx: Context) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(ctx["job"].attempts)
            raise

    async with running(worker_for(queue, [("slow", slow)], timers=NO_SWEEP)):
        job = await queue.enqueue("slow", timeout=1, retries=2)
        assert job is not None
        await job.refresh(20)
    assert job.status is Status.FAILED
    assert job.attempts == 2
    assert cancelled == [1, 2]
    assert job.error is not None and "TimeoutError" in job.error
    process = job.duration("process")
    assert process is not None and process < 10_000


@async_test
async def test_heartbeat_missed_is_swept_and_kept_heartbeat_completes(queue: Queue) -> None:
    cancelled = asyncio.Event()
    silent = sleeps_until_cancelled(cancelled)

    async def beating(ctx: Context) -> str:
        for i in range(12):
            await asyncio.sleep(0.2)
            await ctx["job"].update(progress=i / 12)
        return "alive"

    async def silent_once(ctx: Context) -> str:
        if ctx["job"].attempts == 1:
            await asyncio.sleep(30)
        return f"attempt {ctx['job'].attempts}"

    functions = [("silent", silent), ("beating", beating), ("silent_once", silent_once)]
    async with running(worker_for(queue, functions)):
        stuck = await queue.enqueue("silent", heartbeat=1, timeout=0)
        alive = await queue.enqueue("beating", heartbeat=1, timeout=0)
        again = await queue.enqueue("silent_once", heartbeat=1, timeout=0, retries=2)
        assert stuck is not None and alive is not None and again is not None
        await stuck.refresh(15)
        await alive.refresh(15)
        await again.refresh(15)
    assert stuck.status is Status.ABORTED and stuck.error == "swept"
    assert cancelled.is_set()
    assert (alive.status, alive.result) == (Status.COMPLETE, "alive")
    assert (again.status, again.result, again.attempts) == (Status.COMPLETE, "attempt 2", 2)


@async_test
async def test_sweep_retries_or_aborts_stuck_jobs(queue: Queue) -> None:
    await queue.enqueue("f", key="retryable", retries=2, timeout=1)
    await queue.enqueue("f", key="final", retries=1, timeout=1)
    await queue.enqueue("f", key="fine", retries=1, timeout=60)
    jobs = [await queue.dequeue(timeout=1) for _ in range(3)]
    long_ago = saqlite.now() - 5_000
    for job in jobs:
        assert job is not None
        await queue.update(job, started=long_ago)
    assert all(job is not None and job.stuck for job in jobs[:2])
    swept = await queue.sweep(abort=0.1)
    assert sorted(swept) == sorted([queue.job_id("retryable"), queue.job_id("final")])
    retried = await stored(queue, "retryable")
    assert (retried.status, retried.error) == (Status.QUEUED, "swept")
    aborted = await stored(queue, "final")
    assert (aborted.status, aborted.error) == (Status.ABORTED, "swept")
    assert (await stored(queue, "fine")).status is Status.ACTIVE
    assert queue.swept_error_message == "swept"


@async_test
async def test_sweep_recovers_job_of_a_killed_worker_process(queue: Queue) -> None:
    script = textwrap.dedent(f"""
        import asyncio, saqlite
        async def hang(ctx):
            await asyncio.sleep(60)
        queue = saqlite.Queue({queue.path!r})
        worker = saqlite.Worker(queue, [("hang", hang)], timers={{"sweep": 1}})
        asyncio.run(worker.start())
    """)
    env = {**os.environ, "PYTHONPATH": str(HERE), "PYTHONDONTWRITEBYTECODE": "1"}
    final = await queue.enqueue("hang", key="final", timeout=60)
    retried = await queue.enqueue("hang", key="retried", timeout=60, retries=2)
    assert final is not None and retried is not None
    child = _spawn([sys.executable, "-c", script], env)
    try:
        await wait_for(lambda: _all_status(queue, ["final", "retried"], Status.ACTIVE), timeout=30)
    finally:
        child.kill()
        await asyncio.to_thread(child.wait, 30)
    swept: list[str] = []

    async def sweep() -> bool:  # once the dead worker's sweep lease (1 s) has run out
        swept.extend(await queue.sweep(abort=0.1))
        return bool(swept)

    await wait_for(sweep, timeout=10, interval=0.1)
    assert sorted(swept) == [queue.job_id("final"), queue.job_id("retried")]
    await final.refresh()
    await retried.refresh()
    # A worker's death is not the job's failure: both go back, the attempt uncharged.
    assert (final.status, final.error, final.attempts) == (Status.QUEUED, "swept", 0)
    assert (retried.status, retried.error, retried.attempts) == (Status.QUEUED, "swept", 0)


def _spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=env)


async def _all_status(queue: Queue, keys: list[str], status: Status) -> bool:
    return all([await has_status(queue, key, status) for key in keys])


@async_test
async def test_only_one_sweeper_at_a_time(tmp_path: Path, queue: Queue) -> None:
    other = make_queue(tmp_path / "jobs.db")
    await queue.enqueue("f", key="k", timeout=1)
    job = await queue.dequeue(timeout=1)
    assert job is not None
    assert await queue.sweep(lock=60, abort=0.1) == []  # nothing stuck; the lease is taken
    await queue.update(job, started=saqlite.now() - 5_000)
    assert await other.sweep(lock=60, abort=0.1) == []  # the first sweeper holds the lease
    assert (await stored(queue, "k")).status is Status.ACTIVE
    assert await queue.sweep(lock=60, abort=0.1) == [queue.job_id("k")]


@async_test
async def test_ttl_minus_one_zero_and_positive(queue: Queue) -> None:
    for key, ttl in (("gone", -1), ("forever", 0), ("short", 1), ("default", 600)):
        await queue.enqueue("f", key=key, ttl=ttl)
    for _ in range(4):
        job = await queue.dequeue(timeout=1)
        assert job is not None
        await queue.finish(job, Status.COMPLETE, result=job.key)
    assert await queue.job("gone") is None  # deleted at once
    for key in ("forever", "short", "default"):
        assert (await stored(queue, key)).result == key
    await queue.sweep()
    assert await queue.job("short") is not None  # not yet expired
    began = time.monotonic()

    async def short_deleted() -> bool:
        await queue.sweep()
        return await queue.job("short") is None

    await wait_for(short_deleted, timeout=10, interval=0.1)
    assert time.monotonic() - began >= 0.5
    assert await queue.job("forever") is not None
    assert await queue.job("default") is not None
    # an aborted queued job with ttl=-1 is deleted too
    await queue.enqueue("f", key="aborted-gone", ttl=-1)
    aborted = await stored(queue, "aborted-gone")
    await queue.abort(aborted, "no")
    assert await queue.job("aborted-gone") is None


@async_test
async def test_ttl_minus_one_through_worker_and_refresh_of_deleted_job(queue: Queue) -> None:
    async with running(worker_for(queue, [noop])):
        job = await queue.enqueue(noop, ttl=-1)
        assert job is not None
        with pytest.raises(RuntimeError, match="doesn't exist"):
            await job.refresh(10)
        assert await queue.job(job.key) is None
        results = await queue.map(noop, [{}], ttl=-1, timeout=10)
    assert results in ([], [None])


@async_test
async def test_abort_queued_job_is_aborted_at_once_and_never_runs(queue: Queue) -> None:
    ran: list[str] = []

    async def record(ctx: Context) -> None:
        ran.append(ctx["job"].key)

    await queue.enqueue("record", key="doomed")
    await queue.enqueue("record", key="kept")
    doomed = await stored(queue, "doomed")
    await queue.abort(doomed, "not needed")
    assert (doomed.status, doomed.error) == (Status.ABORTED, "not needed")
    loaded = await stored(queue, "doomed")
    assert (loaded.status, loaded.error) == (Status.ABORTED, "not needed")
    assert await queue.count("incomplete") == 1
    async with running(worker_for(queue, [("record", record)])):
        await wait_for(lambda: is_finished(queue, "kept"))
    assert ran == ["kept"]
    assert queue.aborted >= 1
    await queue.abort(doomed, "again")  # a finished job: nothing changes
    assert (await stored(queue, "doomed")).error == "not needed"


@async_test
async def test_abort_active_job_cancels_its_task_and_finishes_aborted(queue: Queue) -> None:
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def long(ctx: Context) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    worker = worker_for(queue, [("long", long), noop], timers=NO_SWEEP)
    async with running(worker):
        job = await queue.enqueue("long", key="k", timeout=60)
        assert job is not None
        await asyncio.wait_for(started.wait(), 10)
        await job.abort("user said stop")
        assert job.status in (Status.ABORTING, Status.ABORTED)
        await job.refresh(10)
        assert (job.status, job.error) == (Status.ABORTED, "user said stop")
        assert cancelled.is_set()
        # the worker is free again
        assert await queue.apply(noop.__qualname__, timeout=10) is None
    assert queue.aborted >= 1


@async_test
async def test_abort_of_a_job_in_a_sync_function(queue: Queue) -> None:
    release = threading.Event()

    def blocking(ctx: Context) -> str:
        release.wait(10)
        return "finished"

    worker = worker_for(queue, [("blocking", blocking)], timers=NO_SWEEP)
    async with running(worker):
        job = await queue.enqueue("blocking", timeout=60)
        assert job is not None
        await wait_for(lambda: has_status(queue, job.key, Status.ACTIVE))
        await queue.abort(job, "stop")
        # The worker cancels the run at once, but a plain function can't be stopped:
        # the job ends, aborted, when the function returns.
        await wait_for(lambda: worker._running[job.key].cancelled_for is not None)
        release.set()
        await job.refresh(until_complete=30)
    assert (job.status, job.error) == (Status.ABORTED, "stop")


@async_test
async def test_stop_requeues_running_job_as_cancelled(queue: Queue) -> None:
    cancelled = asyncio.Event()
    long = sleeps_until_cancelled(cancelled)

    worker = worker_for(queue, [("long", long)])
    async with running(worker):
        job = await queue.enqueue("long", timeout=60)
        assert job is not None
        await wait_for(lambda: has_status(queue, job.key, Status.ACTIVE))
    assert cancelled.is_set()
    loaded = await stored(queue, job.key)
    assert (loaded.status, loaded.error) == (Status.QUEUED, "cancelled")
    assert (await queue.info())["workers"] == {}

    # the next worker runs it again
    async def quick(ctx: Context) -> str:
        return "second run"

    async with running(worker_for(queue, [("long", quick)])):
        await loaded.refresh(10)
    assert (loaded.status, loaded.result) == (Status.COMPLETE, "second run")


@async_test
async def test_shutdown_grace_period_lets_a_job_finish(queue: Queue) -> None:
    async def short(ctx: Context) -> str:
        await asyncio.sleep(0.5)
        return "made it"

    worker = worker_for(queue, [("short", short)], shutdown_grace_period_s=20)
    async with running(worker):
        job = await queue.enqueue("short")
        assert job is not None
        await wait_for(lambda: has_status(queue, job.key, Status.ACTIVE))
        began = time.monotonic()
    assert time.monotonic() - began < 15  # stopped when the job ended, not at the deadline
    await job.refresh()
    assert (job.status, job.result) == (Status.COMPLETE, "made it")
    impatient = worker_for(queue, [("long", sleeper)], shutdown_grace_period_s=0.2)
    async with running(impatient):
        long = await queue.enqueue("long", timeout=60)
        assert long is not None
        await wait_for(lambda: has_status(queue, long.key, Status.ACTIVE))
    await long.refresh()
    assert (long.status, long.error) == (Status.QUEUED, "cancelled")  # grace ran out


@async_test
async def test_burst_mode_stops_when_empty_and_after_max_burst_jobs(queue: Queue) -> None:
    for i in range(3):
        await queue.enqueue(noop, key=f"a{i}")
    worker = Worker(queue, [noop], burst=True, dequeue_timeout=0.2, timers=TIMERS)
    await asyncio.wait_for(worker.start(), 10)
    assert all([await is_finished(queue, f"a{i}") for i in range(3)])
    for i in range(5):
        await queue.enqueue(noop, key=f"b{i}")
    limited = Worker(queue, [noop], burst=True, dequeue_timeout=0.2, max_burst_jobs=2,
                     timers=TIMERS)  # fmt: skip
    await asyncio.wait_for(limited.start(), 10)
    done = [await is_finished(queue, f"b{i}") for i in range(5)]
    assert done == [True, True, False, False, False]
    assert await queue.count("queued") == 3
    single = Worker(queue, [noop], burst=True, dequeue_timeout=0.2, max_burst_jobs=1,
                    concurrency=1, timers=TIMERS)  # fmt: skip
    await asyncio.wait_for(single.start(), 10)
    assert await queue.count("queued") == 2


@async_test
async def test_group_key_at_most_one_active_job_per_group(queue: Queue) -> None:
    active: dict[str, int] = {}
    most: dict[str, int] = {}

    async def grouped(ctx: Context) -> None:
        group = ctx["job"].group_key or f"none-{ctx['job'].key}"
        active[group] = active.get(group, 0) + 1
        most[group] = max(most.get(group, 0), active[group])
        most["all"] = max(most.get("all", 0), sum(active.values()))
        await asyncio.sleep(0.1)
        active[group] -= 1

    keys = []
    for i in range(4):
        for group in ("a", "b"):
            job = await queue.enqueue("grouped", key=f"{group}{i}", group_key=group)
            assert job is not None
            keys.append(job.key)
    for i in range(3):
        await queue.enqueue("grouped", key=f"free{i}")
        keys.append(f"free{i}")
    async with running(worker_for(queue, [("grouped", grouped)], concurrency=10)):
        await wait_for(lambda: _all_finished(queue, keys))
    assert most["a"] == 1 and most["b"] == 1
    assert most["all"] >= 3  # groups and free jobs still ran side by side
    for key in keys:
        assert (await stored(queue, key)).status is Status.COMPLETE


async def _all_finished(queue: Queue, keys: list[str]) -> bool:
    return all([await is_finished(queue, key) for key in keys])


@async_test
async def test_group_key_dequeue_skips_a_busy_group(queue: Queue) -> None:
    await queue.enqueue("f", key="g1", group_key="g")
    await queue.enqueue("f", key="g2", group_key="g")
    await queue.enqueue("f", key="free")
    first = await queue.dequeue(timeout=1)
    second = await queue.dequeue(timeout=1)
    assert first is not None and second is not None
    assert (first.key, second.key) == ("g1", "free")
    assert await queue.dequeue(timeout=0.2) is None  # g2 waits for g1
    await queue.finish(first, Status.COMPLETE)
    third = await queue.dequeue(timeout=1)
    assert third is not None and third.key == "g2"


@async_test
async def test_unknown_function_fails_job_naming_it_and_worker_keeps_going(queue: Queue) -> None:
    worker = worker_for(queue, [noop, ("other", noop)])
    async with running(worker):
        missing = await queue.enqueue("does_not_exist")
        assert missing is not None
        await missing.refresh(10)
        assert await queue.apply(noop, timeout=10) is None
    assert missing.status is Status.FAILED
    assert missing.error is not None
    assert "'does_not_exist'" in missing.error
    assert "noop" in missing.error and "other" in missing.error


@async_test
async def test_unserialisable_result_fails_job_with_clear_error(queue: Queue) -> None:
    async def weird(ctx: Context) -> object:
        return object()

    async with running(worker_for(queue, [("weird", weird), noop])):
        job = await queue.enqueue("weird")
        assert job is not None
        await job.refresh(10)
        assert await queue.apply(noop.__qualname__, timeout=10) is None
    assert job.status is Status.FAILED
    assert job.error is not None and "JSON" in job.error and "weird" in job.error
    assert job.result is None


# =============================================================================
# Queue: apply, map, batch, listen, refresh
# =============================================================================


@async_test
async def test_apply_and_map_results_in_order_and_job_errors(queue: Queue) -> None:
    async def add(ctx: Context, a: int, b: int = 0) -> int:
        await asyncio.sleep(0.05 * (3 - a % 3))  # finish out of order
        return a + b

    async def boom(ctx: Context, a: int = 0) -> None:
        raise ValueError(f"bad input {a}")

    async with running(worker_for(queue, [("add", add), ("boom", boom)])):
        assert await queue.apply("add", a=1, b=2) == 3
        assert await queue.map("add", [{"a": 1}, {"a": 2}, {"a": 3}], b=10) == [11, 12, 13]
        assert await queue.map("add", []) == []
        with pytest.raises(JobError) as info:
            await queue.apply("boom", a=7, timeout=10)
        error = info.value
        assert error.job.status is Status.FAILED
        assert error.job.id in str(error) and "failed" in str(error)
        assert "ValueError: bad input 7" in str(error)
        with pytest.raises(JobError, match="bad input"):
            await queue.map("boom", [{"a": 1}, {"a": 2}])
        mixed = await queue.map(
            Job("add", kwargs={"b": 1}), [{"a": 1}, {"a": 2}], return_exceptions=True
        )
        assert mixed == [2, 3]
        mixed = await queue.map("boom", [{"a": 5}], return_exceptions=True)
        assert len(mixed) == 1 and isinstance(mixed[0], JobError)
        assert "bad input 5" in str(mixed[0])
        template = Job("add", kwargs={"a": 1, "b": 1})
        assert await queue.map(template, [{}, {}]) == [2, 2]  # one job each, new keys


@async_test
async def test_map_gives_none_for_jobs_deleted_on_finish(queue: Queue) -> None:
    async def echo(ctx: Context, n: int) -> int:
        return n

    async with running(worker_for(queue, [("echo", echo)])):
        results = await queue.map("echo", [{"n": 1}, {"n": 2, "ttl": -1}, {"n": 3}], timeout=10)
    assert results == [1, None, 3]  # as SAQ 0.26: results line up with their inputs


@async_test
async def test_apply_of_aborted_job_raises_job_error(queue: Queue) -> None:
    async with running(worker_for(queue, [("long", sleeper)], timers=NO_SWEEP)):
        applying = asyncio.create_task(queue.apply("long", key="k", timeout=20))
        await wait_for(lambda: has_status(queue, "k", Status.ACTIVE))
        await queue.abort(await stored(queue, "k"), "aborted by test")
        with pytest.raises(JobError, match="aborted by test") as info:
            await applying
    assert info.value.job.status is Status.ABORTED


@async_test
async def test_batch_aborts_jobs_enqueued_in_a_block_that_raises(queue: Queue) -> None:
    with pytest.raises(RuntimeError, match="stop"):
        async with queue.batch():
            await queue.enqueue("f", key="b1")
            await queue.enqueue("f", key="b2")
            raise RuntimeError("stop")
    for key in ("b1", "b2"):
        assert (await stored(queue, key)).status is Status.ABORTED
    async with queue.batch():
        await queue.enqueue("f", key="ok1")
    assert (await stored(queue, "ok1")).status is Status.QUEUED
    await queue.enqueue("f", key="after")  # the batch's tracking ended with the block
    with pytest.raises(KeyError):
        async with queue.batch():
            raise KeyError("nothing enqueued")
    assert (await stored(queue, "after")).status is Status.QUEUED


@async_test
async def test_listen_sync_and_async_callbacks_stop_on_truthy(queue: Queue) -> None:
    seen: list[tuple[str, Status]] = []

    def sync_callback(key: str, status: Status) -> bool:
        seen.append((key, status))
        return status is Status.COMPLETE

    async with running(worker_for(queue, [("short", sleeper)])):
        job = await queue.enqueue("short", seconds=0.3)
        assert job is not None
        await queue.listen([job.key], sync_callback, timeout=10)
        assert seen[-1] == (job.key, Status.COMPLETE)
        assert all(key == job.key for key, _ in seen)
        statuses = [status for _, status in seen]
        assert len(statuses) == len(set(statuses))  # called on changes only

        async_seen: list[Status] = []

        async def async_callback(key: str, status: Status) -> bool:
            async_seen.append(status)
            return status in (Status.ACTIVE, Status.COMPLETE)

        other = await queue.enqueue("short", seconds=0.3)
        assert other is not None
        await queue.listen([other.key], async_callback, timeout=10)
        assert async_seen[-1] in (Status.ACTIVE, Status.COMPLETE)
        await other.refresh(10)

    calls: list[str] = []
    waiting = await queue.enqueue("short", key="never-runs")
    assert waiting is not None

    def first_call_stops(key: str, status: Status) -> bool:
        calls.append(key)
        return True

    await queue.listen(["never-runs"], first_call_stops, timeout=5)
    assert calls == ["never-runs"]  # truthy at once: one call, then stop
    with pytest.raises(asyncio.TimeoutError):
        await queue.listen(["never-runs"], lambda k, s: False, timeout=0.3)


@async_test
async def test_refresh_until_complete_and_timeout(queue: Queue) -> None:
    job = await queue.enqueue("short", seconds=0.2)
    assert job is not None
    await job.refresh()
    assert job.status is Status.QUEUED
    with pytest.raises(asyncio.TimeoutError):
        await job.refresh(0.3)
    async with running(worker_for(queue, [("short", sleeper)])):
        await job.refresh(10)
        assert (job.status, job.result) == (Status.COMPLETE, "slept")
        forever = await queue.enqueue("short", seconds=0.2)
        assert forever is not None
        await asyncio.wait_for(forever.refresh(0), 10)  # 0 = wait as long as it takes
        assert forever.status is Status.COMPLETE
    gone = Job("f", key="never-enqueued", queue=queue)
    with pytest.raises(RuntimeError, match="doesn't exist"):
        await gone.refresh()


@async_test
async def test_worker_of_a_dead_process_is_not_listed_and_is_swept(queue: Queue) -> None:
    script = textwrap.dedent(f"""
        import asyncio, saqlite
        async def main():
            queue = saqlite.Queue({queue.path!r})
            await queue.worker_info("ghost", "default", {{"pid": "gone"}}, ttl=600)
            await queue.disconnect()
        asyncio.run(main())
    """)
    env = {**os.environ, "PYTHONPATH": str(HERE), "PYTHONDONTWRITEBYTECODE": "1"}
    outcome = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], check=False, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert outcome.returncode == 0, outcome.stderr
    await queue.worker_info("here", "default", None, ttl=600)
    assert set((await queue.info())["workers"]) == {"here"}
    await queue.sweep()

    def registered() -> list[str]:
        with contextlib.closing(sqlite3.connect(queue.path)) as conn:
            return sorted(row[0] for row in conn.execute("SELECT id FROM saqlite_workers"))

    assert await asyncio.to_thread(registered) == ["here"]


# =============================================================================
# Worker: info, public methods, cron
# =============================================================================


@async_test
async def test_worker_info_in_queue_info(queue: Queue) -> None:
    worker = worker_for(queue, [noop], id="worker-1", metadata={"role": "test"})
    async with running(worker):
        await queue.apply(noop, timeout=10)

        async def counted() -> bool:
            info = (await queue.info())["workers"].get("worker-1")
            return info is not None and info["stats"]["complete"] == 1

        await wait_for(counted)
        info = (await queue.info())["workers"]["worker-1"]
        assert info["queue_key"] == "default"
        assert info["metadata"] == {"role": "test"}
        assert set(info["stats"]) == {"complete", "failed", "retried", "aborted", "uptime"}
        assert info["stats"]["failed"] == 0 and info["stats"]["uptime"] >= 0
    assert "worker-1" not in (await queue.info())["workers"]
    written = await queue.worker_info("manual", "default", {"k": "v"}, ttl=60)
    assert written["metadata"] == {"k": "v"} and written["queue_key"] == "default"
    assert (await queue.info())["workers"]["manual"]["metadata"] == {"k": "v"}


@async_test
async def test_worker_process_schedule_upkeep_and_abort_methods(queue: Queue) -> None:
    worker = Worker(queue, [noop, ("long", sleeper)], dequeue_timeout=0.2, timers=TIMERS)
    job = await queue.enqueue(noop)
    assert job is not None
    assert await worker.process() is True
    await job.refresh()
    assert job.status is Status.COMPLETE and job.worker_id == worker.id
    assert await worker.process() is False  # nothing within dequeue_timeout
    await worker.upkeep()
    assert worker.id in (await queue.info())["workers"]
    long = await queue.enqueue("long", timeout=60)
    assert long is not None
    processing = asyncio.create_task(worker.process())
    await wait_for(lambda: has_status(queue, long.key, Status.ACTIVE))
    await queue.abort(long, "via worker.abort")
    await worker.abort(60)  # running for less than the threshold: left alone
    assert (await stored(queue, long.key)).status is Status.ABORTING
    await worker.abort(0)
    await asyncio.wait_for(processing, 10)
    await long.refresh()
    assert (long.status, long.error) == (Status.ABORTED, "via worker.abort")
    await worker.stop()


CRON_RUNS: list[tuple[str, str, int, int]] = []


async def cron_tick(ctx: Context) -> None:
    job = ctx["job"]
    CRON_RUNS.append((ctx["worker"].id, job.key, job.scheduled, job.started))


async def cron_noon(ctx: Context, note: str = "") -> None:
    return None


@async_test
async def test_cron_every_second_enqueued_once_across_two_workers(tmp_path: Path) -> None:
    CRON_RUNS.clear()
    one = make_queue(tmp_path / "jobs.db")
    two = make_queue(tmp_path / "jobs.db")
    cron = [CronJob(cron_tick, "* * * * * *")]
    await one.connect()  # one at a time: see test_concurrent_first_connects_to_a_new_file
    await two.connect()
    first = worker_for(one, [], cron_jobs=cron, id="w1")
    second = worker_for(two, [], cron_jobs=cron, id="w2")
    assert first.functions == {"cron_tick": cron_tick}
    async with running(first, second):
        await wait_for(lambda: len(CRON_RUNS) >= 2, timeout=15)
        pending = await stored(one, "cron:cron_tick")
    runs = list(CRON_RUNS)
    assert all(key == "cron:cron_tick" for _, key, _, _ in runs)
    scheduled = [s for _, _, s, _ in runs]
    assert len(scheduled) == len(set(scheduled)), runs  # each run enqueued (and run) once
    for _, _, when, started in runs:
        assert isinstance(when, int) and when > 0
        assert started >= when * 1000  # not run before its time
    assert pending.scheduled >= scheduled[0]


@async_test
async def test_cron_tz_and_cron_job_options(queue: Queue) -> None:
    plus5 = timezone(timedelta(hours=5))
    cron = CronJob(cron_noon, "0 12 * * *", timeout=7, retries=3, ttl=0, kwargs={"note": "n"})
    worker = Worker(queue, [], cron_jobs=[cron], cron_tz=plus5, timers=TIMERS)
    began = datetime.now(plus5)
    await worker.schedule()
    job = await stored(queue, "cron:cron_noon")
    expected = began.replace(hour=12, minute=0, second=0, microsecond=0)
    if expected <= began:
        expected += timedelta(days=1)
    assert job.scheduled == int(expected.timestamp())
    assert (job.timeout, job.retries, job.ttl, job.kwargs) == (7, 3, 0, {"note": "n"})
    assert job.status is Status.QUEUED
    await worker.schedule()  # the same run: not enqueued twice
    assert await queue.count("incomplete") == 1
    # in UTC the same expression names another moment
    utc_queue = make_queue(Path(queue.path).with_name("utc.db"))
    utc_worker = Worker(utc_queue, [], cron_jobs=[CronJob(cron_noon, "0 12 * * *")])
    await utc_worker.schedule()
    utc_job = await stored(utc_queue, "cron:cron_noon")
    assert datetime.fromtimestamp(utc_job.scheduled, timezone.utc).hour == 12
    assert datetime.fromtimestamp(job.scheduled, timezone.utc).hour == 7
    await worker.stop()
    await utc_worker.stop()


# =============================================================================
# Command line
# =============================================================================

SETTINGS_MODULE = """
import asyncio
from saqlite import Queue

DB = {db!r}


async def slow(ctx, seconds=0.0):
    await asyncio.sleep(seconds)
    return "done"


settings = {{
    "queue": Queue(DB),
    "functions": [slow],
    "timers": {{"worker_info": 0.5, "sweep": 600, "abort": 0.1, "schedule": 0.1}},
}}


def settings_factory():
    return dict(settings)


not_a_dict = 42
"""


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Write tests_settings_module.py into tmp_path; the environment to run the CLI in."""
    (tmp_path / "tests_settings_module.py").write_text(
        SETTINGS_MODULE.format(db=str(tmp_path / "cli.db"))
    )
    pythonpath = os.pathsep.join([str(tmp_path), str(HERE)])
    return {**os.environ, "PYTHONPATH": pythonpath, "PYTHONDONTWRITEBYTECODE": "1"}


def run_python(
    env: dict[str, str], *args: str, cwd: t.Optional[Path] = None
) -> subprocess.CompletedProcess[str]:
    """Run this Python with ``args`` to the end; its output as text."""
    return subprocess.run(
        [sys.executable, *args],
        check=False, capture_output=True, text=True, env=env, timeout=60, cwd=cwd,
    )  # fmt: skip


def run_cli(
    env: dict[str, str], *args: str, cwd: t.Optional[Path] = None
) -> subprocess.CompletedProcess[str]:
    return run_python(env, "-m", "saqlite", *args, cwd=cwd)


def start_cli(env: dict[str, str], *args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "saqlite", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
        start_new_session=True,
    )  # fmt: skip


def stop_cli(process: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM the process group (as a terminal or service manager does); its exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=10)
        raise AssertionError(f"worker did not exit on SIGTERM: {stderr}") from None
    return process.returncode, stderr


async def check_ok(env: dict[str, str], cwd: Path) -> bool:
    outcome = await asyncio.to_thread(
        run_cli, env, "tests_settings_module.settings", "--check", cwd=cwd
    )
    return outcome.returncode == 0


@async_test
async def test_cli_check_and_worker_process_with_sigterm(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    idle = run_cli(cli_env, "tests_settings_module.settings", "--check", cwd=tmp_path)
    assert idle.returncode == 1, idle.stderr
    assert "Traceback" not in idle.stderr, idle.stderr
    worker = start_cli(cli_env, "tests_settings_module.settings", cwd=tmp_path)
    try:
        await wait_for(lambda: check_ok(cli_env, tmp_path), timeout=30, interval=0.2)
        q = make_queue(tmp_path / "cli.db")
        assert await q.apply("slow", seconds=0.0, timeout=20) == "done"
        job = await q.enqueue("slow", seconds=30.0, timeout=60)
        assert job is not None
        await wait_for(lambda: has_status(q, job.key, Status.ACTIVE), timeout=20)
    finally:
        code, stderr = stop_cli(worker)
    assert code == 0, stderr
    loaded = await stored(q, job.key)
    assert (loaded.status, loaded.error) == (Status.QUEUED, "cancelled")
    after = run_cli(cli_env, "tests_settings_module.settings", "--check", cwd=tmp_path)
    assert after.returncode == 1, after.stderr


@async_test
async def test_cli_two_workers_both_register_and_quiet_verbose_flags(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    for flags in (["-q"], ["-v"], ["-vv"], ["--quiet"], ["--verbose"]):
        outcome = run_cli(
            cli_env, "tests_settings_module.settings_factory", "--check", *flags, cwd=tmp_path
        )
        assert outcome.returncode == 1, (flags, outcome.stderr)
        assert "Traceback" not in outcome.stderr
    workers = start_cli(
        cli_env, "tests_settings_module.settings", "--workers", "2", "-q", cwd=tmp_path
    )
    q = make_queue(tmp_path / "cli.db")
    try:

        async def two_workers() -> bool:
            if workers.poll() is not None:
                return True
            return len((await q.info())["workers"]) == 2

        await wait_for(two_workers, timeout=40, interval=0.2)
        assert workers.poll() is None, workers.communicate()[1]
        assert len((await q.info())["workers"]) == 2
        assert await q.map("slow", [{}, {}, {}], timeout=20) == ["done"] * 3
    finally:
        code, stderr = stop_cli(workers)
    assert code == 0, stderr
    assert (await q.info())["workers"] == {}
    bad = run_cli(cli_env, "tests_settings_module.settings", "--workers", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "--workers" in bad.stderr


def test_cli_settings_that_are_not_a_dict_exit_with_an_error(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    outcome = run_cli(cli_env, "tests_settings_module.not_a_dict", "--check", cwd=tmp_path)
    assert outcome.returncode != 0
    assert "must be a dict" in outcome.stderr and "int" in outcome.stderr
    outcome = run_cli(cli_env, "tests_settings_module.not_a_dict", cwd=tmp_path)
    assert outcome.returncode != 0
    assert "must be a dict" in outcome.stderr
    outcome = run_cli(cli_env, "tests_settings_module.missing", "--check", cwd=tmp_path)
    assert outcome.returncode != 0 and "missing" in outcome.stderr
    outcome = run_cli(cli_env, "nodots", "--check", cwd=tmp_path)
    assert outcome.returncode != 0 and "module.attribute" in outcome.stderr


def _get(url: str, auth: t.Optional[tuple[str, str]] = None) -> tuple[int, str]:
    """GET a URL; the status code and body (an HTTP error is a status, not a raise)."""
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return int(error.code), ""


@async_test
async def test_cli_web_serves_monitoring_page_with_basic_auth(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**cli_env, "AUTH_PASSWORD": "secret"}
    web = start_cli(
        env, "tests_settings_module.settings", "--web", "--port", str(port), cwd=tmp_path
    )
    url = f"http://127.0.0.1:{port}/"
    try:

        async def serving() -> bool:
            if web.poll() is not None:
                return True
            with contextlib.suppress(OSError):
                await asyncio.to_thread(_get, url)
                return True
            return False

        await wait_for(serving, timeout=30, interval=0.2)
        assert web.poll() is None, web.communicate()[1]
        status, _ = await asyncio.to_thread(_get, url)
        assert status == 401  # AUTH_PASSWORD turns on basic auth
        status, _ = await asyncio.to_thread(_get, url, ("admin", "wrong"))
        assert status == 401
        status, body = await asyncio.to_thread(_get, url, ("admin", "secret"))
        assert status == 200 and body
    finally:
        code, stderr = stop_cli(web)
    assert code == 0, stderr


# =============================================================================
# Sync client
# =============================================================================


@contextlib.contextmanager
def worker_thread(path: Path, functions: t.Iterable[t.Any]) -> Iterator[Worker]:
    """An async Worker running in a thread of its own, as beside a desktop app's UI."""
    started = threading.Event()
    box: dict[str, t.Any] = {}

    async def main() -> None:
        worker = Worker(Queue(path), functions, timers=NO_SWEEP)
        box["worker"], box["loop"] = worker, asyncio.get_running_loop()
        task = asyncio.create_task(worker.start())
        started.set()
        await task

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    assert started.wait(10)
    try:
        yield box["worker"]
    finally:
        asyncio.run_coroutine_threadsafe(box["worker"].stop(), box["loop"]).result(30)
        thread.join(30)


async def add(ctx: Context, *, a: int, b: int) -> int:
    return a + b


async def fail(ctx: Context) -> None:
    raise ValueError("sync client saw this")


async def progress(ctx: Context, *, steps: int) -> str:
    job = ctx["job"]
    for step in range(1, steps + 1):
        await job.update(progress=step / steps)
        await asyncio.sleep(0.01)
    return "done"


def test_sync_client_enqueue_dedup_options_lookup_count_and_info(tmp_path: Path) -> None:
    with saqlite.SyncQueue(tmp_path / "jobs.db", name="mail") as client:
        job = client.enqueue("add", a=1, b=2, key="k1", timeout=3, retries=2, priority=5)
        assert job is not None
        assert (job.status, job.kwargs, job.timeout, job.retries) == (
            Status.QUEUED,
            {"a": 1, "b": 2},
            3,
            2,
        )
        assert job.queue is client.queue and job.id == client.queue.job_id("k1")
        assert client.enqueue("add", a=9, b=9, key="k1") is None  # waiting: no duplicate
        later = client.enqueue(Job("add", kwargs={"a": 0, "b": 0}, scheduled=int(time.time()) + 60))
        assert later is not None
        many = client.enqueue_many(["add", "add", Job("add", key="k1")], a=1, b=1)
        assert [j is not None for j in many] == [True, True, False]
        assert client.job("k1") == job and client.job("missing") is None
        found = client.jobs(["missing", "k1"])
        assert found[0] is None and found[1] is not None and found[1].priority == 5
        assert (client.count("queued"), client.count("incomplete"), client.count("active")) == (
            3,
            4,
            0,
        )
        info = client.info(jobs=True, limit=2)
        assert (info["name"], info["queued"], info["scheduled"], len(info["jobs"])) == (
            "mail",
            3,
            1,
            2,
        )
        with pytest.raises(ValueError, match="Can't count unknown type"):
            client.count("bogus")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="JSON"):
            client.enqueue("add", a=object())
        assert client.count("incomplete") == 4  # nothing half-written


def test_sync_client_apply_map_refresh_and_abort_with_an_async_worker(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with saqlite.SyncQueue(path) as client, worker_thread(path, [add, fail, progress, sleeper]):
        assert client.apply("add", a=2, b=3, timeout=10) == 5
        assert client.map("add", [{"a": 1, "b": 1}, {"a": 2, "b": 2}], timeout=10) == [2, 4]
        with pytest.raises(JobError, match="sync client saw this") as failure:
            client.apply("fail", timeout=10)
        assert failure.value.job.status == Status.FAILED
        job = client.enqueue("progress", steps=5)
        assert job is not None
        assert client.refresh(job, until_complete=10) is job
        assert (job.status, job.result, job.progress) == (Status.COMPLETE, "done", 1.0)

        waiting = client.enqueue("add", a=1, b=1, scheduled=int(time.time()) + 3600)
        assert waiting is not None
        client.abort(waiting, "not needed")
        assert (waiting.status, waiting.error) == (Status.ABORTED, "not needed")

        slow = client.enqueue("sleeper", seconds=30, timeout=0)
        assert slow is not None
        with pytest.raises(TimeoutError):
            client.refresh(slow, until_complete=0.3)
        client.abort(slow, "stop it")
        client.refresh(slow, until_complete=10)
        assert (slow.status, slow.error) == (Status.ABORTED, "stop it")

        gone = Job("add", key="never-enqueued", queue=client.queue)
        with pytest.raises(RuntimeError, match="doesn't exist"):
            client.refresh(gone)


def test_sync_client_is_safe_to_share_between_threads(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    results: list[int] = []
    errors: list[BaseException] = []

    def user(n: int) -> None:
        try:
            for i in range(5):
                results.append(client.apply("add", a=n, b=i, timeout=30))
                client.enqueue("add", a=n, b=i, key=f"dup-{i}")  # the same keys, raced
        except BaseException as exc:
            errors.append(exc)

    with saqlite.SyncQueue(path) as client, worker_thread(path, [add]):
        threads = [threading.Thread(target=user, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        assert sorted(results) == sorted(n + i for n in range(8) for i in range(5))
        assert all(client.jobs([f"dup-{i}" for i in range(5)]))


def test_a_sync_enqueue_is_picked_up_by_a_worker_in_another_process(tmp_path: Path) -> None:
    (tmp_path / "syncsettings.py").write_text(
        textwrap.dedent(
            f"""
            import time
            from saqlite import Queue

            async def stamp(ctx):
                return time.time()

            settings = {{"queue": Queue({str(tmp_path / "jobs.db")!r}), "functions": [stamp]}}
            """
        )
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "saqlite", "syncsettings.settings"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{tmp_path}"},
    )
    try:
        with saqlite.SyncQueue(tmp_path / "jobs.db") as client:
            deadline = time.monotonic() + 30
            while not client.info()["workers"]:
                assert time.monotonic() < deadline, "the worker did not start"
                time.sleep(0.05)
            time.sleep(0.3)  # idle
            delays = []
            for _ in range(5):
                sent = time.time()
                delays.append(client.apply("stamp", timeout=10) - sent)
        # The benchmark has the real figure; this only checks there was no slow poll.
        assert max(delays) < 0.5, delays
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0


def test_web_example_starts_a_job_and_shows_its_progress(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": f"{HERE}{os.pathsep}{HERE / 'examples'}",
        "WEBAPP_DB": str(tmp_path / "web.db"),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "saqlite", "webapp.settings"], cwd=tmp_path, env=env
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, str(HERE / "examples" / "webapp.py"), str(port)], cwd=tmp_path, env=env
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "the example did not start"
                time.sleep(0.1)
        request = urllib.request.Request(f"{url}/start", data=b"", method="POST")
        assert (
            b"Start a job" in urllib.request.urlopen(request, timeout=5).read()
        )  # redirected to /
        seen_progress: set[str] = set()
        while True:
            body = urllib.request.urlopen(url, timeout=5).read().decode()
            seen_progress.update(p for p in ("10%", "50%", "100%") if p in body)
            if "complete" in body:
                break
            assert time.monotonic() < deadline + 30, body
            time.sleep(0.02)
        assert "5-page report" in body and "100%" in body
        assert len(seen_progress) >= 2, seen_progress  # the bar moved while the job ran
    finally:
        for process in (server, worker):
            process.send_signal(signal.SIGTERM)
            process.wait(30)


# =============================================================================
# The README tells the truth
# =============================================================================


def readme() -> str:
    return (HERE / "README.md").read_text()


def readme_python_blocks() -> list[str]:
    blocks = readme().split("```python\n")[1:]
    return [block.split("```", 1)[0] for block in blocks]


def test_readme_tour_runs_as_printed(tmp_path: Path) -> None:
    tour = readme_python_blocks()[0]
    result = run_python({**os.environ, "PYTHONPATH": str(HERE)}, "-c", tour, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["complete 3", "hello Ada", "[2, 4]"]
    assert (tmp_path / "jobs.db").exists()


def test_readme_sync_snippet_runs_as_printed_beside_a_worker(tmp_path: Path) -> None:
    (tmp_path / "readme_settings.py").write_text(
        "from saqlite import Queue\n\n"
        "async def add(ctx, *, a, b):\n    return a + b\n\n"
        'settings = {"queue": Queue("jobs.db"), "functions": [add]}\n'
    )
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{tmp_path}"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "saqlite", "readme_settings.settings"], cwd=tmp_path, env=env
    )
    try:
        snippet = readme_python_blocks()[1]
        assert "SyncQueue" in snippet
        result = run_python(env, "-c", snippet, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[:2] == ["complete 3", "4"], lines
        assert lines[2].startswith("0 dict_keys(['"), lines  # one live worker
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)


def test_readme_names_every_command() -> None:
    text = readme()
    for command in saqlite._OPS_COMMANDS:
        assert f"saqlite {command} " in text, command
    for option in ("--workers", "--check", "--web", "--port", "--json"):
        assert option in text, option


def test_sqlite_older_than_3_35_is_refused_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(StorageError, match=r"needs SQLite 3\.35\.0 or newer .* has 3\.31\.1"):
        saqlite.SyncQueue(tmp_path / "jobs.db").connect()
    assert not (tmp_path / "jobs.db").exists()  # refused before anything was written


@async_test
async def test_meta_changed_in_place_by_a_job_is_kept_with_its_result(queue: Queue) -> None:
    async def annotate(ctx: Context) -> str:
        ctx["job"].meta["pages"] = 3  # no job.update(): SAQ stores the whole job at the end
        return "ok"

    async def plain(ctx: Context) -> dict[str, int]:
        return {"n": 1}

    async with running(worker_for(queue, [("annotate", annotate), ("plain", plain)])):
        first = await queue.enqueue("annotate")
        second = await queue.enqueue("plain", meta={"source": "test"})
        assert first is not None and second is not None
        await first.refresh(until_complete=10)
        await second.refresh(until_complete=10)
    assert (first.status, first.result, first.meta, first.progress) == (
        Status.COMPLETE,
        "ok",
        {"pages": 3},
        1.0,
    )
    assert (second.result, second.meta) == ({"n": 1}, {"source": "test"})


@async_test
async def test_a_scheduled_job_starts_when_due_not_a_polling_period_later(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No forced claim for two minutes: only the wait for the next due job can start it
    # (typically ~1 ms after it falls due; no tight bound, so a busy machine passes).
    monkeypatch.setattr(saqlite, "_FORCED_CLAIM_S", 120.0)
    starts: list[float] = []

    async def stamp(ctx: Context) -> None:
        starts.append(time.time())

    async with running(worker_for(queue, [("stamp", stamp)])):
        await asyncio.sleep(0.3)  # the worker is idle, waiting
        due = int(time.time()) + 2
        job = await queue.enqueue("stamp", scheduled=due)
        assert job is not None
        await job.refresh(until_complete=60)
    assert due <= starts[0] < due + 60, starts[0] - due


def test_a_vendored_copy_under_another_name_runs_jobs(tmp_path: Path) -> None:
    vendor = tmp_path / "myapp" / "_vendor"
    vendor.mkdir(parents=True)
    for package in (tmp_path / "myapp", vendor):
        (package / "__init__.py").write_text("")
    shutil.copy(HERE / "saqlite.py", vendor / "saqlite.py")
    program = textwrap.dedent(
        """
        import asyncio
        from myapp._vendor.saqlite import Queue, Worker

        async def double(ctx, *, n):
            return 2 * n

        async def main():
            queue = Queue("vendored.db")
            worker = Worker(queue, [double], burst=True, dequeue_timeout=0.5)
            job = await queue.enqueue("double", n=21)
            await worker.start()
            await job.refresh()
            print(job.status, job.result)

        asyncio.run(main())
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = run_python(env, "-c", program, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["complete", "42"]
    check = run_python(
        env, "-m", "myapp._vendor.saqlite", "nosuch.settings", "--check", cwd=tmp_path
    )
    assert "No module named 'nosuch'" in check.stderr


@async_test
async def test_a_job_waiting_for_its_group_starts_promptly_and_the_worker_does_not_spin(
    queue: Queue,
) -> None:
    release = asyncio.Event()
    starts: dict[str, float] = {}

    async def member(ctx: Context) -> None:
        starts[ctx["job"].key] = time.monotonic()
        if ctx["job"].key == "first":
            await release.wait()

    async with running(worker_for(queue, [("member", member)], concurrency=10)):
        await queue.enqueue("member", key="first", group_key="g")
        await wait_for(lambda: "first" in starts)
        await queue.enqueue("member", key="second", group_key="g")  # due, but its group is busy
        cpu_before = time.process_time()
        await asyncio.sleep(1.0)
        assert time.process_time() - cpu_before < 0.5  # waited, did not poll in a loop
        assert "second" not in starts
        released = time.monotonic()
        release.set()
        await wait_for(lambda: "second" in starts)
    assert starts["second"] - released < 0.5  # woken by the end of "first", not a slow poll


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB file system (tmpfs), where the machine lets this user mount one (room for
    the schema, whose creation briefly needs it twice: in the -wal file and the file)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if sys.platform != "linux" or mounted.returncode != 0:
        pytest.skip("a full disk needs a small tmpfs, which only root on Linux can mount")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@async_test
async def test_a_full_disk_is_a_clear_error_and_loses_nothing_stored(small_disk: Path) -> None:
    queue = make_queue(small_disk / "jobs.db")
    stored_jobs = 0
    with pytest.raises(StorageError, match=r"disk is full \(free disk space; nothing was changed"):
        for _ in range(10_000):
            await queue.enqueue("f", padding="x" * 2000)
            stored_jobs += 1
    assert stored_jobs > 0
    assert await queue.count("queued") == stored_jobs
    await queue.disconnect()
    reopened = make_queue(small_disk / "jobs.db")
    assert await reopened.count("queued") == stored_jobs
    assert len([job async for job in reopened.iter_jobs()]) == stored_jobs


@async_test
async def test_an_abort_from_another_queue_object_or_process_stops_the_job_at_once(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    cancelled = asyncio.Event()
    slow = sleeps_until_cancelled(cancelled)
    # With the abort timer at 10 minutes, only the announcement can stop the job in time.
    timers: saqlite.TimersDict = {**NO_SWEEP, "abort": 600}
    async with running(worker_for(queue, [("slow", slow)], timers=timers)):
        for aborter in ("another Queue object", "another process"):
            job = await queue.enqueue("slow", timeout=0)
            assert job is not None
            await wait_for(functools.partial(has_status, queue, job.key, Status.ACTIVE))
            started = time.monotonic()
            if aborter == "another Queue object":
                await make_queue(tmp_path / "jobs.db").abort(job, "enough")
            else:
                code = (
                    "import saqlite, sys; q = saqlite.SyncQueue(sys.argv[1]); "
                    "q.abort(q.job(sys.argv[2]), 'enough'); q.close()"
                )
                aborted = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", code, str(tmp_path / "jobs.db"), job.key,
                    env={**os.environ, "PYTHONPATH": str(HERE)},
                )  # fmt: skip
                assert await aborted.wait() == 0
            await job.refresh(until_complete=10)
            assert (job.status, job.error) == (Status.ABORTED, "enough"), aborter
            assert time.monotonic() - started < 60, aborter  # not the 600 s timer
            assert cancelled.is_set()
            cancelled.clear()
