"""The worker's hold on its jobs: who may write a running job, when a slot is free,
storage errors waited out, and a Worker as a guest in someone else's program.

Real SQLite files in ``tmp_path``; the tests about pauses and signals start real
``python -m saqlite`` worker processes and send them real signals.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import typing as t
from pathlib import Path

import pytest

import saqlite
from saqlite import Context, Queue, Status
from test_saqlite import (
    NO_SWEEP,
    async_test,
    has_status,
    make_queue,
    noop,
    running,
    sleeps_until_cancelled,
    small_disk,
    stored,
    wait_for,
    worker_for,
)

HERE = Path(__file__).resolve().parent
__all__ = ["small_disk"]  # a fixture used here by name

# =============================================================================
# 9.1: writes from user code apply by key, as in SAQ
# =============================================================================


@async_test
async def test_writes_through_the_enqueued_job_object_apply_after_a_dequeue(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    enqueued = await queue.enqueue("f", key="a")
    assert enqueued is not None
    assert await queue.dequeue(timeout=5) is not None  # the stored job is ACTIVE now
    await enqueued.update(progress=0.5, meta={"step": 1})
    loaded = await stored(queue, "a")
    assert (loaded.progress, loaded.meta) == (0.5, {"step": 1})
    # The claim's fields stay as the claim set them: status only when given.
    assert (loaded.status, loaded.attempts) == (Status.ACTIVE, 1)
    await queue.finish(enqueued, Status.COMPLETE, result=7, meta={"done": True})
    loaded = await stored(queue, "a")
    assert (loaded.status, loaded.result, loaded.meta) == (Status.COMPLETE, 7, {"done": True})
    assert queue.complete == 1

    again = await queue.enqueue("f", key="b", retries=3)
    assert again is not None and await queue.dequeue(timeout=5) is not None
    await queue.retry(again, "flaky")
    loaded = await stored(queue, "b")
    assert (loaded.status, loaded.error, loaded.attempts) == (Status.QUEUED, "flaky", 1)
    assert queue.retried == 1
    with pytest.raises(ValueError, match="Job has no field 'colour': use one of"):
        await queue.finish(again, Status.FAILED, colour="red")


@async_test
async def test_a_finish_through_a_stale_job_object_unblocks_its_group(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    first = await queue.enqueue("f", key="g1", group_key="g")
    await queue.enqueue("f", key="g2", group_key="g")
    assert first is not None
    claimed = await queue.dequeue(timeout=5)
    assert claimed is not None and claimed.key == "g1"
    assert await queue.dequeue(timeout=0.2) is None  # g2 waits for its group
    await first.finish(Status.COMPLETE)
    following = await queue.dequeue(timeout=10)
    assert following is not None and following.key == "g2"


@async_test
async def test_an_abort_set_by_update_reaches_the_running_worker(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    cancelled = asyncio.Event()
    # With the abort timer at 10 minutes, only the announcement can stop the job.
    timers: saqlite.TimersDict = {**NO_SWEEP, "abort": 600}
    async with running(worker_for(queue, [("slow", sleeps_until_cancelled(cancelled))],
                                  timers=timers)):  # fmt: skip
        job = await queue.enqueue("slow", timeout=0)
        assert job is not None
        await wait_for(functools.partial(has_status, queue, job.key, Status.ACTIVE))
        await queue.update(job, status=Status.ABORTING, error="stop it")
        await job.refresh(until_complete=10)
        assert (job.status, job.error) == (Status.ABORTED, "stop it")
        assert cancelled.is_set()


# =============================================================================
# 10.10: a worker that lost its job finds out at its next write
# =============================================================================


@async_test
async def test_a_run_whose_job_was_taken_over_is_cancelled_at_its_next_update(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    other = make_queue(tmp_path / "jobs.db")
    proceed = asyncio.Event()
    after_update = []

    async def work(ctx: Context) -> str:
        await proceed.wait()
        await ctx["job"].update(progress=0.9)
        after_update.append("ran on")  # no await between: the cancel lands below
        await asyncio.sleep(30)
        return "first run"

    # One slot: the worker can't claim the job again while its first run goes on.
    worker = worker_for(queue, [("work", work)], concurrency=1, timers=NO_SWEEP)
    async with running(worker):
        job = await queue.enqueue("work", retries=3, timeout=0)
        assert job is not None
        await wait_for(functools.partial(has_status, queue, job.key, Status.ACTIVE))
        # Taken over, as a sweep does to a paused worker's job: back in the queue,
        # then claimed by someone else.
        await other.retry(job, "swept")
        taken = await other.dequeue(timeout=5)
        assert taken is not None and taken.attempts == 2
        with caplog.at_level(logging.WARNING, logger="saqlite"):
            proceed.set()
            await wait_for(lambda: "the job was taken over" in caplog.text)
        current = await stored(queue, job.key)
        assert (current.status, current.attempts, current.progress) == (Status.ACTIVE, 2, 0)
        assert current.worker_id is None  # still the second claim's
        assert after_update == ["ran on"]


@async_test
async def test_a_claim_cut_short_by_a_stop_is_put_back(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    worker = worker_for(queue, [("f", noop)], timers=NO_SWEEP)
    job = await queue.enqueue("f", key="late", scheduled=2e9)  # not due: the worker waits
    assert job is not None
    async with running(worker):
        # A claim whose statement committed as the stop came: the rows never reached
        # the worker, so it never started the job.
        with contextlib.closing(sqlite3.connect(queue.path)) as conn, conn:
            conn.execute(
                "UPDATE saqlite_jobs SET status = 'active', worker_id = ?, attempts = 1,"
                " started = 1 WHERE key = 'late'",
                (worker.id,),
            )
    stored_job = await stored(queue, "late")
    assert (stored_job.status, stored_job.error) == (Status.QUEUED, "cancelled")


SETTINGS = """
import asyncio, os, time
from saqlite import Queue

