"""saqlite next to SAQ 0.26: the names SAQ users reach for, every public member of SAQ's
``Job``, ``Queue`` and ``Worker`` compared by signature, the documented choices where
saqlite differs, the example app run on both (SAQ on a real ``redis-server``), and
``saqlite export`` into SAQ.

The SAQ halves need ``saq`` and ``redis-server``; they skip without them, except in CI
(``CI=true``), where they fail instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

import pytest

import saqlite
from saqlite import InvalidUrlError, Job, Queue, Status, SyncQueue, Worker
from test_saqlite import (
    HERE,
    async_test,
    make_queue,
    running,
    sleeps_until_cancelled,
    stored,
    wait_for,
    worker_for,
)

if t.TYPE_CHECKING:
    from collections.abc import Iterator

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _need(reason: str) -> None:
    """Skip for a missing peer (SAQ, redis-server) locally; in CI, fail instead."""
    if IN_CI:
        pytest.fail(f"{reason} (CI must run the SAQ half: install saq[redis] and redis-server)")
    pytest.skip(reason)


def _import_saq() -> t.Any:
    try:
        import saq  # noqa: PLC0415
        import saq.queue.base  # noqa: PLC0415
        import saq.worker  # noqa: PLC0415
    except ImportError:
        _need("saq is not installed (pip install 'saq[redis]>=0.26,<0.27')")
    return saq


async def flaky(ctx: saqlite.Context) -> int:
    """Fails its first two attempts."""
    job = ctx["job"]
    if job.attempts < 3:
        raise RuntimeError("not yet")
    return job.attempts


async def add(ctx: saqlite.Context, *, a: int, b: int = 0) -> int:
    return a + b


# =============================================================================
# 9.8: SAQ's names
# =============================================================================


def test_exponential_backoff_is_saqs() -> None:
    saq = _import_saq()
    from saq.utils import exponential_backoff as saq_backoff  # noqa: PLC0415

    assert "exponential_backoff" in saqlite.__all__
    for attempts, base, cap in [(0, 1.0, None), (1, 2.0, None), (4, 1.5, None), (9, 1.0, 30.0)]:
        mine = saqlite.exponential_backoff(attempts, base, cap, jitter=False)
        assert mine == saq_backoff(attempts, base, cap, jitter=False)
        random.seed(attempts)
        mine = saqlite.exponential_backoff(attempts, base, cap)
        random.seed(attempts)
        assert mine == saq_backoff(attempts, base, cap)
    assert inspect.signature(saqlite.exponential_backoff).parameters.keys() == (
        inspect.signature(saq.utils.exponential_backoff).parameters.keys()
    )


def test_next_retry_delay_calls_the_patched_module_exponential_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[dict[str, t.Any]] = []

    def fixed(**kwargs: t.Any) -> float:
        calls.append(kwargs)
        return 42.0

    monkeypatch.setattr(saqlite, "exponential_backoff", fixed)
    assert Job("f", retry_delay=1.0, retry_backoff=8.0, attempts=3).next_retry_delay() == 42.0
    assert calls == [{"attempts": 3, "base_delay": 1.0, "max_delay": 8.0, "jitter": True}]
    assert Job("f", retry_delay=2.0).next_retry_delay() == 2.0  # no backoff: not called
    assert len(calls) == 1


@async_test
async def test_a_worker_retries_after_the_patched_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(saqlite, "exponential_backoff", lambda **kwargs: 0.0)
    queue = make_queue(tmp_path / "jobs.db")
    # Unpatched, attempt 3 waits up to 100 * 2**2 s: the test would time out.
    job = await queue.enqueue("flaky", retries=3, retry_delay=100.0, retry_backoff=True)
    assert job is not None
    async with running(worker_for(queue, [flaky])):
        await job.refresh(until_complete=20)
    assert (job.status, job.result) == (Status.COMPLETE, 3), job.error


@pytest.mark.parametrize("url", ["redis://localhost:6379", "postgres://db/x", "sqlite://", ""])
def test_from_url_of_another_scheme_is_invalid_url_error(url: str) -> None:
    assert issubclass(InvalidUrlError, ValueError)
    assert "InvalidUrlError" in saqlite.__all__
    for from_url in (Queue.from_url, SyncQueue.from_url):
        with pytest.raises(InvalidUrlError, match=r"use sqlite:///relative/path\.db"):
            from_url(url)
    with pytest.raises(InvalidUrlError, match=r"SAQ's Queue\.from_url"):
        Queue.from_url("redis://localhost")


@async_test
async def test_swept_error_message_is_a_queue_option_defaulting_to_swept(tmp_path: Path) -> None:
    assert saqlite.DEFAULT_SWEPT_JOB_ERROR == "swept"
    assert Queue(tmp_path / "a.db").swept_error_message == "swept"
    queue = make_queue(tmp_path / "jobs.db", swept_error_message="lost its worker")
    assert queue.swept_error_message == "lost its worker"
    await queue.enqueue("f", key="again", retries=2)
    await queue.enqueue("f", key="last")
    for _ in range(2):
        job = await queue.dequeue()
        assert job is not None
        await queue.update(job, started=saqlite.now() - 60_000)  # past its 10 s timeout
    await queue.sweep(abort=0.1)
    assert ((await stored(queue, "again")).status, (await stored(queue, "again")).error) == (
        Status.QUEUED,
        "lost its worker",
    )
    assert ((await stored(queue, "last")).status, (await stored(queue, "last")).error) == (
        Status.ABORTED,
        "lost its worker",
    )


def test_job_fields_are_in_saqs_order() -> None:
    names = [field.name for field in dataclasses.fields(Job)]
    assert names[names.index("group_key") + 1] == "meta"
    # Positional construction as in SAQ: ..., priority, group_key, meta, worker_id
    job = Job(
        "f", None, None, "k", 10, 0, 1, 600, 0.0, False, 0, 0.0, 0, 0, 0, 0, 0, None, None,
        Status.QUEUED, 3, "g", {"m": 1}, "w",
    )  # fmt: skip
    assert (job.priority, job.group_key, job.meta, job.worker_id) == (3, "g", {"m": 1}, "w")
    saq = _import_saq()
    # saqlite's own fields come after all of SAQ's, so positions agree.
    assert names == [field.name for field in dataclasses.fields(saq.job.Job)] + list(_EXTRA_FIELDS)


@async_test
async def test_saqs_smaller_queue_members_do_what_saqs_do(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    assert queue.loop is asyncio.get_running_loop()
    assert await queue.schedule() == []  # due scheduled jobs need no move here
    job = await queue.enqueue("f", key="k", meta={"m": 1})
    assert job is not None
    copied = queue.deserialize(job.to_dict(), Status.ACTIVE)  # a dict, and a status
    assert copied is not None
    assert (copied.key, copied.meta, copied.status) == ("k", {"m": 1}, Status.ACTIVE)
    assert copied.queue is queue
    running = await queue.dequeue()
    assert running is not None
    await queue.abort(running, "stop it")
    await running.refresh()
    assert running.status is Status.ABORTING
    await queue.finish_abort(running)
    stored_job = await stored(queue, "k")
    assert (stored_job.status, stored_job.error) == (Status.ABORTED, "stop it")


# =============================================================================
# 9.8: every public member of SAQ's Job, Queue and Worker
# =============================================================================

#: Members of SAQ 0.26.4 that saqlite has differently, each with its README row
#: ("What differs, and why"). Keep the two in step.
_ALLOWED: dict[tuple[str, str], str] = {
    # README "URL": a file path and queue name instead of a connection; synchronous=,
    # lock_timeout= added; SAQ's base takes name, dump, load positionally with no defaults.
    ("Queue", "__init__"): "different arguments: a path, not a connection",
    # README "abort(ttl=)": SAQ's Redis key of the abort marker; saqlite keeps the
    # request in the job's row, so there is no marker to name.
    ("Job", "abort_id"): "no abort marker",
    # README "notify": SAQ's Redis publishes an update for listen(); saqlite wakes
    # listeners on every write itself, so a separate call has nothing to do.
    ("Queue", "notify"): "listeners are woken by every write",
    # README "write_worker_info": the back-end hook under Queue.worker_info;
    # saqlite's Queue.worker_info writes the row itself.
    ("Queue", "write_worker_info"): "back-end hook, not needed",
    # README "Worker.abort": saqlite gives abort_threshold a default (0: abort now).
    ("Worker", "abort"): "abort_threshold has a default",
}
# saqlite-only keyword options, each with a default SAQ code never needs to pass (and a
# README row): left out of the comparison, the rest of the signature must match.
_EXTRA_OPTIONS: dict[tuple[str, str], set[str]] = {
    # README "Worker(handle_signals=)": False leaves SIGINT/SIGTERM to the program.
    ("Worker", "__init__"): {"handle_signals"},
    # README "depends_on": dependencies between jobs (Job fields after SAQ's own, below).
    ("Job", "__init__"): {"depends_on", "allow_failed_dependencies"},
}
#: saqlite-only Job fields, after all of SAQ's (SAQ's Job() refuses them: a TypeError).
_EXTRA_FIELDS = ("depends_on", "allow_failed_dependencies")


#: How a saqlite-only option may be taken: by name, or at the end (Job's extra fields).
_OPTIONAL_KINDS = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _compare(saq_class: type, lite_class: type) -> list[str]:
    """What differs: each public member of saq_class missing in lite_class or with
    other parameter names, kinds or defaults (tuples and lists compare as lists)."""

    def shape(member: t.Any, extra: t.Collection[str] = ()) -> list[tuple[str, t.Any, t.Any]]:
        def norm(default: t.Any) -> t.Any:
            return list(default) if isinstance(default, (list, tuple)) else default

        return [
            (p.name, p.kind, norm(p.default))
            for p in inspect.signature(member).parameters.values()
            if not (p.name in extra and p.kind in _OPTIONAL_KINDS and p.default is not p.empty)
        ]

    problems = []
    for name in sorted(vars(saq_class)) + [n for n in dir(saq_class) if n not in vars(saq_class)]:
        if name.startswith("_") and name != "__init__":
            continue
        if (saq_class.__name__, name) in _ALLOWED:
            continue
        if not hasattr(lite_class, name):
            problems.append(f"{saq_class.__name__}.{name}: missing")
            continue
        member = inspect.getattr_static(saq_class, name)
        mine = inspect.getattr_static(lite_class, name)
        if isinstance(member, property) != isinstance(mine, property):
            problems.append(f"{saq_class.__name__}.{name}: property in one only")
            continue
        if isinstance(member, (staticmethod, classmethod)) or inspect.isfunction(member):
            extra = _EXTRA_OPTIONS.get((saq_class.__name__, name), set())
            if shape(getattr(saq_class, name)) != shape(getattr(lite_class, name), extra):
                problems.append(
                    f"{saq_class.__name__}.{name}: {inspect.signature(getattr(saq_class, name))}"
                    f" != {inspect.signature(getattr(lite_class, name))}"
                )
            saq_async = inspect.iscoroutinefunction(getattr(saq_class, name))
            if saq_async != inspect.iscoroutinefunction(getattr(lite_class, name)):
                problems.append(f"{saq_class.__name__}.{name}: async in one only")
    return problems


def test_every_public_member_of_saqs_job_queue_and_worker_is_here_alike() -> None:
    saq = _import_saq()
    problems = [
        *_compare(saq.job.Job, Job),
        *_compare(saq.queue.base.Queue, Queue),
        *_compare(saq.worker.Worker, Worker),
    ]
    assert problems == []
    # Dataclass fields: same names, order and defaults.
    saq_fields = [(f.name, f.default) for f in dataclasses.fields(saq.job.Job)]
    lite_fields = [(f.name, f.default) for f in dataclasses.fields(Job)]
    assert saq_fields == [field for field in lite_fields if field[0] not in _EXTRA_FIELDS]
    # Every allowed difference is still a difference (so the list does not go stale).
    for cls, name in _ALLOWED:
        saq_class = {"Job": saq.job.Job, "Queue": saq.queue.base.Queue, "Worker": saq.worker.Worker}
        lite_class = {"Job": Job, "Queue": Queue, "Worker": Worker}
        if hasattr(lite_class[cls], name):
            saq_sig = inspect.signature(getattr(saq_class[cls], name))
            assert saq_sig != inspect.signature(getattr(lite_class[cls], name)), (cls, name)


# =============================================================================
# 9.9: the documented choices
# =============================================================================


@async_test
async def test_cancelling_the_task_running_start_stops_the_worker_and_re_raises(
    tmp_path: Path,
) -> None:
    """SAQ swallows the CancelledError; saqlite re-raises it (asyncio's rule, which
    asyncio.timeout and TaskGroup depend on), after a full stop."""
    queue = make_queue(tmp_path / "jobs.db")
    cancelled = asyncio.Event()
    stopped: list[str] = []

    async def shutdown(ctx: saqlite.Context) -> None:
        stopped.append("shutdown")

    worker = worker_for(
        queue,
        [("long", sleeps_until_cancelled(cancelled))],
        shutdown=shutdown,
        shutdown_grace_period_s=0,
    )
    job = await queue.enqueue("long", retries=2)
    assert job is not None
    task = asyncio.create_task(worker.start())
    await wait_for(lambda: _has_status(queue, job.key, Status.ACTIVE))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    assert task.cancelled()
    assert cancelled.is_set() and stopped == ["shutdown"]
    assert (await stored(queue, job.key)).status is Status.QUEUED  # put back, not lost
    assert worker.id not in (await queue.info())["workers"]


async def _has_status(queue: Queue, key: str, status: Status) -> bool:
    job = await queue.job(key)
    return job is not None and job.status is status


@async_test
async def test_apply_and_map_of_a_job_enqueue_copies_and_leave_the_callers_job_alone(
    tmp_path: Path,
) -> None:
    """SAQ enqueues (and so changes) the caller's Job; saqlite enqueues copies."""
    queue = make_queue(tmp_path / "jobs.db")
    template = Job("add", kwargs={"a": 1}, key="template", retries=2)
    before = dataclasses.asdict(template)
    async with running(worker_for(queue, [add])):
        assert await queue.apply(template, b=2, timeout=10) == 3
        assert await queue.map(template, [{"b": 10}, {"b": 20}], timeout=10) == [11, 21]
    assert dataclasses.asdict(template) == before
    assert template.queue is None and template.status is Status.NEW
    assert await queue.job("template") is None  # each run had a key of its own


