"""Tests of the monitoring page's second round (issue 14): how it is served (the
standard library's ThreadingHTTPServer running the one ASGI app), CSRF tokens, live
updates by server-sent events, SAQ's JSON API paths, search, the scheduled view,
bulk actions, and the page in a real headless browser at 1280 and 390 px, light and
dark (skipped when no browser is installed)."""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import socket
import threading
import time
import typing as t
import urllib.parse
from pathlib import Path

import pytest

import saqlite as ops
from saqlite import Queue, Status
from test_saqlite_ops import (
    CHROMIUM_ARGS,
    CLI,
    Server,
    chromium,
    db,
    ok,
    run,
    start,
    stop,
    stored,
)

__all__ = ["db"]  # the fixture, imported for the tests here

#: Generous bounds for things that happen at once on an idle machine.
WAIT_S = 30.0


def wait_until(condition: t.Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def web(db: Path) -> t.Iterator[Server]:
    server = start([CLI, "web", str(db), "--port", "0"])
    yield server
    assert stop(server) == 0


def api(server: Server, path: str, method: str = "GET", **headers: str) -> tuple[int, t.Any]:
    status, _, body = server.request(path, method, headers=headers or None)
    return status, json.loads(body)


def token(server: Server) -> str:
    return str(api(server, "/api/csrf")[1]["token"])


async def enqueue(path: Path, *keys: str, queue: str = "default", **kwargs: t.Any) -> None:
    q = Queue(path, name=queue)
    try:
        for key in keys:
            await q.enqueue("ok", key=key, **kwargs)
    finally:
        await q.disconnect()


# -- how it is served ----------------------------------------------------------------


class PageInProcess:
    """The page served in this process, as ``saqlite web`` and ``--web`` serve it."""

    def __init__(self, app: t.Any) -> None:
        self.server = ops._PageServer(app, "127.0.0.1", 0)
        self.server.start()

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=WAIT_S)


def handler_threads() -> int:
    return sum(thread.name == "saqlite-page-request" for thread in threading.enumerate())


def test_events_tell_of_changes_and_end_when_the_client_goes(db: Path) -> None:
    page = PageInProcess(ops.web_app(str(db)))
    try:
        before = handler_threads()
        conn = page.connect()
        conn.request("GET", "/events")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("content-type") == "text/event-stream"
        assert response.readline() == b"retry: 2000\n"
        assert response.readline() == b"\n"
        wait_until(lambda: handler_threads() == before + 1, "the stream's thread")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # its own event loop
            pool.submit(run, enqueue(db, "fresh")).result()
        assert response.readline() == b"event: change\n"  # told at once, not polled
        assert response.readline() == b"data: {}\n"
        response.close()  # the socket's last reference
        conn.close()
        wait_until(lambda: handler_threads() == before, "the stream to end with its client")
    finally:
        page.server.stop()


