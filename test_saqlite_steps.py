"""Resumable jobs (issue 12, part 2): durable steps and sleeps.

``saqlite.step(ctx, name, fn, ...)`` runs ``fn`` once for a job and records its
result in the file; a later run of the job (a retry, a worker killed or stopped, a
resume after ``saqlite.sleep``) gets the recorded result back without calling it.
The tests run real workers on real files; the crash test SIGKILLs a worker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest

import saqlite
from saqlite import Context, Status
from test_saqlite import (
    HERE,
    async_test,
    has_status,
    make_queue,
    readme_python_blocks,
    run_cli,
    run_python,
    running,
    stored,
    wait_for,
    worker_for,
)
from test_saqlite_processes import stop_processes
from test_saqlite_saq import _import_saq, redis  # noqa: F401 (a fixture)

if t.TYPE_CHECKING:
    from collections.abc import Iterator

#: No sweeps during a test unless it asks (a sweep could retry a paused job).
NO_SWEEP: saqlite.TimersDict = {"sweep": 1000, "abort": 0.1, "schedule": 0.1, "worker_info": 0.5}


def step_rows(path: Path, key: str) -> dict[str, tuple[str, t.Optional[str]]]:
    """name -> (outcome, error) of a job's record, read from the file itself."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT name, outcome, error FROM saqlite_steps WHERE key = ?", (key,)
        ).fetchall()
    return {name: (outcome, error) for name, outcome, error in rows}


# =============================================================================
# Steps replay from the record
# =============================================================================


