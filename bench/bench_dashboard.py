"""Dashboard speed at 100 and 1,000 trials on the embedded server: page load and update, server and browser.

Realistic trial documents (``trialdocs.py``: Keras-like results with per-epoch
history, curves, per-class reports; some failed, pruned and running) are
inserted straight into a fresh embedded server, then the dashboard app is
served by uvicorn and driven by Debian's Chromium through Playwright.

Server side (the JSON endpoint, over HTTP):
  cold      the first read of a study (every trial document is read once)
  load      a page's full payload once the study is in memory (what every page load asks for)
  update    the payload after one new finished trial (reads only the changed trials)
Browser side (viewport 1400x900, and a 1400x6000 one where every chart is on screen):
  tables    navigation start until the first payload is in and until the tables are set (page clock)
  load      navigation until the charts on screen are drawn: a first visit (empty cache, so plotly.js
            is fetched and compiled) and a repeat visit in the same browser context (``_repeat``)
  update    one poll's fetch + redraw of the rows and the changed charts on screen that follow every
            trial (``mtState.lastRowsUpdateMs``); ``_with_heavy_max``: the slowest full redraw, parallel
            coordinates and slices included (sent at most every 5 s); and the latency from the
            database write to the trial's row on the page (includes the poll wait)

Target: under 1 s each at 1,000 trials.  Writes bench/results/dashboard.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import trialdocs  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]


def get(url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        body = r.read()
    return time.perf_counter() - t0, body


def gen_of(body: bytes) -> int:
    return json.loads(body)["gen"]


def insert_finished(db, name: str, tid: int, now: datetime.datetime) -> None:
    from mongotune.store import encode

    doc = trialdocs.trial_docs(name, 1, start=now - datetime.timedelta(seconds=20), running=0, fail_every=0,
                               prune_every=0, seed=tid)[0]
    doc.pop("_id")
    doc.update(tid=tid, refresh_time=now, finished=now)
    db.jobs.insert_one(encode(doc))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--updates", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "dashboard.json"))
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    import uvicorn
    from playwright.sync_api import sync_playwright

    from mongotune.dashboard.app import create_app
    from mongotune.dashboard.net import bind
    from mongotune.store import encode, open_client
    from mongotune.store.embedded import start_server

    from mongotune.report.study_data import server_now

    results = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}, "sizes": {}}
    server = start_server(tempfile.mkdtemp(prefix="bench-dash-"), port=0)
    try:
        client, db, _ = open_client(f"mongodb://127.0.0.1:{server.port}/benchdash")
        # the indexes a study's database has (coordinator and hyperopt store)
        db.jobs.create_index([("study", 1), ("state", 1), ("tid", 1)])
        db.jobs.create_index([("exp_key", 1), ("state", 1)])
        for k in ("exp_key", "result.loss", "book_time"):
            db.jobs.create_index(k)
        db.jobs.create_index([("state", 1), ("exp_key", 1), ("tid", 1)])
        db.workers.create_index("heartbeat")
        now = server_now(db)
        for n in sizes:
            name = f"bench-{n}"
            start = now - datetime.timedelta(hours=3)
            db.studies.insert_one(encode(trialdocs.study_doc(name, n + 50, start)))
            docs = trialdocs.trial_docs(name, n, start=start, seed=n)
            t0 = time.perf_counter()
            for i in range(0, len(docs), 100):
                db.jobs.insert_many([encode(d) for d in docs[i:i + 100]])
            print(f"inserted {n} trial documents in {time.perf_counter() - t0:.0f} s", flush=True)
        db.workers.insert_many(trialdocs.worker_docs(docs, now))

        sock = bind("127.0.0.1", 0)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = create_app(db, poll_ms=1000, warm=False)
        srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
        th = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
        th.start()
        while not srv.started:
            time.sleep(0.05)

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            for n in sizes:
                name = f"bench-{n}"
                r = {"trials": n}
                cold, body = get(f"{base}/api/study/{name}")
                r["server_cold_first_read_s"] = round(cold, 3)
                loads = [get(f"{base}/api/study/{name}") for _ in range(5)]
                r["server_load_s"] = round(statistics.median(t for t, _ in loads), 3)
                r["payload_full_bytes"] = len(loads[-1][1])
                gen = gen_of(loads[-1][1])
                ups, sizes_up = [], []
                next_tid = n + 100
                for _ in range(args.updates):
                    insert_finished(db, name, next_tid, server_now(db))
                    next_tid += 1
                    time.sleep(0.35)  # the view refreshes at most every 0.3 s
                    t, body = get(f"{base}/api/study/{name}?since={gen}")
                    gen = gen_of(body)
                    ups.append(t)
                    sizes_up.append(len(body))
                r["server_update_s"] = round(statistics.median(ups), 3)
                r["server_update_max_s"] = round(max(ups), 3)
                r["payload_update_bytes"] = int(statistics.median(sizes_up))
                for label, height in (("screen", 900), ("all_charts", 6000)):
                    # a fresh browser context: the first visit loads plotly.js (4.6 MB) with an empty cache
                    ctx = browser.new_context(viewport={"width": 1400, "height": height})
                    page = ctx.new_page()
                    for visit in ("first", "repeat"):
                        t0 = time.perf_counter()
                        page.goto(f"{base}/study/{name}", wait_until="commit")
                        page.wait_for_selector("#trials-table", timeout=120_000)
                        page.wait_for_function(
                            "() => window.mtState && mtState.updates >= 1 && (() => {"
                            " const vis = Array.from(document.querySelectorAll('section:not([hidden]) .plot'))"
                            "  .filter(e => { const b = e.getBoundingClientRect(); return b.top < innerHeight && b.bottom > 0; });"
                            " return vis.length > 0 && vis.every(e => e.dataset.rendered); })()", timeout=120_000)
                        key = "" if visit == "first" else "_repeat"
                        r[f"browser_load_{label}{key}_s"] = round(time.perf_counter() - t0, 3)
                        r[f"browser_plotly_js_{label}{key}_s"] = round(page.evaluate("mtState.plotlyMs") / 1000, 3)
                        # from the page's own clock (navigation start): the first payload in, the tables set
                        r[f"browser_payload_in_{label}{key}_s"] = round(page.evaluate("mtState.fetchAt") / 1000, 3)
                        r[f"browser_tables_{label}{key}_s"] = round(page.evaluate("mtState.tablesAt") / 1000, 3)
                    e2e, render, charts = [], [], []
                    for _ in range(args.updates):
                        page.wait_for_timeout(300)
                        before = page.evaluate("mtState.rowUpdates")
                        insert_finished(db, name, next_tid, server_now(db))
                        t0 = time.perf_counter()
                        page.wait_for_selector(f"#trial-{next_tid}", timeout=60_000)
                        e2e.append(time.perf_counter() - t0)
                        page.wait_for_function(f"mtState.rowUpdates > {before}", timeout=60_000)
                        render.append(page.evaluate("mtState.lastRowsUpdateMs") / 1000.0)
                        page.wait_for_function("mtState.chartUpdates >= mtState.updates", timeout=60_000)
                        charts.append(page.evaluate("mtState.lastChartsUpdateMs") / 1000.0)
                        next_tid += 1
                    # rows, cards and the charts that follow every trial (history, curves, timeline)
                    r[f"browser_update_{label}_s"] = round(statistics.median(render), 3)
                    r[f"browser_update_{label}_max_s"] = round(max(render), 3)
                    # the last poll's full redraw, heavy charts included when it carried them (every 5 s)
                    r[f"browser_update_{label}_with_heavy_max_s"] = round(max(charts), 3)
                    r[f"write_to_page_{label}_s"] = round(statistics.median(e2e), 3)
                    ctx.close()
                results["sizes"][str(n)] = r
                print(json.dumps(r), flush=True)
            browser.close()
        srv.should_exit = True
        th.join(10)
        client.close()
    finally:
        server.stop()
    results["machine"]["load_avg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    cols = [("trials", "trials"), ("srv cold", "server_cold_first_read_s"), ("srv load", "server_load_s"),
            ("srv upd", "server_update_s"), ("tables", "browser_tables_screen_s"), ("br load", "browser_load_screen_s"),
            ("br load 2nd", "browser_load_screen_repeat_s"), ("br upd", "browser_update_screen_s"),
            ("br load all", "browser_load_all_charts_s"), ("all 2nd", "browser_load_all_charts_repeat_s"),
            ("br upd all", "browser_update_all_charts_s"), ("write->page", "write_to_page_screen_s")]
    print(" ".join(f"{c:>11}" for c, _ in cols))
    for r in results["sizes"].values():
        print(" ".join(f"{r.get(k, '-'):>11}" for _, k in cols))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
