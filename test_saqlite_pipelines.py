"""Dependencies between jobs (issue 12, part 1): depends_on, fan-in, failure that
aborts dependents and a retry that revives them, graphs enqueued whole.

Real files, real workers; the last tests run worker processes from the command line.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest

import saqlite
from saqlite import Context, Job, Queue, Status, SyncQueue
from test_saqlite import NO_SWEEP, async_test, make_queue, running, stored, wait_for, worker_for
from test_saqlite_processes import stop_processes
from test_saqlite_saq import (
    _export,
    _file_rows,
    _Redis,
    _saq_jobs,
    redis,  # noqa: F401 (a fixture: a redis-server for SAQ)
)

HERE = Path(__file__).resolve().parent


async def statuses(queue: Queue, *keys: str) -> list[t.Optional[Status]]:
    return [None if job is None else job.status for job in await queue.jobs(keys)]


# =============================================================================
# Waiting for dependencies, and reading their results
# =============================================================================


@async_test
async def test_a_job_runs_after_every_dependency_completed_and_reads_their_results(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    ran: list[str] = []

    async def step(ctx: Context, *, name: str) -> str:
        ran.append(name)
        return f"{name} ok"

    async def report(ctx: Context) -> dict[str, t.Any]:
        ran.append("report")
        return ctx["dependencies"]

    build = await queue.enqueue("step", name="build", key="build")
    assert build is not None
    shards = [
        await queue.enqueue("step", name=f"test-{n}", key=f"test-{n}", depends_on=[build])
        for n in range(3)
    ]
    final = await queue.enqueue(
        "report", key="report", depends_on=[job for job in shards if job is not None]
    )
    assert final is not None and final.depends_on == ["test-0", "test-1", "test-2"]
    # Nothing but the build may be claimed: the others wait, whatever the clock says.
    assert [job.key for job in await queue._claim(10, None)] == ["build"]
    await queue.retry(build, None)  # back to the queue, for the worker
    async with running(worker_for(queue, [("step", step), ("report", report)], timers=NO_SWEEP)):
        await final.refresh(until_complete=10)
    assert ran[0] == "build" and ran[-1] == "report" and len(ran) == 5
    assert final.status == Status.COMPLETE
    assert final.result == {"test-0": "test-0 ok", "test-1": "test-1 ok", "test-2": "test-2 ok"}


@async_test
async def test_depends_on_works_from_job_enqueue_many_apply_and_the_sync_queue(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    first = Job("step", key="first")
    second = Job("step", key="second", depends_on=[first])
    third = Job("step", key="third", depends_on=["second"])
    # A graph in one call, jobs naming each other by key, in any order.
    assert await queue.enqueue_many([third, second, first]) == [third, second, first]
    await first.enqueue()  # its key is waiting: loaded, not stored again
    with SyncQueue(tmp_path / "jobs.db") as sync:
        fourth = sync.enqueue("step", key="fourth", depends_on=["third", "first"])
        assert fourth is not None and fourth.depends_on == ["third", "first"]

    async def step(ctx: Context) -> list[str]:
        return sorted(ctx.get("dependencies", {}))

    async with running(worker_for(queue, [("step", step)], timers=NO_SWEEP)):
        assert await queue.apply("step", depends_on=["fourth"], timeout=5) == ["fourth"]
    assert (await stored(queue, "fourth")).result == ["first", "third"]
    assert await statuses(queue, "first", "second", "third") == [Status.COMPLETE] * 3


@async_test
async def test_a_dependency_already_complete_is_met_and_its_result_kept_past_its_ttl(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")

    async def step(ctx: Context) -> str:
        return ctx["job"].key

    async with running(worker_for(queue, [("step", step)], timers=NO_SWEEP)):
        assert await queue.apply("step", key="done", ttl=1) == "done"
        gate = await queue.enqueue("step", key="gate", scheduled=int(time.time()) + 3600)
        assert gate is not None
        late = await queue.enqueue("step", key="late", depends_on=["done", gate])
        assert late is not None
        # The ttl has run out; the sweep keeps "done" while "late" has yet to run.
        await queue._fetch("UPDATE saqlite_jobs SET expire_at = 1 WHERE key = 'done'")
        await queue.sweep()
        assert await statuses(queue, "done", "late") == [Status.COMPLETE, Status.QUEUED]
        await queue.update(gate, scheduled=int(time.time()))  # due now
        await late.refresh(until_complete=10)
    assert late.status == Status.COMPLETE
    await queue.sweep()
    assert await statuses(queue, "done") == [None]  # gone once its dependent ran


@async_test
async def test_a_waiting_job_given_a_new_time_still_waits_for_its_dependencies(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    first = await queue.enqueue("f", key="first")
    second = await queue.enqueue("f", key="second", depends_on=["first"])
    assert first is not None and second is not None
    await queue.update(second, scheduled=int(time.time()))
    claimed = await queue._claim(5, None)
    assert [job.key for job in claimed] == ["first"]
    await queue.finish(claimed[0], Status.COMPLETE)
    assert [job.key for job in await queue._claim(5, None)] == ["second"]


@async_test
async def test_a_finished_key_enqueued_again_is_a_new_run_that_new_dependents_wait_for(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")

    async def run_one(expected: str) -> None:
        claimed = await queue._claim(5, None)
        assert [job.key for job in claimed] == [expected]
        await queue.finish(claimed[0], Status.COMPLETE, result=expected)

    await queue.enqueue("f", key="first")
    await queue.enqueue("f", key="second", depends_on=["first"])
    await run_one("first")
    await run_one("second")
    assert await queue.enqueue("f", key="first") is not None  # a new run of "first"
    await queue.enqueue("f", key="third", depends_on=["first"])
    await run_one("first")  # "third" waited for it
    await run_one("third")
    assert await statuses(queue, "second") == [Status.COMPLETE]
    # A deleted job takes its links along.
    await queue._fetch("DELETE FROM saqlite_jobs WHERE key = 'third'")
    rows = await queue._fetch("SELECT key FROM saqlite_dependencies WHERE key = 'third'")
    assert rows == []


# =============================================================================
# Failure: dependents are aborted, transitively; a retry revives them
# =============================================================================


@async_test
async def test_a_failed_dependency_aborts_its_dependents_naming_it_and_a_retry_revives_them(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    attempts: list[str] = []

    async def build(ctx: Context) -> str:
        attempts.append("build")
        if len(attempts) == 1:
            raise RuntimeError("compiler crashed")
        return "binary"

    async def step(ctx: Context) -> str:
        return "ok"

    jobs = [
        Job("build", key="build"),
        Job("step", key="test", depends_on=["build"]),
        Job("step", key="deploy", depends_on=["test"]),
        Job("step", key="cleanup", depends_on=["deploy"], allow_failed_dependencies=True),
    ]
    await queue.enqueue_many(jobs)
    async with running(worker_for(queue, [("build", build), ("step", step)], timers=NO_SWEEP)):
        await wait_for(lambda: _all_finished(queue, "build", "test", "deploy", "cleanup"))
        found = await queue.jobs(["build", "test", "deploy", "cleanup"])
        assert [job.status if job else None for job in found] == [
            Status.FAILED, Status.ABORTED, Status.ABORTED, Status.COMPLETE,
        ]  # fmt: skip
        assert found[1] is not None and found[1].error == "dependency 'build' ended failed"
        assert found[2] is not None and found[2].error == "dependency 'test' ended aborted"
        # Retrying the failed job puts back the jobs its failure aborted.
        failed = found[0]
        assert failed is not None
        await queue.retry(failed, None)
        await wait_for(lambda: _all_finished(queue, "build", "test", "deploy"))
    assert await statuses(queue, "build", "test", "deploy") == [Status.COMPLETE] * 3
    assert attempts == ["build", "build"]


async def _all_finished(queue: Queue, *keys: str) -> bool:
    return all(status in saqlite.TERMINAL_STATUSES for status in await statuses(queue, *keys))


@async_test
async def test_a_job_aborted_by_hand_aborts_the_jobs_waiting_on_it(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    first = await queue.enqueue("step", key="first", scheduled=int(time.time()) + 3600)
    assert first is not None
    await queue.enqueue("step", key="second", depends_on=["first"])
    await queue.abort(first, "not wanted")
    second = await stored(queue, "second")
    assert (second.status, second.error) == (Status.ABORTED, "dependency 'first' ended aborted")


# =============================================================================
# What is refused, at the call, with nothing stored
# =============================================================================


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"depends_on": "build"}, "Job depends_on must be a list of Jobs or job keys, got str"),
        ({"depends_on": [3]}, r"Job depends_on\[0\] must be a Job or a job key, got int 3"),
        ({"depends_on": [""]}, r"Job depends_on\[0\] must be a Job or a job key, got str ''"),
        ({"depends_on": ["me"]}, "Job 'me' depends on itself: remove it from its depends_on"),
        (
            {"depends_on": [Job("f", key="x", queue=Queue("other.db", name="mail"))]},
            r"depends_on\[0\] is job 'x' of queue 'mail': a job can depend only on jobs of "
            "its own queue \\('default'\\)",
        ),
        (
            {"depends_on": ["x"], "allow_failed_dependencies": "yes"},
            "Job allow_failed_dependencies must be True or False, got 'yes'",
        ),
    ],
)
@async_test
async def test_a_bad_depends_on_is_a_value_error_naming_it(
    tmp_path: Path, options: dict[str, t.Any], message: str
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    await queue.enqueue("f", key="x")
    with pytest.raises(ValueError, match=message):
        await queue.enqueue("f", key="me", **options)
    assert await queue.job("me") is None


@async_test
async def test_a_graph_with_a_cycle_or_an_unknown_key_is_refused_whole(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    cycle = [
        Job("f", key="a"),
        Job("f", key="b", depends_on=["a", "d"]),
        Job("f", key="c", depends_on=["b"]),
        Job("f", key="d", depends_on=["c"]),
    ]
    with pytest.raises(ValueError, match=r"cycle.*: 'b' -> 'd' -> 'c' -> 'b' \(each depends"):
        await queue.enqueue_many(cycle)
    # The next statement of this same task does not join the rolled back transaction.
    assert await queue.enqueue("f", key="alone") is not None
    unknown = [Job("f", key="a"), Job("f", key="b", depends_on=["a", "nowhere"])]
    with pytest.raises(ValueError, match="'b' depends on 'nowhere', which is not in queue"):
        await queue.enqueue_many(unknown)
    with pytest.raises(ValueError, match="'b' depends on 'nowhere', which is not in queue"):
        await queue.enqueue("f", key="b", depends_on=["nowhere"])
    assert await statuses(queue, "a", "b", "c", "d", "alone") == [None] * 4 + [Status.QUEUED]
    with SyncQueue(tmp_path / "jobs.db") as sync, pytest.raises(ValueError, match="cycle"):
        sync.enqueue_many(cycle)
    assert await queue.count("queued") == 1


@async_test
async def test_a_failed_dependency_or_one_deleted_as_it_ends_is_refused_at_enqueue(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    failed = await queue.enqueue("f", key="failed")
    assert failed is not None
    await queue.finish(failed, Status.FAILED, error="boom")
    with pytest.raises(ValueError, match="depends on 'failed', which ended failed: retry"):
        await queue.enqueue("f", key="next", depends_on=["failed"])
    anyway = await queue.enqueue(
        "f", key="anyway", depends_on=["failed"], allow_failed_dependencies=True
    )
    assert anyway is not None and [job.key for job in await queue._claim(5, None)] == ["anyway"]
    await queue.enqueue("f", key="fleeting", ttl=-1)
    with pytest.raises(ValueError, match="'fleeting', whose ttl=-1 deletes it as it ends"):
        await queue.enqueue("f", key="next", depends_on=["fleeting"])
    with pytest.raises(ValueError, match="depends_on is set when a job is enqueued"):
        await queue.update(anyway, depends_on=[])


def test_the_claim_passes_over_waiting_jobs_through_the_ready_index(tmp_path: Path) -> None:
    with SyncQueue(tmp_path / "jobs.db") as sync:
        sync.enqueue("f", key="root")
        sync.enqueue_many([Job("f", depends_on=["root"]) for _ in range(50)])
        conn = sync._connection()
        sql = Queue._claim_sql(False)
        params = {"queue": "default", "low": 0, "high": 0, "worker_id": "w", "limit": 10}
        plan = " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
        assert "USING INDEX saqlite_jobs_ready (queue=? AND status=?)" in plan, plan
        # Jobs waiting on dependencies count as scheduled: not due yet.
        assert (sync.count("queued"), sync.count("incomplete")) == (1, 51)
        assert [row[0] for row in conn.execute(sql, params)] == ["root"]


# =============================================================================
# Worker processes
# =============================================================================

SETTINGS = """
import os
from saqlite import Queue

