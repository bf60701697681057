"""Many processes on one file: real worker processes, real SIGKILL and SIGTERM.

Each test writes a settings module into its temp folder and starts workers with
``python -m saqlite settings ...``, as a user would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from saqlite import Job, Queue, Status

HERE = Path(__file__).resolve().parent

SETTINGS = """
import asyncio, os, time
from saqlite import Queue

queue = Queue({db!r})
RUNS = {runs!r}

async def record(ctx, *, n):
    # One line per run, appended atomically, in a file per process.
    with open(os.path.join(RUNS, f"runs-{{os.getpid()}}.log"), "a") as log:
        log.write(f"{{n}}\\n")
    return os.getpid()

async def slow(ctx, *, n):
    await asyncio.sleep(float(os.environ.get("SLOW_S", "0")))
    return ctx["worker"].id

async def stamp(ctx):
    return time.time()

async def block(ctx):
    time.sleep(float(os.environ.get("SLOW_S", "0")))  # holds the worker's event loop
    return ctx["worker"].id

settings = {{
    "queue": queue,
    "functions": [record, slow, stamp, block],
    "concurrency": 10,
    "timers": {{"sweep": 0.5, "worker_info": 0.5, "abort": 0.2}},
}}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "runs").mkdir()
    (tmp_path / "mpsettings.py").write_text(
        SETTINGS.format(db=str(tmp_path / "jobs.db"), runs=str(tmp_path / "runs"))
    )
    return tmp_path


class Workers:
    """Worker processes started from a settings module in ``folder`` (this file's, or
    another test file's), stopped at the end."""

    def __init__(self, folder: Path, settings: str = "mpsettings.settings") -> None:
        self.folder = folder
        self.settings = settings
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"worker-{len(self.processes)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "saqlite", self.settings, "-v", *args],
            cwd=self.folder,
            env={
                **os.environ,
                "PYTHONPATH": f"{HERE}{os.pathsep}{self.folder}",
                **(env or {}),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(path.read_text() for path in sorted(self.folder.glob("worker-*.log")))

    def stop_all(self) -> None:
        stop_processes(self.processes)


def run_old_saqlite(folder: Path, commit: str, script: str) -> None:
    """Run ``script`` (dedented) in a process that imports saqlite.py as it was at git
    ``commit``: how the tests make a file an older saqlite wrote."""
    old = folder / f"saqlite-{commit}"
    old.mkdir()
    source = subprocess.run(
        ["git", "show", f"{commit}:saqlite.py"], cwd=HERE, capture_output=True, check=True
    ).stdout
    (old / "saqlite.py").write_bytes(source)
    subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=old, check=True, env={
        **os.environ, "PYTHONPATH": str(old)
    })  # fmt: skip


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process still running, then wait for it (SIGKILL after 20 s)."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def workers(folder: Path) -> Iterator[Workers]:
    started = Workers(folder)
    try:
        yield started
    finally:
        started.stop_all()


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def wait_until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll an async check until it returns something truthy (generous timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)


def live_workers(queue: Queue, count: int) -> Callable[[], Any]:
    async def check() -> bool:
        return len((await queue.info())["workers"]) >= count

    return check


