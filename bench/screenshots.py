"""Take the README's pictures from real studies run on this machine.

Two studies run to their end on a fresh embedded server, each by ``mongotune
launch --workers 2`` (two CPU worker processes):

* a Keras study, the demo's: the baseline MLP on scikit-learn's digits, 20
  trials, median pruning from epoch 2.  ``docs/dashboard.png`` is its live
  dashboard once 10 trials are done (running trials and all), and
  ``docs/report.png`` its report when it has ended;
* a command study: ``examples/train_digits.py`` (scikit-learn's MLP, it
  prints ``val_accuracy=`` after each epoch) tuned over 12 trials, as
  ``examples/README.md`` shows it: ``docs/command-report.png`` and
  ``docs/command-dashboard.png``.

The dashboard and the reports are drawn by Debian's Chromium through
Playwright.  What each study did (trials, pruned, failed, best, seconds) is
printed at the end, for the README's captions.  Run: ``python bench/screenshots.py``
(about 3 minutes on the project's 2-core machine).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
KERAS = ["baseline", "--study", "digits-baseline", "--dataset", "digits", "--max-evals", "20", "--pruner", "median",
         "--min-epochs", "2"]
COMMAND = ["--study", "digits-cmd", "--max-evals", "12",
           "--command", f"{sys.executable} {ROOT / 'examples' / 'train_digits.py'} --lr {{lr}} --layers {{layers}} "
                        "--units {units} --opt {opt}",
           "--param", "lr:1e-4:1e-1:log", "--param", "layers:1:3:int", "--param", "units:16,32,64,128",
           "--param", "opt:adam,sgd", "--metric", "val_accuracy", "--goal", "max", "--metric-agg", "max"]


def launch(url: str, home: Path, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "MONGOTUNE_HOME": str(home), "MONGOTUNE_DATA_DIR": str(home / "data"),
           "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    log = open(home / f"launch-{args[args.index('--study') + 1]}.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "mongotune", "launch", *args, "--workers", "2", "--mongo", url,
                             "-q"], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def serve_dashboard(db):
    import uvicorn

    from mongotune.dashboard.app import create_app
    from mongotune.dashboard.net import bind

    sock = bind("127.0.0.1", 0)
    srv = uvicorn.Server(uvicorn.Config(create_app(db, poll_ms=1000), log_level="warning", access_log=False,
                                        lifespan="on"))
    th = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    while not srv.started:
        time.sleep(0.05)
    return srv, th, f"http://127.0.0.1:{sock.getsockname()[1]}"


def scroll_render(page):
    """The dashboard draws a chart when it is on screen: scroll to each and wait until it is drawn."""
    for el in page.query_selector_all("section:not([hidden]) .plot"):
        el.scroll_into_view_if_needed()
        page.wait_for_function("el => el.dataset.rendered", arg=el, timeout=60_000)
    page.evaluate("window.scrollTo(0, 0)")


def shoot_dashboard(browser, base: str, study: str, path: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{base}/study/{study}")
    page.wait_for_function("window.mtState && mtState.updates >= 1", timeout=60_000)
    page.wait_for_function("document.querySelectorAll('section.chart:not([hidden])').length >= 6", timeout=60_000)
    scroll_render(page)
    page.wait_for_function("!document.getElementById('plot-importance').dataset.empty", timeout=60_000)
    page.wait_for_timeout(1500)
    scroll_render(page)
    page.screenshot(path=str(path), full_page=True)
    page.close()


def shoot_report(browser, db, study: str, path: Path) -> None:
    from mongotune.report.html import write_report

    html = Path(tempfile.mkdtemp()) / f"{study}.html"
    write_report(db, study, html)
    ctx = browser.new_context(offline=True, viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    page.goto(html.as_uri())
    page.wait_for_function("Array.from(document.querySelectorAll('.plot')).every(e => e.dataset.rendered)",
                           timeout=60_000)
    page.screenshot(path=str(path), full_page=True)
    ctx.close()


def wait_finished(db, study: str, n: int, proc: subprocess.Popen) -> None:
    while db.jobs.count_documents({"exp_key": f"mongotune:{study}", "state": 2}) < n:
        if proc.poll() is not None:
            return
        time.sleep(0.5)


def caption(db, study: str) -> str:
    """What the study did, in one line (its counts, best and span, as `status` reads them)."""
    from mongotune.store.progress import snapshot
    from mongotune.store.studies import StudyStore
    from mongotune.store.trialdoc import TrialStore
    from mongotune.store.workers import WorkerRegistry

    snap = snapshot(TrialStore(db), WorkerRegistry(db), StudyStore(db).get(study))
    c = snap.counts
    return (f"{study}: {snap.finished} trials ({c['ok']} ok, {c['pruned']} pruned, {c['failed']} failed) in "
            f"{snap.elapsed_s:.0f} s; best {snap.metric.get('name')} {snap.best_metric:.4f} (trial {snap.best_tid})")


def run(browser, db, url: str, home: Path, docs: Path) -> list[str]:
    base_srv, base_th, base = serve_dashboard(db)
    try:
        keras = launch(url, home, KERAS)
        wait_finished(db, "digits-baseline", 10, keras)
        shoot_dashboard(browser, base, "digits-baseline", docs / "dashboard.png")
        assert keras.wait() == 0, (home / "launch-digits-baseline.log").read_text()[-3000:]
        shoot_report(browser, db, "digits-baseline", docs / "report.png")
        command = launch(url, home, COMMAND)
        assert command.wait() == 0, (home / "launch-digits-cmd.log").read_text()[-3000:]
        shoot_report(browser, db, "digits-cmd", docs / "command-report.png")
        shoot_dashboard(browser, base, "digits-cmd", docs / "command-dashboard.png")
        return [caption(db, "digits-baseline"), caption(db, "digits-cmd")]
    finally:
        base_srv.should_exit = True
        base_th.join(10)


def main() -> int:
    from playwright.sync_api import sync_playwright

    from mongotune.store import open_client
    from mongotune.store.embedded import start_server

    docs = ROOT / "docs"
    home = Path(tempfile.mkdtemp(prefix="shots-"))
    server = start_server(home / "db", port=0)
    url = f"mongodb://127.0.0.1:{server.port}/shots"
    try:
        client, db, _ = open_client(url)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            try:
                lines = run(browser, db, url, home, docs)
            finally:
                browser.close()
        client.close()
    finally:
        server.stop()
    print(f"{time.strftime('%Y-%m-%d')}, wrote docs/dashboard.png, report.png, command-report.png, "
          "command-dashboard.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
