"""Flow control (issue 13): pauses, drain, rate limits, concurrency limits.

Limits are checked where a user would check them: from the start times the claims
stored in the file (``Job.started``, SQLite's clock), from overlaps the job functions
record themselves, across real worker processes started with ``python -m saqlite``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import saqlite
from saqlite import Context, Job, Queue, Status, SyncQueue
from test_saqlite import async_test, make_queue, noop, running, stored, wait_for, worker_for
from test_saqlite_processes import Workers, stop_processes

HERE = Path(__file__).resolve().parent

SETTINGS = """
import asyncio, os, time
from saqlite import Queue

queue = Queue({db!r})
SPANS = {spans!r}

async def tick(ctx):
    return None

async def overlap(ctx):
    # When this run began and ended (epoch s), a line per run, in a file per process.
    began = time.time()
    await asyncio.sleep(0.15)
    with open(os.path.join(SPANS, f"spans-{{os.getpid()}}.log"), "a") as log:
        log.write(f"{{began}} {{time.time()}}\\n")

async def slow(ctx):
    await asyncio.sleep(float(os.environ.get("SLOW_S", "0")))

settings = {{
    "queue": queue,
    "functions": [tick, overlap, slow],
    "concurrency": 10,
    "timers": {{"sweep": 60, "worker_info": 0.5, "abort": 0.2}},
}}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "spans").mkdir()
    (tmp_path / "flowsettings.py").write_text(
        SETTINGS.format(db=str(tmp_path / "jobs.db"), spans=str(tmp_path / "spans"))
    )
    return tmp_path


@pytest.fixture
def processes(folder: Path) -> Iterator[Workers]:
    started = Workers(folder, "flowsettings.settings")
    try:
        yield started
    finally:
        started.stop_all()


def saqlite_command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "saqlite", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(HERE)},
    )


async def live_workers(queue: Queue, count: int) -> None:
    async def enough() -> bool:
        return len((await queue.info())["workers"]) >= count

    await wait_for(enough, timeout=60)


def most_in_any_window(starts_ms: list[int], period_ms: float) -> int:
    """The most starts in any half-open window (t - period, t] of the given length."""
    starts = sorted(starts_ms)
    most, first = 0, 0
    for last, start in enumerate(starts):
        while starts[first] <= start - period_ms:
            first += 1
        most = max(most, last - first + 1)
    return most


def most_overlapping(spans: list[tuple[float, float]]) -> int:
    """The most spans (begin, end) open at one moment."""
    events = sorted([(begin, 1) for begin, _ in spans] + [(end, -1) for _, end in spans])
    most = current = 0
    for _, change in events:
        current += change
        most = max(most, current)
    return most


async def started_ms(queue: Queue, keys: list[str]) -> list[int]:
    jobs = await queue.jobs(keys)
    assert all(job is not None and job.status == Status.COMPLETE for job in jobs), jobs
    return [job.started for job in jobs if job is not None]


# =============================================================================
# Exactness across processes
# =============================================================================