@async_test
async def test_a_retried_job_gets_its_finished_steps_from_the_record(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    calls: list[str] = []

    async def fetch(page: int) -> dict[str, t.Any]:
        calls.append(f"fetch {page}")
        return {"page": page, "rows": (1, 2)}

    def parse(data: dict[str, t.Any]) -> int:  # a plain function: run in a thread
        calls.append("parse")
        return sum(data["rows"])

    async def job(ctx: Context, *, page: int) -> list[t.Any]:
        data = await saqlite.step(ctx, "fetch", fetch, page)
        total = await saqlite.step(ctx, "parse", parse, data)
        if ctx["job"].attempts == 1:
            raise RuntimeError("flaky upload")
        return [data, total]

    async with running(worker_for(queue, [("job", job)], timers=NO_SWEEP)):
        enqueued = await queue.enqueue("job", page=7, retries=2)
        assert enqueued is not None
        await enqueued.refresh(until_complete=10)
    assert enqueued.status == Status.COMPLETE, enqueued.error
    assert enqueued.attempts == 2
    # The tuple is a list on both runs: a step returns what its record gives back.
    assert enqueued.result == [{"page": 7, "rows": [1, 2]}, 3]
    assert calls == ["fetch 7", "parse"]  # once each, though the job ran twice
    assert step_rows(tmp_path / "jobs.db", enqueued.key) == {
        "fetch": ("done", None),
        "parse": ("done", None),
    }


@async_test
async def test_a_failed_step_is_recorded_and_runs_again_on_the_retry(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    tries: list[int] = []

    async def upload() -> str:
        tries.append(len(tries))
        if len(tries) == 1:
            raise ConnectionError("reset by peer")
        return "uploaded"

    async def job(ctx: Context) -> str:
        return t.cast(str, await saqlite.step(ctx, "upload", upload))

    seen: list[dict[str, tuple[str, t.Optional[str]]]] = []

    async def after(ctx: Context) -> None:
        seen.append(step_rows(tmp_path / "jobs.db", ctx["job"].key))

    worker = worker_for(queue, [("job", job)], timers=NO_SWEEP, after_process=after)
    async with running(worker):
        enqueued = await queue.enqueue("job", retries=2)
        assert enqueued is not None
        await enqueued.refresh(until_complete=10)
    assert (enqueued.status, enqueued.result, tries) == (Status.COMPLETE, "uploaded", [0, 1])
    assert seen == [
        {"upload": ("failed", "ConnectionError: reset by peer")},
        {"upload": ("done", None)},
    ]


# =============================================================================
# Sleeps give back the slot
# =============================================================================


@async_test
async def test_a_sleeping_job_gives_back_its_slot_and_resumes_after_its_sleep(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    calls: list[str] = []

    async def prepare() -> str:
        calls.append("prepare")
        return "prepared"

    async def cool(ctx: Context) -> list[t.Any]:
        before = await saqlite.step(ctx, "prepare", prepare)
        await saqlite.sleep(ctx, "cool-down", 1.0)
        calls.append("after the sleep")
        return [before, ctx["job"].attempts]

    async def quick(ctx: Context) -> str:
        calls.append("quick")
        return "quick"

    # One slot: the quick job runs only if the sleeper gave its slot back.
    worker = worker_for(queue, [("cool", cool), ("quick", quick)], concurrency=1)
    async with running(worker):
        # A timeout of 1 s, shorter than the whole job with its 1 s sleep: it counts per run.
        sleeper = await queue.enqueue("cool", timeout=1)
        assert sleeper is not None
        slept_at = time.time()
        await wait_for(lambda: "prepare" in calls)
        other = await queue.enqueue("quick")
        assert other is not None
        await other.refresh(until_complete=10)
        asleep = await stored(queue, sleeper.key)
        if asleep.status == Status.QUEUED:  # (unless it woke meanwhile, on a slow machine)
            assert asleep.scheduled >= slept_at + 1
            assert asleep.attempts == 0  # the sleep used no retry
            info = await queue.info(jobs=True)
            assert info["scheduled"] == 1
        await sleeper.refresh(until_complete=10)
    assert sleeper.status == Status.COMPLETE, sleeper.error
    assert sleeper.result == ["prepared", 1]  # one attempt, retries=1: none used
    assert (sleeper.duration("total") or 0) > 1000  # longer than its timeout, asleep
    assert calls.index("quick") < calls.index("after the sleep")
    assert calls.count("prepare") == 1
    assert step_rows(tmp_path / "jobs.db", sleeper.key)["cool-down"] == ("done", None)


# =============================================================================
# Bad calls are clear errors at the call
# =============================================================================


@pytest.mark.parametrize("seconds", [-1, math.nan, math.inf, 1e11, "5", True])
def test_sleep_of_a_bad_number_of_seconds_is_value_error_at_the_call(seconds: t.Any) -> None:
    with pytest.raises(ValueError, match=r"saqlite\.sleep\(\) seconds must be a number of seconds"):
        asyncio.run(saqlite.sleep({}, "wait", seconds))


@pytest.mark.parametrize("name", ["", None, 3])
def test_a_step_without_a_name_is_value_error(name: t.Any) -> None:
    with pytest.raises(ValueError, match=r"saqlite\.step\(\) needs a name, a non-empty string"):
        asyncio.run(saqlite.step({}, name, print))


@async_test
async def test_step_and_sleep_outside_a_running_job_are_clear_errors(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    with pytest.raises(RuntimeError, match=r"needs the ctx a worker passes a job's function"):
        await saqlite.step({"queue": queue}, "fetch", print)
    job = await queue.enqueue("job")
    assert job is not None
    ctx: Context = {"queue": queue, "job": job}
    with pytest.raises(RuntimeError, match=r"which no worker of this process is running"):
        await saqlite.sleep(ctx, "wait", 1)


@async_test
async def test_a_name_used_twice_in_one_run_fails_the_job_naming_it(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")

    async def job(ctx: Context) -> None:
        for _ in range(2):
            await saqlite.step(ctx, "page", asyncio.sleep, 0)

    async with running(worker_for(queue, [("job", job)], timers=NO_SWEEP)):
        enqueued = await queue.enqueue("job")
        assert enqueued is not None
        await enqueued.refresh(until_complete=10)
    assert enqueued.status == Status.FAILED
    assert "ValueError: saqlite.step() name 'page' is used twice in one run" in (
        enqueued.error or ""
    )
    assert "in a loop: f'page-{i}'" in (enqueued.error or "")


@async_test
async def test_a_result_dump_cannot_encode_fails_the_job_naming_the_step(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")

    async def job(ctx: Context) -> None:
        await saqlite.step(ctx, "connect", object)

    async with running(worker_for(queue, [("job", job)], timers=NO_SWEEP)):
        enqueued = await queue.enqueue("job")
        assert enqueued is not None
        await enqueued.refresh(until_complete=10)
    assert enqueued.status == Status.FAILED
    assert "TypeError: The result of step 'connect' of Job<function: job" in (enqueued.error or "")
    assert "A step must return what the queue's dump can encode" in (enqueued.error or "")
    outcome, error = step_rows(tmp_path / "jobs.db", enqueued.key)["connect"]
    assert outcome == "failed" and "cannot be recorded" in (error or "")


# =============================================================================
# The record lives and dies with its job
# =============================================================================


@async_test
async def test_the_record_is_kept_by_a_retry_by_hand_and_dropped_with_its_job(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    queue = make_queue(path)
    calls: list[str] = []

    async def fetch() -> str:
        calls.append("fetch")
        return "data"

    async def job(ctx: Context) -> str:
        data = await saqlite.step(ctx, "fetch", fetch)
        if not calls.count("fixed"):
            raise RuntimeError("bad credentials")
        return t.cast(str, data)

    async with running(worker_for(queue, [("job", job)], timers=NO_SWEEP)):
        failed = await queue.enqueue("job", key="report", ttl=0)
        assert failed is not None
        await failed.refresh(until_complete=10)
        assert failed.status == Status.FAILED
        # Retried by hand after a fix: the recorded step replays.
        calls.append("fixed")
        assert run_cli(env(), "retry", str(path), "report").returncode == 0
        await wait_for(functools.partial(has_status, queue, "report", Status.COMPLETE))
        assert calls == ["fetch", "fixed"]
        # Enqueued again once finished: a new job, with a record of its own.
        again = await queue.enqueue("job", key="report", ttl=-1)
        assert again is not None
        await wait_for(lambda: calls.count("fetch") == 2)
        await wait_for(lambda: not step_rows(path, "report"))  # deleted with the job (ttl=-1)
    assert await queue.job("report") is None


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(HERE)}


# =============================================================================
# A run that lost its job writes no step; an abort stops a step
# =============================================================================


@async_test
async def test_a_run_whose_job_was_taken_over_writes_no_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jobs.db"
    queue = make_queue(path)
    other = make_queue(path)
    proceed = asyncio.Event()
    after_step: list[str] = []

    async def slow() -> str:
        await proceed.wait()
        return "first run's"

    async def job(ctx: Context) -> str:
        value = await saqlite.step(ctx, "slow", slow)
        after_step.append("ran on")
        return t.cast(str, value)

    worker = worker_for(queue, [("job", job)], concurrency=1, timers=NO_SWEEP)
    async with running(worker):
        enqueued = await queue.enqueue("job", retries=3, timeout=0)
        assert enqueued is not None
        await wait_for(lambda: step_rows(path, enqueued.key).get("slow") == ("running", None))
        # Taken over, as a sweep does to a paused worker's job: back in the queue, then
        # claimed by someone else.
        await other.retry(enqueued, "swept")
        taken = await other.dequeue(timeout=5)
        assert taken is not None and taken.attempts == 2
        with caplog.at_level(logging.WARNING, logger="saqlite"):
            proceed.set()
            await wait_for(lambda: "the job was taken over" in caplog.text)
        assert step_rows(path, enqueued.key) == {"slow": ("running", None)}  # not "done"
        assert after_step == []
        assert (await stored(queue, enqueued.key)).status == Status.ACTIVE  # the second run's


@async_test
async def test_a_run_that_lost_its_job_before_a_step_is_cancelled_in_the_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jobs.db"
    queue = make_queue(path)
    other = make_queue(path)
    proceed = asyncio.Event()
    cancelled = asyncio.Event()

    async def download() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def job(ctx: Context) -> None:
        await proceed.wait()
        await saqlite.step(ctx, "download", download)

    worker = worker_for(queue, [("job", job)], concurrency=1, timers=NO_SWEEP)
    async with running(worker):
        enqueued = await queue.enqueue("job", retries=3, timeout=0)
        assert enqueued is not None
        await wait_for(functools.partial(has_status, queue, enqueued.key, Status.ACTIVE))
        await other.retry(enqueued, "swept")  # taken over before the step starts
        assert await other.dequeue(timeout=5) is not None
        with caplog.at_level(logging.WARNING, logger="saqlite"):
            proceed.set()
            await asyncio.wait_for(cancelled.wait(), 10)  # the write of its start told
            await wait_for(lambda: "the job was taken over" in caplog.text)
    assert step_rows(path, enqueued.key) == {}


@async_test
async def test_an_abort_during_a_step_leaves_it_unfinished_and_the_job_aborted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    queue = make_queue(path)
    started = asyncio.Event()

    async def download() -> None:
        started.set()
        await asyncio.sleep(30)

    async def job(ctx: Context) -> None:
        await saqlite.step(ctx, "download", download)

    async with running(worker_for(queue, [("job", job)], timers=NO_SWEEP)):
        enqueued = await queue.enqueue("job", timeout=0)
        assert enqueued is not None
        await asyncio.wait_for(started.wait(), 10)
        await queue.abort(enqueued, "user abort")
        await enqueued.refresh(until_complete=10)
    assert (enqueued.status, enqueued.error) == (Status.ABORTED, "user abort")
    assert step_rows(path, enqueued.key) == {"download": ("running", None)}
    shown = run_cli(env(), "job", str(path), enqueued.key, "--json")
    assert [(s["name"], s["outcome"]) for s in json.loads(shown.stdout)["steps"]] == [
        ("download", "interrupted")
    ]


# =============================================================================
# A worker SIGKILLed during a step: another finishes the job, steps 1-2 run once
# =============================================================================

CRASH_SETTINGS = """
import asyncio, os
import saqlite

EFFECTS = {effects!r}

async def effect(n):
    # A side effect per call, appended in one write: what a crash must not repeat.
    with open(EFFECTS, "a") as log:
        log.write(f"{{n}} {{os.getpid()}}\\n")
    if n == 3 and os.environ.get("HANG_AT_3"):
        await asyncio.sleep(120)  # SIGKILLed here
    return n * 10

async def five(ctx):
    return [await saqlite.step(ctx, f"step-{{n}}", effect, n) for n in range(1, 6)]

settings = {{
    "queue": saqlite.Queue({db!r}),
    "functions": [five],
    "timers": {{"sweep": 0.3, "worker_info": 0.5, "abort": 0.2}},
}}
"""


def start_worker(folder: Path, log_name: str, **env: str) -> subprocess.Popen[bytes]:
    with open(folder / log_name, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "saqlite", "crash_settings.settings", "-v"],
            cwd=folder,
            env={**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{folder}", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def worker_processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    try:
        yield processes
    finally:
        stop_processes(processes)


@async_test
async def test_a_five_step_job_whose_worker_is_sigkilled_in_step_3_finishes_elsewhere(
    tmp_path: Path, worker_processes: list[subprocess.Popen[bytes]]
) -> None:
    effects = tmp_path / "effects.log"
    (tmp_path / "crash_settings.py").write_text(
        CRASH_SETTINGS.format(effects=str(effects), db=str(tmp_path / "jobs.db"))
    )
    queue = make_queue(tmp_path / "jobs.db")
    job = await queue.enqueue("five", timeout=0)  # retries=1: the crash must not use one
    assert job is not None
    first = start_worker(tmp_path, "first.log", HANG_AT_3="1")
    worker_processes.append(first)

    def calls() -> list[tuple[int, int]]:
        text = effects.read_text() if effects.exists() else ""
        return [(int(n), int(pid)) for n, pid in (line.split() for line in text.splitlines())]

    await wait_for(lambda: (3, first.pid) in calls(), timeout=60)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    second = start_worker(tmp_path, "second.log")
    worker_processes.append(second)
    await job.refresh(until_complete=60)
    logs = (tmp_path / "first.log").read_text() + (tmp_path / "second.log").read_text()
    assert job.status == Status.COMPLETE, (job.error, logs[-3000:])
    assert job.result == [10, 20, 30, 40, 50]
    assert job.attempts == 1  # the dead worker's run was not charged
    assert calls() == [
        (1, first.pid),
        (2, first.pid),
        (3, first.pid),  # cut off: a started step runs again (at least once)
        (3, second.pid),
        (4, second.pid),
        (5, second.pid),
    ]
    assert set(step_rows(tmp_path / "jobs.db", job.key).values()) == {("done", None)}


# =============================================================================
# Under SAQ's own Queue and Worker: step calls, sleep sleeps
# =============================================================================


async def add_later(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


def double(n: int) -> int:
    return 2 * n


async def resumable(ctx: t.Any) -> list[t.Any]:
    total = await saqlite.step(ctx, "add", add_later, 1, 2)
    doubled = await saqlite.step(ctx, "double", double, total)
    began = time.monotonic()
    await saqlite.sleep(ctx, "nap", 0.3)
    return [total, doubled, time.monotonic() - began >= 0.3, ctx["job"].attempts]


def test_under_saqs_own_queue_and_worker_step_calls_and_sleep_sleeps(
    redis: t.Any,  # noqa: F811 (the fixture imported above)
) -> None:
    saq = _import_saq()

    async def main() -> t.Any:
        queue = saq.Queue.from_url(redis.url, name="steps-fallback")
        # Worker.process() runs one job, with no sweep (SAQ's sweep may take a job it
        # has just dequeued for stuck, as its status is not yet ACTIVE).
        worker = saq.Worker(queue, functions=[resumable], dequeue_timeout=10)
        try:
            job = await queue.enqueue("resumable", timeout=20)
            assert await worker.process()
            await job.refresh()
            return job.status, job.result
        finally:
            await queue.disconnect()

    assert asyncio.run(main()) == ("complete", [3, 6, True, 1])


# =============================================================================
# The tools show the record: a timeline, and sleeping jobs
# =============================================================================


async def asgi_get(path: Path, url_path: str, query: bytes) -> str:
    """One GET of the page's ASGI app on this file; the body."""
    app = saqlite.web_app(str(path))
    sent: list[t.MutableMapping[str, t.Any]] = []

    async def receive() -> t.MutableMapping[str, t.Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: t.MutableMapping[str, t.Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": url_path, "root_path": "",
             "query_string": query, "headers": [(b"host", b"localhost")]}  # fmt: skip
    try:
        await app(scope, receive, send)
    finally:
        await app.close()
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200]
    return "".join(m["body"].decode() for m in sent if m["type"] == "http.response.body")


@async_test
async def test_the_tools_show_a_sleeping_job_and_its_timeline(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    queue = make_queue(path)

    async def fetch() -> int:
        return 1

    async def check() -> int:
        raise ValueError("not ready")

    async def job(ctx: Context) -> None:
        await saqlite.step(ctx, "fetch", fetch)
        with contextlib.suppress(ValueError):
            await saqlite.step(ctx, "check", check)
        await saqlite.sleep(ctx, "cool-down", 3600)

    async with running(worker_for(queue, [("job", job)], timers=NO_SWEEP)):
        enqueued = await queue.enqueue("job", key="nap")
        assert enqueued is not None
        await wait_for(lambda: "cool-down" in step_rows(path, "nap"))
        await wait_for(functools.partial(has_status, queue, "nap", Status.QUEUED))
        await queue.enqueue("job", key="waiting", scheduled=int(time.time()) + 3600)

    listing = run_cli(env(), "jobs", str(path))
    assert listing.returncode == 0, listing.stderr
    statuses = {line.split()[1]: line.split()[3] for line in listing.stdout.splitlines()[1:-1]}
    assert statuses == {"nap": "queued,", "waiting": "queued"}  # "queued, sleeping"
    assert "queued, sleeping" in listing.stdout

    shown = run_cli(env(), "job", str(path), "nap")
    assert shown.returncode == 0, shown.stderr
    timeline = shown.stdout.split("\nsteps:\n")[1].splitlines()
    assert timeline[0].split() == ["STEP", "STARTED", "TOOK", "OUTCOME", "ERROR"]
    assert [line.split()[0] for line in timeline[1:]] == ["fetch", "check", "cool-down"]
    assert "done" in timeline[1]
    assert timeline[2].split()[-4:] == ["failed", "ValueError:", "not", "ready"]
    assert "1h 00m  sleeping until " in timeline[3]

    as_json = run_cli(env(), "job", str(path), "nap", "--json")
    steps = json.loads(as_json.stdout)["steps"]
    assert [(s["name"], s["outcome"]) for s in steps] == [
        ("fetch", "done"),
        ("check", "failed"),
        ("cool-down", "sleeping"),
    ]
    assert steps[2]["until"] - steps[2]["started"] == 3_600_000
    listed = json.loads(run_cli(env(), "jobs", str(path), "--json").stdout)["jobs"]
    assert {job["key"]: job["sleeping"] for job in listed} == {"nap": True, "waiting": False}

    page = await asgi_get(path, "/job", b"queue=default&key=nap")
    assert '<span class="status sleeping">sleeping</span>' in page
    assert '<table id="steps">' in page and "<td>cool-down</td>" in page
    assert "sleeping until" in page
    jobs_page = await asgi_get(path, "/jobs", b"")
    assert jobs_page.count('<span class="status sleeping">sleeping</span>') == 1
    api = json.loads(await asgi_get(path, "/api/job", b"queue=default&key=nap"))
    assert [step["outcome"] for step in api["steps"]] == ["done", "failed", "sleeping"]


BURST_SETTINGS = """
import saqlite

async def nap(ctx):
    await saqlite.sleep(ctx, "nap", 1)
    return "rested"

settings = {"queue": saqlite.Queue("ci.db"), "functions": [nap]}
"""


def test_a_burst_waits_for_the_sleeps_of_the_jobs_it_ran(tmp_path: Path) -> None:
    (tmp_path / "burst_tasks.py").write_text(BURST_SETTINGS)
    with saqlite.SyncQueue(tmp_path / "ci.db") as queue:
        job = queue.enqueue("nap")
        assert job is not None
    burst_env = {**env(), "PYTHONPATH": f"{HERE}{os.pathsep}{tmp_path}"}
    result = run_cli(burst_env, "burst", "burst_tasks.settings", "--wait", "0.2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 complete, 0 failed, 0 aborted, 0 retried, 0 pending" in result.stdout
    with saqlite.SyncQueue(tmp_path / "ci.db") as queue:
        done = queue.job(job.key)
    assert done is not None and (done.status, done.result) == (Status.COMPLETE, "rested")


# =============================================================================
# The README's resumable script, as printed: killed mid-crawl, then run again
# =============================================================================


def test_readme_resumable_script_picks_up_where_a_killed_run_was(tmp_path: Path) -> None:
    (script,) = [block for block in readme_python_blocks() if "saqlite.step(" in block]
    (tmp_path / "crawl.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": str(HERE), "PYTHONDONTWRITEBYTECODE": "1"}
    first = subprocess.Popen(
        [sys.executable, "crawl.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout is not None
        lines: list[str] = []
        while "fetched page 1" not in lines:
            line = first.stdout.readline()
            assert line, f"the first run ended early: {lines}"
            lines.append(line.strip())
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait(30)
        if first.stdout is not None:
            first.stdout.close()
    assert lines == ["fetched page 0", "fetched page 1"]

    second = run_python(env, "crawl.py", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    output = second.stdout.splitlines()
    assert "fetched page 0" not in output  # replayed from the record
    assert output[-3:] == ["fetched page 2", "fetched page 3", "complete 780"]
