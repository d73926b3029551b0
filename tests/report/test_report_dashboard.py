"""The HTML report and the live dashboard, in a real Chromium, over studies run by real workers."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import SPACE, dashboard_page, synthetic_study, wait_rendered, watch_errors
from helpers import db_of, log_text, mongotune, run_cli, stop, wait_for

pytestmark = pytest.mark.timeout(600)

EDGE = ("empty", "one", "failed", "mixed")
READ_COMMANDS = {"find", "getMore", "count", "distinct", "hello", "ping", "endSessions", "killCursors", "isMaster",
                 "ismaster"}


def _load(url, name):
    from mongotune.report.study_data import load_study_data
    from mongotune.store import open_client

    client, db, _ = open_client(url)
    try:
        return load_study_data(db, name)
    finally:
        client.close()


def test_every_chart_is_a_valid_figure_for_the_corner_cases(edge_studies):
    import plotly.graph_objects as go

    from mongotune.report.charts import build_charts, failure_rows

    built = {}
    for name in EDGE:
        info, rows = _load(edge_studies, name)
        charts = build_charts(info, rows)
        for c in charts:
            go.Figure(c.figure)  # plotly's own schema check: raises on any invalid property
        built[name] = ({c.key: c for c in charts}, rows)
    charts, rows = built["empty"]
    assert rows == [] and all(c.empty for c in charts.values())
    charts, rows = built["one"]
    assert len(rows) == 1 and rows[0].state == "ok"
    assert not charts["history"].empty and not charts["timeline"].empty and not charts["parallel"].empty
    assert "needs 5" in charts["importance"].empty
    charts, rows = built["failed"]
    assert {r.state for r in rows} == {"failed"} and len(failure_rows(rows)) == 3
    assert "synthetic failure requested" in failure_rows(rows)[0]["reason"]
    assert not charts["history"].empty  # failed trials are marked on it
    assert charts["parallel"].empty and charts["slices"].empty
    charts, rows = built["mixed"]
    assert sum(r.state == "failed" for r in rows) == 1 and sum(r.state == "ok" for r in rows) == 9
    dims = {d["label"]: d for d in charts["parallel"].figure["data"][0]["dimensions"]}
    assert set(dims) == {"x", "lr (log)", "optimizer", "batch_norm", "conv.blocks", "loss"}
    assert set(dims["optimizer"]["ticktext"]) <= {"adam", "nadam", "sgd"}
    assert set(dims["batch_norm"]["ticktext"]) <= {"true", "false"}
    assert "units=64" in charts["parallel"].note  # a constant is named, not drawn
    assert charts["importance"].empty is None and set(charts["importance"].extra["importance"]) == {
        "x", "lr", "optimizer", "batch_norm", "conv.blocks"}
    axes = [v for k, v in charts["slices"].figure["layout"].items() if k.startswith("xaxis")]
    assert {a["title"]["text"] for a in axes} == {"x", "lr", "optimizer", "batch_norm", "conv.blocks"}
    assert any(a.get("type") == "log" for a in axes) and any(a.get("type") == "category" for a in axes)
    u = charts["timeline"].extra["utilisation"]
    assert u["lanes"] == 1 and 0 < u["utilisation"] <= 1


def _open_offline(browser, path):
    """A page with the network off: the context is offline and every non-file request is aborted."""
    ctx = browser.new_context(offline=True, viewport={"width": 1300, "height": 900})
    blocked = []

    def route(r):
        if r.request.url.startswith("file:"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    ctx.route("**/*", route)
    page = ctx.new_page()
    errors = watch_errors(page)
    page.goto(path.as_uri())
    page.wait_for_function("() => { const p = document.querySelectorAll('.plot');"
                           " return p.length && Array.from(p).every(e => e.dataset.rendered); }", timeout=60_000)
    return ctx, page, errors, blocked


def test_report_from_file_with_the_network_off_renders_every_chart(edge_studies, browser, tmp_path):
    out = tmp_path / "mixed.html"
    r = run_cli("report", "mixed", "--out", out, "--mongo", edge_studies)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"wrote {out}" in r.stdout
    text = out.read_text()
    assert "<script src=" not in text and "cdn" not in text.lower().split("</script>")[-1]
    ctx, page, errors, blocked = _open_offline(browser, out)
    try:
        state = page.evaluate("Array.from(document.querySelectorAll('.plot')).map(e => [e.id, e.dataset.rendered,"
                              " e.dataset.empty, e.querySelectorAll('.main-svg, canvas').length])")
        keys = [s[0] for s in state]
        assert keys == ["plot-history", "plot-parallel", "plot-slices", "plot-curves", "plot-importance",
                        "plot-timeline"]
        assert all(s[1] == "1" and s[3] > 0 for s in state), state
        # the synthetic objective records no per-epoch values; every other chart has data
        assert [s[0] for s in state if s[2]] == ["plot-curves"]
        assert page.locator("#plot-history .scatterlayer .point").count() >= 9
        assert page.locator("#plot-timeline .barlayer .point").count() == 10
        assert page.locator("#plot-parallel canvas").count() > 0
        assert page.locator("#failures tbody tr").count() == 1
        assert errors == [] and blocked == []
    finally:
        ctx.close()


def test_corner_case_studies_render_without_errors_in_report_and_dashboard(edge_studies, browser, tmp_path,
                                                                            live_dashboard):
    from mongotune.report.html import render_report

    dash = live_dashboard(edge_studies)
    for name in EDGE:
        info, rows = _load(edge_studies, name)
        path = tmp_path / f"{name}.html"
        path.write_text(render_report(info, rows))
        ctx, page, errors, blocked = _open_offline(browser, path)
        try:
            rendered = page.evaluate("Array.from(document.querySelectorAll('.plot')).map(e => e.dataset.rendered)")
            assert rendered == ["1"] * 6 and errors == [] and blocked == [], (name, rendered, errors, blocked)
        finally:
            ctx.close()
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        errors = watch_errors(page)
        try:
            page.goto(f"{dash.base}/study/{name}")
            page.wait_for_function("window.mtState && window.mtState.updates >= 1", timeout=60_000)
            page.wait_for_function("document.querySelectorAll('section.chart:not([hidden])').length >= 6",
                                   timeout=60_000)
            wait_rendered(page)
            rendered = page.evaluate("Array.from(document.querySelectorAll('section:not([hidden]) .plot'))"
                                     ".map(e => e.dataset.rendered)")
            assert rendered == ["1"] * 6, (name, rendered)
            assert page.locator("#trials-table tbody tr").count() == len(rows)
            assert errors == [], (name, errors)
        finally:
            page.close()
    page = browser.new_page()
    try:
        page.goto(f"{dash.base}/")
        page.wait_for_selector("#studies-table")
        assert page.locator("#studies-table tbody tr").count() == 4
    finally:
        page.close()
    assert set(dash.recorder.commands) <= READ_COMMANDS, set(dash.recorder.commands)


def test_dashboard_follows_a_running_study_without_a_reload(mongo_url, browser, tmp_path, live_dashboard):
    from mongotune.pool.coordinator import Coordinator

    coord = Coordinator(mongo_url)
    coord.create(synthetic_study("live", 14, sleep_s=2.5, raise_on_tids=[3]))
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    workers = [mongotune("worker", "--mongo", mongo_url, "--study", "live", "--gpu", str(i), log=logs[i])
               for i in range(2)]
    done = {}
    runner = threading.Thread(target=lambda: done.setdefault("snap", coord.run("live")), daemon=True)
    db = db_of(mongo_url)
    dash = live_dashboard(mongo_url, poll_ms=400)
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors = watch_errors(page)
    try:
        runner.start()
        wait_for(lambda: db.jobs.count_documents({"exp_key": "mongotune:live", "state": 2}) >= 3, 300, what="three finished")
        page.goto(f"{dash.base}/study/live")
        page.wait_for_function("window.mtState && window.mtState.updates >= 1", timeout=60_000)
        page.evaluate("window.__noReload = 42")
        wait_rendered(page)
        for key, selector in (("history", ".scatterlayer .point"), ("slices", ".scatterlayer .point"),
                              ("timeline", ".barlayer .point"), ("parallel", "canvas")):
            el = page.locator(f"#plot-{key}")
            el.scroll_into_view_if_needed()
            assert el.get_attribute("data-empty") == "", key
            assert el.locator(selector).count() > 0, key
        page.evaluate("window.scrollTo(0, 0)")
        # a trial that is running now; once it finishes in the database, the page shows it without a reload
        running = wait_for(lambda: db.jobs.find_one({"exp_key": "mongotune:live", "state": 1}), 180, what="a running trial")
        tid = running["tid"]
        row = page.wait_for_function("t => { const e = document.getElementById('running-' + t);"
                                     " return e && e.innerText; }", arg=tid, timeout=30_000).json_value()
        assert "GPU" in row and "s" in row  # worker with its GPU, heartbeat age
        wait_for(lambda: db.jobs.find_one({"exp_key": "mongotune:live", "tid": tid, "state": 2}), 180, what=f"trial {tid} done")
        page.wait_for_selector(f"#trial-{tid}[data-state=ok], #trial-{tid}[data-state=failed]", timeout=30_000)
        assert page.evaluate("window.__noReload") == 42
        runner.join(300)
        assert not runner.is_alive()
        page.wait_for_function("document.querySelector('.card[data-key=ok] .v').textContent === '13'",
                               timeout=30_000)
        assert page.locator("#failures-table tbody tr").count() == 1
        assert "synthetic failure requested" in page.locator("#failures-table").inner_text()
        assert page.evaluate("window.__noReload") == 42 and page.evaluate("window.mtState.updates") > 3
        assert errors == []
    finally:
        page.close()
        codes = [stop(w) for w in workers]
        coord.close()
    assert codes == [0, 0], [log_text(p)[-2000:] for p in logs]
    assert set(dash.recorder.commands) <= READ_COMMANDS, set(dash.recorder.commands)
    # the dashboard's incremental reads: nothing changed, so a refresh reads (almost) nothing
    view = dash.app.state.dashboard.view("live")
    view.refresh(force=True)
    time.sleep(view.loader.overlap_s + 0.5)
    view.refresh(force=True)
    before = view.loader.docs_read
    view.refresh(force=True)
    assert view.loader.docs_read == before and len(view.loader.rows) == 14


def test_report_cli_writes_pngs_and_refuses_bad_input(edge_studies, tmp_path):
    r = run_cli("report", "one", "--out", tmp_path / "one.html", "--png", tmp_path / "png",
                       "--mongo", edge_studies)
    assert r.returncode == 0, r.stdout + r.stderr
    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert pngs == ["curves.png", "history.png", "importance.png", "parallel.png", "slices.png", "timeline.png"]
    for p in (tmp_path / "png").iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    r = run_cli("report", "nosuch", "--mongo", edge_studies)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: no study named 'nosuch'"), r.stderr
    r = run_cli("report", "one", "--out", tmp_path / "missing-dir" / "x.html", "--mongo", edge_studies)
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = run_cli("dashboard", "--port", "99999", "--mongo", edge_studies)
    assert r.returncode == 2 and r.stderr.strip() == "error: --port must be between 0 and 65535, got 99999"


def test_the_dashboard_database_handle_cannot_write(mongo_url):
    from mongotune.dashboard.net import is_loopback
    from mongotune.dashboard.readonly import ReadOnlyDatabase, ReadOnlyError

    db = ReadOnlyDatabase(db_of(mongo_url))
    assert db.jobs.find_one({}) is None and db["studies"].count_documents({}) == 0
    for attempt in (lambda: db.jobs.insert_one({"x": 1}), lambda: db.jobs.update_one({}, {"$set": {"x": 1}}),
                    lambda: db["workers"].delete_many({}), lambda: db.jobs.find_one_and_update({}, {}),
                    lambda: db.jobs.create_index("x"), lambda: db.jobs.drop(),
                    lambda: db.jobs.aggregate([{"$out": "copy"}]),
                    lambda: db.client.admin.command("dropDatabase"), lambda: setattr(db, "jobs", None)):
        with pytest.raises(ReadOnlyError):
            attempt()
    assert db.client.admin.command("ping")["ok"] == 1
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10")


def test_pruned_and_requeued_trials_render_marked_in_report_and_dashboard(mongo_url, browser, tmp_path,
                                                                          live_dashboard):
    """A study run by a real worker with median pruning, one of whose trials an operator requeues mid-run:
    the history and the learning curves mark the pruned trials, the requeued trial's curve is its last
    run only, and report and dashboard draw every chart without errors."""
    from mongotune.pool.coordinator import Coordinator
    from mongotune.report import charts as ch
    from mongotune.report.html import render_report
    from mongotune.store.studies import Study
    from mongotune.store.trialdoc import RUNNING, TrialStore

    from helpers import queue_trials

    coord = Coordinator(mongo_url)
    coord.create(Study(name="prq", max_evals=6, objective={"kind": "synthetic", "steps": 6, "sleep_s": 3.0},
                       space={"x": {"hp": "uniform", "low": -1.0, "high": 1.0}},
                       pruner={"kind": "median", "min_epochs": 1, "min_trials": 2}))
    coord.close()
    # loss (x - 0.3)^2, read at step s as loss * (1 + 1/s): trial 2 (0.35) has one other trial to compare
    # with, so it runs to its end; 1.0 and 0.95 are worse than the median of the others at step 1
    queue_trials(mongo_url, "prq", [{"x": 0.3}, {"x": 0.35}, {"x": 1.0}, {"x": 0.32}, {"x": 0.95}])
    db = db_of(mongo_url)
    w = mongotune("worker", "--mongo", mongo_url, "--study", "prq", log=tmp_path / "w.log")
    try:
        # the operator requeues trial 2 once it has recorded two steps; the worker gives it up and runs it again
        wait_for(lambda: len((db.jobs.find_one({"exp_key": "mongotune:prq", "tid": 2, "state": RUNNING})
                              or {}).get("curve") or []) >= 2, 120, 0.05, what="trial 2 two steps in")
        assert TrialStore(db).requeue("mongotune:prq", 2, reason="test: operator requeue") == [2]
        wait_for(lambda: db.jobs.count_documents({"exp_key": "mongotune:prq", "state": 2}) == 5, 300, 0.2,
                 what="five finished trials")
    finally:
        assert stop(w) == 0, log_text(tmp_path / "w.log")[-2000:]
    requeued = db.jobs.find_one({"exp_key": "mongotune:prq", "tid": 2})
    assert requeued["requeues"] and len({p["lease"] for p in requeued["curve"]}) == 2, requeued["curve"]

    info, rows = _load(mongo_url, "prq")
    by_tid = {r.tid: r for r in rows}
    pruned = [r for r in rows if r.state == "pruned"]
    assert pruned and all(r.pruned_at for r in pruned), [(r.tid, r.state) for r in rows]
    # the requeued trial's curve is its last run: each step once, in order
    assert [p["step"] for p in by_tid[2].curve] == list(range(1, 7)) and by_tid[2].state == "ok"
    history, curves = ch.history_chart(info, rows), ch.curves_chart(info, rows)
    marked = [t for t in history.figure["data"] if t["name"] == "pruned"]
    assert marked and sorted(marked[0]["text"]) == sorted(f"trial {r.tid} pruned" for r in pruned)
    ends = [t for t in curves.figure["data"] if t["name"] == "pruned here"]
    assert ends and len(ends[0]["x"]) == len(pruned) and ends[0]["x"] == [r.pruned_at for r in pruned]

    path = tmp_path / "prq.html"
    path.write_text(render_report(info, rows))
    ctx, page, errors, blocked = _open_offline(browser, path)
    try:
        rendered = page.evaluate("Array.from(document.querySelectorAll('.plot')).map(e => e.dataset.rendered)")
        assert rendered == ["1"] * 6 and errors == [] and blocked == [], (rendered, errors, blocked)
        for key in ("history", "curves"):  # the legend names the pruned marks
            assert "pruned" in page.locator(f"#plot-{key} g.legend").text_content(), key
    finally:
        ctx.close()

    dash = live_dashboard(mongo_url)
    with dashboard_page(browser, dash, "prq") as (page, errors):
        rendered = page.evaluate("Array.from(document.querySelectorAll('section:not([hidden]) .plot'))"
                                 ".map(e => e.dataset.rendered)")
        assert rendered == ["1"] * 6, rendered
        for key in ("history", "curves"):
            el = page.locator(f"#plot-{key}")
            el.scroll_into_view_if_needed()
            assert "pruned" in el.locator("g.legend").text_content(), key
        assert page.locator("#trial-2[data-state=ok]").count() == 1
        assert page.locator("#trials-table tbody tr[data-state=pruned]").count() == len(pruned)
        assert errors == [], errors

    assert set(dash.recorder.commands) <= READ_COMMANDS, set(dash.recorder.commands)
