"""Strings from the database are text, never markup: the live dashboard and the HTML report in a real Chromium.

Whoever can write to the database (another account on a shared host, a compromised worker) writes HTML
into every field the pages show: the study's name, model, dataset, metric and status, parameter names
and values, a worker's host and GPU, a failure's kind and reason, a running trial's progress (epoch,
epochs, metric names, last output line), the final test's report and class names.  The documents are
written through the store's own transitions (``TrialStore``, ``WorkerRegistry``), as a hostile writer
with database access would.  Each page must show every one of them literally and run none of them.
"""

from __future__ import annotations

import http.client
import urllib.parse

import pytest

from conftest import wait_rendered, watch_errors
from helpers import db_of, queue_trials

pytestmark = pytest.mark.timeout(600)


def pay(tag: str) -> str:
    """HTML that would run script (and turn ``&amp;`` into ``&``) if it were read as markup; no '/'."""
    return f'<img src=x onerror="window.__pwned=\'{tag}\'">{tag}&amp;'


P = {k: pay(k) for k in ("study", "model", "dataset", "metric", "status", "param", "value", "host", "gpu",
                         "kind", "reason", "epoch", "epochs", "output", "progkey", "report", "klass")}
NO_SCRIPT = "() => window.__pwned === undefined && document.querySelectorAll('img').length === 0"


def _hostile_study(db) -> None:
    from mongotune.store import encode
    from mongotune.store.studies import Study

    space = {P["param"]: {"hp": "uniform", "low": -1.0, "high": 1.0},
             "opt": {"hp": "choice", "options": [P["value"], "plain"]}}
    study = Study(name=P["study"], max_evals=10, space=space, search={"algo": "rand"},
                  objective={"kind": "synthetic", "model": P["model"], "dataset": P["dataset"]},
                  metric={"name": P["metric"], "goal": "min"},
                  final={"tid": 1, "test_accuracy": 0.9, "report_text": P["report"],
                         "confusion_matrix": [[3, 1], [0, 4]], "class_names": [P["klass"], "b"]})
    doc = study.to_doc()
    doc["status"] = P["status"]
    db.studies.insert_one(encode(doc))  # the name is never validated: a hostile writer skips `launch`


def _hostile_trials(url: str, db) -> None:
    from mongotune.store.trialdoc import TrialStore, failure_result
    from mongotune.store.workers import WorkerRegistry

    xs = [0.9, -0.5, 0.1, 0.6, -0.2, 0.35, 0.0]
    queue_trials(url, P["study"], [{P["param"]: x, "opt": P["value"] if i % 2 else "plain"} for i, x in enumerate(xs)])
    store, key = TrialStore(db), f"mongotune:{P['study']}"
    worker = {"id": "w1", "host": P["host"], "pid": 4242, "gpu": P["gpu"]}
    for i, x in enumerate(xs[:5]):
        lease = store.reserve(worker, [key])
        for step in (1, 2):
            store.report(lease, step, (x - 0.3) ** 2 * (1 + 1 / step), 0.1 * step)
        loss = (x - 0.3) ** 2
        store.finish(lease, {"status": "ok", "loss": loss, "metric": loss, P["metric"]: loss})
    store.finish(store.reserve(worker, [key]), failure_result(P["kind"], P["reason"]))
    running = store.reserve(worker, [key])
    store.heartbeat(running, {"epoch": P["epoch"], "epochs": P["epochs"], "last_output": P["output"],
                              P["progkey"]: 0.5})
    registry = WorkerRegistry(db)
    registry.register({"_id": "w1", "host": P["host"], "pid": 4242, "gpu": P["gpu"], "study": P["study"]})
    registry.beat("w1", "running", {"study": P["study"], "tid": running.tid}, 6)


@pytest.fixture(scope="module")
def hostile_url(mongo_server):
    import uuid

    url = f"{mongo_server.base}/xss_{uuid.uuid4().hex[:10]}{getattr(mongo_server, 'query', '')}"
    db = db_of(url)
    _hostile_study(db)
    _hostile_trials(url, db)
    db.client.close()
    return url


def _text(page, selector: str) -> str:
    return page.locator(selector).first.text_content()


def _assert_literal(page, where: dict[str, tuple[str, ...]]) -> None:
    for selector, keys in where.items():
        text = _text(page, selector)
        missing = [k for k in keys if P[k] not in text]
        assert not missing, (selector, missing, text[:2000])


