"""A web page that starts jobs and shows their progress, with no event loop in sight.

The page is a plain WSGI app (the standard library's wsgiref serves it) using
saqlite.SyncQueue; the jobs run in an ordinary async worker. In two shells:

    saqlite examples.webapp.settings        # the worker
    python examples/webapp.py               # the page, on http://127.0.0.1:8000

Press "Start a job" and watch its progress bar fill as the worker calls job.update().
"""

from __future__ import annotations

import asyncio
import html
import os
import sys
from collections import deque
from collections.abc import Iterable
from typing import Any, Callable
from wsgiref.simple_server import make_server

from saqlite import Job, Queue, SettingsDict, SyncQueue

DATABASE = os.environ.get("WEBAPP_DB", "saqlite.db")
STEPS = 10


async def render_report(ctx: dict[str, Any], *, pages: int) -> str:
    """The job: pretends to render a report, reporting progress after each step."""
    job: Job = ctx["job"]
    for step in range(1, STEPS + 1):
        await asyncio.sleep(pages * 0.02)
        await job.update(progress=step / STEPS)
    return f"{pages}-page report"


settings: SettingsDict = {"queue": Queue(DATABASE), "functions": [render_report]}

jobs = SyncQueue(DATABASE)
started: deque[str] = deque(maxlen=10)  # the keys of the jobs this page started, newest first

Respond = Callable[[str, list[tuple[str, str]]], Any]


def app(environ: dict[str, Any], start_response: Respond) -> Iterable[bytes]:
    """The WSGI application: GET / shows the jobs, POST /start enqueues one."""
    if environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"] == "/start":
        job = jobs.enqueue("render_report", pages=5)
        if job is not None:
            started.appendleft(job.key)
        start_response("303 See Other", [("Location", "/")])
        return [b""]
    if environ["PATH_INFO"] != "/":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [page().encode()]


def page() -> str:
    rows = "".join(
        "<tr><td>{key}</td><td>{status}</td>"
        '<td><progress max="1" value="{progress}"></progress> {percent}%</td>'
        "<td>{result}</td></tr>".format(
            key=html.escape(job["key"]),
            status=html.escape(str(job.get("status", "new"))),
            progress=job.get("progress", 0),
            percent=round(100 * job.get("progress", 0)),
            result=html.escape(str(job.get("result", ""))),
        )
        for job in (found.to_dict() for found in jobs.jobs(list(started)) if found)
    )
    return f"""<!doctype html>
<html><head><title>Reports</title><meta http-equiv="refresh" content="1"></head>
<body><h1>Reports</h1>
<form method="post" action="/start"><button>Start a job</button></form>
<table><tr><th>job</th><th>status</th><th>progress</th><th>result</th></tr>{rows}</table>
</body></html>"""


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    with make_server("127.0.0.1", port, app) as server:
        print(f"Serving on http://127.0.0.1:{port} (jobs in {DATABASE})")
        server.serve_forever()


if __name__ == "__main__":
    main()