queue = Queue({db!r})
RUNS = {runs!r}

async def report(ctx):
    job = ctx["job"]
    for step in range(1, 41):
        with open(os.path.join(RUNS, f"{{os.getpid()}}.log"), "a") as log:
            log.write(f"{{job.attempts}} {{step}}\\n")
        await job.update(progress=step / 40)
        await asyncio.sleep(0.1)
    return os.getpid()

def blocks(ctx):
    # A sync function: it stops only when the test creates the file "release".
    with open(os.path.join(RUNS, f"{{os.getpid()}}.log"), "a") as log:
        log.write(f"start {{ctx['job'].attempts}}\\n")
    while not os.path.exists(os.path.join(RUNS, "release")):
        time.sleep(0.02)
    return os.getpid()

settings = {{
    "queue": queue,
    "functions": [report, blocks],
    "concurrency": 4,
    "timers": {{"sweep": 0.3, "worker_info": 0.5, "abort": 0.2}},
    "shutdown_grace_period_s": 0.2,
    "cancellation_hard_deadline_s": 0.5,
}}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "runs").mkdir()
    (tmp_path / "wsettings.py").write_text(
        SETTINGS.format(db=str(tmp_path / "jobs.db"), runs=str(tmp_path / "runs"))
    )
    return tmp_path


def start_worker(folder: Path, name: str) -> subprocess.Popen[bytes]:
    """A worker process on the test's settings; its output in ``folder/name.log``."""
    with open(folder / f"{name}.log", "wb") as log:  # the child has its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "saqlite", "wsettings.settings", "-v"],
            cwd=folder, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{HERE}"},
        )  # fmt: skip


def runs_of(folder: Path, pid: int) -> list[str]:
    path = folder / "runs" / f"{pid}.log"
    return path.read_text().splitlines() if path.exists() else []


def pause_between_writes(process: subprocess.Popen[bytes], db: Path) -> None:
    """Stop ``process`` with SIGSTOP at a moment it holds no write lock.

    A process stopped inside one of its short write transactions would hold every
    other writer of the file up until it runs again; that is SQLite's locking, not the
    takeover under test, so the pause is retried until it falls between writes.
    """
    for _ in range(200):
        process.send_signal(signal.SIGSTOP)
        os.waitpid(process.pid, os.WUNTRACED)  # returns once it is really stopped
        probe = sqlite3.connect(db, timeout=0)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.rollback()
            return
        except sqlite3.OperationalError:  # it was inside a write: let it finish
            process.send_signal(signal.SIGCONT)
            time.sleep(0.01)  # room to commit before the next try
        finally:
            probe.close()
    raise AssertionError("the worker held the write lock at every pause")