def test_the_dashboard_shows_html_from_the_database_as_text(hostile_url, browser, live_dashboard):
    dash = live_dashboard(hostile_url)
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors = watch_errors(page)
    try:
        page.goto(dash.base + "/")
        page.wait_for_selector("#studies-table")
        page.wait_for_selector("#workers-table")
        _assert_literal(page, {"#studies-table": ("study", "model", "metric", "status"),
                               "#workers-table": ("host", "gpu", "study")})
        assert page.evaluate(NO_SCRIPT)
        page.click("#studies-table a")  # the study's link, built from its name
        page.wait_for_function("window.mtState && window.mtState.updates >= 1", timeout=60_000)
        wait_rendered(page)
        assert page.title() == f"{P['study']} · mongotune" and _text(page, "#title") == "Study " + P["study"]
        _assert_literal(page, {
            "#subtitle": ("model", "dataset", "metric", "status"), "#cards": ("metric",),
            "#running-table": ("host", "gpu", "epoch", "epochs", "progkey", "output"),
            "#trials-table": ("param", "value", "host", "metric"), "#failures-table": ("kind", "reason", "host"),
            "#workers-table": ("host", "study"), "#plot-parallel": ("param", "metric"),
            "#plot-slices": ("param", "metric", "value"), "#plot-importance": ("param",),
            "#plot-timeline": ("host",), "#plot-confusion": ("klass",)})
        assert page.evaluate(NO_SCRIPT) and errors == [], errors
    finally:
        page.close()


def test_the_report_shows_html_from_the_database_as_text(hostile_url, browser, tmp_path):
    from mongotune.report.html import render_report
    from mongotune.report.study_data import load_study_data
    from mongotune.store import open_client

    client, db, _ = open_client(hostile_url)
    try:
        info, rows = load_study_data(db, P["study"])
    finally:
        client.close()
    path = tmp_path / "hostile.html"
    path.write_text(render_report(info, rows))
    ctx = browser.new_context(offline=True, viewport={"width": 1300, "height": 900})
    page = ctx.new_page()
    errors = watch_errors(page)
    try:
        page.goto(path.as_uri())
        page.wait_for_function("() => { const p = document.querySelectorAll('.plot');"
                               " return p.length && Array.from(p).every(e => e.dataset.rendered); }", timeout=60_000)
        rendered = page.evaluate("Array.from(document.querySelectorAll('.plot')).map(e => e.dataset.rendered)")
        assert rendered == ["1"] * 7, rendered
        assert page.title() == f"mongotune report: {P['study']}"
        _assert_literal(page, {"header h1": ("study",), "header .sub": ("model", "dataset", "metric", "status"),
                               ".cards": ("metric",), "#failures": ("kind", "reason", "host"),
                               "#final": ("report",), "#plot-parallel": ("param", "metric"),
                               "#plot-slices": ("param", "metric", "value"), "#plot-importance": ("param",),
                               "#plot-timeline": ("host",), "#plot-confusion": ("klass",)})
        assert page.evaluate(NO_SCRIPT) and errors == [], errors
    finally:
        ctx.close()


def _get(port: int, path: str, host: str | None) -> tuple[int, str, dict]:
    """GET over a real socket with exactly this Host header (None: none at all)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read().decode(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def test_a_loopback_dashboard_answers_only_to_loopback_host_names(hostile_url, live_dashboard):
    """DNS rebinding: a page on evil.example whose name resolves to 127.0.0.1 sends Host: evil.example."""
    dash = live_dashboard(hostile_url)
    port = dash.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost:9999", "LOCALHOST"):
        assert _get(port, "/api/studies", host)[0] == 200, host
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", f"0.0.0.0:{port}",
                 f"192.168.1.7:{port}"):
        status, body, _ = _get(port, "/api/studies", host)
        assert status == 403 and P["study"] not in body, (host, status)
        assert _get(port, "/", host)[0] == 403
    for host in (None, "", "[::1", "a:b:c", "localhost:x", "localhost:70000"):
        assert _get(port, "/api/studies", host)[0] == 400, host


def test_a_dashboard_bound_to_another_address_serves_any_name_and_pages_never_reflect_markup(hostile_url,
                                                                                            live_dashboard):
    from mongotune.dashboard.net import HostCheck

    wide = live_dashboard(hostile_url, app_host="0.0.0.0")  # reachable from the network anyway: no check
    assert _get(wide.port, "/api/studies", f"lab-gpu-7:{wide.port}")[0] == 200
    dash = live_dashboard(hostile_url)
    # a name in the address ("/" cannot be in it: the route would not match) is escaped in the page's title
    status, body, headers = _get(dash.port, "/study/" + urllib.parse.quote('<img src=x onerror="x()">&amp;'),
                                 f"127.0.0.1:{dash.port}")
    assert status == 200 and "<img" not in body, body[:500]
    assert "<title>&lt;img src=x onerror=&quot;x()&quot;&gt;&amp;amp; · mongotune</title>" in body
    script_src = headers["content-security-policy"].split("script-src")[1].split(";")[0]
    assert "'self'" in script_src and "unsafe-inline" not in script_src
    assert headers["x-content-type-options"] == "nosniff"
    check = HostCheck(None, host="my-box.local")
    assert check.verdict(b"my-box.local:8080") is None and check.verdict(b"other.local:8080")[0] == 403
