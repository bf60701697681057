"""Tests of saqlite's operations: every terminal command on a real file, the web page
over real HTTP, and in a real headless browser (skipped when none is installed)."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import typing as t
import urllib.parse
from pathlib import Path

import pytest

import saqlite as ops
from saqlite import Job, Queue, Status, Worker

HERE = Path(__file__).resolve().parent
CLI = "import sys, saqlite; sys.exit(saqlite.main(sys.argv[1:]))"
XSS = "<script>alert('x')</script>"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
TASKS = """
import os
from saqlite import Queue

async def ok(ctx, n=0):
    return {"n": n}

async def boom(ctx, **kwargs):
    raise RuntimeError("kaput")

settings = {
    "queue": Queue(os.environ["SAQLITE_TEST_DB"]),
    "functions": [ok, boom],
    "concurrency": 2,
    "timers": {"worker_info": 0.2},
}
"""

_R = t.TypeVar("_R")


def run(coroutine: t.Awaitable[_R]) -> _R:
    async def main() -> _R:
        return await coroutine

    return asyncio.run(main())


def env(**extra: str) -> dict[str, str]:
    variables = dict(os.environ)
    variables["PYTHONPATH"] = os.pathsep.join([str(HERE), variables.get("PYTHONPATH", "")])
    variables.update(extra)
    return variables


def cli(*args: str, cwd: t.Optional[Path] = None, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run a terminal command as a real process."""
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        capture_output=True, text=True, timeout=60, cwd=cwd, env=env(**extra), check=False,
    )  # fmt: skip


async def ok(ctx: t.Any, n: int = 0) -> dict[str, int]:
    return {"n": n}


async def boom(ctx: t.Any, **kwargs: t.Any) -> None:
    raise ValueError(f"bad input {XSS}")


async def make_jobs(path: Path) -> None:
    """3 complete, 1 failed (key 'bad'), 1 waiting ('waiting'), 1 scheduled ('later'),
    and 1 in queue 'emails'; and a live worker."""
    queue = Queue(path)
    emails = Queue(path, name="emails")
    try:
        for n in range(3):
            await queue.enqueue("ok", n=n, key=f"ok{n}")
            await asyncio.sleep(0.002)  # distinct enqueue times: a stable newest-first order
        await queue.enqueue("boom", key="bad", html=XSS)
        worker = Worker(queue, [ok, boom], burst=True, dequeue_timeout=0.2)
        await worker.start()
        await queue.enqueue("ok", key="waiting", n=9)
        await queue.enqueue("ok", key="later", scheduled=int(time.time()) + 3600)
        await emails.enqueue("send", key="mail1", to="a@example.com")
        await queue.worker_info("worker-1", "default", {"host": "test"}, ttl=600)
    finally:
        await queue.disconnect()
        await emails.disconnect()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.db"
    run(make_jobs(path))
    return path


def stored(path: Path, key: str, queue: str = "default") -> t.Optional[Job]:
    async def load() -> t.Optional[Job]:
        q = Queue(path, name=queue)
        try:
            return await q.job(key)
        finally:
            await q.disconnect()

    return run(load())


# -- terminal commands ---------------------------------------------------------------


def test_dispatch_leaves_settings_paths_to_the_worker_runner() -> None:
    assert ops._ops_main([]) is None
    assert ops._ops_main(["myapp.tasks.settings", "--web"]) is None
    assert ops._ops_main(["info.settings"]) is None  # a settings path has a dot


def test_info_shows_counts_per_queue_and_live_workers(db: Path) -> None:
    result = cli("info", str(db))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split() == [
        "QUEUE", "QUEUED", "SCHEDULED", "ACTIVE", "COMPLETE", "FAILED", "ABORTED", "WORKERS"
    ]  # fmt: skip
    assert lines[2].split() == ["default", "1", "1", "0", "3", "1", "0", "1"]
    assert lines[3].split() == ["emails", "1", "0", "0", "0", "0", "0", "0"]
    assert "1 live worker" in result.stdout
    assert "worker-1" in result.stdout

    result = cli("info", f"sqlite:///{db}", "--json", "--queue", "emails")
    data = json.loads(result.stdout)
    assert data["queues"] == [{"name": "emails", "queued": 1, "scheduled": 0, "active": 0,
                               "complete": 0, "failed": 0, "aborted": 0, "workers": 0}]  # fmt: skip
    assert data["workers"] == []


def test_jobs_lists_newest_first_with_filters_and_pages(db: Path) -> None:
    result = cli("jobs", str(db))
    assert result.returncode == 0, result.stderr
    keys = [line.split()[1] for line in result.stdout.splitlines()[1:-1]]
    assert keys == ["mail1", "later", "waiting", "bad", "ok2", "ok1", "ok0"]
    assert "ValueError: bad input <script>" in result.stdout

    result = cli("jobs", str(db), "--status", "failed")
    assert [line.split()[1] for line in result.stdout.splitlines()[1:-1]] == ["bad"]
    result = cli("jobs", str(db), "--function", "ok", "--status", "complete,queued",
                 "--queue", "default", "--limit", "2")  # fmt: skip
    assert [line.split()[1] for line in result.stdout.splitlines()[1:-1]] == ["later", "waiting"]
    assert result.stdout.splitlines()[-1].startswith(
        "page 1: jobs 1-2; more with --page 2 (or --after "
    )
    result = cli("jobs", str(db), "--function", "ok", "--limit", "2", "--page", "3", "--json")
    data = json.loads(result.stdout)
    assert [job["key"] for job in data["jobs"]] == ["ok0"]
    assert data["more"] is False
    assert data["jobs"][0]["result"] == {"n": 0}

    result = cli("jobs", str(db), "--status", "sleeping")
    assert result.returncode == 2
    assert "Status 'sleeping' is not allowed here" in result.stderr


