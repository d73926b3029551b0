"""Every kind of study in every view: a matrix, so that a new kind or a new view cannot forget the other.

One study of each kind (``kinds.KINDS``: Keras built-in model, ``--model-fn``,
command, synthetic, stock hyperopt fmin) runs once, on one real pool, for the
whole module; each cell of the matrix then reads it through one view
(``VIEWS``) and checks what the view shows against the trial documents
themselves: the study's own metric, its best trial and that trial's value,
the counts with pruned and failed trials, the charts' data, and the workers'
counters.  The expected values are worked out here from the raw documents
with pymongo, not through mongotune's code.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
import uuid

import pytest

from conftest import LiveDashboard
from helpers import db_of, one_line_error, run_cli
from kinds import KINDS, run_every_kind

pytestmark = [pytest.mark.timeout(1500), pytest.mark.slow]

DONE = 2
CHARTS = ("history", "parallel", "slices", "curves", "importance", "timeline")


# ---------------------------------------------------------------- the pool's studies and the truth about them
@pytest.fixture(scope="module")
def pool(mongo_server, tmp_path_factory):
    url = f"{mongo_server.base}/kinds_{uuid.uuid4().hex[:10]}{getattr(mongo_server, 'query', '')}"
    return run_every_kind(url, tmp_path_factory.mktemp("kinds"))


@pytest.fixture(scope="module")
def dashboard(pool):
    """What the dashboard's JSON endpoints answer for every kind, read as soon as the pool is done (it lists
    workers seen in the last five minutes), once parameter importance (fitted in the background) is in."""
    from test_report_dashboard import READ_COMMANDS

    dash = LiveDashboard(pool.url)
    try:
        studies = _get(f"{dash.base}/api/studies")
        seen = {"studies": {s["name"]: s for s in studies["studies"]},
                "pages": {k: _study_page(dash, kind.name) for k, kind in KINDS.items()}}
    finally:
        dash.close()
    assert set(dash.recorder.commands) <= READ_COMMANDS, set(dash.recorder.commands)  # stock fmin jobs too
    return seen


# The dashboard is local: never through a proxy.  urlopen's shared opener keeps the proxies of the first
# call in the process, and an earlier test (tests/models) runs with a proxy set to a closed port.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str) -> dict:
    with _DIRECT.open(url, timeout=60) as resp:
        return json.loads(resp.read())


def _study_page(dash, name: str) -> dict:
    """The full payload of a study's page, its charts brought up to date until importance is drawn."""
    page = _get(f"{dash.base}/api/study/{name}")
    page["figures"] = {c["key"]: c["figure"] for c in page["charts"]}
    deadline = time.monotonic() + 60
    while not drawn(page["figures"].get("importance") or {}) and time.monotonic() < deadline:
        time.sleep(0.5)
        later = _get(f"{dash.base}/api/study/{name}?since={page['gen']}")
        page["figures"].update({c["key"]: c["figure"] for c in later["charts"]})
        page["gen"] = later["gen"]
    return page


def _loss(doc):
    r = doc.get("result") or {}
    loss = r.get("loss") if doc["state"] == DONE and r.get("status") == "ok" else None
    return loss if isinstance(loss, (int, float)) and loss == loss and abs(loss) != float("inf") else None


def truth(url: str, kind) -> dict:
    """What every view must show for ``kind``, from its trial documents read with pymongo."""
    db = db_of(url)
    docs = list(db.jobs.find({"exp_key": kind.exp_key}))
    done_by = {}
    for d in db.jobs.find({"state": DONE}, projection=["worker", "result.failure.kind"]):
        wid = (d.get("worker") or {}).get("id")
        if wid and ((d.get("result") or {}).get("failure") or {}).get("kind") != "lease":
            done_by[wid] = done_by.get(wid, 0) + 1
    db.client.close()
    scored = [d for d in docs if _loss(d) is not None]
    full = [d for d in scored if not d["result"].get("pruned")]
    best = min(full or scored, key=lambda d: (_loss(d), d["tid"]))
    value = _loss(best) if kind.metric == "loss" else best["result"][kind.metric]
    pruned = sum(1 for d in scored if d["result"].get("pruned"))
    failed = sum(1 for d in docs if d["state"] == DONE and d["result"].get("status") != "ok")
    workers = {d["worker"]["id"] for d in docs if d.get("worker")}
    first = min(d["book_time"] for d in docs if d.get("book_time"))
    last = max(d["finished"] for d in docs if d.get("finished"))
    return {"best": best["tid"], "value": value, "ok": len(full), "pruned": pruned, "failed": failed,
            "trials": len(docs), "workers": workers, "done_by": done_by, "span": (last - first).total_seconds(),
            "study_done_by": {w: sum(1 for d in docs if d["state"] == DONE and (d.get("worker") or {}).get("id") == w)
                              for w in workers}}


@pytest.fixture(scope="module")
def truths(pool):
    return {k: truth(pool.url, kind) for k, kind in KINDS.items()}


