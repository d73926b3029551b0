"""Take docs/dashboard.png and docs/report.png from a realistic 48-trial study.

The study's documents come from ``trialdocs.py`` (a Keras-like study on four
GPUs with failed, pruned and two running trials), inserted into a fresh
embedded server; the dashboard and the report are then drawn by Debian's
Chromium.  Run: ``python bench/screenshots.py``.
"""

from __future__ import annotations

import datetime
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import trialdocs  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]


def shifted(docs, now):
    """Move the study in time so that its two running trials started a few seconds ago."""
    running = [d for d in docs if d["state"] == 1]
    delta = now - datetime.timedelta(seconds=6) - max(d["book_time"] for d in running)
    for d in docs:
        for k in ("book_time", "refresh_time", "finished"):
            if isinstance(d.get(k), datetime.datetime):
                d[k] = d[k] + delta
        if d["state"] == 1:
            d["refresh_time"] = now - datetime.timedelta(seconds=1.4)
    return docs


def scroll_render(page):
    for el in page.query_selector_all("section:not([hidden]) .plot"):
        el.scroll_into_view_if_needed()
        page.wait_for_function("el => el.dataset.rendered", arg=el, timeout=60_000)
    page.evaluate("window.scrollTo(0, 0)")


def main() -> int:
    import uvicorn
    from playwright.sync_api import sync_playwright

    from mongotune.dashboard.app import create_app
    from mongotune.dashboard.net import bind
    from mongotune.report.html import write_report
    from mongotune.report.study_data import server_now
    from mongotune.store import encode, open_client
    from mongotune.store.embedded import start_server

    docs_dir = ROOT / "docs"
    docs_dir.mkdir(exist_ok=True)
    server = start_server(tempfile.mkdtemp(prefix="shots-"), port=0)
    try:
        client, db, _ = open_client(f"mongodb://127.0.0.1:{server.port}/shots")
        now = server_now(db)
        name = "digits-convstrix"
        docs = shifted(trialdocs.trial_docs(name, 48, start=now - datetime.timedelta(minutes=20), seed=3,
                                            queued=2), now)
        start = min(d["book_time"] for d in docs if d.get("book_time"))
        db.studies.insert_one(encode(trialdocs.study_doc(name, 50, start - datetime.timedelta(seconds=20))))
        db.jobs.insert_many([encode(d) for d in docs])
        db.workers.insert_many(trialdocs.worker_docs(docs, now))
        sock = bind("127.0.0.1", 0)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = create_app(db, poll_ms=1000)
        srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
        th = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
        th.start()
        while not srv.started:
            time.sleep(0.05)
        report = Path(tempfile.mkdtemp()) / "report.html"
        write_report(db, name, report)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{base}/study/{name}")
            page.wait_for_function("window.mtState && mtState.updates >= 1")
            page.wait_for_function("document.querySelectorAll('section.chart:not([hidden])').length >= 6")
            scroll_render(page)
            page.wait_for_function("!document.getElementById('plot-importance').dataset.empty", timeout=30_000)
            # the documents are static: beat the workers' and running trials' hearts as live ones would
            db.workers.update_many({}, {"$currentDate": {"heartbeat": True}})
            db.jobs.update_many({"state": 1}, {"$currentDate": {"refresh_time": True}})
            page.wait_for_timeout(2500)
            scroll_render(page)
            page.screenshot(path=str(docs_dir / "dashboard.png"), full_page=True)
            page.close()
            ctx = browser.new_context(offline=True, viewport={"width": 1400, "height": 900})
            page = ctx.new_page()
            page.goto(report.as_uri())
            page.wait_for_function("Array.from(document.querySelectorAll('.plot')).every(e => e.dataset.rendered)")
            page.screenshot(path=str(docs_dir / "report.png"), full_page=True)
            browser.close()
        srv.should_exit = True
        th.join(10)
        client.close()
    finally:
        server.stop()
    print(f"wrote {docs_dir / 'dashboard.png'} and {docs_dir / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
