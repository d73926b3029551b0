"""A study of two objectives with a constraint, run by real workers, in the HTML report and the live
dashboard in Chromium (issue 22): the Pareto front drawn and highlighted, the hypervolume over time, the
infeasible trials marked."""

from __future__ import annotations

import sys
import textwrap

import pytest

from conftest import dashboard_page, watch_errors
from helpers import run_cli

pytestmark = pytest.mark.timeout(600)

SCRIPT = """
    import sys
    x, y = float(sys.argv[1]), float(sys.argv[2])
    print(f"acc={x:.6f} size={(1 - x) ** 2 + y:.6f} y={y:.6f}")
"""


def test_report_and_dashboard_draw_the_front_and_mark_infeasible_trials(mongo_url, browser, tmp_path,
                                                                        live_dashboard):
    from mongotune.report import charts as ch
    from mongotune.report.html import render_report
    from mongotune.report.study_data import load_study_data
    from mongotune.store import open_client

    script = tmp_path / "two.py"
    script.write_text(textwrap.dedent(SCRIPT))
    res = run_cli("launch", "--study", "mov", "--mongo", mongo_url, "--max-evals", 12, "-q", "--workers", 2,
                  "--pruner", "none", "--seed", 3, "--algo", "nsga2", "--metric", "acc:max", "--metric", "size:min",
                  "--constraint", "y<=0.5", "--command", f"{sys.executable} {script} {{x}} {{y}}",
                  "--param", "x:0:1", "--param", "y:0:1", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    client, db, _ = open_client(mongo_url)
    try:
        info, rows = load_study_data(db, "mov")
    finally:
        client.close()
    front = ch.front_rows(info, rows)
    infeasible = [r for r in rows if not r.feasible]
    assert front and all(r.feasible for r in front)
    assert infeasible, "seed 3 draws some y > 0.5 in the first generation"
    fig = ch.front_chart(info, rows).figure
    traces = {t["name"]: t for t in fig["data"]}
    assert sorted(traces["Pareto front"]["text"]) == sorted(f"trial {r.tid}" for r in front)
    assert sorted(traces["infeasible"]["text"]) == sorted(f"trial {r.tid}" for r in infeasible)

    path = tmp_path / "mov.html"
    path.write_text(render_report(info, rows))
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors = watch_errors(page)
    try:
        page.goto(path.as_uri())
        page.wait_for_function("() => Array.from(document.querySelectorAll('.plot')).every(e => e.dataset.rendered)",
                               timeout=60_000)
        state = page.evaluate("Array.from(document.querySelectorAll('.plot')).map(e => [e.id, e.dataset.rendered])")
        assert [k for k, _ in state][:3] == ["plot-history", "plot-front", "plot-hypervolume"]
        assert all(v == "1" for _, v in state), state
        legend = page.locator("#plot-front g.legend").text_content()
        assert "Pareto front" in legend and "infeasible" in legend
        assert "infeasible" in page.locator("#plot-history g.legend").text_content()
        assert page.locator("#plot-hypervolume .scatterlayer .point").count() >= 1
        assert "Pareto front" in page.locator(".cards").text_content()
        assert errors == [], errors
    finally:
        page.close()

    dash = live_dashboard(mongo_url)
    with dashboard_page(browser, dash, "mov") as (page, errors):
        for key in ("front", "hypervolume"):
            assert page.locator(f"#plot-{key}").get_attribute("data-rendered") == "1", key
        assert "Pareto front" in page.locator("#plot-front g.legend").text_content()
        shown = [r for r in rows if r.tid > max(r.tid for r in rows) - 25]
        assert page.locator("#trials-table .infeasible").count() == sum(not r.feasible for r in shown)
        assert "infeasible" in page.locator("#cards").text_content()
        assert errors == [], errors


def test_three_objectives_draw_the_front_in_parallel_coordinates_and_the_hypervolume_grows():
    """No database, no browser: the chart builders on rows as the loaders make them."""
    import datetime

    from mongotune.report import charts as ch
    from mongotune.report.study_data import StudyInfo, TrialRow

    objectives = [{"name": "acc", "goal": "max"}, {"name": "<b>size</b>", "goal": "min"}, {"name": "ms", "goal": "min"}]
    info = StudyInfo(name="three", metric="acc", goal="max", objectives=objectives,
                     constraints=[{"metric": "ms", "op": "<=", "bound": 5.0}])
    t0 = datetime.datetime(2026, 1, 1)
    points = [(0.9, 10, 1), (0.8, 5, 1), (0.95, 20, 9), (0.7, 12, 2), (0.85, 5, 0.5)]
    rows = [TrialRow(tid=i, state="ok", loss=-a, metric=a, values={"acc": a, "<b>size</b>": s, "ms": m},
                     feasible=m <= 5.0, ended=t0 + datetime.timedelta(seconds=i))
            for i, (a, s, m) in enumerate(points)]
    assert [r.tid for r in ch.front_rows(info, rows)] == [0, 4]  # 2 breaks the constraint; 1, 3 are dominated
    fig = ch.front_chart(info, rows).figure
    assert fig["data"][0]["type"] == "parcoords"
    assert [d["label"] for d in fig["data"][0]["dimensions"]] == ["acc", "&lt;b&gt;size&lt;/b&gt;", "ms"]
    assert fig["data"][0]["dimensions"][0]["values"] == [0.9, 0.85]
    hv = ch.hypervolume_chart(info, rows).figure["data"][0]["y"]
    assert hv == sorted(hv) and hv[-1] > hv[0]
    s = ch.summary(info, rows)
    assert s["front"] == [0, 4] and s["infeasible"] == 1