def test_an_app_error_after_the_headers_closes_the_connection_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BrokenMidway:
        auth_password = None

        async def __call__(self, scope: t.Any, receive: t.Any, send: t.Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            raise RuntimeError("broke while streaming")

        async def close(self) -> None:
            pass

    page = PageInProcess(BrokenMidway())
    try:
        conn = page.connect()
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == b"partial"  # then a clean end, not a hang
    finally:
        page.server.stop()
    assert "RuntimeError: broke while streaming" in caplog.text


def test_requests_over_the_body_cap_or_malformed_get_an_answer(web: Server) -> None:
    address = ("127.0.0.1", t.cast(int, urllib.parse.urlsplit(web.url).port))
    with socket.create_connection(address, timeout=WAIT_S) as sock:
        sock.sendall(b"POST /retry HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 9999999\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 413")
    with socket.create_connection(address, timeout=WAIT_S) as sock:
        sock.sendall(b"GET / what HTTP/1.1\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")


# -- CSRF ----------------------------------------------------------------------------


def test_every_post_needs_the_csrf_token(web: Server, db: Path) -> None:
    form = {"queue": "default", "key": "bad"}
    status, _, page = web.request("/retry", "POST", form)
    assert status == 403
    assert "This form has no valid CSRF token" in page
    assert "reload the page and submit it again" in page
    status, _, page = web.request("/retry", "POST", {**form, "csrf": "forged"})
    assert status == 403
    status, body = api(web, "/api/queues/default/jobs/bad/retry", "POST")
    assert status == 403
    assert "X-Saqlite-Csrf header" in body["error"]
    stored_job = stored(db, "bad")
    assert stored_job is not None and stored_job.status == Status.FAILED

    page = web.request("/job?queue=default&key=bad")[2]
    field = f'<input type="hidden" name="csrf" value="{token(web)}">'
    assert field in page  # in the retry form
    assert web.request("/retry", "POST", {**form, "csrf": token(web)})[0] == 303
    stored_job = stored(db, "bad")
    assert stored_job is not None and stored_job.status == Status.QUEUED


def test_csrf_tokens_differ_per_user_and_survive_a_restart_with_a_secret(db: Path) -> None:
    def auth(user: str) -> dict[str, str]:
        encoded = base64.b64encode(f"{user}:pw".encode()).decode()
        return {"authorization": f"Basic {encoded}"}

    tokens = []
    for _ in range(2):
        server = start([CLI, "web", str(db), "--port", "0"], AUTH_USER="ops", AUTH_PASSWORD="pw",
                       SAQLITE_CSRF_SECRET="shared")  # fmt: skip
        try:
            tokens.append(server.csrf(auth("ops"))["csrf"])
            assert server.request("/health")[:3:2] == (200, "OK")  # no password for a probe
            assert server.request("/api/csrf")[0] == 401
        finally:
            assert stop(server) == 0
    assert tokens[0] == tokens[1]
    app = ops.web_app(str(db), auth_password="pw")
    request = ops._WebRequest("GET", "/", "", {}, auth("ops"), b"")
    other = ops._WebRequest("GET", "/", "", {}, auth("someone"), b"")
    assert app.csrf_token(request) != app.csrf_token(other)


# -- the JSON API ----------------------------------------------------------------------


def test_json_api_answers_on_saqs_paths(web: Server, db: Path) -> None:
    status, body = api(web, "/api/queues")
    assert status == 200
    assert [q["name"] for q in body["queues"]] == ["default", "emails"]
    status, body = api(web, "/api/queues/default")
    assert status == 200
    assert body["queue"]["name"] == "default"
    assert body["queue"]["queued"] == 1 and body["queue"]["scheduled"] == 1
    assert {job["key"] for job in body["queue"]["jobs"]} >= {"waiting"}
    status, body = api(web, "/api/queues/default/jobs/bad")
    assert body["job"]["status"] == "failed"
    assert "Traceback" in body["job"]["error"]
    assert api(web, "/api/queues/nowhere")[0] == 404
    assert "No job 'gone'" in api(web, "/api/queues/default/jobs/gone")[1]["error"]

    csrf = {"X-Saqlite-Csrf": token(web)}
    status, body = api(web, "/api/queues/default/jobs/bad/retry", "POST", **csrf)
    assert status == 200
    assert body["job"]["status"] == "queued"
    status, body = api(web, "/api/queues/default/jobs/bad/retry", "POST", **csrf)
    assert status == 409
    assert body["error"] == "Only failed or aborted jobs can be retried."
    status, body = api(web, "/api/queues/default/jobs/bad/abort", "POST", **csrf)
    assert (status, body["job"]["status"]) == (200, "aborted")
    assert web.request("/api/queues/default/jobs/bad/abort")[0] == 405
    status, _, text = web.request("/health")
    assert (status, text) == (200, "OK")


def test_a_queue_or_key_with_a_slash_has_its_own_path(db: Path, tmp_path: Path) -> None:
    run(enqueue(db, "a/b", queue="x/y"))
    server = start([CLI, "web", str(db), "--port", "0"])
    try:
        status, body = api(server, "/api/queues/x%2Fy/jobs/a%2Fb")
        assert status == 200
        assert (body["job"]["queue"], body["job"]["key"]) == ("x/y", "a/b")
    finally:
        assert stop(server) == 0


def test_bulk_api_retries_what_a_filter_selects(web: Server, db: Path) -> None:
    csrf = {"X-Saqlite-Csrf": token(web)}
    status, body = api(web, "/api/bulk?action=retry&status=complete", "POST", **csrf)
    assert status == 400
    assert "Only failed or aborted jobs can be retried" in body["error"]
    status, body = api(web, "/api/bulk?action=retry&queue=default", "POST", **csrf)
    assert (status, body) == (200, {"action": "retry", "matched": 1, "done": 1})
    stored_job = stored(db, "bad")
    assert stored_job is not None and stored_job.status == Status.QUEUED
    status, body = api(web, "/api/bulk?action=delete&queue=default", "POST", **csrf)
    assert body == {"action": "delete", "matched": 3, "done": 3}  # the complete ones
    assert stored(db, "ok0") is None


# -- jobs: counts, search, scheduled, bulk with confirmation ---------------------------


def test_jobs_page_counts_its_jobs_and_pages(web: Server) -> None:
    page = web.request("/jobs?queue=default&limit=2")[2]
    assert '<p id="count"><strong>6 jobs</strong> in this filter' in page
    assert '<span id="page">Page 1 of 3</span>' in page
    page = web.request("/jobs?queue=default&function=ok&limit=2&page=2")[2]
    assert "<strong>5 jobs</strong>" in page  # few enough to count by function
    assert "Page 2 of 3" in page
    data = json.loads(web.request("/api/jobs?status=complete")[2])
    assert data["total"] == 3


def test_search_reads_a_bounded_window_newest_first_and_says_so(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def many() -> None:
        queue = Queue(db)
        try:
            await queue.enqueue("ok", key="needle-old", note="a NEEDLE in kwargs")
            await queue.enqueue_many(
                [ops.Job("ok", key=f"hay{i}", kwargs={"n": i}) for i in range(30)]
            )
        finally:
            await queue.disconnect()

    run(many())
    monkeypatch.setattr(ops, "_WEB_SEARCH_WINDOW", 10)
    app = ops.web_app(str(db))

    async def search(query: str) -> dict[str, t.Any]:
        request = ops._WebRequest("GET", "/api/jobs", "", dict(urllib.parse.parse_qsl(query)),
                                  {}, b"")  # fmt: skip
        response = await app.handle(request)
        assert response.status == 200, response.body
        return t.cast(dict[str, t.Any], json.loads(response.body))

    async def searches() -> list[dict[str, t.Any]]:
        try:
            first = await search("q=needle")
            found = [first]
            while found[-1]["next"]:
                found.append(await search(f"q=needle&after={found[-1]['next']}"))
            return found
        finally:
            await app.close()

    pages = run(searches())
    assert pages[0]["jobs"] == [] and pages[0]["searched"] == 10  # the newest 10 only
    keys = [job["key"] for page in pages for job in page["jobs"]]
    assert keys == ["needle-old"]  # found by its kwargs, in a later window
    assert len(pages) == 4  # 37 jobs, read 10 at a time


def test_search_finds_errors_and_keys_on_the_page(web: Server) -> None:
    page = web.request("/jobs?q=ValueError")[2]
    assert '<a href="/job?queue=default&amp;key=bad">bad</a>' in page
    assert "Searched the 7 newest jobs of this filter for &ldquo;ValueError&rdquo;" in page
    page = web.request("/jobs?q=mail1")[2]
    assert ">mail1<" in page and ">bad<" not in page


def test_scheduled_view_lists_waiting_jobs_due_later_soonest_first(db: Path) -> None:
    run(enqueue(db, "sooner", scheduled=int(time.time()) + 60))
    server = start([CLI, "web", str(db), "--port", "0"])
    try:
        page = server.request("/scheduled")[2]
        assert page.index(">sooner<") < page.index(">later<")
        assert ">waiting<" not in page  # due now: not scheduled
        assert time.strftime("%Y-%m-%d", time.localtime(time.time() + 60)) in page
        page = server.request("/scheduled?queue=emails")[2]
        assert "No job is scheduled." in page
    finally:
        assert stop(server) == 0


def test_bulk_retry_asks_first_with_the_count_then_retries(web: Server, db: Path) -> None:
    run(fail_more(db, 2))
    form = {"action": "retry", "queue": "default", "status": "failed", **web.csrf()}
    status, _, page = web.request("/bulk", "POST", form)
    assert status == 200
    assert "Retry 3 failed jobs of queue default?" in page
    job = stored(db, "bad")
    assert job is not None and job.status == Status.FAILED  # not yet
    status, headers, _ = web.request("/bulk", "POST", {**form, "confirm": "yes"})
    assert status == 303
    assert headers["location"] == ("/jobs?queue=default&status=failed&done=bulk-retry&n=3")
    for key in ("bad", "more0", "more1"):
        job = stored(db, key)
        assert job is not None and job.status == Status.QUEUED, key
    page = web.request(headers["location"])[2]
    assert "Retried 3 jobs." in page
    status, _, page = web.request("/bulk", "POST", {**form, "action": "purge"})
    assert status == 400
    assert "Unknown bulk action &#x27;purge&#x27;: give retry, abort or delete." in page


async def more(ctx: t.Any) -> None:
    raise RuntimeError("more")


async def fail_more(path: Path, n: int) -> None:
    """n more failed jobs in queue default (its waiting job runs too)."""
    queue = Queue(path)
    try:
        for i in range(n):
            await queue.enqueue("more", key=f"more{i}")
        worker = ops.Worker(queue, [ok, more], burst=True, dequeue_timeout=0.2)
        await worker.start()
    finally:
        await queue.disconnect()


def test_several_files_are_named_the_same_way_on_every_view(db: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    run(enqueue(other, "elsewhere"))
    server = start([CLI, "web", str(db), str(other), "--port", "0"])
    try:
        named = f"file 2: {other}"
        for path in ("/", "/jobs?db=1", "/scheduled?db=1", "/job?db=1&queue=default&key=elsewhere"):
            page = server.request(path)[2]
            assert named in page, path
        page = server.request("/jobs?db=1")[2]
        assert ">elsewhere<" in page and ">bad<" not in page
        assert f'<option value="1" selected>2: {other}</option>' in page
    finally:
        assert stop(server) == 0


# -- in a real browser ---------------------------------------------------------------

VIEWS = ("/", "/jobs", "/scheduled", "/job?queue=default&key=bad")


def test_every_view_fits_1280_and_390_px_light_and_dark(web: Server) -> None:
    executable = chromium()
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            for width, scheme in ((1280, "light"), (390, "light"), (390, "dark")):
                context = browser.new_context(
                    viewport={"width": width, "height": 800},
                    color_scheme=t.cast(t.Any, scheme),
                )
                page = context.new_page()
                for path in VIEWS:
                    page.goto(web.url.rstrip("/") + path)
                    page.wait_for_selector("main#main")
                    scroll = page.evaluate("document.documentElement.scrollWidth")
                    assert scroll <= width, (path, width, scroll)
                    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
                    dark = background == "rgb(20, 23, 29)"
                    assert dark == (scheme == "dark"), (path, scheme, background)
                context.close()
        finally:
            browser.close()


def test_in_a_browser_search_chart_bulk_retry_and_live_progress(web: Server, db: Path) -> None:
    executable = chromium()
    from playwright.sync_api import expect, sync_playwright  # noqa: PLC0415

    run(fail_more(db, 1))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(web.url)
            chart = page.locator("svg.chart").first
            assert "jobs ended" in (chart.get_attribute("aria-label") or "")
            assert page.locator("svg.chart rect.complete").count() >= 1
            assert page.locator("svg.chart rect.failed").count() >= 1
            assert page.inner_text("#queues tr.total td:nth-child(6)") == "2"  # failed

            page.goto(web.url + "jobs")
            page.fill("#search", "ValueError")
            page.press("#search", "Enter")
            page.wait_for_selector("text=Searched the")
            assert [link.inner_text() for link in page.locator("#jobs a").all()] == ["bad"]

            page.goto(web.url + "jobs?status=failed")
            page.click("#bulk-retry")
            question = page.inner_text("#question")
            assert question == "Retry 2 failed jobs of every queue?"
            page.click("#confirm")
            page.wait_for_selector("#notice")
            assert page.inner_text("#notice") == "Retried 2 jobs."
            assert "No jobs match." in page.inner_text("#jobs")

            page.goto(web.url + "job?queue=default&key=later")
            page.wait_for_selector("html[data-live=events]", state="attached")  # connected
            page.evaluate("window.notReloaded = true")
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pool.submit(run, progress(db, "later", 0.42)).result()
            expect(page.locator("#percent")).to_have_text("42%", timeout=10_000)
            assert page.evaluate("window.notReloaded") is True  # swapped in, not reloaded

            data = json.loads(page.goto(web.url + "api/queues").text())  # type: ignore[union-attr]
            assert [q["name"] for q in data["queues"]] == ["default", "emails"]
        finally:
            browser.close()
    for key in ("bad", "more0"):
        job = stored(db, key)
        assert job is not None and job.status == Status.QUEUED


async def progress(path: Path, key: str, fraction: float) -> None:
    queue = Queue(path)
    try:
        job = await queue.job(key)
        assert job is not None
        await job.update(progress=fraction)
    finally:
        await queue.disconnect()


def test_live_updates_work_behind_an_asgi_mount(db: Path) -> None:
    app = ops.web_app(str(db))
    messages: list[dict[str, t.Any]] = []

    async def call() -> None:
        import asyncio  # noqa: PLC0415

        gone, started = asyncio.Event(), asyncio.Event()
        sent_request = False

        async def receive() -> dict[str, t.Any]:
            nonlocal sent_request
            if not sent_request:
                sent_request = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: t.MutableMapping[str, t.Any]) -> None:
            messages.append(dict(message))
            if b"retry:" in message.get("body", b""):
                started.set()
            if b"event: change" in message.get("body", b""):
                gone.set()  # the client goes once told

        scope = {"type": "http", "method": "GET", "path": "/saqlite/events",
                 "root_path": "/saqlite", "query_string": b"", "headers": []}  # fmt: skip
        task = asyncio.ensure_future(app(scope, receive, send))
        await started.wait()
        await enqueue(db, "news")
        await asyncio.wait_for(task, WAIT_S)  # it ends when the client goes
        page = await app.handle(ops._WebRequest("GET", "/", "/saqlite", {}, {}, b""))
        await app.close()
        assert b'"/saqlite/events"' in page.body

    run(call())
    assert messages[0]["status"] == 200
    bodies = b"".join(m.get("body", b"") for m in messages[1:])
    assert b"event: change\ndata: {}\n\n" in bodies


def test_overview_shows_totals_function_figures_and_charts(web: Server) -> None:
    page = web.request("/")[2]
    total = page[page.index('<tr class="total">') :].split("</tr>")[0]
    cells = [cell.split(">")[-1] for cell in total.split("</td>")[:-1]]
    assert cells == ["Total", "2", "1", "0", "3", "1", "0", "1"]
    functions = page[page.index('<table id="functions">') :].split("</table>")[0]
    rows = {row.split("</a>")[0].split(">")[-1]: row for row in functions.split("<tr>")[2:]}
    assert '<td class="n">3</td><td class="n">0.0%</td>' in rows["ok"]
    assert '<td class="n">1</td><td class="n">100.0%</td>' in rows["boom"]
    assert page.count('<svg class="chart"') == 2
    assert 'aria-label="4 jobs ended, per 5m 00s"' in page  # the last hour's
    assert "last day" in web.request("/?stats=day")[2]


def test_a_count_by_function_that_would_read_too_many_jobs_is_not_made(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ops, "_LIST_SORT_MAX", 3)  # as if the file held many jobs
    app = ops.web_app(str(db))

    async def page(query: dict[str, str]) -> str:
        try:
            response = await app.handle(ops._WebRequest("GET", "/jobs", "", query, {}, b""))
            return response.body.decode()
        finally:
            await app.close()

    text = run(page({"function": "ok"}))
    assert "<strong>Over 3 jobs to read to count by function</strong>" in text
    assert '<span id="page">Page 1</span>' in text
    assert "<strong>7 jobs</strong>" in run(page({}))  # the counts table still tells