def test_job_shows_one_job_in_full(db: Path) -> None:
    result = cli("job", str(db), "bad")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "function   boom" in out
    assert "status     failed" in out
    assert "attempts   1 of 1" in out
    assert "progress   [--------------------] 0%" in out
    assert '"html": "<script>alert(\'x\')</script>"' in out
    assert "Traceback (most recent call last)" in out
    assert "ValueError: bad input <script>" in out

    async def half_done() -> None:
        queue = Queue(db)
        job = await queue.job("waiting")
        assert job is not None
        await queue.update(job, progress=0.5, meta={"step": "upload"})
        await queue.disconnect()

    run(half_done())
    out = cli("job", str(db), "saqlite:job:default:waiting").stdout
    assert "progress   [##########----------] 50%" in out
    assert '"step": "upload"' in out
    data = json.loads(cli("job", str(db), "ok1", "--json").stdout)
    assert data["status"] == "complete"
    assert data["result"] == {"n": 1}
    assert data["durations_ms"]["total"] >= 0


def test_job_missing_or_ambiguous(db: Path) -> None:
    result = cli("job", str(db), "nope")
    assert result.returncode == 1
    assert f"No job 'nope' in {db}" in result.stderr

    async def same_key_elsewhere() -> None:
        other = Queue(db, name="other")
        await other.enqueue("ok", key="waiting")
        await other.disconnect()

    run(same_key_elsewhere())
    result = cli("job", str(db), "waiting")
    assert result.returncode == 2  # a usage error: the key needs --queue
    assert "Key 'waiting' is in several queues (default, other): add --queue" in result.stderr
    assert cli("job", str(db), "waiting", "--queue", "other").returncode == 0