@async_test
async def test_a_worker_paused_past_its_heartbeat_finds_its_job_taken_over(folder: Path) -> None:
    queue = make_queue(folder / "jobs.db")
    first = start_worker(folder, "first")
    second: t.Optional[subprocess.Popen[bytes]] = None
    try:
        await wait_for(lambda: _some_worker(queue))
        job = await queue.enqueue("report", heartbeat=1, retries=3, timeout=0)
        assert job is not None
        await wait_for(lambda: len(runs_of(folder, first.pid)) >= 2)
        pause_between_writes(first, folder / "jobs.db")  # a laptop lid closed, a VM paused
        second = start_worker(folder, "second")
        await job.refresh(until_complete=60)
        assert (job.status, job.result, job.attempts) == (Status.COMPLETE, second.pid, 2)
        paused_at = len(runs_of(folder, first.pid))
        first.send_signal(signal.SIGCONT)

        def told() -> bool:
            return "the job was taken over" in (folder / "first.log").read_text()

        await wait_for(told, timeout=30)
        # Its first write after waking found the job gone, and the run stopped there.
        await asyncio.sleep(0.5)
        assert len(runs_of(folder, first.pid)) <= paused_at + 1
        after = await stored(queue, job.key)
        assert (after.status, after.result, after.progress) == (Status.COMPLETE, second.pid, 1.0)
    finally:
        for process in (first, second):
            if process is not None:
                process.send_signal(signal.SIGCONT)
                process.terminate()
                process.wait(30)


# =============================================================================
# 9.2: a function that swallows the cancellation still ends aborted or failed
# =============================================================================


