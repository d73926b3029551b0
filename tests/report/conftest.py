"""Fixtures for the report and dashboard tests: a real Chromium, and studies run by a real pool.

The browser is Debian's ``chromium`` (``./dev test`` installs it where it is
missing) driven by Playwright; Playwright's own browser downloads are never
used.  The edge-case studies are run by ``mongotune worker`` processes and
the coordinator with the ``synthetic`` objective: no documents are made up.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import uuid

import pytest

from helpers import db_of, log_text, mongotune, stop, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]

# a space with a log-scaled number, a categorical string, a boolean and a nested (conditional) parameter
SPACE = {"x": {"hp": "uniform", "low": -1.0, "high": 1.0},
         "lr": {"hp": "loguniform", "low": 1e-4, "high": 1e-1},
         "optimizer": {"hp": "choice", "options": ["adam", "nadam", "sgd"]},
         "batch_norm": {"hp": "choice", "options": [True, False]},
         "conv": {"hp": "choice", "options": [{"blocks": 0},
                                              {"blocks": {"hp": "quniform", "low": 1, "high": 3, "q": 1,
                                                          "int": True}}]},
         "units": 64}


@pytest.fixture(scope="session")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.skip(f"BROWSER TESTS SKIPPED: {CHROMIUM} is missing; `./dev test` installs Debian's chromium "
                    "(or run: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("BROWSER TESTS SKIPPED: the playwright package is missing (pip install -e '.[test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class PageErrors(list):
    """Console errors and uncaught exceptions of one page."""


def watch_errors(page) -> PageErrors:
    errors = PageErrors()
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    return errors


def synthetic_study(name, max_evals, *, space=SPACE, **options):
    from mongotune.store.studies import Study

    return Study(name=name, max_evals=max_evals, objective={"kind": "synthetic", **options}, space=space,
                 search={"algo": "rand"})


@pytest.fixture(scope="module")
def edge_studies(mongo_server, tmp_path_factory):
    """One database holding the corner cases, each run to its end by a real worker process:

    ``empty`` (no trial at all), ``one`` (a single trial), ``failed`` (every trial fails),
    ``mixed`` (categorical, boolean, log-scaled and nested parameters; one failure).
    """
    from mongotune.pool.coordinator import Coordinator

    url = f"{mongo_server.base}/edge_{uuid.uuid4().hex[:10]}{getattr(mongo_server, 'query', '')}"
    logs = tmp_path_factory.mktemp("edge-logs")
    coord = Coordinator(url)
    coord.create(synthetic_study("empty", 5))
    coord.create(synthetic_study("one", 1))
    coord.create(synthetic_study("failed", 3, raise_on_tids=list(range(10_000))))
    coord.create(synthetic_study("mixed", 10, raise_on_tids=[]))
    worker = mongotune("worker", "--mongo", url, log=logs / "worker.log")
    try:
        for name in ("one", "failed", "mixed"):
            if name == "mixed":  # fail the third trial of this study, whatever its global tid
                first = db_of(url).job_ids.find_one({}) or {}
                coord.studies.update("mixed", objective={"kind": "synthetic",
                                                         "raise_on_tids": [int(first.get("last_id", 0)) + 2]})
            coord.run(name)
    finally:
        code = stop(worker)
        coord.close()
    assert code == 0, log_text(logs / "worker.log")[-2000:]
    return url


class LiveDashboard:
    """The dashboard app served by uvicorn in a thread, over a client that records every command it sends."""

    def __init__(self, url: str, poll_ms: int = 500, app_host: str | None = None):
        import pymongo
        from pymongo import monitoring

        from mongotune.dashboard.app import create_app
        from mongotune.dashboard.net import bind
        from mongotune.store import parse_mongo_url

        class Recorder(monitoring.CommandListener):
            def __init__(self):
                self.commands = []

            def started(self, event):
                self.commands.append(event.command_name)

            def succeeded(self, event):
                pass

            def failed(self, event):
                pass

        import uvicorn

        self.recorder = Recorder()
        parsed = parse_mongo_url(url)
        self.client = pymongo.MongoClient(parsed.client_uri, event_listeners=[self.recorder])
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        # app_host: the address the app is told it listens on (it decides whether Host headers are checked)
        self.app = app = create_app(self.client[parsed.database], jobs=parsed.collection, poll_ms=poll_ms,
                                    host=app_host)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 30, what="dashboard start")

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.client.close()
        self.sock.close()


@pytest.fixture
def live_dashboard():
    made = []

    def start(url, **kw):
        d = LiveDashboard(url, **kw)
        made.append(d)
        return d

    yield start
    for d in made:
        d.close()


@contextlib.contextmanager
def dashboard_page(browser, dash, name: str):
    """``(page, errors)``: the dashboard's page of study ``name`` with its first update in and every shown chart
    drawn; closed after."""
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors = watch_errors(page)
    try:
        page.goto(f"{dash.base}/study/{name}")
        page.wait_for_function("window.mtState && window.mtState.updates >= 1", timeout=60_000)
        wait_rendered(page)
        yield page, errors
    finally:
        page.close()


def wait_rendered(page, timeout_ms: int = 60_000) -> None:
    """Scroll to every shown chart (the dashboard draws charts when on screen) and wait until each is drawn."""
    deadline = time.monotonic() + timeout_ms / 1000
    for el in page.query_selector_all("section:not([hidden]) .plot"):
        el.scroll_into_view_if_needed()
        left = max(1000, int((deadline - time.monotonic()) * 1000))
        page.wait_for_function("el => el.dataset.rendered", arg=el, timeout=left)
    page.evaluate("window.scrollTo(0, 0)")