def test_jobs_another_dump_wrote_still_show_key_status_and_error(tmp_path: Path) -> None:
    async def scrambled() -> None:
        queue = Queue(tmp_path / "s.db", dump=lambda d: json.dumps(d)[::-1], load=lambda s: {})
        job = await queue.enqueue("secret", key="s1")
        assert job is not None
        await queue.finish(job, Status.FAILED, error="it broke")
        await queue.disconnect()

    run(scrambled())
    result = cli("jobs", str(tmp_path / "s.db"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split() == [
        "default", "s1", "?", "failed", "0", "-", "-", "it", "broke"
    ]  # fmt: skip


def test_terminal_output_escapes_control_characters(tmp_path: Path) -> None:
    async def evil() -> None:
        queue = Queue(tmp_path / "e.db")
        job = await queue.enqueue("f", key="k")
        assert job is not None
        await queue.finish(job, Status.FAILED, error="Boom \x1b[2J\x1b[31mred")
        await queue.disconnect()

    run(evil())
    out = (
        cli("job", str(tmp_path / "e.db"), "k").stdout + cli("jobs", str(tmp_path / "e.db")).stdout
    )
    assert "\x1b" not in out
    assert "Boom \\x1b[2J\\x1b[31mred" in out


def test_retry_one_job_puts_it_back_in_the_queue(db: Path) -> None:
    result = cli("retry", str(db), "bad")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "retried default bad: now queued\nretried 1 job\n"
    job = stored(db, "bad")
    assert job is not None
    assert job.status == Status.QUEUED
    assert job.error == "retried by saqlite retry"

    result = cli("retry", str(db), "ok1", "nope")
    assert result.returncode == 1
    assert "skipped default ok1: it is complete; only failed or aborted jobs" in result.stderr
    assert "No job 'nope'" in result.stderr


def test_retry_all_matching_a_filter(db: Path) -> None:
    async def fail_more() -> None:
        queue = Queue(db)
        for n in range(3):
            job = await queue.enqueue("boom", key=f"x{n}")
            assert job is not None
            await queue.finish(job, Status.FAILED, error="nope")
        job = await queue.enqueue("other", key="y")
        assert job is not None
        await queue.finish(job, Status.ABORTED, error="stop")
        await queue.disconnect()

    run(fail_more())
    result = cli("retry", str(db), "--all", "--function", "boom", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert sorted(job["key"] for job in data["retried"]) == ["bad", "x0", "x1", "x2"]
    y = stored(db, "y")
    assert y is not None and y.status == Status.ABORTED
    result = cli("retry", str(db), "--all", "--status", "aborted")
    assert result.stdout == "retried 1 job\n"
    result = cli("retry", str(db), "--all", "--status", "complete")
    assert result.returncode == 2
    assert "Status 'complete' is not allowed here: use failed, aborted" in result.stderr
    result = cli("retry", str(db), "bad", "--all")
    assert "Name the jobs by key, or give --all" in result.stderr


def test_abort_waiting_and_running_jobs(db: Path) -> None:
    result = cli("abort", str(db), "waiting", "--error", "not needed")
    assert result.returncode == 0, result.stderr
    assert "aborted default waiting: now aborted" in result.stdout
    job = stored(db, "waiting")
    assert job is not None
    assert (job.status, job.error) == (Status.ABORTED, "not needed")

    async def claim() -> None:
        queue = Queue(db, name="emails")
        assert await queue.dequeue(timeout=1) is not None
        await queue.disconnect()

    run(claim())
    result = cli("abort", str(db), "--all", "--queue", "emails")
    assert result.stdout == "aborted 1 job\n"
    mail = stored(db, "mail1", "emails")
    assert mail is not None and mail.status == Status.ABORTING  # its worker finishes it
    result = cli("abort", str(db), "ok0")
    assert result.returncode == 1
    assert "only queued or active jobs can be aborted" in result.stderr


def test_purge_deletes_finished_jobs_older_than_an_age(db: Path) -> None:
    result = cli("purge", str(db), "--older-than", "1h")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("deleted 0 complete/failed/aborted jobs finished before")
    result = cli("purge", str(db), "--older-than", "0", "--dry-run", "--json")
    assert json.loads(result.stdout) == {"purged": 0, "matched": 4, "dry_run": True}
    result = cli("purge", str(db), "--older-than", "0s", "--status", "failed")
    assert result.stdout.startswith("deleted 1 failed job finished before")
    assert stored(db, "bad") is None
    result = cli("purge", f"sqlite:///{db}", "--older-than", "0")
    assert result.stdout.startswith("deleted 3 complete/failed/aborted jobs")
    assert stored(db, "waiting") is not None  # unfinished jobs stay
    result = cli("purge", str(db), "--older-than", "soon")
    assert "Age 'soon' is not valid: use a number with s, m, h, d or w" in result.stderr


def test_purge_of_many_jobs_goes_in_batches_with_progress(tmp_path: Path) -> None:
    path = tmp_path / "many.db"

    async def many() -> None:
        queue = Queue(path)
        jobs = await queue.enqueue_many([Job("f", ttl=0) for _ in range(1200)])
        await asyncio.gather(*(queue.finish(job, Status.COMPLETE) for job in jobs if job))
        await queue.disconnect()

    run(many())
    stream = io.StringIO()
    progress = ops._Progress("purge", stream=stream, interval=0)
    later = int(time.time() * 1000) + 1000

    async def purge() -> int:
        store = ops._open_store(str(path))
        try:
            return await ops._purge(store, ops._JobFilter(statuses=ops._FINISHED), later, progress)
        finally:
            await store.close()

    assert run(purge()) == 1200
    progress.close()
    lines = stream.getvalue().splitlines()
    first = re.match(r"purge: (\d+)/1200 \[", lines[0])  # a slice's worth, then more
    assert first is not None and 0 < int(first.group(1)) < 1200
    assert "purge: 1200/1200 [####################] 100%" in lines[-1]


def test_progress_is_quiet_for_short_operations_off_a_terminal() -> None:
    stream = io.StringIO()
    progress = ops._Progress("retry", 10, stream=stream, interval=60)
    progress.update(5)
    progress.close()
    assert stream.getvalue() == ""
    progress = ops._Progress("retry", 10, stream=stream, interval=0, enabled=False)
    progress.update(5)
    progress.close()
    assert stream.getvalue() == ""


def test_commands_refuse_missing_or_foreign_files(tmp_path: Path) -> None:
    result = cli("info", str(tmp_path / "none.db"))
    assert result.returncode == 2
    assert "none.db does not exist: give the path or sqlite:/// URL" in result.stderr
    assert not (tmp_path / "none.db").exists()
    (tmp_path / "text.db").write_text("hello " * 200)
    assert "is not a SQLite database" in cli("jobs", str(tmp_path / "text.db")).stderr
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.close()
    result = cli("info", str(tmp_path / "other.db"))
    assert "is not a saqlite database: it has no saqlite_jobs table" in result.stderr


def write_tasks(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(TASKS)


def test_burst_runs_the_jobs_and_exits_nonzero_on_failure(tmp_path: Path) -> None:
    write_tasks(tmp_path)
    path = tmp_path / "ci.db"

    async def enqueue(functions: list[str]) -> None:
        queue = Queue(path)
        for function in functions:
            await queue.enqueue(function, retries=1)
        await queue.disconnect()

    run(enqueue(["ok", "ok", "ok"]))
    result = cli(
        "burst", "tasks.settings", "--wait", "0.2", cwd=tmp_path, SAQLITE_TEST_DB=str(path)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"burst ok on {path}: 3 jobs in ")
    assert result.stdout.endswith("s: 3 complete, 0 failed, 0 aborted, 0 retried, 0 pending\n")

    run(enqueue(["ok", "boom"]))
    result = cli(
        "burst", "tasks.settings", "--wait", "0.2", cwd=tmp_path, SAQLITE_TEST_DB=str(path)
    )
    assert result.returncode == 1
    assert len(result.stdout.splitlines()) == 1
    assert result.stdout.startswith(f"burst FAILED on {path}: 2 jobs in ")
    assert "1 complete, 1 failed, 0 aborted" in result.stdout
    assert "RuntimeError: kaput" in result.stderr

    run(enqueue(["ok", "ok", "ok"]))
    result = cli("burst", "tasks.settings", "--max-jobs", "2", "--json", cwd=tmp_path,
                 SAQLITE_TEST_DB=str(path))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["complete"] == 2


# -- the web page over HTTP ------------------------------------------------------------


class Server:
    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url

    def request(
        self,
        path: str,
        method: str = "GET",
        form: t.Optional[dict[str, str]] = None,
        headers: t.Optional[dict[str, str]] = None,
    ) -> tuple[int, dict[str, str], str]:
        address = urllib.parse.urlsplit(self.url)
        conn = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
        body = urllib.parse.urlencode(form) if form is not None else None
        all_headers = {"content-type": "application/x-www-form-urlencoded", **(headers or {})}
        try:
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            text = response.read().decode()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, text
        finally:
            conn.close()

    def csrf(self, headers: t.Optional[dict[str, str]] = None) -> dict[str, str]:
        """The CSRF field a form POST carries (from /api/csrf)."""
        return {"csrf": json.loads(self.request("/api/csrf", headers=headers)[2])["token"]}


def start(args: list[str], cwd: t.Optional[Path] = None, **extra: str) -> Server:
    """Start a server process and read the URL it prints."""
    process = subprocess.Popen(
        [sys.executable, "-c", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=cwd, env=env(**extra),
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    if "serving the page at" not in line:
        process.kill()
        _, err = process.communicate()
        pytest.fail(f"the server did not start: {line}{err}")
    return Server(process, line.split()[-1])


def stop(server: Server) -> int:
    server.process.send_signal(signal.SIGINT)
    try:
        code = server.process.wait(timeout=20)
    finally:
        server.process.kill()
        server.process.communicate()
    return code


@pytest.fixture
def web(db: Path) -> t.Iterator[Server]:
    server = start([CLI, "web", str(db), "--port", "0", "--refresh", "0.5"])
    yield server
    assert stop(server) == 0


def test_web_pages_show_queues_workers_jobs_and_escape_every_value(web: Server) -> None:
    status, headers, page = web.request("/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'nonce-" in headers["content-security-policy"]
    assert '<a href="/jobs?queue=default">default</a>' in page
    assert '<a href="/jobs?queue=default&amp;status=failed">1</a>' in page
    assert "worker-1" in page

    status, _, page = web.request("/jobs?status=failed")
    assert status == 200
    assert '<a href="/job?queue=default&amp;key=bad">bad</a>' in page
    assert "ValueError: bad input &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert page.count("<script") == 1  # the page's own

    status, _, page = web.request("/job?queue=default&key=bad")
    assert status == 200
    assert "Traceback (most recent call last)" in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert page.count("<script") == 1
    assert '<button type="submit" id="retry">Retry</button>' in page
    assert 'id="abort"' not in page

    status, _, page = web.request("/jobs?queue=default&function=ok&limit=2&page=2")
    assert ">waiting<" not in page and ">ok2<" in page
    assert 'rel="prev"' in page and 'rel="next"' in page
    assert web.request("/job?queue=default&key=gone")[0] == 404
    assert web.request("/nowhere")[0] == 404
    assert web.request("/jobs?page=x")[0] == 400


def test_web_retry_and_abort_are_post_forms(web: Server, db: Path) -> None:
    assert web.request("/retry?queue=default&key=bad")[0] == 405
    cross_site = {"origin": "http://evil.example", "host": "127.0.0.1"}
    form = {"queue": "default", "key": "bad"}
    assert web.request("/retry", "POST", form, cross_site)[0] == 403
    job = stored(db, "bad")
    assert job is not None and job.status == Status.FAILED

    assert web.request("/retry", "POST", form)[0] == 403  # no CSRF token
    form.update(web.csrf())
    status, headers, _ = web.request("/retry", "POST", form)
    assert status == 303
    assert headers["location"] == "/job?queue=default&key=bad&done=retried"
    job = stored(db, "bad")
    assert job is not None and job.status == Status.QUEUED
    page = web.request(headers["location"])[2]
    assert "The job is back in the queue." in page
    assert 'id="abort"' in page

    status, headers, _ = web.request("/abort", "POST", form)
    assert headers["location"].endswith("done=aborted")
    job = stored(db, "bad")
    assert job is not None and job.status == Status.ABORTED
    status, headers, _ = web.request("/abort", "POST", form)
    assert headers["location"].endswith("done=not-aborted")


def test_web_json_api(web: Server) -> None:
    status, headers, body = web.request("/api/queues")
    assert headers["content-type"] == "application/json"
    data = json.loads(body)
    assert [(q["name"], q["failed"]) for q in data["queues"]] == [("default", 1), ("emails", 0)]
    assert data["workers"][0]["id"] == "worker-1"
    data = json.loads(web.request("/api/jobs?status=failed,aborted")[2])
    assert [job["key"] for job in data["jobs"]] == ["bad"]
    data = json.loads(web.request("/api/job?queue=emails&key=mail1")[2])
    assert data["kwargs"] == {"to": "a@example.com"}
    status, _, body = web.request("/api/job?queue=emails&key=nope")
    assert status == 404
    assert "No job 'nope'" in json.loads(body)["error"]


def test_web_basic_auth(db: Path) -> None:
    server = start([CLI, "web", str(db), "--port", "0"], AUTH_USER="ops", AUTH_PASSWORD="s3cret")
    try:
        status, headers, _ = server.request("/")
        assert status == 401
        assert headers["www-authenticate"].startswith('Basic realm="saqlite"')
        assert server.request("/api/queues")[0] == 401
        wrong = base64.b64encode(b"ops:guess").decode()
        assert server.request("/", headers={"authorization": f"Basic {wrong}"})[0] == 401
        right = base64.b64encode(b"ops:s3cret").decode()
        assert server.request("/", headers={"authorization": f"Basic {right}"})[0] == 200
        form = {"queue": "default", "key": "bad"}
        assert server.request("/retry", "POST", form)[0] == 401
    finally:
        assert stop(server) == 0


def test_web_page_binds_localhost_by_default(web: Server) -> None:
    assert web.url.startswith("http://127.0.0.1:")


def test_asgi_app_mounted_below_a_prefix(db: Path) -> None:
    app = ops.web_app(f"sqlite:///{db}")
    sent: list[t.MutableMapping[str, t.Any]] = []

    async def call(scope: dict[str, t.Any], body: bytes = b"") -> None:
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> t.MutableMapping[str, t.Any]:
            return messages.pop(0)

        async def send(message: t.MutableMapping[str, t.Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)

    def scope(method: str, path: str, query: bytes = b"") -> dict[str, t.Any]:
        return {"type": "http", "method": method, "path": path, "root_path": "/saqlite",
                "query_string": query, "headers": [(b"host", b"testserver")]}  # fmt: skip

    async def requests() -> None:
        try:
            await call(scope("GET", "/saqlite/jobs", b"status=failed"))  # Starlette >= 0.33
            await call(scope("GET", "/jobs", b"status=failed"))  # path below the mount
            page = sent[1]["body"].decode()
            token = page.split('name="csrf-token" content="')[1].split('"')[0]
            await call(
                scope("POST", "/saqlite/retry"), f"queue=default&key=bad&csrf={token}".encode()
            )
        finally:
            await app.close()

    run(requests())
    pages = [m["body"].decode() for m in sent if m["type"] == "http.response.body"]
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200, 200, 303]
    assert pages[0] == pages[1] or pages[0].split("nonce")[0] == pages[1].split("nonce")[0]
    assert '<a href="/saqlite/job?queue=default&amp;key=bad">bad</a>' in pages[0]
    assert (b"location", b"/saqlite/job?queue=default&key=bad&done=retried") in sent[4]["headers"]


def test_asgi_lifespan_closes_the_file(db: Path) -> None:
    app = ops.web_app(str(db))
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> t.MutableMapping[str, t.Any]:
        return messages.pop(0)

    async def send(message: t.MutableMapping[str, t.Any]) -> None:
        sent.append(message["type"])

    run(app({"type": "lifespan"}, receive, send))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_worker_with_web_page(tmp_path: Path) -> None:
    write_tasks(tmp_path)
    path = tmp_path / "app.db"
    code = "import sys, saqlite; sys.exit(saqlite._serve_web_with_worker('tasks.settings', port=0))"
    server = start([code], cwd=tmp_path, SAQLITE_TEST_DB=str(path))
    try:
        deadline = time.monotonic() + 20
        while not json.loads(server.request("/api/queues")[2])["workers"]:
            assert time.monotonic() < deadline, "the worker did not register"
            time.sleep(0.1)

        async def apply() -> t.Any:
            queue = Queue(path)
            try:
                return await queue.apply("ok", n=7, timeout=20)
            finally:
                await queue.disconnect()

        assert run(apply()) == {"n": 7}
        page = server.request("/")[2]
        assert "<td>default</td>" in page  # the worker's row
    finally:
        assert stop(server) == 0


# -- the page in a real browser ----------------------------------------------------------


def chromium() -> str:
    """The browser's path, or skip the test with the reason."""
    try:
        import playwright.sync_api  # noqa: F401, PLC0415
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    path = os.environ.get("SAQLITE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return path


async def enqueue_mail(path: Path) -> None:
    queue = Queue(path, name="emails")
    await queue.enqueue("send", to="b@example.com")
    await queue.disconnect()


def test_page_in_a_headless_browser(web: Server, db: Path) -> None:
    executable = chromium()
    from playwright.sync_api import Dialog, expect, sync_playwright  # noqa: PLC0415

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            dialogs: list[str] = []

            def on_dialog(dialog: Dialog) -> None:  # an alert() would mean a script ran
                dialogs.append(dialog.message)
                dialog.dismiss()

            page.on("dialog", on_dialog)
            page.goto(web.url)
            assert "default" in page.inner_text("table#queues")
            assert "worker-1" in page.inner_text("table#workers")
            emails_queued = "#queues tr:nth-child(3) td:nth-child(2)"
            assert page.inner_text(emails_queued) == "1"
            with concurrent.futures.ThreadPoolExecutor(1) as pool:  # playwright runs a loop here
                pool.submit(run, enqueue_mail(db)).result()
            expect(page.locator(emails_queued)).to_have_text("2", timeout=10_000)  # refreshed

            page.click("header >> text=Failed")
            page.click("table#jobs >> text=bad")
            page.wait_for_selector("pre.error")
            error = page.inner_text("pre.error")
            assert "Traceback (most recent call last)" in error
            assert f"ValueError: bad input {XSS}" in error
            assert XSS in page.inner_text("pre.kwargs")
            assert page.locator("script").count() == 1
            assert page.inner_text("#status") == "failed"

            page.click("button#retry")
            page.wait_for_selector("p.notice")
            assert "The job is back in the queue." in page.inner_text("p.notice")
            assert page.inner_text("#status") == "queued"
            assert dialogs == []
        finally:
            browser.close()
    job = stored(db, "bad")
    assert job is not None
    assert job.status == Status.QUEUED


# -- issue 10: exit codes, settings, logging, clear errors --------------------------------

LOGGING_TASKS = """
import logging, os
from saqlite import Queue

log = logging.getLogger("tasks")

async def chatty(ctx):
    log.debug("debug-from-the-job")
    log.info("info-from-the-job")
    log.error("error-from-the-job")

settings = {"queue": Queue(os.environ["SAQLITE_TEST_DB"]), "functions": [chatty]}
"""


def test_log_levels_quiet_default_verbose(tmp_path: Path) -> None:
    (tmp_path / "chat.py").write_text(LOGGING_TASKS)
    path = tmp_path / "log.db"

    def burst(*flags: str) -> str:
        async def enqueue() -> None:
            queue = Queue(path)
            await queue.enqueue("chatty")
            await queue.disconnect()

        run(enqueue())
        result = cli("burst", "chat.settings", "--wait", "0.1", *flags, cwd=tmp_path,
                     SAQLITE_TEST_DB=str(path))  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stderr

    quiet = burst("-q")
    assert "error-from-the-job" in quiet
    assert "info-from-the-job" not in quiet
    assert " DEBUG " not in quiet
    default = burst()
    assert "info-from-the-job" in default
    assert "debug-from-the-job" not in default
    verbose = burst("-v")
    assert "debug-from-the-job" in verbose
    assert " DEBUG aiosqlite" not in verbose
    assert " DEBUG aiosqlite" in burst("-vv")


def test_exit_codes_tell_usage_errors_from_failed_jobs(db: Path, tmp_path: Path) -> None:
    usage = [
        ("jobs", str(db), "--status", "sleeping"),
        ("jobs", str(db), "--limit", "0"),
        ("jobs", str(db), "--page", str(10**30)),
        ("jobs", str(tmp_path / "none.db")),
        ("retry", str(db), "bad", "--all"),
        ("purge", str(db), "--older-than", "soon"),
        ("burst", "no_such_module.settings"),
        ("info", "--no-such-option", str(db)),
    ]
    for args in usage:
        result = cli(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
    assert cli("retry", str(db), "nope").returncode == 1
    assert cli("job", str(db), "nope").returncode == 1
    assert "exit codes, the same for every command" in cli("-h").stdout


def test_jobs_page_out_of_range_is_a_clear_error(db: Path) -> None:
    result = cli("jobs", str(db), "--page", str(10**30))
    assert f"--page {10**30} is out of range: give 1 to 1000000000" in result.stderr
    result = cli("jobs", str(db), "--limit", "-5")
    assert "--limit -5 is out of range: give 1 to 1000" in result.stderr


def test_a_folder_and_a_locked_file_are_named_as_such(tmp_path: Path, db: Path) -> None:
    result = cli("info", str(tmp_path))
    assert result.returncode == 2
    assert f"{tmp_path} is a folder: give the path of a saqlite database file" in result.stderr
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        result = cli("info", str(db))
    finally:
        holder.close()
    assert result.returncode == 2, result.stderr
    assert f"{db} is locked by another connection" in result.stderr
    assert "not a SQLite database" not in result.stderr


def test_a_job_scheduled_in_the_far_future_is_shown(tmp_path: Path) -> None:
    path = tmp_path / "far.db"

    async def far() -> None:
        queue = Queue(path)
        await queue.enqueue("ok", key="far", scheduled=1)
        await queue.disconnect()

    run(far())
    # Year ~11476: enqueue now refuses it (past 9999), but an older saqlite took it.
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE saqlite_jobs SET run_at = 300000000000,"
            " data = json_set(data, '$.scheduled', 300000000000) WHERE key = 'far'"
        )
    conn.close()
    result = cli("job", str(path), "far")
    assert result.returncode == 0, result.stderr
    assert "scheduled  300000000000 s after 1970-01-01" in result.stdout
    assert cli("jobs", str(path)).returncode == 0
    server = start([CLI, "web", str(path), "--port", "0"])
    try:
        status, _, page = server.request("/job?queue=default&key=far")
        assert status == 200, page
        assert "300000000000 s after 1970-01-01" in page
        for bad in ("/jobs?page=99999999999999999999999999", "/jobs?db=%C2%B2", "/job?db=1e9"):
            status, _, page = server.request(bad)
            assert status in (200, 400, 404), (bad, status)
            assert "<html" in page, bad
    finally:
        assert stop(server) == 0


IN_PACKAGE_SETTINGS = """
import os
from saqlite import Queue

async def ok(ctx):
    return "ok"

settings = {"queue": Queue(os.environ["SAQLITE_TEST_DB"]), "functions": [ok]}
"""


def test_settings_may_name_a_module_holding_a_settings_dict(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "jobs.py").write_text(IN_PACKAGE_SETTINGS)
    path = tmp_path / "mod.db"

    async def enqueue() -> None:
        queue = Queue(path)
        await queue.enqueue("ok")
        await queue.disconnect()

    for name in ("app.jobs", "app.jobs.settings"):
        run(enqueue())
        result = cli("burst", name, "--wait", "0.1", cwd=tmp_path, SAQLITE_TEST_DB=str(path))
        assert result.returncode == 0, (name, result.stderr)
        assert "1 complete" in result.stdout
    result = cli("burst", "app.nothing", cwd=tmp_path, SAQLITE_TEST_DB=str(path))
    assert result.returncode == 2
    assert (
        "Cannot find the settings 'app.nothing' (module 'app' has no 'nothing'; "
        "No module named 'app.nothing'): give module.attribute" in result.stderr
    )
    assert "Traceback" not in result.stderr
    (tmp_path / "app" / "broken.py").write_text("import no_such_dependency\nsettings = {}\n")
    for args in (["burst", "app.broken"], ["app.broken", "--check"]):
        result = cli(*args, cwd=tmp_path, SAQLITE_TEST_DB=str(path))
        assert result.returncode == 2, result.stderr
        assert "import no_such_dependency" in result.stderr  # where, in the traceback
        assert "importing the settings 'app.broken' raised ModuleNotFoundError" in result.stderr


def test_importing_settings_adds_the_working_directory_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "once_settings.py").write_text("settings = {'functions': []}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    for _ in range(3):
        assert ops._import_settings("once_settings") == {"functions": []}
    assert sys.path.count(str(tmp_path)) == 1


def raw_rows(path: Path) -> list[tuple[t.Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT * FROM saqlite_jobs ORDER BY key").fetchall()
    finally:
        conn.close()


def test_jobs_another_dump_wrote_are_never_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def scrambled() -> None:
        queue = Queue(path, dump=lambda d: json.dumps(d)[::-1], load=lambda s: json.loads(s[::-1]))
        failed = await queue.enqueue("secret", key="failed1", token="x")
        assert failed is not None
        await queue.finish(failed, Status.FAILED, error="it broke")
        await queue.enqueue("secret", key="waiting1", token="y")
        await queue.disconnect()

    run(scrambled())
    before = raw_rows(path)
    result = cli("retry", str(path), "failed1")
    assert result.returncode == 1
    assert "Job 'failed1' was stored with a custom dump/load" in result.stderr
    assert "retry it from your code (queue.retry(job))" in result.stderr
    result = cli("abort", str(path), "waiting1")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "abort it from your code" in result.stderr
    result = cli("retry", str(path), "--all", "--json")
    assert result.returncode == 1
    assert [job["key"] for job in json.loads(result.stdout)["refused"]] == ["failed1"]
    assert raw_rows(path) == before

    server = start([CLI, "web", str(path), "--port", "0"])
    try:
        status, _, page = server.request("/job?queue=default&key=failed1")
        assert status == 200
        assert "was stored with a custom dump/load" in page
        assert 'id="retry"' not in page
        form = {"queue": "default", "key": "failed1", **server.csrf()}
        status, _, page = server.request("/retry", "POST", form=form)
        assert status == 409
        assert "was stored with a custom dump/load" in page
    finally:
        assert stop(server) == 0
    assert raw_rows(path) == before


def test_page_answers_only_to_host_names_it_serves(db: Path) -> None:
    server = start([CLI, "web", str(db), "--port", "0", "--allowed-host", "jobs.example"])
    port = urllib.parse.urlsplit(server.url).port
    try:
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
            status, _, text = server.request("/api/jobs", headers={"host": host})
            assert status == 421, host
            assert f"Host {host!r} is not served here (a defence against DNS rebinding)" in text
            assert "--allowed-host NAME" in text
        status, _, _ = server.request("/retry", "POST", {"key": "bad"}, {"host": "evil.example"})
        assert status == 421
        for host in (f"127.0.0.1:{port}", "localhost", f"[::1]:{port}", "jobs.example:80",
                     "JOBS.example", "app.localhost"):  # fmt: skip
            assert server.request("/api/jobs", headers={"host": host})[0] == 200, host
    finally:
        assert stop(server) == 0
    server = start([CLI, "web", str(db), "--port", "0"], AUTH_PASSWORD="s3cret")
    try:  # a password guards the page: a rebinding page cannot send it
        assert server.request("/", headers={"host": "jobs.example"})[0] == 401
    finally:
        assert stop(server) == 0


def test_asgi_app_checks_hosts_at_the_root_and_leaves_them_to_a_mounting_app(db: Path) -> None:
    def status_of(app: t.Any, host: bytes, root_path: str = "") -> int:
        sent: list[t.MutableMapping[str, t.Any]] = []

        async def receive() -> t.MutableMapping[str, t.Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: t.MutableMapping[str, t.Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http", "method": "GET", "path": root_path + "/api/queues",
            "root_path": root_path, "query_string": b"", "headers": [(b"host", host)],
        }  # fmt: skip

        async def call() -> None:
            try:
                await app(scope, receive, send)
            finally:
                await app.close()

        run(call())
        return int(sent[0]["status"])

    assert status_of(ops.web_app(str(db)), b"rebound.example") == 421
    assert status_of(ops.web_app(str(db)), b"rebound.example", "/saqlite") == 200
    assert (
        status_of(ops.web_app(str(db), allowed_hosts=["rebound.example"]), b"rebound.example")
        == 200
    )
    assert status_of(ops.web_app(str(db), allowed_hosts=[".example"]), b"a.example") == 200
    assert status_of(ops.web_app(str(db), allowed_hosts=["x.example"]), b"y.example", "/m") == 421


SLOW_LOAD_SETTINGS = """
import json, os, time
from pathlib import Path
from saqlite import Queue

def load(text):
    folder = Path(os.environ["SAQLITE_TEST_DIR"])
    (folder / "loading").touch()
    deadline = time.monotonic() + 60
    while not (folder / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # blocks the loop that reads the page
    return json.loads(text)

settings = {"queue": Queue(os.environ["SAQLITE_TEST_DB"], name="slowq", load=load)}
"""


def test_worker_keeps_running_jobs_while_its_page_is_busy(tmp_path: Path) -> None:
    write_tasks(tmp_path)
    (tmp_path / "slow.py").write_text(SLOW_LOAD_SETTINGS)
    path = tmp_path / "busy.db"

    async def enqueue_slow() -> None:
        queue = Queue(path, name="slowq")
        await queue.enqueue("anything", key="heavy")
        await queue.disconnect()

    run(enqueue_slow())
    args = [CLI, "tasks.settings", "--web", "--port", "0", "-e", "slow.settings"]
    server = start(args, cwd=tmp_path, SAQLITE_TEST_DB=str(path), SAQLITE_TEST_DIR=str(tmp_path))
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        busy = pool.submit(server.request, "/jobs?queue=slowq")
        deadline = time.monotonic() + 30
        while not (tmp_path / "loading").exists():
            assert time.monotonic() < deadline, "the page did not start loading"
            time.sleep(0.05)

        async def apply() -> t.Any:
            queue = Queue(path)
            try:
                return await queue.apply("ok", n=3, timeout=20)
            finally:
                await queue.disconnect()

        assert run(apply()) == {"n": 3}  # the worker ran it while the page was stuck
        assert not busy.done()
        (tmp_path / "release").touch()
        assert busy.result(timeout=30)[0] == 200
    finally:
        (tmp_path / "release").touch()
        pool.shutdown()
        assert stop(server) == 0


def test_a_listing_of_big_jobs_stays_small(tmp_path: Path) -> None:
    path = tmp_path / "big.db"
    big = "x" * (5 * 1024 * 1024)

    async def enqueue_big() -> None:
        queue = Queue(path)
        for n in range(4):
            job = await queue.enqueue("ok", key=f"big{n}", blob=big)
            assert job is not None
            await queue.finish(job, Status.FAILED, error="E" * 1_000_000 + "\nValueError: last")
        await queue.enqueue("ok", key="small", n=1)
        await queue.disconnect()

    run(enqueue_big())
    result = cli("jobs", str(path), "--json")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) < 200_000
    jobs = {job["key"]: job for job in json.loads(result.stdout)["jobs"]}
    assert jobs["big0"]["cut"] == ["kwargs"]
    assert jobs["big0"]["kwargs"].startswith("(not read for a listing: ")
    assert jobs["big0"]["status"] == "failed" and jobs["big0"]["function"] == "ok"
    assert jobs["small"]["kwargs"] == {"n": 1}
    result = cli("jobs", str(path))
    assert "ValueError: last" in result.stdout  # the last line of a cut error is kept
    server = start([CLI, "web", str(path), "--port", "0"])
    try:
        status, _, text = server.request("/api/jobs?limit=500")
        assert status == 200 and len(text) < 200_000
        status, _, text = server.request("/jobs")
        assert status == 200 and len(text) < 200_000
        status, _, text = server.request("/job?queue=default&key=big1")
        assert status == 200 and len(text) < 1_000_000
        assert "characters in all; saqlite job FILE KEY --json (or /api/job) gives it" in text
    finally:
        assert stop(server) == 0


BURST_TASKS = """
import os
from pathlib import Path
from saqlite import Queue

async def flaky(ctx):
    marker = Path(os.environ["SAQLITE_TEST_DB"] + "." + ctx["job"].key)
    if not marker.exists():
        marker.touch()
        raise RuntimeError("first try fails")
    return "second try works"

async def ok(ctx):
    return "ok"

settings = {"queue": Queue(os.environ["SAQLITE_TEST_DB"]), "functions": [flaky, ok]}
"""


def test_burst_waits_for_retries_and_due_jobs_and_reports_pending(tmp_path: Path) -> None:
    (tmp_path / "ci_tasks.py").write_text(BURST_TASKS)
    path = tmp_path / "burst.db"

    def burst(*flags: str) -> subprocess.CompletedProcess[str]:
        return cli("burst", "ci_tasks.settings", "--wait", "0.3", *flags, cwd=tmp_path,
                   SAQLITE_TEST_DB=str(path))  # fmt: skip

    async def enqueue(function: str, **kwargs: t.Any) -> None:
        queue = Queue(path)
        await queue.enqueue(function, **kwargs)
        await queue.disconnect()

    result = burst()
    assert result.returncode == 2
    assert f"{path} does not exist: check the queue's path in ci_tasks.settings" in result.stderr
    assert not path.exists()

    run(enqueue("flaky", key="f1", retries=2, retry_delay=1.5))
    run(enqueue("ok", key="soon", scheduled=int(time.time()) + 1))
    result = burst("--wait", "2.5", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["complete"], summary["retried"], summary["pending"]) == (2, 1, 0)
    assert summary["path"] == str(path)

    run(enqueue("flaky", key="f2", retries=2, retry_delay=1.5))  # waited for beyond --wait
    result = burst()
    assert result.returncode == 0, result.stderr
    assert "1 job in" in result.stdout
    assert "1 complete, 0 failed, 0 aborted, 1 retried" in result.stdout

    run(enqueue("ok", key="tomorrow", scheduled=int(time.time()) + 86400))
    run(enqueue("ok", key="now"))
    result = burst()
    assert result.returncode == 1
    assert result.stdout.startswith(f"burst PENDING on {path}: 1 job in ")
    assert result.stdout.endswith("1 complete, 0 failed, 0 aborted, 0 retried, 1 pending\n")
    assert "pending tomorrow (ok): due " in result.stderr
    result = burst("--allow-pending")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"burst ok on {path}: 0 jobs in ")
    result = burst("--wait", "-1")
    assert result.returncode == 2 and "--wait -1.0 is not valid" in result.stderr


def readme_commands(prefix: str) -> list[list[str]]:
    """The README's shell lines that start with ``prefix``, as argument lists."""
    lines = (HERE / "README.md").read_text().splitlines()
    return [line.split("#")[0].split()[1:] for line in lines if line.startswith(prefix)]


def test_readme_worker_commands_work_as_printed(tmp_path: Path) -> None:
    shutil.copytree(HERE / "examples", tmp_path / "examples")
    commands = readme_commands(".venv/bin/saqlite examples.settings")
    assert commands, "the README shows how to start workers"
    for args in commands:
        assert args[0] == "examples.settings"
    result = cli("examples.settings", "--check", cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # no live worker: a clean answer
    assert result.stderr == ""
    for name in ("examples.settings", "examples.settings.settings"):  # twice in one process
        assert run_in_process_twice(name, tmp_path) == "ok"


def run_in_process_twice(name: str, cwd: Path) -> str:
    code = (
        "import saqlite\n"
        f"for _ in range(2): assert 'functions' in saqlite._import_settings({name!r})\n"
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=cwd, env=env(), timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_an_unexpected_error_gives_a_500_page_and_a_logged_traceback(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def load(text: t.Union[str, bytes]) -> t.Any:
        raise RuntimeError("the loader broke")

    app = ops.web_app(Queue(db, load=load))
    sent: list[t.MutableMapping[str, t.Any]] = []

    async def receive() -> t.MutableMapping[str, t.Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: t.MutableMapping[str, t.Any]) -> None:
        sent.append(message)

    async def call() -> None:
        scope = {"type": "http", "method": "GET", "path": "/job", "root_path": "",
                 "query_string": b"queue=default&key=bad", "headers": []}  # fmt: skip
        try:
            await app(scope, receive, send)
        finally:
            await app.close()

    run(call())
    assert sent[0]["status"] == 500
    assert b"The page failed: its log tells why." in sent[1]["body"]
    assert b"<html" in sent[1]["body"]
    assert "RuntimeError: the loader broke" in caplog.text


def test_the_server_answers_500_when_an_app_raises(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        auth_password = None

        async def __call__(self, scope: t.Any, receive: t.Any, send: t.Any) -> None:
            raise RuntimeError("the app broke")

        async def close(self) -> None:
            pass

    server = ops._PageServer(t.cast(t.Any, Broken()), "127.0.0.1", 0)
    server.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 500
        assert b"The page failed: its log tells why." in response.read()
        conn.close()
    finally:
        server.stop()
    assert "RuntimeError: the app broke" in caplog.text


def test_a_port_in_use_is_a_clear_error(db: Path, tmp_path: Path) -> None:
    write_tasks(tmp_path)
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        for args, cwd in ((["web", str(db), "--port", port], None),
                          (["tasks.settings", "--web", "--port", port], tmp_path)):  # fmt: skip
            result = cli(*args, cwd=cwd, SAQLITE_TEST_DB=str(db))
            assert result.returncode == 2, result.stderr
            assert f"Cannot serve the page on 127.0.0.1:{port} (" in result.stderr
            assert "Traceback" not in result.stderr
    finally:
        holder.close()
