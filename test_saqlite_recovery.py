"""Recovery: the sweeper, worker liveness, clocks, counts and priorities.

Real files, real worker processes, real SIGKILL; clocks are shifted in child
processes by a sitecustomize module that wraps time.time.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import saqlite
from saqlite import Queue, Status, SyncQueue, Worker
from test_saqlite import async_test, make_queue, stored, wait_for, worker_for
from test_saqlite_processes import run_old_saqlite, stop_processes

HERE = Path(__file__).resolve().parent

SETTINGS = """
import asyncio, os, signal, time
from saqlite import Queue

queue = Queue({db!r})

async def hang(ctx):
    await asyncio.sleep(600)

async def until_file(ctx, *, path):
    while not os.path.exists(path):
        await asyncio.sleep(0.05)
    return ctx["worker"].id

async def who(ctx):
    return [ctx["worker"].id, time.time()]

async def suicide(ctx):
    os.kill(os.getpid(), signal.SIGKILL)
    await asyncio.sleep(60)

settings = {{
    "queue": queue,
    "functions": [hang, until_file, who, suicide],
    "timers": {{"sweep": float(os.environ.get("SWEEP_S", "0.5")), "worker_info": 0.5,
               "abort": 0.2}},
}}
"""

# Wraps the clock of every Python process started with it on its path.
SITECUSTOMIZE = """
import os, time
_shift = float(os.environ.get("CLOCK_SHIFT_S", "0"))
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + _shift
time.time_ns = lambda: _time_ns() + int(_shift * 1e9)
"""


class Processes:
    """Worker (and other) processes on the test's settings, killed at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[subprocess.Popen[bytes]] = []

    def env(self, shift: float = 0.0, **extra: str) -> dict[str, str]:
        path = [str(HERE), str(self.folder)]
        if shift:
            path.insert(0, str(self.folder / "skewed"))
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(path),
            "CLOCK_SHIFT_S": str(shift),
            **extra,
        }

    def worker(self, shift: float = 0.0, **extra: str) -> subprocess.Popen[bytes]:
        return self.run([sys.executable, "-m", "saqlite", "rsettings.settings"], shift, **extra)

    def run(self, command: list[str], shift: float = 0.0, **extra: str) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"process-{len(self.started)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            command, cwd=self.folder, env=self.env(shift, **extra), stdout=log, stderr=log
        )
        log.close()
        self.started.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.folder.glob("process-*.log")))

    def stop_all(self) -> None:
        stop_processes(self.started)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    (tmp_path / "rsettings.py").write_text(SETTINGS.format(db=str(tmp_path / "jobs.db")))
    (tmp_path / "skewed").mkdir()
    (tmp_path / "skewed" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


async def waited(process: subprocess.Popen[bytes]) -> int:
    return await asyncio.to_thread(process.wait, 30)


async def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    await waited(process)


async def status_in(queue: Queue, key: str, *statuses: Status) -> bool:
    job = await queue.job(key)
    return job is not None and job.status in statuses


async def has_workers(queue: Queue) -> bool:
    return bool((await queue.info())["workers"])


# =============================================================================
# 10.5, 10.6: a dead worker's jobs
# =============================================================================


@async_test
async def test_an_abort_of_a_job_whose_worker_died_sticks(
    tmp_path: Path, processes: Processes
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    doomed = processes.worker()
    job = await queue.enqueue("hang", timeout=0)
    assert job is not None
    await wait_for(lambda: status_in(queue, job.key, Status.ACTIVE), timeout=30)
    await kill(doomed)
    await queue.abort(job, "operator: not wanted")
    assert job.status is Status.ABORTING

    async def swept() -> bool:  # once the dead worker's sweep lease (1 s) has run out
        await queue.sweep(abort=0.1)
        return not await status_in(queue, job.key, Status.ABORTING)

    await wait_for(swept, timeout=15, interval=0.1)
    processes.worker()  # a live worker must not run it either
    await wait_for(lambda: has_workers(queue), timeout=30)
    await queue.sweep(abort=0.1)
    done = await stored(queue, job.key)
    assert (done.status, done.error, done.attempts) == (Status.ABORTED, "operator: not wanted", 1)


@async_test
async def test_a_sigkilled_workers_job_runs_again_without_charging_an_attempt(
    tmp_path: Path, processes: Processes
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    flag = tmp_path / "go"
    doomed = processes.worker()
    job = await queue.enqueue("until_file", path=str(flag), timeout=0)  # retries=1
    assert job is not None and job.retries == 1
    await wait_for(lambda: status_in(queue, job.key, Status.ACTIVE), timeout=30)
    doomed_id = (await stored(queue, job.key)).worker_id
    await kill(doomed)
    flag.touch()
    processes.worker()
    await wait_for(lambda: status_in(queue, job.key, Status.COMPLETE), timeout=60)
    done = await stored(queue, job.key)
    assert doomed_id not in (done.result, done.worker_id)
    assert (done.attempts, done.error) == (1, None)


@async_test
async def test_a_job_that_kills_its_worker_every_time_fails_after_three_deaths(
    tmp_path: Path, processes: Processes
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    job = await queue.enqueue("suicide", timeout=0, retries=5)
    assert job is not None
    deaths = 0
    while not await status_in(queue, job.key, Status.FAILED):
        assert deaths <= 3, processes.logs()
        worker = processes.worker()

        async def died_or_failed(worker: subprocess.Popen[bytes] = worker) -> bool:
            return worker.poll() is not None or await status_in(queue, job.key, Status.FAILED)

        await wait_for(died_or_failed, timeout=60, interval=0.05)
        if worker.poll() is not None:
            assert worker.returncode == -signal.SIGKILL
            deaths += 1
    assert deaths == 3
    failed = await stored(queue, job.key)
    assert failed.error is not None and "worker died 3 times running it" in failed.error
    assert failed.attempts == 1  # no death was charged as an attempt


# =============================================================================
# 10.7: a pid reused by another process
# =============================================================================


@async_test
async def test_a_worker_whose_pid_now_belongs_to_another_process_is_dead(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    other = _another_process()
    try:
        # "ghost" registered from this process, then its pid given to another process
        # (the later start time of `sleep` tells them apart); "me" is this process.
        await queue.worker_info("ghost", queue.name)
        await queue.worker_info("me", queue.name)
        with sqlite3.connect(queue.path) as conn:
            conn.execute("UPDATE saqlite_workers SET pid = ? WHERE id = 'ghost'", (other.pid,))
        conn.close()
        orphan = await queue.enqueue("f", key="orphan", timeout=0)
        mine = await queue.enqueue("f", key="mine", timeout=0)
        assert orphan is not None and mine is not None
        assert [j.key for j in await queue._claim(1, "ghost")] == ["orphan"]
        assert [j.key for j in await queue._claim(1, "me")] == ["mine"]
        assert await queue.sweep(abort=0.1) == [orphan.id]
        recovered = await stored(queue, "orphan")
        assert (recovered.status, recovered.attempts) == (Status.QUEUED, 0)
        assert (await stored(queue, "mine")).status is Status.ACTIVE
        assert list((await queue.info())["workers"]) == ["me"]
    finally:
        other.kill()
        other.wait()


def _another_process() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"])


# =============================================================================
# 10.11: clocks
# =============================================================================


@async_test
async def test_a_worker_an_hour_behind_starts_a_due_job_promptly(
    tmp_path: Path, processes: Processes
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    processes.worker(shift=-3600)
    await wait_for(lambda: has_workers(queue), timeout=30)
    job = await queue.enqueue("who")
    assert job is not None
    await wait_for(lambda: status_in(queue, job.key, Status.COMPLETE), timeout=30)
    _worker_id, worker_time = (await stored(queue, job.key)).result
    assert worker_time < time.time() - 3000  # its clock really is an hour behind


@async_test
async def test_a_sweeper_an_hour_ahead_leaves_a_healthy_job_alone(
    tmp_path: Path, processes: Processes
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    flag = tmp_path / "go"
    processes.worker(SWEEP_S="3600")
    job = await queue.enqueue("until_file", path=str(flag), heartbeat=60, timeout=300)
    assert job is not None
    await wait_for(lambda: status_in(queue, job.key, Status.ACTIVE), timeout=30)
    await wait_for(lambda: _lease_owner(queue) is not None, timeout=30)
    with sqlite3.connect(queue.path) as conn:  # the worker's sweep lease: let another sweep
        conn.execute("DELETE FROM saqlite_locks")
    conn.close()
    script = textwrap.dedent(f"""
        import asyncio, saqlite
        print(asyncio.run(saqlite.Queue({queue.path!r}).sweep(lock=60, abort=2)))
    """)
    sweeper = processes.run([sys.executable, "-c", script], shift=3600)
    assert await waited(sweeper) == 0, processes.logs()
    assert f":{sweeper.pid}:" in (_lease_owner(queue) or "")  # it did sweep
    running = await stored(queue, job.key)
    assert (running.status, running.attempts) == (Status.ACTIVE, 1)
    flag.touch()
    await wait_for(lambda: status_in(queue, job.key, Status.COMPLETE), timeout=30)
    assert (await stored(queue, job.key)).attempts == 1


def _lease_owner(queue: Queue) -> str | None:
    """Who holds the sweep lease of the file (one queue per file in these tests)."""
    with sqlite3.connect(queue.path) as conn:
        row = conn.execute("SELECT owner FROM saqlite_locks").fetchone()
    conn.close()
    return None if row is None else str(row[0])


# =============================================================================
# 10.12: a sweep stopped between its steps
# =============================================================================


@async_test
async def test_a_sweep_stopped_after_its_abort_request_is_finished_by_the_next(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    sweep: list[asyncio.Task[list[str]]] = []

    async def stuck_once(ctx: saqlite.Context) -> str:
        if ctx["job"].attempts == 1:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                sweep[0].cancel()  # the sweep stops right after asking for the abort
                raise
        return f"attempt {ctx['job'].attempts}"

    worker = worker_for(queue, [("stuck_once", stuck_once)], timers=NO_SWEEP)
    task = asyncio.create_task(worker.start())
    try:
        job = await queue.enqueue("stuck_once", heartbeat=1, timeout=0, retries=2)
        assert job is not None

        async def is_stuck() -> bool:
            return (await stored(queue, job.key)).stuck

        await wait_for(is_stuck, timeout=15)
        sweep.append(asyncio.create_task(queue.sweep(abort=30)))
        with pytest.raises(asyncio.CancelledError):
            await sweep[0]
        await queue.sweep(abort=1)  # the next sweep
        await wait_for(lambda: status_in(queue, job.key, Status.COMPLETE), timeout=15)
        done = await stored(queue, job.key)
        assert (done.result, done.attempts) == ("attempt 2", 2)
    finally:
        await worker.stop()
        await asyncio.wait_for(task, 30)


NO_SWEEP: saqlite.TimersDict = {"sweep": 600, "abort": 0.1, "schedule": 0.1, "worker_info": 0.5}


# =============================================================================
# 9.4, 9.5: counts, info, worker_info
# =============================================================================


@async_test
async def test_an_aborting_job_is_neither_active_nor_incomplete(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    await queue.enqueue("f", key="k")
    job = await queue.dequeue(timeout=1)
    assert job is not None
    await queue.abort(job, "stop")
    assert job.status is Status.ABORTING
    assert await queue.count("active") == 0
    assert await queue.count("incomplete") == 0
    info = await queue.info(jobs=True)
    assert (info["active"], info["queued"], info["scheduled"], info["jobs"]) == (0, 0, 0, [])


@async_test
async def test_info_lists_only_unfinished_jobs_running_first(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    for key in ("done", "running", "waiting"):
        await queue.enqueue("f", key=key)
    await queue.enqueue("f", key="later", scheduled=int(time.time()) + 3600)
    done = await queue.dequeue(timeout=1)
    assert done is not None
    await queue.finish(done, Status.COMPLETE, result=1)
    assert await queue.dequeue(timeout=1) is not None
    listed = (await queue.info(jobs=True))["jobs"]
    assert [(j["key"], j["status"]) for j in listed] == [
        ("running", "active"), ("waiting", "queued"), ("later", "queued"),
    ]  # fmt: skip
    page = (await queue.info(jobs=True, offset=1, limit=1))["jobs"]
    assert [j["key"] for j in page] == ["waiting"]


@async_test
async def test_a_worker_is_listed_only_while_its_worker_info_ttl_lasts(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    worker = Worker(queue, [("f", saqlite_noop)], metadata={"role": "test"})
    info = await worker.worker_info(ttl=1)
    assert info["metadata"] == {"role": "test"} and info["queue_key"] == "default"
    assert list((await queue.info())["workers"]) == [worker.id]

    async def dropped() -> bool:
        return worker.id not in (await queue.info())["workers"]

    await wait_for(dropped, timeout=15, interval=0.1)  # its process lives on: the ttl counts


async def saqlite_noop(ctx: saqlite.Context) -> None:
    return None


def test_worker_info_signatures_match_saq() -> None:
    saq = pytest.importorskip("saq")
    for ours, theirs in (
        (Worker.worker_info, saq.Worker.worker_info),
        (Queue.worker_info, saq.Queue.worker_info),
    ):
        assert list(inspect.signature(ours).parameters.items()).__len__() == len(
            inspect.signature(theirs).parameters
        )
        for (name, param), (their_name, their_param) in zip(
            inspect.signature(ours).parameters.items(),
            inspect.signature(theirs).parameters.items(),
        ):
            assert (name, param.default) == (their_name, their_param.default)


# =============================================================================
# 9.6: priorities
# =============================================================================


@async_test
async def test_priorities_limit_what_a_queue_claims(tmp_path: Path) -> None:
    low = make_queue(tmp_path / "jobs.db", priorities=(0, 10))
    high = make_queue(tmp_path / "jobs.db", priorities=(11, 20))
    every = make_queue(tmp_path / "jobs.db")
    for priority in (-1, 5, 11, 21):
        await every.enqueue("f", key=f"p{priority}", priority=priority)
    assert (await low.dequeue(timeout=0.5)).key == "p5"  # type: ignore[union-attr]
    assert await low.dequeue(timeout=0.2) is None
    assert (await high.dequeue(timeout=0.5)).key == "p11"  # type: ignore[union-attr]
    assert await high.dequeue(timeout=0.2) is None
    assert sorted([(await every.dequeue(timeout=0.5)).key for _ in range(2)]) == [  # type: ignore[union-attr]
        "p-1", "p21",
    ]  # fmt: skip
    assert every.priorities[0] < -(2**62) and low.priorities == (0, 10)


@pytest.mark.parametrize(
    "priorities", [(5, 1), ("0", 10), (0, 1.5), (0,), (0, 1, 2), 7, (True, 3), (0, 2**63)]
)
def test_bad_priorities_are_refused_naming_the_option(priorities: object) -> None:
    message = r"priorities must be two ints \(low, high\) with low <= high"
    with pytest.raises(ValueError, match=message):
        Queue("x.db", priorities=priorities)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        SyncQueue("x.db", priorities=priorities)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        Queue.from_url("sqlite:///x.db", priorities=priorities)


def test_sync_queue_and_from_url_take_priorities(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    assert Queue.from_url(url, priorities=(0, 32767)).priorities == (0, 32767)
    with SyncQueue.from_url(url, priorities=(1, 1)) as client:
        assert client.queue.priorities == (1, 1)


# =============================================================================
# Schema migration 2
# =============================================================================


def test_a_version_1_file_opens_with_its_jobs_intact(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    run_old_saqlite(
        tmp_path,
        "70f890b",
        f"""
        import asyncio, saqlite
        assert saqlite.SCHEMA_VERSION == 1
        async def main():
            queue = saqlite.Queue({str(path)!r})
            for key in ("a", "b", "c"):
                await queue.enqueue("f", key=key, n=key)
            done = await queue.dequeue(timeout=1)
            await queue.finish(done, saqlite.Status.COMPLETE, result="ok")
            await queue.worker_info("w1", "default")
            await queue.disconnect()
        asyncio.run(main())
    """,
    )

    async def reopen() -> None:
        queue = Queue(path)
        try:
            a, b, c = await queue.jobs(["a", "b", "c"])
            assert a is not None and (a.status, a.result) == (Status.COMPLETE, "ok")
            assert b is not None and c is not None and b.kwargs == {"n": "b"}
            assert (b.status, c.status) == (Status.QUEUED, Status.QUEUED)
            claimed = await queue.dequeue(timeout=1)
            assert claimed is not None and claimed.key == "b"
            await queue.finish(claimed, Status.COMPLETE)
        finally:
            await queue.disconnect()

    asyncio.run(reopen())
    with sqlite3.connect(path) as conn:
        version = conn.execute(
            "SELECT value FROM saqlite_meta WHERE name = 'schema_version'"
        ).fetchone()[0]
        deaths = conn.execute("SELECT deaths FROM saqlite_jobs WHERE key = 'c'").fetchone()[0]
    conn.close()
    assert (int(version), deaths) == (saqlite.SCHEMA_VERSION, 0)  # migrated to this one