@async_test
async def test_dequeue_by_hand_counts_the_attempt(tmp_path: Path) -> None:
    """SAQ counts an attempt when its worker starts the job; saqlite's claim counts
    it in the same statement, so a job taken by hand has attempts == 1."""
    queue = make_queue(tmp_path / "jobs.db")
    await queue.enqueue("f", key="k", retries=1)
    job = await queue.dequeue()
    assert job is not None
    assert job.attempts == 1 and (await stored(queue, "k")).attempts == 1
    assert not job.retryable


# =============================================================================
# Prove the move: the example app on saqlite and on SAQ with a real Redis
# =============================================================================

EXAMPLES = HERE / "examples"
APP_FILES = ("app_tasks.py", "app_producer.py")
SAQ_IMPORT = "from saq import CronJob, Queue"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class _Redis:
    url: str
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def redis() -> Iterator[_Redis]:
    """A real redis-server for this module: a free port, a temp dir, no snapshots."""
    _import_saq()
    server = shutil.which("redis-server")
    if server is None:
        _need("redis-server is not installed (apt-get install redis-server)")
    assert server is not None
    port = _free_port()
    with tempfile.TemporaryDirectory() as folder:
        process = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                assert process.poll() is None, "redis-server exited at start"
                assert time.monotonic() < deadline, "redis-server did not listen within 30 s"
                time.sleep(0.05)
            yield _Redis(f"redis://127.0.0.1:{port}", process)
        finally:
            process.kill()
            process.wait(30)