queue = Queue({db!r})
RUNS = {runs!r}

async def leaf(ctx, *, n):
    return n

async def gather(ctx):
    # One line per run, in a file per process: the fan-in must run once.
    with open(os.path.join(RUNS, f"gather-{{os.getpid()}}.log"), "a") as log:
        log.write(f"{{len(ctx['dependencies'])}}\\n")
    return sum(ctx["dependencies"].values())

async def flaky(ctx):
    if not os.path.exists(os.path.join(RUNS, "fixed")):
        raise RuntimeError("flaky build")
    return "built"

async def step(ctx):
    return ctx["job"].key

settings = {{
    "queue": queue,
    "functions": [leaf, gather, flaky, step],
    "concurrency": 10,
    "timers": {{"sweep": 0.5, "worker_info": 0.5, "abort": 0.2}},
}}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "runs").mkdir()
    (tmp_path / "pipesettings.py").write_text(
        SETTINGS.format(db=str(tmp_path / "jobs.db"), runs=str(tmp_path / "runs"))
    )
    return tmp_path


def _env(folder: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{folder}"}


@pytest.fixture
def workers(folder: Path) -> t.Iterator[list[subprocess.Popen[bytes]]]:
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "saqlite", "pipesettings.settings"],
            cwd=folder,
            env=_env(folder),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    try:
        yield processes
    finally:
        stop_processes(processes)