def test_four_worker_processes_and_a_producer_run_every_job_exactly_once(
    folder: Path, workers: Workers
) -> None:
    jobs = 3000
    for _ in range(4):
        workers.start()
    producer = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import asyncio
                from saqlite import Queue

                async def main():
                    queue = Queue({str(folder / "jobs.db")!r})
                    for start in range(0, {jobs}, 100):  # in bursts, while workers claim
                        await asyncio.gather(*(queue.enqueue("record", n=n)
                                               for n in range(start, start + 100)))
                    await queue.disconnect()

                asyncio.run(main())
                """
            ),
        ],
        check=False,
        env={**os.environ, "PYTHONPATH": str(HERE)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert producer.returncode == 0, producer.stderr

    async def check() -> None:
        queue = Queue(folder / "jobs.db")
        await wait_until(live_workers(queue, 4))

        async def all_done() -> bool:
            return await queue.count("incomplete") == 0

        await wait_until(all_done, timeout=120)
        await queue.disconnect()

    run(check())
    runs = Counter(
        int(line)
        for log in (folder / "runs").glob("runs-*.log")
        for line in log.read_text().split()
    )
    assert sorted(runs) == list(range(jobs))
    assert set(runs.values()) == {1}, {n: c for n, c in runs.items() if c != 1}
    assert len(list((folder / "runs").glob("runs-*.log"))) >= 2  # the work was shared
    workers.stop_all()
    assert "locked" not in workers.logs().lower()
    assert "Traceback" not in workers.logs()


def test_jobs_of_a_sigkilled_worker_complete_in_another_worker(
    folder: Path, workers: Workers
) -> None:
    async def scenario() -> None:
        queue = Queue(folder / "jobs.db")
        doomed = workers.start(env={"SLOW_S": "600"})
        await wait_until(live_workers(queue, 1))
        # timeout=0 and heartbeat=0: only the worker's death can free these jobs.
        jobs = [
            await queue.enqueue("slow", n=n, timeout=0, heartbeat=0, retries=2) for n in range(3)
        ]

        async def all_active() -> bool:
            return all(j and j.status == Status.ACTIVE for j in await queue.jobs(keys))

        keys = [job.key for job in jobs if job]
        await wait_until(all_active)
        doomed_id = (await queue.job(keys[0])).worker_id  # type: ignore[union-attr]
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()

        rescuer = workers.start(env={"SLOW_S": "0"})
        await wait_until(live_workers(queue, 1))

        async def all_complete() -> list[Job | None] | None:
            found = await queue.jobs(keys)
            return found if all(j and j.status == Status.COMPLETE for j in found) else None

        done = await wait_until(all_complete, timeout=60)
        for job in done:
            assert job.result != doomed_id  # the result names the worker that ran it
            assert job.worker_id != doomed_id
            assert job.attempts == 1  # the death of its first worker is not charged
        assert rescuer.poll() is None
        await queue.disconnect()

    run(scenario())


def test_an_idle_worker_process_picks_up_a_job_from_another_process_promptly(
    folder: Path, workers: Workers
) -> None:
    async def scenario() -> list[float]:
        queue = Queue(folder / "jobs.db")
        workers.start()
        await wait_until(live_workers(queue, 1))
        await asyncio.sleep(0.5)  # let the worker go idle
        delays = []
        for _ in range(5):
            sent = time.time()
            delays.append(await queue.apply("stamp", timeout=10) - sent)
        await queue.disconnect()
        return delays

    delays = run(scenario())
    # The benchmark measures the real figure (about a millisecond); a test only checks
    # that the worker did not wait for a slow poll.
    assert max(delays) < 0.5, delays


def test_sigterm_puts_running_jobs_back_and_another_worker_finishes_them(
    folder: Path, workers: Workers
) -> None:
    async def scenario() -> None:
        queue = Queue(folder / "jobs.db")
        first = workers.start(env={"SLOW_S": "600"})
        await wait_until(live_workers(queue, 1))
        job = await queue.enqueue("slow", n=1, timeout=0)
        assert job is not None

        async def active() -> bool:
            stored = await queue.job(job.key)
            return stored is not None and stored.status == Status.ACTIVE

        await wait_until(active)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0
        stored = await queue.job(job.key)
        assert stored is not None
        assert stored.status == Status.QUEUED
        assert stored.error == "cancelled"
        workers.start(env={"SLOW_S": "0"})
        await job.refresh(until_complete=30)
        assert job.status == Status.COMPLETE
        await queue.disconnect()

    run(scenario())


def test_workers_option_starts_that_many_processes(folder: Path, workers: Workers) -> None:
    async def scenario() -> None:
        queue = Queue(folder / "jobs.db")
        parent = workers.start("--workers", "2")
        await wait_until(live_workers(queue, 2))
        pids = {info["metadata"] is None for info in (await queue.info())["workers"].values()}
        assert pids == {True}
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=30) == 0

        async def none_left() -> bool:
            await queue.sweep(lock=1)
            return not (await queue.info())["workers"]

        await wait_until(none_left)
        await queue.disconnect()

    run(scenario())


def test_a_swept_worker_that_finishes_late_does_not_overwrite_the_new_run(
    folder: Path, workers: Workers
) -> None:
    """SAQ #126: a worker whose job was swept while it was still alive (its event loop
    blocked) must not overwrite the outcome of the job's next run."""

    async def scenario() -> None:
        queue = Queue(folder / "jobs.db")
        workers.start(env={"SLOW_S": "4"})
        await wait_until(live_workers(queue, 1))
        job = await queue.enqueue("block", heartbeat=1, timeout=0, retries=2)
        assert job is not None

        async def state(*statuses: Status) -> bool:
            stored = await queue.job(job.key)
            return stored is not None and stored.status in statuses

        await wait_until(lambda: state(Status.ACTIVE))
        blocked = await queue.job(job.key)
        assert blocked is not None
        await asyncio.sleep(1.5)  # past its heartbeat; its worker can't answer an abort
        assert await queue.sweep(lock=1, abort=0.3) == [job.id]
        assert await state(Status.QUEUED)

        rescuer = workers.start(env={"SLOW_S": "0"})
        await wait_until(lambda: state(Status.COMPLETE))
        done = await queue.job(job.key)
        assert done is not None and done.attempts == 2 and done.result != blocked.worker_id

        def late_finish_refused() -> Any:
            async def check() -> bool:
                return "changed while it ran" in workers.logs()

            return check()

        await wait_until(late_finish_refused, timeout=30)
        final = await queue.job(job.key)
        assert final is not None
        assert (final.status, final.result, final.attempts) == (
            Status.COMPLETE,
            done.result,
            2,
        )
        assert rescuer.poll() is None
        await queue.disconnect()

    run(scenario())
