"""Take the README's screenshots of the page: run from the repository's root with
playwright and a Chromium installed (``python docs/screenshots.py``; set
SAQLITE_CHROMIUM to the browser's path if it is not /usr/bin/chromium).

It fills a new file with real jobs (run by a real worker: some complete, some fail,
some wait or are scheduled), serves the page on it as ``saqlite web`` does, and
saves docs/page-*.png.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
import time
import typing as t
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import saqlite  # noqa: E402
from saqlite import Queue, Worker  # noqa: E402

SHOTS = (  # file, path, width, height, colour scheme
    ("page-overview.png", "/", 1280, 900, "light"),
    ("page-jobs.png", "/jobs", 1280, 760, "light"),
    ("page-job.png", "/job?queue=emails&key=welcome-17", 1280, 760, "light"),
    ("page-phone.png", "/jobs", 390, 760, "light"),
    ("page-dark.png", "/", 1280, 760, "dark"),
)


async def resize(ctx: t.Any, *, image: str) -> dict[str, str]:
    await asyncio.sleep(random.uniform(0.001, 0.02))
    return {"thumbnail": image.replace(".jpg", "-small.jpg")}


async def send_email(ctx: t.Any, *, to: str) -> None:
    if to.endswith(".invalid"):
        raise ConnectionRefusedError(f"SMTP server refused {to}")
    await asyncio.sleep(random.uniform(0.001, 0.01))


async def fill(path: Path) -> None:
    images, emails = Queue(path), Queue(path, name="emails")
    reports = Queue(path, name="reports")
    try:
        for i in range(60):
            await images.enqueue("resize", key=f"img-{i}", image=f"photos/{i}.jpg")
        for i in range(24):
            domain = "example.invalid" if i % 6 == 5 else "example.com"
            await emails.enqueue("send_email", key=f"welcome-{i}", to=f"user{i}@{domain}")
        for worker_queue, functions in ((images, [resize]), (emails, [send_email])):
            await Worker(
                worker_queue, functions, burst=True, concurrency=4, dequeue_timeout=0.2
            ).start()
        for i in range(5):
            await images.enqueue("resize", key=f"img-new-{i}", image=f"photos/new-{i}.jpg")
        for hours in (1, 6, 24):
            at = int(time.time()) + hours * 3600
            await reports.enqueue("weekly_report", key=f"report-{hours}h", scheduled=at)
        await images.worker_info("worker-a1", "default", {"host": "app-1", "pid": 4242}, ttl=600)
    finally:
        for queue in (images, emails, reports):
            await queue.disconnect()


def main() -> None:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    executable = os.environ.get("SAQLITE_CHROMIUM", "/usr/bin/chromium")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "jobs.db"
        asyncio.run(fill(path))
        server = saqlite._PageServer(saqlite.web_app(str(path)), "127.0.0.1", 0)
        server.start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=executable, args=["--headless", "--no-sandbox"]
                )
                for name, page_path, width, height, scheme in SHOTS:
                    context = browser.new_context(
                        viewport={"width": width, "height": height},
                        color_scheme=t.cast(t.Any, scheme),
                    )
                    page = context.new_page()
                    page.goto(f"http://127.0.0.1:{server.port}{page_path}")
                    page.wait_for_selector("main#main")
                    page.screenshot(path=str(HERE / name))
                    context.close()
                browser.close()
        finally:
            server.stop()
    for name, *_ in SHOTS:
        print(f"{name}: {(HERE / name).stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