def drawn(figure: dict) -> bool:
    """A figure with at least one trace holding points (or parallel-coordinate dimensions)."""
    return any(len(t.get("x") or t.get("y") or t.get("dimensions") or []) for t in figure.get("data") or [])


def check_charts(kind, figures: dict) -> None:
    expected = [c for c in CHARTS if kind.curves or c != "curves"]
    assert [c for c in CHARTS if c in figures and drawn(figures[c])] == expected, {
        c: (figures.get(c) or {}).get("layout", {}).get("annotations") for c in CHARTS}


# ---------------------------------------------------------------- the views
def view_status(pool, kind, t, tmp_path):
    r = run_cli("status", kind.name, "--mongo", pool.url, "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["metric"] == {"name": kind.metric, "goal": kind.goal}
    assert s["best"]["tid"] == t["best"] and s["best"]["metric"]["value"] == pytest.approx(t["value"])
    assert s["counts"]["ok"] == t["ok"] and s["counts"]["pruned"] == t["pruned"]
    assert s["counts"]["failed"] + s["counts"]["error"] == t["failed"]
    # a finished study's elapsed time is its span: first trial taken to last trial ended
    assert s["elapsed_s"] == pytest.approx(t["span"], abs=1.0) and s["elapsed_s"] > 0


def view_leaderboard(pool, kind, t, tmp_path):
    r = run_cli("leaderboard", kind.name, "--mongo", pool.url, "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    board = json.loads(r.stdout)
    assert board["metric"] == {"name": kind.metric, "goal": kind.goal}
    first = board["trials"][0]
    assert first["tid"] == t["best"] and first["metric"] == pytest.approx(t["value"])
    assert isinstance(first["params"], dict) and first["params"]  # the structure, as the trial holds it
    text = run_cli("leaderboard", kind.name, "--mongo", pool.url, timeout=120, COLUMNS=80)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert max(map(len, lines)) <= 80, text.stdout
    head = next(i for i, line in enumerate(lines) if line.lstrip().startswith("#"))
    assert kind.metric in lines[head] and not any("{" in line for line in lines), text.stdout
    assert re.match(rf"\s*1\s+{t['best']}\b", lines[head + 1]), text.stdout


def view_workers(pool, kind, t, tmp_path):
    r = run_cli("workers", "--all", "--mongo", pool.url, "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    listed = {w["_id"]: w for w in json.loads(r.stdout)}
    assert t["workers"] <= set(listed)
    for wid in t["workers"]:  # each count is the trials that worker finished, in every study
        assert listed[wid]["trials_done"] == t["done_by"][wid], (wid, listed[wid])


def view_report(pool, kind, t, tmp_path):
    out = tmp_path / f"{kind.name}.html"
    r = run_cli("report", kind.name, "--mongo", pool.url, "--out", out, timeout=300)
    assert r.returncode == 0, r.stderr
    html = out.read_text()
    cards = dict(re.findall(r'<div class="k">([^<]*)</div><div class="v">([^<]*)</div>', html))
    assert cards[f"best {kind.metric}"] == f"{t['value']:.5g}" and cards["best trial"] == str(t["best"])
    assert cards["failed"] == str(t["failed"]) and cards["pruned"] == str(t["pruned"])
    figures = json.loads(re.search(r"var MT_FIGURES = (.*);\nObject\.keys", html).group(1).replace("<\\/", "</"))
    check_charts(kind, figures)
    lanes = {y for trace in figures["timeline"]["data"] for y in trace["y"]}
    assert len(lanes) == len(t["workers"])  # one lane per worker process (two CPU workers of one host: two)
    u = re.search(r"pool utilisation (\d+)%", html)
    assert u and 0 < int(u.group(1)) <= 100


def view_dashboard(pool, kind, t, tmp_path, dash):
    listed = dash["studies"][kind.name]
    assert listed["metric"] == kind.metric and listed["best"]["tid"] == t["best"]
    assert listed["best"]["metric"] == pytest.approx(t["value"])
    page = dash["pages"][next(k for k, v in KINDS.items() if v is kind)]
    assert page["study"]["metric"] == kind.metric and page["study"]["goal"] == kind.goal
    assert page["summary"]["best"]["tid"] == t["best"]
    assert page["summary"]["best"]["metric"] == pytest.approx(t["value"])
    assert page["summary"]["counts"]["pruned"] == t["pruned"] and page["summary"]["counts"]["failed"] == t["failed"]
    check_charts(kind, page["figures"])
    counts = {w["id"]: w["trials_done"] for w in page["workers"]}
    for wid in t["workers"]:  # on a study's page: that worker's trials of this study
        assert counts[wid] == t["study_done_by"][wid], (wid, counts)


def view_final(pool, kind, t, tmp_path):
    r = run_cli("final", kind.name, "--mongo", pool.url, "--out", tmp_path / "final", *kind.final_args,
                timeout=600, MONGOTUNE_HOME=pool.home, PYTHONPATH=pool.env["PYTHONPATH"])
    if not kind.final:
        one_line_error(r)
        return
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"(trial {t['best']}," in r.stdout and "test accuracy" in r.stdout


VIEWS = {"status": view_status, "leaderboard": view_leaderboard, "workers": view_workers,
         "report": view_report, "dashboard": view_dashboard, "final": view_final}


@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_in_every_view(pool, truths, dashboard, kind, view, tmp_path):
    k, t = KINDS[kind], truths[kind]
    assert t["ok"] >= 1 and t["trials"] >= 5  # a study with something to show
    args = (pool, k, t, tmp_path) + ((dashboard,) if view == "dashboard" else ())
    VIEWS[view](*args)


def test_the_pool_ran_pruned_and_failed_trials_and_two_lanes(truths):
    """The matrix covers pruned and failed trials and a pool of two CPU workers on one host."""
    assert sum(t["pruned"] for t in truths.values()) >= 1
    assert truths["command"]["failed"] == 1  # its script fails on its first run, on purpose
    assert any(len(t["workers"]) == 2 for t in truths.values())


@pytest.mark.parametrize("kind", ["command", "hyperopt"])
def test_a_study_of_user_code_is_drawn_in_the_browser(pool, truths, browser, tmp_path, kind):
    """Report (offline) and dashboard in Chromium: the best value, parallel coordinates, slices and importance."""
    from conftest import wait_rendered, watch_errors

    k, t = KINDS[kind], truths[kind]
    out = tmp_path / "report.html"
    assert run_cli("report", k.name, "--mongo", pool.url, "--out", out, timeout=300).returncode == 0
    ctx = browser.new_context(offline=True, viewport={"width": 1300, "height": 900})
    page = ctx.new_page()
    errors = watch_errors(page)
    try:
        page.goto(out.as_uri())
        page.wait_for_function("Array.from(document.querySelectorAll('.plot')).every(e => e.dataset.rendered)",
                               timeout=60_000)
        _drawn_in_page(page, k, t, "best " + k.metric)
        assert errors == [], errors
    finally:
        ctx.close()
    dash = LiveDashboard(pool.url)
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors = watch_errors(page)
    try:
        page.goto(f"{dash.base}/study/{k.name}")
        page.wait_for_function("window.mtState && window.mtState.updates >= 1", timeout=60_000)
        page.wait_for_function("!document.getElementById('plot-importance').dataset.empty", timeout=60_000)
        wait_rendered(page)
        _drawn_in_page(page, k, t, "best " + k.metric)
        assert errors == [], errors
    finally:
        page.close()
        dash.close()


def _drawn_in_page(page, kind, t, card: str) -> None:
    value = page.locator(".card", has_text=card).locator(".v").inner_text()
    assert float(value) == pytest.approx(t["value"], rel=1e-3), value
    for key in ("parallel", "slices", "importance"):
        el = page.locator(f"#plot-{key}")
        el.scroll_into_view_if_needed()
        assert el.get_attribute("data-empty") == "" and el.get_attribute("data-rendered") == "1", key
    assert page.locator("#plot-parallel canvas").count() > 0  # the parcoords lines (WebGL)
    assert page.locator("#plot-parallel .axis-title").count() >= 3  # two parameters and the metric at least
    assert page.locator("#plot-slices .scatterlayer .point").count() >= t["ok"]
    assert page.locator("#plot-importance .barlayer .point").count() >= 2


def test_the_model_fn_study_trained_the_users_own_model(pool):
    """The matrix's --model-fn study trained the user's function (a module outside the package, importable
    on the workers only), and `final` imports it only when told it may."""
    db = db_of(pool.url)
    docs = list(db.jobs.find({"exp_key": "mongotune:model-fn"}))
    assert db.studies.find_one({"_id": "model-fn"})["objective"]["model_fn"] == "usermodels:build_model"
    db.client.close()
    full = [d for d in docs if d["result"]["status"] == "ok" and not d["result"].get("pruned")]
    assert full
    for d in full:
        r, units = d["result"], d["params"]["units"]
        assert 0.0 <= r["val_accuracy"] <= 1.0 and r["loss"] == pytest.approx(-r["val_accuracy"])
        assert set(r["per_class"]) == {str(i) for i in range(10)} and len(d["curve"]) == r["epochs"]
        assert r["params_count"] == 64 * units + units + units * 10 + 10  # the user's model, by its size
    best = min(full, key=lambda d: (d["result"]["loss"], d["tid"]))
    assert os.path.exists(os.path.join(best["artifacts"]["path"], "model.keras"))  # kept: one of the 3 best
    refused = run_cli("final", "model-fn", "--mongo", pool.url, timeout=120, PYTHONPATH=pool.env["PYTHONPATH"])
    assert "--allow-user-code" in one_line_error(refused)