def test_a_fan_in_of_1000_jobs_runs_once_in_two_worker_processes(
    folder: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    leaves = [Job("leaf", kwargs={"n": n}, key=f"leaf-{n}") for n in range(1000)]
    with SyncQueue(folder / "jobs.db") as sync:
        sync.enqueue_many([*leaves, Job("gather", key="gather", depends_on=leaves)])
        gathered = sync.job("gather")
        assert gathered is not None
        sync.refresh(gathered, until_complete=60)
        assert (gathered.status, gathered.result) == (Status.COMPLETE, sum(range(1000)))
        assert sync.count("incomplete") == 0
    runs = [
        line for log in (folder / "runs").glob("gather-*.log") for line in log.read_text().split()
    ]
    assert runs == ["1000"]


def test_a_failed_dependency_aborts_a_chain_of_three_and_a_terminal_retry_revives_it(
    folder: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    chain = ["one", "two", "three"]
    with SyncQueue(folder / "jobs.db") as sync:
        sync.enqueue_many(
            [
                Job("flaky", key="build"),
                *(
                    Job("step", key=key, depends_on=[before])
                    for before, key in zip(["build", *chain], chain)
                ),
            ]
        )
        last = sync.job("three")
        assert last is not None
        sync.refresh(last, until_complete=30)
        found = [sync.job(key) for key in ["build", *chain]]
        assert [job.status if job else None for job in found] == [
            Status.FAILED, Status.ABORTED, Status.ABORTED, Status.ABORTED,
        ]  # fmt: skip
        assert [job.error if job else None for job in found[1:]] == [
            "dependency 'build' ended failed",
            "dependency 'one' ended aborted",
            "dependency 'two' ended aborted",
        ]
        (folder / "runs" / "fixed").touch()
        retried = subprocess.run(
            [sys.executable, "-m", "saqlite", "retry", str(folder / "jobs.db"), "build"],
            env=_env(folder),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert retried.returncode == 0, retried.stderr
        deadline = time.monotonic() + 30  # the aborted jobs wait again, then run
        while any(job and job.status != Status.COMPLETE for job in map(sync.job, chain)):
            assert time.monotonic() < deadline, [sync.job(key) for key in chain]
            time.sleep(0.05)
        assert [(job.status, job.result) for job in map(sync.job, chain) if job] == [
            (Status.COMPLETE, key) for key in chain
        ]


def test_the_statements_run_as_a_job_ends_find_its_own_dependents_through_indexes(
    tmp_path: Path,
) -> None:
    """What a finish costs is that job's own dependents: no statement a trigger runs
    scans the jobs or the edges of a queue."""
    with SyncQueue(tmp_path / "jobs.db") as sync:
        sync.enqueue("f", key="x")
        conn = sync._connection()
        triggers = [
            row[0]
            for row in conn.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'trigger'"
                " AND (name LIKE 'saqlite_dependenc%' OR name LIKE 'saqlite_waiting%')"
            )
        ]
        assert len(triggers) == 6
        bound = {"NEW.queue": "'default'", "OLD.queue": "'default'", "NEW.key": "'x'",
                 "OLD.key": "'x'", "NEW.status": "'failed'"}  # fmt: skip
        for trigger in triggers:
            body = trigger.split("BEGIN", 1)[1].rsplit("END", 1)[0]
            for name, value in bound.items():
                body = body.replace(name, value)
            for statement in filter(str.strip, body.split(";")):
                plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}")]
                assert not [step for step in plan if step.startswith("SCAN saqlite")], plan
                assert not [step for step in plan if "PRIMARY KEY (queue=?)" in step], plan


# =============================================================================
# The README's pipeline runs as printed
# =============================================================================


def test_the_readme_ci_pipeline_runs_as_printed(tmp_path: Path) -> None:
    text = (HERE / "README.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]
    (example,) = [block for block in blocks if "depends_on" in block]
    result = subprocess.run(
        [sys.executable, "-c", example],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(HERE)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "complete",
        "shard 0 passed on app-1.0.tar.gz",
        "shard 1 passed on app-1.0.tar.gz",
        "shard 2 passed on app-1.0.tar.gz",
    ]


# =============================================================================
# The tools: saqlite job, saqlite burst, the page
# =============================================================================

TASKS = """
import os
from saqlite import Queue

async def build(ctx):
    raise RuntimeError("compiler crashed")

async def step(ctx):
    return "ok"

settings = {"queue": Queue(os.environ["PIPE_DB"]), "functions": [build, step]}
"""


def _cli(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "saqlite", *args],
        cwd=folder,
        env={**_env(folder), "PIPE_DB": str(folder / "ci.db")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_burst_counts_the_jobs_a_failed_dependency_aborted_and_job_shows_the_links(
    tmp_path: Path,
) -> None:
    (tmp_path / "citasks.py").write_text(TASKS)
    with SyncQueue(tmp_path / "ci.db") as sync:
        sync.enqueue_many(
            [
                Job("build", key="build"),
                Job("step", key="test", depends_on=["build"]),
                Job("step", key="deploy", depends_on=["test"]),
                Job("step", key="lint"),
            ]
        )
    result = _cli(tmp_path, "burst", "citasks.settings", "--wait", "0.2")
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith(f"burst FAILED on {tmp_path / 'ci.db'}: 4 jobs in ")
    assert result.stdout.endswith(
        "s: 1 complete, 1 failed, 2 aborted (2 by a failed dependency), 0 retried, 0 pending\n"
    )
    assert "aborted test: dependency 'build' ended failed" in result.stderr
    shown = _cli(tmp_path, "job", str(tmp_path / "ci.db"), "test")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.endswith(
        "\ndependencies:\n  failed    build\n\ndependents:\n  aborted   deploy\n"
    )
    as_json = json.loads(_cli(tmp_path, "job", str(tmp_path / "ci.db"), "test", "--json").stdout)
    assert as_json["dependencies"] == [{"key": "build", "status": "failed"}]
    assert as_json["dependents"] == [{"key": "deploy", "status": "aborted"}]


def test_the_page_of_a_job_draws_its_pipeline(tmp_path: Path) -> None:
    with SyncQueue(tmp_path / "jobs.db") as sync:
        build = Job("build", key="build")
        shards = [Job("test", key=f"test-{n}", depends_on=[build]) for n in range(2)]
        sync.enqueue_many([build, *shards, Job("report", key="report", depends_on=shards)])
        sync.enqueue("alone", key="alone")
    app = saqlite.web_app(str(tmp_path / "jobs.db"))
    sent: list[t.MutableMapping[str, t.Any]] = []

    async def get(key: str) -> str:
        sent.clear()

        async def receive() -> t.MutableMapping[str, t.Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: t.MutableMapping[str, t.Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/job", "root_path": "",
                 "query_string": f"queue=default&key={key}".encode(),
                 "headers": [(b"host", b"localhost")]}  # fmt: skip
        await app(scope, receive, send)
        return b"".join(m.get("body", b"") for m in sent).decode()

    async def pages() -> tuple[str, str]:
        try:
            return await get("test-1"), await get("alone")
        finally:
            await app.close()

    page, alone = asyncio.run(pages())
    svg = page.split('<svg class="pipeline"', 1)[1].split("</svg>", 1)[0]
    for key in ("build", "test-0", "test-1", "report"):
        assert f'key={key}">' in svg and f"<title>{key}: queued</title>" in svg
    assert svg.count("<line ") == 4  # build -> each shard -> report
    assert 'class="queued this"' in svg
    assert '<svg class="pipeline"' not in alone


def test_export_leaves_the_jobs_waiting_on_dependencies_and_says_so(
    tmp_path: Path,
    redis: _Redis,  # noqa: F811 (the fixture imported above)
) -> None:
    file = tmp_path / "jobs.db"
    name = f"ci-{tmp_path.name}"
    with SyncQueue(file, name=name) as sync:
        sync.enqueue_many(
            [Job("build", key="build"), Job("test", key="test", depends_on=["build"])]
        )
    moved = _export(file, redis.url, "--queue", name, "--json")
    assert moved.returncode == 1
    report = json.loads(moved.stdout)
    assert report["queues"] == {name: {"moved": 1, "already_in_saq": 0}}
    assert report["waiting_on_dependencies"] == [{"queue": name, "key": "test"}]
    assert "1 job(s) waiting on dependencies were not moved (SAQ has no dependencies" in (
        moved.stderr
    )
    assert set(_saq_jobs(redis.url, name, ["build", "test"])) == {"build"}
    assert set(_file_rows(file, name)) == {"test"}