def test_a_rate_limit_holds_in_every_window_across_four_worker_processes(
    folder: Path, processes: Workers
) -> None:
    rate, period_s, jobs = 10, 1.0, 45

    async def check() -> None:
        queue = Queue(folder / "jobs.db")
        await queue.limit("tick", rate=f"{rate}/s")
        keys = [f"t{n}" for n in range(jobs)]
        for _ in range(4):
            processes.start()
        await live_workers(queue, 4)  # all four there before the jobs: they share them
        began = time.time()
        await queue.enqueue_many([Job("tick", key=key) for key in keys])

        async def all_done() -> bool:
            return await queue.count("incomplete") == 0

        await wait_for(all_done, timeout=120)
        starts = await started_ms(queue, keys)
        # Exact: no window of one period holds more than `rate` starts, and the limit
        # was what paced them (they did not all start within one period).
        assert most_in_any_window(starts, period_s * 1000) == rate
        assert max(starts) - min(starts) >= (jobs // rate - 1) * period_s * 1000
        workers = {job.worker_id for job in await queue.jobs(keys) if job is not None}
        assert len(workers) >= 2  # the processes shared the work
        assert time.time() - began < 60
        await queue.disconnect()

    asyncio.run(check())
    assert "Traceback" not in processes.logs()


def test_a_concurrency_limit_holds_across_four_worker_processes(
    folder: Path, processes: Workers
) -> None:
    limit, jobs = 3, 30

    async def check() -> None:
        queue = Queue(folder / "jobs.db")
        await queue.limit("overlap", concurrency=limit)
        for _ in range(4):
            processes.start()
        await live_workers(queue, 4)  # all four there before the jobs: they share them
        await queue.enqueue_many([Job("overlap") for _ in range(jobs)])
        await queue.enqueue_many([Job("tick", key=f"free-{n}") for n in range(20)])

        async def all_done() -> bool:
            return await queue.count("incomplete") == 0

        await wait_for(all_done, timeout=120)
        await queue.disconnect()

    asyncio.run(check())
    spans = [
        (float(began), float(ended))
        for log in (folder / "spans").glob("spans-*.log")
        for began, ended in (line.split() for line in log.read_text().splitlines())
    ]
    assert len(spans) == jobs
    assert most_overlapping(spans) == limit  # never more, and the limit was used
    assert len(list((folder / "spans").glob("spans-*.log"))) >= 2
    assert "Traceback" not in processes.logs()


# =============================================================================
# In one process
# =============================================================================


@async_test
async def test_a_batch_claim_takes_no_more_than_the_rate_and_concurrency_left(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    await queue.limit("limited", rate="3/m")
    await queue.limit("capped", concurrency=2)
    await queue.enqueue_many([Job("limited") for _ in range(10)])
    await queue.enqueue_many([Job("capped") for _ in range(10)])
    claimed = await queue._claim(20, None)
    functions = sorted(job.function for job in claimed)
    assert functions == ["capped"] * 2 + ["limited"] * 3
    assert await queue._claim(20, None) == []  # nothing left until a slot or token frees
    flow = {rule["function"]: rule for rule in await queue.flow()}
    assert flow["limited"]["rate"] == "3/m" and flow["limited"]["started"] == 3
    assert flow["capped"]["concurrency"] == 2 and flow["capped"]["running"] == 2


@async_test
async def test_a_whole_queue_rate_limits_every_function_together(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    await queue.limit(rate=(4, 0.5))  # 4 starts in any half second
    keys = [f"{function}{n}" for n in range(6) for function in ("a", "b")]
    await queue.enqueue_many([Job(key[0], key=key) for key in keys])
    async with running(worker_for(queue, [("a", noop), ("b", noop)], concurrency=10)):

        async def all_done() -> bool:
            return await queue.count("incomplete") == 0

        await wait_for(all_done, timeout=30)
    starts = await started_ms(queue, keys)
    assert most_in_any_window(starts, 500) == 4
    assert (await queue.flow())[0]["rate"] == "4/0.5s"


@async_test
async def test_per_group_raises_how_many_jobs_of_one_group_key_run_at_once(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    spans: list[tuple[float, float]] = []

    async def grouped(ctx: Context) -> None:
        began = time.monotonic()
        await asyncio.sleep(0.1)
        spans.append((began, time.monotonic()))

    await queue.limit(per_group=2)
    await queue.enqueue_many([Job("grouped", group_key="g") for _ in range(8)])
    async with running(worker_for(queue, [("grouped", grouped)], concurrency=10)):

        async def all_done() -> bool:
            return await queue.count("incomplete") == 0

        await wait_for(all_done, timeout=30)
        assert most_overlapping(spans) == 2
        # Without the limit, one at a time again (SAQ's rule).
        await queue.limit(clear=True)
        assert await queue.flow() == []
        spans.clear()
        await queue.enqueue_many([Job("grouped", group_key="g") for _ in range(4)])
        await wait_for(all_done, timeout=30)
        assert most_overlapping(spans) == 1


@async_test
async def test_jobs_held_by_a_pause_or_a_limit_never_hold_up_other_functions(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    # The held jobs come first in claim order (higher priority, enqueued first).
    await queue.enqueue_many([Job("paused_fn", priority=-1) for _ in range(300)])
    await queue.enqueue_many([Job("rated", priority=-1) for _ in range(300)])
    await queue.pause("paused_fn")
    await queue.limit("rated", rate="2/h")
    keys = [f"free-{n}" for n in range(50)]
    await queue.enqueue_many([Job("free", key=key) for key in keys])
    worker = worker_for(queue, [("paused_fn", noop), ("rated", noop), ("free", noop)])
    async with running(worker):

        async def free_done() -> bool:
            return all(job is not None and job.status == Status.COMPLETE
                       for job in await queue.jobs(keys))  # fmt: skip

        await wait_for(free_done, timeout=30)
    assert await queue.count("queued") == 300 + 298
    flow = {rule["function"]: rule for rule in await queue.flow()}
    assert flow["paused_fn"]["paused"] and flow["rated"]["started"] == 2


@async_test
async def test_pause_keeps_jobs_queued_lets_running_ones_finish_and_resume_wakes_workers(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    release = asyncio.Event()

    async def long(ctx: Context) -> str:
        await release.wait()
        return "finished"

    worker = worker_for(queue, [("long", long), ("quick", noop)])
    async with running(worker):
        first = await queue.enqueue("long")
        assert first is not None
        await wait_for(lambda: has(queue, first.key, Status.ACTIVE))
        await queue.pause()
        waiting = await queue.enqueue("quick")
        assert waiting is not None
        release.set()
        await wait_for(lambda: has(queue, first.key, Status.COMPLETE))  # it ran on
        # Proof that the worker claimed since: a claim comes after each finish.
        assert (await stored(queue, waiting.key)).status == Status.QUEUED
        info = await queue.info()
        assert info["flow"][0]["function"] is None and info["flow"][0]["paused"]
        await queue.resume()
        await wait_for(lambda: has(queue, waiting.key, Status.COMPLETE), timeout=5)
    assert "flow" not in await queue.info()


async def has(queue: Queue, key: str, status: Status) -> bool:
    job = await queue.job(key)
    return job is not None and job.status == status


@async_test
async def test_a_pause_until_a_time_ends_by_itself(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    await queue.pause("later", for_s=1.0)
    paused_until = (await queue.flow())[0]["paused_until"]
    assert paused_until is not None
    job = await queue.enqueue("later")
    assert job is not None
    async with running(worker_for(queue, [("later", noop)])):
        await wait_for(lambda: has(queue, job.key, Status.COMPLETE), timeout=10)
    assert (await stored(queue, job.key)).started >= paused_until * 1000
    assert await queue.flow() == []  # an ended pause is no longer in force


def test_a_pause_lives_in_the_file_and_outlasts_a_worker_restart(
    folder: Path, processes: Workers
) -> None:
    client = SyncQueue(folder / "jobs.db")
    client.pause("slow")
    held = client.enqueue("slow")
    assert held is not None
    worker = processes.start()
    sentinel = client.enqueue("tick")
    assert sentinel is not None
    client.refresh(sentinel, until_complete=30)
    stop_processes([worker])  # a restart: a new process reads the pause from the file
    processes.start()
    second = client.enqueue("tick")
    assert second is not None
    client.refresh(second, until_complete=30)
    assert client.job(held.key).status == Status.QUEUED  # type: ignore[union-attr]
    resumed = saqlite_command("resume", str(folder / "jobs.db"), "--function", "slow")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed default slow" in resumed.stdout
    client.refresh(held, until_complete=30)
    assert held.status == Status.COMPLETE
    client.close()


# =============================================================================
# Drain
# =============================================================================


def test_drain_waits_for_running_jobs_names_them_on_timeout_and_leaves_the_queue_paused(
    folder: Path, processes: Workers
) -> None:
    db = str(folder / "jobs.db")
    client = SyncQueue(db)
    running_job = client.enqueue("slow", key="long-one")
    assert running_job is not None
    processes.start(env={"SLOW_S": "4"})
    deadline = time.monotonic() + 30
    while client.job("long-one").status != Status.ACTIVE:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.05)

    timed_out = saqlite_command("drain", db, "--timeout", "0.5")
    assert timed_out.returncode == 1, timed_out.stderr
    assert "1 job(s) still running" in timed_out.stderr
    assert "default long-one (slow" in timed_out.stdout

    drained = saqlite_command("drain", db, "--timeout", "60", "--json")
    assert drained.returncode == 0, drained.stderr
    assert json.loads(drained.stdout) == {"paused": ["default"], "running": []}
    assert client.job("long-one").status == Status.COMPLETE  # type: ignore[union-attr]

    # The queue stays paused: a new job waits until `saqlite resume`.
    waiting = client.enqueue("tick")
    assert waiting is not None
    assert client.flow()[0]["paused"]
    resumed = saqlite_command("resume", db)
    assert resumed.returncode == 0, resumed.stderr
    client.refresh(waiting, until_complete=30)
    assert waiting.status == Status.COMPLETE
    client.close()


# =============================================================================
# Terminal, SyncQueue, schema
# =============================================================================


def test_terminal_pause_limit_and_info_show_pauses_and_limits_with_their_use(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "jobs.db")
    client = SyncQueue(db)
    client.enqueue("call_api")
    client.close()
    limited = saqlite_command("limit", db, "--function", "call_api", "--rate", "60/m")
    assert limited.returncode == 0, limited.stderr
    assert "limits of default call_api set: rate 60/m (0 started)" in limited.stdout
    capped = saqlite_command("limit", db, "--concurrency", "5", "--per-group", "2")
    assert capped.returncode == 0, capped.stderr
    paused = saqlite_command("pause", db, "--function", "render", "--for", "10m")
    assert paused.returncode == 0, paused.stderr
    info = saqlite_command("info", db)
    assert info.returncode == 0, info.stderr
    assert "call_api       rate 60/m (0 started)" in info.stdout
    assert "(whole queue)  concurrency 5 (0 running), per group 2 (busiest 0)" in info.stdout
    assert "render         paused until " in info.stdout
    flow = json.loads(saqlite_command("info", db, "--json").stdout)["queues"][0]["flow"]
    assert [rule["function"] for rule in flow] == [None, "call_api", "render"]
    cleared = saqlite_command("limit", db, "--clear", "--json")
    assert cleared.returncode == 0, cleared.stderr
    assert [rule["function"] for rule in json.loads(cleared.stdout)["default"]] == [
        "call_api",
        "render",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["limit", "--rate", "60/x"], "rate must be 'N/period' with a unit of s, m, h or d"),
        (["limit", "--concurrency", "0"], "concurrency must be a whole number from 1"),
        (["limit", "--function", "f", "--per-group", "2"], "without function='f'"),
        (["limit"], "limit needs --rate, --concurrency or --per-group (or --clear)"),
        (["pause", "--until", "2020-01-01T00:00"], "has passed: give a later time"),
        (["pause", "--until", "tomorrow"], "--until 'tomorrow' is not a time: use ISO 8601"),
        (["pause", "--for", "0s"], "--for must be longer than 0, e.g. 30s, 10m, 2h"),
        (["drain", "--timeout", "nan"], "--timeout must be seconds from 0"),
    ],
)
def test_terminal_flow_commands_refuse_bad_input_with_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    db = str(tmp_path / "jobs.db")
    with SyncQueue(db):
        pass
    done = saqlite_command(args[0], db, *args[1:])
    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": "60/x"}, "rate must be 'N/period' with a unit of s, m, h or d"),
        ({"rate": "0/m"}, "rate's N must be a whole number from 1"),
        ({"rate": (5, float("nan"))}, "rate's period must be seconds above 0"),
        ({"rate": (5, -1)}, "rate's period must be seconds above 0"),
        ({"concurrency": -1}, "concurrency must be a whole number from 1"),
        ({"concurrency": 2.5}, "concurrency must be a whole number from 1"),
        ({"per_group": 0}, "per_group must be a whole number from 1"),
        ({}, "limit needs rate=, concurrency= or per_group="),
    ],
)
@async_test
async def test_bad_limits_are_value_errors_naming_the_problem(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        await queue.limit("f", **kwargs)  # type: ignore[arg-type]
    assert await queue.flow() == []


@async_test
async def test_bad_pauses_are_value_errors_naming_the_problem(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    with pytest.raises(ValueError, match="has passed: give a later time"):
        await queue.pause(until=time.time() - 1)
    with pytest.raises(ValueError, match="pause takes until= or for_s=, not both"):
        await queue.pause(until=time.time() + 60, for_s=60)
    with pytest.raises(ValueError, match="for_s must be seconds above 0"):
        await queue.pause(for_s=float("nan"))
    with pytest.raises(ValueError, match="function must be the name of a job function"):
        await queue.pause("")
    assert await queue.flow() == []


def test_sync_queue_pauses_limits_and_reads_them(tmp_path: Path) -> None:
    client = SyncQueue(tmp_path / "jobs.db", name="emails")
    client.limit("send", rate="5/10s", concurrency=2)
    client.pause("send", for_s=60)
    (rule,) = client.flow()
    assert rule["function"] == "send" and rule["rate"] == "5/10s" and rule["concurrency"] == 2
    assert rule["paused"] and rule["paused_until"] is not None
    assert client.info()["flow"] == [rule]
    client.resume("send")
    client.limit("send", clear=True)
    assert client.flow() == [] and "flow" not in client.info()
    client.close()


def test_a_version_5_file_migrates_to_flow_control(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("CREATE TABLE saqlite_meta (name TEXT PRIMARY KEY, value)")
    for statements in saqlite._MIGRATIONS[:5]:
        for statement in statements:
            conn.execute(statement)
    conn.execute("INSERT INTO saqlite_meta VALUES ('schema_version', 5)")
    conn.close()
    client = SyncQueue(path)
    client.enqueue("f", key="kept")
    client.limit("f", concurrency=1)
    assert client.flow()[0]["concurrency"] == 1
    client.close()
    conn = sqlite3.connect(path)
    (version,) = conn.execute(
        "SELECT value FROM saqlite_meta WHERE name = 'schema_version'"
    ).fetchone()
    conn.close()
    assert int(version) == saqlite.SCHEMA_VERSION


# =============================================================================
# The page
# =============================================================================


def test_the_page_shows_pauses_and_limits_and_pauses_resumes_and_limits_by_post(
    tmp_path: Path,
) -> None:
    from test_saqlite_ops import CLI, start, stop  # noqa: PLC0415 (its server helpers)

    db = tmp_path / "jobs.db"
    client = SyncQueue(db)
    client.enqueue("call_api")
    server = start([CLI, "web", str(db), "--port", "0"])
    try:
        cross_site = {"origin": "http://evil.example", "host": "127.0.0.1"}
        csrf = server.csrf()
        form = {"queue": "default", "function": "call_api", "for": "10m", **csrf}
        assert server.request("/pause", "POST", form, cross_site)[0] == 403
        no_token = {"queue": "default", "function": "call_api", "for": "10m"}
        assert server.request("/pause", "POST", no_token)[0] == 403
        assert client.flow() == []
        status, headers, _ = server.request("/pause", "POST", form)
        assert (status, headers["location"]) == (303, "/")
        limits = {"queue": "default", "rate": "60/m", "concurrency": "4", "per_group": "", **csrf}
        assert server.request("/limit", "POST", limits)[0] == 303
        page = server.request("/")[2]
        assert '<table id="flow">' in page and 'name="csrf"' in page
        assert "<td>call_api</td><td>paused until " in page
        assert "<td>(whole queue)</td><td>rate 60/m (0 started), concurrency 4 (0 running)" in page
        rules = {rule["function"]: rule for rule in client.flow()}
        assert rules["call_api"]["paused"] and rules[None]["rate"] == "60/m"
        api = json.loads(server.request("/api/queues")[2])
        assert [rule["function"] for rule in api["queues"][0]["flow"]] == [None, "call_api"]

        resume = {"queue": "default", "function": "call_api", **csrf}
        assert server.request("/resume", "POST", resume)[0] == 303
        bad = server.request("/limit", "POST", {"queue": "default", "rate": "60/x", **csrf})
        assert bad[0] == 400 and "rate must be &#x27;N/period&#x27;" in bad[2]
        clear = {"queue": "default", "clear": "1", **csrf}
        assert server.request("/limit", "POST", clear)[0] == 303
        assert client.flow() == []
    finally:
        assert stop(server) == 0
        client.close()


def test_burst_stops_and_lists_jobs_a_pause_holds_as_pending(folder: Path) -> None:
    client = SyncQueue(folder / "jobs.db")
    client.pause("slow")
    held = client.enqueue("slow", key="held")
    done = client.enqueue("tick", key="done")
    assert held is not None and done is not None
    client.close()
    burst = subprocess.run(
        [sys.executable, "-m", "saqlite", "burst", "flowsettings.settings", "--wait", "0.3"],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{folder}"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert burst.returncode == 1, burst.stderr
    assert "pending held (slow)" in burst.stderr
    assert "1 complete, 0 failed, 0 aborted, 0 retried, 1 pending" in burst.stdout


def test_readme_flow_example_runs(tmp_path: Path) -> None:
    from test_saqlite import readme_python_blocks  # noqa: PLC0415

    (script,) = [block for block in readme_python_blocks() if "queue.limit(" in block]
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(HERE)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "[0, 2, 4, 6, 8, 10, 12, 14, 16, 18]",
        "['a', 'b', 'c', 'd']",
        "build None 2 False",
        "call_api 5/s None False",
    ]
    conn = sqlite3.connect(tmp_path / "flow.db")
    starts = [row[0] for row in conn.execute(
        "SELECT started FROM saqlite_jobs WHERE function = 'call_api'")]  # fmt: skip
    conn.close()
    assert len(starts) == 10 and most_in_any_window(starts, 1000) == 5