def _python_env(folder: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{folder}{os.pathsep}{HERE}",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _run_app(folder: Path, worker_module: str) -> dict[str, t.Any]:
    """Run the app's worker through its system's CLI, then the producer; the summary."""
    env = _python_env(folder)
    worker = subprocess.Popen(
        [sys.executable, "-m", worker_module, "app_tasks.settings"],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        producer = subprocess.run(
            [sys.executable, "app_producer.py"],
            cwd=folder, env=env, capture_output=True, text=True, timeout=100, check=False,
        )  # fmt: skip
    finally:
        worker.terminate()
        try:
            _, worker_log = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            _, worker_log = worker.communicate()
    assert producer.returncode == 0, producer.stderr + "\nworker:\n" + worker_log[-3000:]
    return t.cast("dict[str, t.Any]", json.loads(producer.stdout))


def _copy_app(folder: Path) -> None:
    folder.mkdir()
    for name in APP_FILES:
        shutil.copy(EXAMPLES / name, folder / name)


def _changed_lines(before: Path, after: Path) -> list[tuple[str, str]]:
    old, new = before.read_text().splitlines(), after.read_text().splitlines()
    assert len(old) == len(new)
    return [(a, b) for a, b in zip(old, new) if a != b]


def test_the_example_app_gives_the_same_outcome_on_saqlite_and_on_saq(
    tmp_path: Path, redis: _Redis
) -> None:
    redis_url = f"{redis.url}/1"  # a database of its own: the export tests use 0
    _copy_app(tmp_path / "saqlite")
    on_saqlite = _run_app(tmp_path / "saqlite", "saqlite")
    assert on_saqlite == {
        "apply": 5,
        "map": [3, 7],
        "retried": {"status": "complete", "result": 3, "attempts": 3},
        "failed": {"status": "failed", "error": "RuntimeError: broken on purpose"},
        "report": {"result": "report ready", "progress_seen": [0.0, 0.5, 1.0]},
        "aborted": {"status": "aborted", "error": "user abort"},
        "scheduled": {"result": 30, "waited": True},
        "cron": ["tick"],
    }
    if sys.version_info < (3, 10):
        # SAQ 0.26 and redis-py make asyncio locks as the queue is made, at import; on
        # 3.9 those bind to another loop than the one `saq` and asyncio.run() start, and
        # fail ("attached to a different loop") when two tasks contend for one.
        pytest.skip("SAQ on Python 3.9 can't use a queue made at import under load")

    _copy_app(tmp_path / "saq")
    tasks = tmp_path / "saq" / "app_tasks.py"
    text = tasks.read_text()
    text = re.sub(r"^from saqlite import .*$", SAQ_IMPORT, text, count=1, flags=re.M)
    text = re.sub(r"^URL = .*$", f'URL = "{redis_url}"', text, count=1, flags=re.M)
    tasks.write_text(text)
    # Only the import and the URL differ; the producer is the same file.
    assert _changed_lines(EXAMPLES / "app_tasks.py", tasks) == [
        ("from saqlite import CronJob, Queue  # SAQ: from saq import CronJob, Queue", SAQ_IMPORT),
        ('URL = "sqlite:///app.db"  # SAQ: URL = "redis://localhost:6379"', f'URL = "{redis_url}"'),
    ]
    assert _changed_lines(EXAMPLES / "app_producer.py", tmp_path / "saq" / "app_producer.py") == []
    on_saq = _run_app(tmp_path / "saq", "saq")

    assert on_saq == on_saqlite


# =============================================================================
# saqlite export: a file's waiting jobs into SAQ
# =============================================================================

EXPORT_MARK = "saqlite export"


def _export(file: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "saqlite", "export", str(file), url, *args],
        env=_python_env(file.parent), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _saq_jobs(url: str, name: str, keys: list[str]) -> dict[str, t.Any]:
    """The jobs SAQ's own Queue holds under these keys."""
    saq = _import_saq()

    async def read() -> dict[str, t.Any]:
        queue = saq.Queue.from_url(url, name=name)
        try:
            found = await queue.jobs(keys)
            incomplete = await queue.count("incomplete")
        finally:
            await queue.disconnect()
        jobs = {job.key: job for job in found if job is not None}
        waiting = [job for job in jobs.values() if job.status.value in ("queued", "active")]
        assert incomplete == len(waiting), "SAQ's incomplete set and its jobs disagree"
        return jobs

    return asyncio.run(read())


def _file_rows(path: Path, name: str) -> dict[str, tuple[str, t.Optional[str], float]]:
    """key -> (status, worker_id, run_at) of a queue's rows in a saqlite file."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT key, status, worker_id, run_at FROM saqlite_jobs WHERE queue = ?", (name,)
        ).fetchall()
    return {key: (status, worker_id, run_at) for key, status, worker_id, run_at in rows}


def test_export_moves_waiting_and_scheduled_jobs_with_their_options_into_saq(
    tmp_path: Path, redis: _Redis
) -> None:
    file = tmp_path / "jobs.db"
    name, other = f"mail-{tmp_path.name}", f"other-{tmp_path.name}"
    later = int(time.time()) + 3600

    async def one_running_one_done() -> None:
        queue = Queue(file, name=name)
        try:
            await queue.enqueue("send", to="c", key="running")
            await queue.enqueue("send", to="d", key="done")
            await queue.dequeue()
            done = await queue.dequeue()
            assert done is not None and done.key == "done"
            await queue.finish(done, Status.COMPLETE, result=1)
        finally:
            await queue.disconnect()

    asyncio.run(one_running_one_done())
    with SyncQueue(file, name=name) as jobs:
        jobs.enqueue("send", to="a", key="full", timeout=7, heartbeat=3, retries=4, ttl=99,
                     meta={"m": 1}, priority=5, retry_delay=1.5, retry_backoff=True,
                     group_key="g")  # fmt: skip
        jobs.enqueue("send", to="b", key="later", scheduled=later)
    with SyncQueue(file, name=other) as jobs:
        jobs.enqueue("other", key="elsewhere")

    dry = _export(file, redis.url, "--queue", name, "--dry-run", "--json")
    assert dry.returncode == 1, dry.stderr  # a running job is left behind
    assert json.loads(dry.stdout)["queues"] == {name: {"to_move": 2, "moved": 0}}
    assert set(_file_rows(file, name)) == {"full", "later", "running", "done"}

    moved = _export(file, redis.url, "--queue", name, "--json")
    assert moved.returncode == 1
    report = json.loads(moved.stdout)
    assert report["queues"] == {name: {"moved": 2, "already_in_saq": 0}}
    assert report["running"] == [{"queue": name, "key": "running", "status": "active"}]
    assert "1 running job(s) were not moved: stop the workers first" in moved.stderr

    rows = _file_rows(file, name)
    assert {key: row[0] for key, row in rows.items()} == {"running": "active", "done": "complete"}
    assert set(_file_rows(file, other)) == {"elsewhere"}  # --queue: the other queue stays
    in_saq = _saq_jobs(redis.url, name, ["full", "later", "running", "done"])
    assert set(in_saq) == {"full", "later"}
    full = in_saq["full"]
    assert (full.function, full.kwargs, full.status.value) == ("send", {"to": "a"}, "queued")
    assert (full.timeout, full.heartbeat, full.retries, full.ttl) == (7, 3, 4, 99)
    assert (full.meta, full.priority, full.group_key) == ({"m": 1}, 5, "g")
    assert (full.retry_delay, full.retry_backoff) == (1.5, True)
    assert (in_saq["later"].kwargs, in_saq["later"].scheduled) == ({"to": "b"}, later)

    again = _export(file, redis.url, "--queue", name)  # nothing waiting is left
    assert "moved 0 job(s)" in again.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="pauses redis-server with SIGSTOP")
def test_an_export_killed_midway_loses_nothing_and_a_rerun_finishes_it(
    tmp_path: Path, redis: _Redis
) -> None:
    file = tmp_path / "jobs.db"
    name = f"bulk-{tmp_path.name}"
    with SyncQueue(file, name=name) as jobs:
        enqueued = jobs.enqueue_many(["work"] * 3000, n=1)
    keys = [job.key for job in enqueued if job is not None]
    assert len(keys) == 3000

    export = subprocess.Popen(
        [sys.executable, "-m", "saqlite", "export", str(file), redis.url, "-q"],
        env=_python_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # Midway: some slices moved (deleted from the file) and one taken, in flight.
        deadline = time.monotonic() + 60
        while True:
            rows = _file_rows(file, name)
            taken = sum(row[1] == EXPORT_MARK for row in rows.values())
            if taken and len(rows) < 3000:
                break
            assert export.poll() is None, "the export ended before the test could stop it"
            assert time.monotonic() < deadline, "the export made no progress in 60 s"
            time.sleep(0.002)
        redis.process.send_signal(signal.SIGSTOP)  # freeze it inside its slice
        try:
            export.kill()
            export.wait(30)
        finally:
            redis.process.send_signal(signal.SIGCONT)
    finally:
        if export.poll() is None:
            export.kill()
            export.wait(30)
    assert export.returncode != 0

    rows = _file_rows(file, name)
    in_saq = _saq_jobs(redis.url, name, keys)
    assert 0 < len(rows) < 3000 and in_saq
    assert set(keys) == set(rows) | set(in_saq)  # none lost
    for key in set(rows) & set(in_saq):  # in both: not runnable in the file
        status, worker_id, run_at = rows[key]
        assert (status, worker_id) == ("queued", EXPORT_MARK) and run_at > time.time() + 1e9

    rerun = _export(file, redis.url, "--json")
    assert rerun.returncode == 0, rerun.stderr
    assert _file_rows(file, name) == {}
    in_saq = _saq_jobs(redis.url, name, keys)
    assert set(in_saq) == set(keys)
    assert all(job.status.value == "queued" and job.kwargs == {"n": 1} for job in in_saq.values())
    outcome = json.loads(rerun.stdout)["queues"][name]
    assert outcome["moved"] + outcome["already_in_saq"] == len(rows)


def test_a_rerun_deletes_jobs_saq_already_has_and_sends_the_others(
    tmp_path: Path, redis: _Redis
) -> None:
    """The state a killed export leaves, made by hand: taken jobs, some already in SAQ
    (one of them even finished there): none is enqueued twice, none is lost."""
    saq = _import_saq()
    file = tmp_path / "jobs.db"
    name = f"rerun-{tmp_path.name}"
    with SyncQueue(file, name=name) as jobs:
        for key in ("sent", "sent-and-run", "not-sent", "fresh"):
            jobs.enqueue("work", key=key)
    with contextlib.closing(sqlite3.connect(file)) as conn, conn:
        conn.execute(
            "UPDATE saqlite_jobs SET worker_id = ?, run_at = 253402300799 "
            "WHERE queue = ? AND key != 'fresh'",
            (EXPORT_MARK, name),
        )

    async def in_saq_already() -> None:
        queue = saq.Queue.from_url(redis.url, name=name)
        try:
            await queue.enqueue("work", key="sent")
            job = await queue.enqueue("work", key="sent-and-run")
            await queue.finish(job, saq.Status.COMPLETE, result="ran in SAQ")
        finally:
            await queue.disconnect()

    asyncio.run(in_saq_already())
    rerun = _export(file, redis.url, "--queue", name)
    assert rerun.returncode == 0, rerun.stderr
    assert "moved 2 job(s) to SAQ (2 already there from an interrupted export)" in rerun.stdout
    assert _file_rows(file, name) == {}
    in_saq = _saq_jobs(redis.url, name, ["sent", "sent-and-run", "not-sent", "fresh"])
    assert {key: job.status.value for key, job in in_saq.items()} == {
        "sent": "queued", "sent-and-run": "complete", "not-sent": "queued", "fresh": "queued",
    }  # fmt: skip
    assert in_saq["sent-and-run"].result == "ran in SAQ"  # not run again


def test_export_without_saq_installed_says_how_and_exits_2(tmp_path: Path) -> None:
    file = tmp_path / "jobs.db"
    with SyncQueue(file) as jobs:
        jobs.enqueue("work", key="k")
    script = (
        "import sys; sys.modules['saq'] = None; import saqlite; "  # None: import fails
        f"sys.exit(saqlite.main(['export', {str(file)!r}, 'redis://localhost:6379']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=_python_env(tmp_path), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "SAQ is not installed here: pip install 'saq[redis]>=0.26'" in result.stderr
    assert set(_file_rows(file, "default")) == {"k"}  # nothing touched
    bad = _export(file, "http://localhost:8080")
    assert bad.returncode == 2
    assert "give SAQ's redis://HOST:PORT or postgres://USER@HOST/DB URL" in bad.stderr


def test_export_of_a_job_it_cannot_read_stops_and_leaves_the_slice_runnable(
    tmp_path: Path, redis: _Redis
) -> None:
    file = tmp_path / "jobs.db"
    name = f"unreadable-{tmp_path.name}"
    with SyncQueue(file, name=name) as jobs:
        jobs.enqueue("work", key="fine")
        jobs.enqueue("work", key="odd")
    with contextlib.closing(sqlite3.connect(file)) as conn, conn:
        conn.execute("UPDATE saqlite_jobs SET data = 'not json' WHERE key = 'odd'")
    before = _file_rows(file, name)
    result = _export(file, redis.url, "--queue", name)
    assert result.returncode == 1
    assert f"Cannot read job 'odd' of queue '{name}'" in result.stderr
    assert "nothing of this slice was moved" in result.stderr
    assert _file_rows(file, name) == before  # not taken: still runnable here
    assert _saq_jobs(redis.url, name, ["fine", "odd"]) == {}


def test_export_to_an_unreachable_saq_says_so_and_a_rerun_finishes(
    tmp_path: Path, redis: _Redis
) -> None:
    file = tmp_path / "jobs.db"
    name = f"unreachable-{tmp_path.name}"
    with SyncQueue(file, name=name) as jobs:
        for n in range(3):
            jobs.enqueue("work", key=f"k{n}", n=n)
    nobody = f"redis://127.0.0.1:{_free_port()}"
    failed = _export(file, nobody, "--queue", name)
    assert failed.returncode == 1
    assert f"SAQ at {nobody} failed while queue {name!r} was moving" in failed.stderr
    assert "run the same command again to finish" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert set(_file_rows(file, name)) == {"k0", "k1", "k2"}  # nothing lost
    rerun = _export(file, redis.url, "--queue", name)
    assert rerun.returncode == 0, rerun.stderr
    assert _file_rows(file, name) == {}
    assert set(_saq_jobs(redis.url, name, ["k0", "k1", "k2"])) == {"k0", "k1", "k2"}


def test_a_key_saq_has_waiting_already_stays_in_the_file_and_is_reported(
    tmp_path: Path, redis: _Redis
) -> None:
    saq = _import_saq()
    file = tmp_path / "jobs.db"
    name = f"conflict-{tmp_path.name}"
    with SyncQueue(file, name=name) as jobs:
        jobs.enqueue("work", key="taken", n=1)
        jobs.enqueue("work", key="free", n=2)

    async def waiting_in_saq() -> None:
        queue = saq.Queue.from_url(redis.url, name=name)
        try:
            await queue.enqueue("other", key="taken")
        finally:
            await queue.disconnect()

    asyncio.run(waiting_in_saq())
    result = _export(file, redis.url, "--queue", name)
    assert result.returncode == 1
    assert f"kept {name} taken: SAQ has another job waiting with this key" in result.stderr
    rows = _file_rows(file, name)
    assert set(rows) == {"taken"}
    status, worker_id, run_at = rows["taken"]
    assert (status, worker_id) == ("queued", None) and run_at < time.time() + 60  # runnable
    in_saq = _saq_jobs(redis.url, name, ["taken", "free"])
    assert (in_saq["taken"].function, in_saq["free"].kwargs) == ("other", {"n": 2})