@async_test
async def test_a_function_that_swallows_the_cancellation_ends_aborted_or_failed(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    cancelled = asyncio.Event()

    async def stubborn(ctx: Context) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
        return "finished anyway"

    async with running(worker_for(queue, [("stubborn", stubborn)], timers=NO_SWEEP)):
        job = await queue.enqueue("stubborn", timeout=0)
        assert job is not None
        await wait_for(functools.partial(has_status, queue, job.key, Status.ACTIVE))
        await job.abort("user abort")
        await job.refresh(until_complete=10)
        assert (job.status, job.error, job.result) == (Status.ABORTED, "user abort", None)
        assert cancelled.is_set()

        job = await queue.enqueue("stubborn", timeout=1, retries=1)
        assert job is not None
        await job.refresh(until_complete=10)
        assert job.status is Status.FAILED
        assert job.error is not None and "ran past its timeout of 1 s" in job.error


# =============================================================================
# 9.3 and 10.9: a job keeps its slot until its function has really returned
# =============================================================================


def blocking(release: threading.Event, started: list[str]) -> t.Callable[..., str]:
    def block(ctx: Context, name: str) -> str:
        started.append(name)
        release.wait(30)
        return name

    return block


@async_test
async def test_an_aborted_or_timed_out_thread_keeps_its_slot_until_it_returns(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    release = threading.Event()
    started: list[str] = []
    worker = worker_for(queue, [("block", blocking(release, started))], concurrency=1,
                        timers=NO_SWEEP)  # fmt: skip
    async with running(worker):
        for ending in ("abort", "timeout"):
            release.clear()
            started.clear()
            first = await queue.enqueue(
                "block", name="first", timeout=1 if ending == "timeout" else 0
            )
            second = await queue.enqueue("block", name="second", timeout=0)
            assert first is not None and second is not None
            await wait_for(lambda: started == ["first"])
            if ending == "abort":
                await first.abort("enough")
                aborting = asyncio.create_task(worker.abort())
            await asyncio.sleep(1.5)  # past the timeout, and any abort
            assert started == ["first"], ending  # concurrency 1: the thread still runs
            stored_first = await stored(queue, first.key)
            assert stored_first.status in (Status.ACTIVE, Status.ABORTING), ending
            if ending == "abort":
                assert not aborting.done()  # Worker.abort() waits for the function
            release.set()
            await first.refresh(until_complete=10)
            if ending == "abort":
                await asyncio.wait_for(aborting, 10)
                assert (first.status, first.error) == (Status.ABORTED, "enough")
            else:
                assert first.status is Status.FAILED and "timeout" in (first.error or "")
            await second.refresh(until_complete=10)
            assert second.status is Status.COMPLETE and started == ["first", "second"]


@async_test
async def test_stop_leaves_a_running_thread_its_job_and_writes_it_back_when_it_returns(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    release = threading.Event()
    started: list[str] = []
    worker = worker_for(queue, [("block", blocking(release, started))], timers=NO_SWEEP,
                        cancellation_hard_deadline_s=0.2)  # fmt: skip
    task = asyncio.create_task(worker.start())
    job = await queue.enqueue("block", name="stuck", timeout=0, retries=2)
    assert job is not None
    await wait_for(lambda: started == ["stuck"])
    await worker.stop()
    await asyncio.wait_for(task, 10)
    # stop() returned, the thread runs on: the job is still this worker's, which
    # still looks alive to sweepers.
    current = await stored(queue, job.key)
    assert (current.status, current.worker_id) == (Status.ACTIVE, worker.id)
    assert worker.id in (await queue.info())["workers"]
    release.set()
    await wait_for(functools.partial(has_status, queue, job.key, Status.QUEUED))
    assert (await stored(queue, job.key)).error == "cancelled"
    await wait_for(lambda: _no_worker(queue))


async def _no_worker(queue: Queue) -> bool:
    return not await _some_worker(queue)


async def _some_worker(queue: Queue) -> bool:
    return bool((await queue.info())["workers"])


@async_test
async def test_sigterm_during_a_sync_job_does_not_hand_it_on_while_its_thread_runs(
    folder: Path,
) -> None:
    queue = make_queue(folder / "jobs.db")
    first = start_worker(folder, "first")
    job = await queue.enqueue("blocks", timeout=0, retries=3)
    assert job is not None
    await wait_for(lambda: runs_of(folder, first.pid) == ["start 1"])
    first.terminate()  # SIGTERM: the thread can't be stopped, the process exits
    assert await asyncio.get_running_loop().run_in_executor(None, first.wait, 30) == 0
    output = (folder / "first.log").read_text()
    assert "did not finish cancellation in time" in output
    current = await stored(queue, job.key)
    assert (current.status, current.attempts) == (Status.ACTIVE, 1)  # not re-queued
    # Its worker is gone now: a sweep hands the job on like a dead worker's, without
    # charging the attempt (a worker's death is not the job's failure).
    (folder / "runs" / "release").touch()
    second = start_worker(folder, "second")
    try:
        await job.refresh(until_complete=60)
        assert (job.status, job.result) == (Status.COMPLETE, second.pid)
        assert runs_of(folder, second.pid) == ["start 1"]
    finally:
        second.terminate()
        second.wait(30)


# =============================================================================
# 10.2 and 10.8: storage errors are waited out
# =============================================================================


@async_test
async def test_a_finish_that_meets_a_full_disk_is_written_once_space_comes_back(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = make_queue(small_disk / "jobs.db")
    release = asyncio.Event()

    async def big(ctx: Context) -> str:
        await release.wait()
        return "x" * 100_000

    async with running(worker_for(queue, [("big", big)], timers=NO_SWEEP)):
        job = await queue.enqueue("big", timeout=0)
        assert job is not None
        await wait_for(functools.partial(has_status, queue, job.key, Status.ACTIVE))
        filler = small_disk / "filler"
        fill(filler)
        with caplog.at_level(logging.WARNING, logger="saqlite"):
            release.set()
            await wait_for(lambda: "cannot store the outcome" in caplog.text)
        assert (await stored(queue, job.key)).status is Status.ACTIVE
        filler.unlink()
        await job.refresh(until_complete=30)
        assert (job.status, job.result) == (Status.COMPLETE, "x" * 100_000)


@async_test
async def test_a_worker_waits_out_a_write_lock_held_past_lock_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jobs.db"
    queue = make_queue(path, lock_timeout=0.3)
    patient = make_queue(path, lock_timeout=60)
    worker = worker_for(queue, [("noop", _noop)], timers={**NO_SWEEP, "worker_info": 0.1})
    async with running(worker):
        task = asyncio.current_task()
        assert task is not None
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # an operator who forgot COMMIT
        with caplog.at_level(logging.WARNING, logger="saqlite"):
            enqueued = asyncio.create_task(patient.enqueue("noop", key="meanwhile"))
            await wait_for(lambda: "cannot claim jobs" in caplog.text)
            await asyncio.sleep(1)  # several lock_timeouts
        # Said once (then every 30 s), without a traceback at every try.
        claims = [r for r in caplog.records if "cannot claim jobs" in r.getMessage()]
        assert len(claims) == 1
        assert not [r for r in caplog.records if r.exc_info]
        holder.execute("COMMIT")
        holder.close()
        job = await asyncio.wait_for(enqueued, 30)
        assert job is not None
        await job.refresh(until_complete=30)
        assert job.status is Status.COMPLETE


def fill(path: Path) -> None:
    """Write into ``path`` until its file system is full."""
    with pytest.raises(OSError, match="No space left"), open(path, "wb") as out:
        for _ in range(10_000):
            out.write(b"\0" * 4096)
            out.flush()


async def _noop(ctx: Context) -> str:
    return "done"


# =============================================================================
# 10.23: a good guest in someone else's program
# =============================================================================


@async_test
async def test_a_worker_puts_back_the_signal_handlers_it_replaced(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    queue = make_queue(tmp_path / "jobs.db")
    terms: list[str] = []
    ints: list[int] = []

    def on_int(signum: int, frame: object) -> None:
        ints.append(signum)

    previous = signal.signal(signal.SIGINT, on_int)
    loop.add_signal_handler(signal.SIGTERM, terms.append, "program")
    try:
        async with running(worker_for(queue, [("noop", _noop)], timers=NO_SWEEP)):
            pass
        os.kill(os.getpid(), signal.SIGTERM)
        await wait_for(lambda: terms == ["program"])
        assert signal.getsignal(signal.SIGINT) is on_int
        # Told not to, the worker leaves them alone while it runs.
        worker = worker_for(queue, [("noop", _noop)], timers=NO_SWEEP, handle_signals=False)
        async with running(worker):
            assert signal.getsignal(signal.SIGINT) is on_int
            os.kill(os.getpid(), signal.SIGTERM)
            await wait_for(lambda: terms == ["program", "program"])
            assert (await queue.info())["workers"]  # still running
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGINT, previous)


@async_test
async def test_a_worker_closes_only_a_queue_it_opened(tmp_path: Path) -> None:
    opened = make_queue(tmp_path / "jobs.db")
    await opened.connect()
    async with running(worker_for(opened, [("noop", _noop)], timers=NO_SWEEP)):
        pass
    assert opened._conn is not None
    assert await opened.count("queued") == 0  # still usable as it was
    closed = make_queue(tmp_path / "other.db")
    async with running(worker_for(closed, [("noop", _noop)], timers=NO_SWEEP)):
        pass
    assert closed._conn is None


@async_test
async def test_sync_functions_run_on_the_workers_own_daemon_threads(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    # A one-thread default executor: two functions that wait for each other would
    # deadlock on it.
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=1))
    queue = make_queue(tmp_path / "jobs.db")
    barrier = threading.Barrier(2, timeout=20)
    threads: list[tuple[str, bool]] = []

    def meet(ctx: Context) -> int:
        threads.append((threading.current_thread().name, threading.current_thread().daemon))
        return barrier.wait()

    async with running(worker_for(queue, [("meet", meet)], concurrency=2, timers=NO_SWEEP)):
        jobs = [await queue.enqueue("meet", timeout=0) for _ in range(2)]
        for job in jobs:
            assert job is not None
            await job.refresh(until_complete=30)
            assert job.status is Status.COMPLETE
    assert len(threads) == 2
    for name, daemon in threads:
        assert name.startswith("saqlite-worker-") and daemon


# =============================================================================
# 9.8: SAQ's log messages
# =============================================================================


@async_test
async def test_failures_retries_and_aborts_are_logged_as_saq_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = make_queue(tmp_path / "jobs.db")

    async def broken(ctx: Context) -> None:
        raise RuntimeError("broken on purpose")

    cancelled = asyncio.Event()
    functions = [("broken", broken), ("slow", sleeps_until_cancelled(cancelled))]
    with caplog.at_level(logging.INFO, logger="saqlite"):
        async with running(worker_for(queue, functions, timers=NO_SWEEP)):
            job = await queue.enqueue("broken", retries=2, timeout=0)
            assert job is not None
            await job.refresh(until_complete=10)
            slow = await queue.enqueue("slow", timeout=0)
            assert slow is not None
            await wait_for(functools.partial(has_status, queue, slow.key, Status.ACTIVE))
            await slow.abort("enough")
            await slow.refresh(until_complete=10)
    errors = [r for r in caplog.records if r.getMessage().startswith("Error processing job")]
    assert [r.levelno for r in errors] == [logging.WARNING, logging.ERROR]  # retry, then fail
    for record in errors:
        assert record.exc_text is not None and "broken on purpose" in record.exc_text
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(m.startswith("Processing Job<") for m in messages)
    assert any(m.startswith("Retrying Job<") for m in messages)
    assert any(m.startswith("Finished Job<") for m in messages)
    assert f"Aborting {slow.id}" in messages
    assert any(m.startswith("Worker starting: Queue<") for m in messages)
    assert "Working shutting down" in messages
