"""Chart builders shared by the HTML report and the dashboard.

Every builder takes a ``StudyInfo`` and ``TrialRow`` list (``study_data``)
and returns a ``Chart``: a plotly figure as a plain dict (``{"data", "layout"}``),
which plotly.js draws as it is, the HTML report embeds and kaleido turns
into a PNG.  Plain dicts rather than ``plotly.graph_objects`` keep a rebuild
at 1,000 trials cheap (no validation pass); the tests validate every figure
with ``plotly.graph_objects.Figure``.  A chart with nothing to draw yet says
why in its figure instead of failing.

plotly.js reads its text (titles, tick labels, hover text, annotations) as a
small HTML dialect (``<b>``, ``<br>``, ``<a href>``) and decodes entities, so
every string from the database that goes into a figure passes through ``_t``
(``&``, ``<``, ``>`` as entities: shown literally).  Parallel coordinates' tick
labels are the exception: plotly.js puts them in as plain text, so they are
left as they are.  ``Chart.title``, ``note`` and ``empty`` stay plain text: the
pages put them in as text (``write_pngs`` escapes them for plotly).
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from typing import Any

from ..store import pareto
from ..store.best import pick_best
from .study_data import StudyInfo, TrialRow, flatten

COLORS = {"ok": "#3b6fd8", "best": "#f07c1a", "failed": "#d93a3a", "pruned": "#9a9a9a", "running": "#1fa35c",
          "queued": "#c4ccd8", "infeasible": "#b0413e"}
_FONT = {"family": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", "size": 12, "color": "#1f2933"}
_AXIS = {"gridcolor": "#e4e8ee", "zerolinecolor": "#cfd6df", "linecolor": "#cfd6df", "automargin": True}
MIN_IMPORTANCE_TRIALS = 5
MAX_CATEGORIES = 40  # a "categorical" parameter with more distinct values is shown by its most frequent ones


@dataclass
class Chart:
    key: str
    title: str
    figure: dict
    empty: str | None = None  # why there is nothing to draw (the figure says it too)
    note: str | None = None  # one line shown under the title (e.g. pool utilisation)
    extra: dict = field(default_factory=dict)  # numbers behind the chart (utilisation, importances)

    def to_json(self) -> dict:
        return {"key": self.key, "title": self.title, "figure": self.figure, "empty": self.empty,
                "note": self.note, "extra": self.extra}


# ---------------------------------------------------------------- helpers
def _layout(height: int = 380, **kw) -> dict:
    base = {"height": height, "margin": {"l": 60, "r": 24, "t": 28, "b": 48}, "font": _FONT,
            "paper_bgcolor": "#ffffff", "plot_bgcolor": "#fbfcfd", "hovermode": "closest",
            "legend": {"orientation": "h", "y": -0.18, "x": 0}, "xaxis": dict(_AXIS), "yaxis": dict(_AXIS)}
    base.update(kw)
    return base


def _empty(key: str, title: str, message: str, height: int = 220) -> Chart:
    fig = {"data": [], "layout": _layout(height, xaxis={"visible": False}, yaxis={"visible": False},
                                         annotations=[{"text": _t(message), "showarrow": False, "xref": "paper",
                                                       "yref": "paper", "x": 0.5, "y": 0.5,
                                                       "font": {"size": 14, "color": "#6b7785"}}])}
    return Chart(key, title, fig, empty=message)


def _t(v: Any) -> str:
    """``v`` as plotly.js text that shows literally (its markup characters as entities)."""
    return str(v).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _iso(t: datetime.datetime | None) -> str | None:
    return t.isoformat(timespec="milliseconds") if isinstance(t, datetime.datetime) else None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _finished(rows: list[TrialRow]) -> list[TrialRow]:
    """Trials with a metric value: ok and pruned."""
    return [r for r in rows if r.state in ("ok", "pruned") and r.metric is not None]


def best_row(info: StudyInfo, rows: list[TrialRow]) -> TrialRow | None:
    """The study's best trial among ``rows``, by the store's one rule (``store.best``)."""
    return pick_best(rows, lambda r: (r.loss if r.state in ("ok", "pruned") else None, r.state == "pruned", r.tid,
                                      not r.feasible))


def _space_kinds(space: Any, path: str = "", out: dict | None = None) -> dict[str, dict]:
    """Each searched parameter of a JSON space by its flattened name: kind, log scale, options."""
    out = {} if out is None else out
    if isinstance(space, dict):
        if "hp" in space:
            kind = space.get("hp")
            out.setdefault(path, {"kind": kind, "log": kind in ("loguniform", "qloguniform", "lognormal"),
                                  "options": None})
            if kind == "choice":
                opts = space.get("options") or []
                if all(not isinstance(o, (dict, list)) for o in opts):
                    out[path]["options"] = [_cat(o) for o in opts]
                else:
                    out.pop(path, None)  # a choice of sub-spaces: its leaves are the parameters
                for o in opts:
                    if isinstance(o, (dict, list)):
                        _space_kinds(o, path, out)
            return out
        for k, v in space.items():
            _space_kinds(v, f"{path}.{k}" if path else k, out)
    return out


def _cat(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "n/a"
    return _fmt(v)


@dataclass
class Param:
    name: str
    numeric: bool
    log: bool
    values: list  # per row: float (numeric) or str (categorical) or None
    categories: list | None = None


def params_table(info: StudyInfo, rows: list[TrialRow]) -> tuple[list[Param], dict[str, Any]]:
    """The parameters that vary across ``rows``, typed, and the constant ones with their value."""
    flat = [flatten(r.params) for r in rows]
    kinds = _space_kinds(info.space) if info.space else {}
    names: list[str] = [n for n in kinds]
    for f in flat:
        for k in f:
            if k not in names:
                names.append(k)
    params, constants = [], {}
    for name in names:
        raw = [f.get(name) for f in flat]
        present = [v for v in raw if v is not None]
        if not present:
            continue
        distinct = {_cat(v) for v in present}
        if len(distinct) == 1 and len(present) == len(raw) and len(raw) > 1:
            constants[name] = present[0]
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present) and \
            (kinds.get(name, {}).get("kind") != "choice")
        if numeric:
            vals = [float(v) if v is not None and math.isfinite(float(v)) else None for v in raw]
            fin = [v for v in vals if v is not None]
            log = kinds.get(name, {}).get("log")
            if log is None:
                log = bool(fin) and min(fin) > 0 and max(fin) / min(fin) >= 1000
            log = bool(log) and bool(fin) and min(fin) > 0
            params.append(Param(name, True, log, vals))
        else:
            vals = [None if v is None else _cat(v) for v in raw]
            order = list(kinds.get(name, {}).get("options") or [])
            counts: dict[str, int] = {}
            for v in vals:
                if v is not None:
                    counts[v] = counts.get(v, 0) + 1
            cats = [c for c in order if c in counts] + sorted((c for c in counts if c not in order),
                                                              key=lambda c: (-counts[c], c))
            if len(cats) > MAX_CATEGORIES:
                keep = set(sorted(cats, key=lambda c: -counts[c])[:MAX_CATEGORIES - 1])
                vals = [v if v is None or v in keep else "other" for v in vals]
                cats = [c for c in cats if c in keep] + ["other"]
            params.append(Param(name, False, False, vals, cats))
    return params, constants


def _metric_label(info: StudyInfo) -> str:
    return f"{info.metric} ({'higher' if info.goal == 'max' else 'lower'} is better)"


def _colorscale(info: StudyInfo) -> dict:
    # brighter is better whichever way the metric goes
    return {"colorscale": "Viridis", "reversescale": info.goal == "min"}


# ---------------------------------------------------------------- optimisation history
def history_chart(info: StudyInfo, rows: list[TrialRow]) -> Chart:
    title = "Optimisation history"
    done = [r for r in rows if r.state in ("ok", "failed", "pruned")]
    if not done:
        return _empty("history", title, "no finished trials yet")
    ok = sorted([r for r in done if r.state == "ok" and r.loss is not None and r.feasible], key=lambda r: r.tid)
    infeasible = sorted([r for r in done if r.state == "ok" and r.loss is not None and not r.feasible],
                        key=lambda r: r.tid)
    pruned = sorted([r for r in done if r.state == "pruned" and r.loss is not None], key=lambda r: r.tid)
    failed = sorted([r for r in done if r.state == "failed" or r.loss is None], key=lambda r: r.tid)
    losses = [r.loss for r in ok + pruned + infeasible]
    lo, hi = (min(losses), max(losses)) if losses else (0.0, 1.0)
    top = hi + 0.06 * ((hi - lo) or 1.0)

    def best_steps(seq, key):
        xs, ys, best = [], [], math.inf
        for r in seq:
            if r.loss is not None and r.loss < best:
                best = r.loss
            if best < math.inf:
                xs.append(key(r))
                ys.append(best)
        return xs, ys

    def text(r):  # hover: the tid and, for failed trials, why
        return f"trial {r.tid}" + (f" {r.state}<br>{_t(r.failure['kind'])}: {_t(r.failure['reason'][:80])}"
                                   if r.failure else (" pruned" if r.state == "pruned" else ""))

    data = []
    for axis, key, by_time in (("", lambda r: r.tid, False), ("2", lambda r: _iso(r.ended), True)):
        def pts(seq):
            seq = [r for r in seq if not by_time or r.ended is not None]
            return seq
        show = axis == ""
        a = {"xaxis": f"x{axis}", "yaxis": f"y{axis}"}
        s_ok = pts(ok)
        data.append({"type": "scatter", "mode": "markers", "name": "trial loss", "legendgroup": "ok",
                     "showlegend": show, "x": [key(r) for r in s_ok], "y": [r.loss for r in s_ok],
                     "text": [text(r) for r in s_ok],
                     "hovertemplate": "%{text}<br>loss %{y:.5g}<extra></extra>",
                     "marker": {"color": COLORS["ok"], "size": 6, "opacity": 0.75}, **a})
        order = sorted(ok, key=lambda r: r.ended or datetime.datetime.max) if by_time else ok
        bx, by = best_steps(pts(order), key)
        data.append({"type": "scatter", "mode": "lines", "name": "best so far", "legendgroup": "best",
                     "showlegend": show, "x": bx, "y": by, "line": {"color": COLORS["best"], "width": 2.5,
                                                                    "shape": "hv"}, "hoverinfo": "skip", **a})
        s_in = pts(infeasible)
        if s_in:  # they break a constraint: never the best
            data.append({"type": "scatter", "mode": "markers", "name": "infeasible", "legendgroup": "infeasible",
                         "showlegend": show, "x": [key(r) for r in s_in], "y": [r.loss for r in s_in],
                         "text": [text(r) + " infeasible" for r in s_in],
                         "hovertemplate": "%{text}<br>loss %{y:.5g}<extra></extra>",
                         "marker": {"color": COLORS["infeasible"], "size": 7, "symbol": "circle-open"}, **a})
        s_pr = pts(pruned)
        if s_pr:
            data.append({"type": "scatter", "mode": "markers", "name": "pruned", "legendgroup": "pruned",
                         "showlegend": show, "x": [key(r) for r in s_pr], "y": [r.loss for r in s_pr],
                         "text": [text(r) for r in s_pr],
                         "hovertemplate": "%{text}<br>loss %{y:.5g}<extra></extra>",
                         "marker": {"color": COLORS["pruned"], "size": 7, "symbol": "triangle-down"}, **a})
        s_f = pts(failed)
        if s_f:
            data.append({"type": "scatter", "mode": "markers", "name": "failed (no loss)", "legendgroup": "failed",
                         "showlegend": show, "x": [key(r) for r in s_f], "y": [top] * len(s_f),
                         "text": [text(r) for r in s_f], "hoverinfo": "text",
                         "marker": {"color": COLORS["failed"], "size": 8, "symbol": "x-thin",
                                    "line": {"width": 2, "color": COLORS["failed"]}}, **a})
    layout = _layout(380, xaxis={**_AXIS, "domain": [0, 0.47], "title": {"text": "trial number"}},
                     xaxis2={**_AXIS, "domain": [0.55, 1], "title": {"text": "finished at (UTC)"}, "type": "date",
                             "anchor": "y2"},
                     yaxis={**_AXIS, "title": {"text": "loss (minimised)"}},
                     yaxis2={**_AXIS, "anchor": "x2", "matches": "y"})
    best = best_row(info, rows)
    note = None
    if best is not None:
        note = f"best: trial {best.tid}, loss {best.loss:.5g}" + (
            f", {info.metric} {best.metric:.5g}" if best.metric is not None and info.metric != "loss" else "")
    return Chart("history", title, {"data": data, "layout": layout}, note=note)


# ---------------------------------------------------------------- several objectives
def _losses(info: StudyInfo, r: TrialRow) -> tuple[float, ...] | None:
    """A trial's objectives as losses (lower is better), None unless it has every one."""
    values = r.values or {}
    out = []
    for o in info.objectives:
        v = values.get(str(o["name"]))
        if v is None:
            return None
        out.append(pareto.orient(v, str(o.get("goal"))))
    return tuple(out)


def _front_candidate(r: TrialRow) -> bool:
    return r.state == "ok" and r.feasible


def front_rows(info: StudyInfo, rows: list[TrialRow]) -> list[TrialRow]:
    """The study's Pareto front among ``rows`` (``store.pareto``: complete, feasible, non-dominated)."""
    return pareto.front([r for r in rows if _front_candidate(r)], lambda r: _losses(info, r))


def _objective_label(o: dict) -> str:
    return f"{_t(o['name'])} ({'higher' if o.get('goal') == 'max' else 'lower'} is better)"


def front_chart(info: StudyInfo, rows: list[TrialRow]) -> Chart:
    """Two objectives: every finished trial, the front highlighted and joined; three or more: parallel
    coordinates of the front's members."""
    title = "Pareto front"
    front = front_rows(info, rows)
    if not front:
        return _empty("front", title, "no complete trial that meets the constraints yet")
    names = [str(o["name"]) for o in info.objectives]
    note = f"{len(front)} trial(s) on the front of {', '.join(names)}"
    if len(names) > 2:
        dims = [{"label": _t(n), "values": [r.values[n] for r in front]} for n in names]
        trace = {"type": "parcoords", "dimensions": dims, "line": {"color": [r.values[names[0]] for r in front],
                 "colorscale": "Viridis", "reversescale": info.objectives[0].get("goal") == "min"}}
        layout = _layout(380, margin={"l": 70, "r": 40, "t": 60, "b": 30})
        layout.pop("xaxis"), layout.pop("yaxis")
        return Chart("front", title, {"data": [trace], "layout": layout}, note=note + "; colour: " + names[0])
    on = {r.tid for r in front}
    x, y = names

    def trace(seq, name, marker, mode="markers", **kw):
        return {"type": "scatter", "mode": mode, "name": name, "x": [r.values.get(x) for r in seq],
                "y": [r.values.get(y) for r in seq], "text": [f"trial {r.tid}" for r in seq],
                "hovertemplate": "%{text}<br>" + _t(x) + " %{x:.5g}<br>" + _t(y) + " %{y:.5g}<extra></extra>",
                "marker": marker, **kw}

    others = [r for r in rows if r.state == "ok" and r.tid not in on and r.values and None not in r.values.values()]
    data = [trace([r for r in others if r.feasible], "trials", {"color": COLORS["ok"], "size": 6, "opacity": 0.6}),
            trace(sorted(front, key=lambda r: r.values[x]), "Pareto front", {"color": COLORS["best"], "size": 9},
                  mode="lines+markers", line={"color": COLORS["best"], "shape": "hv", "width": 1.5})]
    bad = [r for r in others if not r.feasible]
    if bad:
        data.append(trace(bad, "infeasible", {"color": COLORS["infeasible"], "size": 7, "symbol": "x-thin",
                                              "line": {"width": 2, "color": COLORS["infeasible"]}}))
    layout = _layout(380, xaxis={**_AXIS, "title": {"text": _objective_label(info.objectives[0])}},
                     yaxis={**_AXIS, "title": {"text": _objective_label(info.objectives[1])}})
    return Chart("front", title, {"data": data, "layout": layout}, note=note)


def hypervolume_chart(info: StudyInfo, rows: list[TrialRow]) -> Chart:
    """The front's hypervolume as trials finished (``pareto.hypervolume_history``: each objective scaled
    from the best to the worst value any complete feasible trial reached, reference 10 % beyond the worst)."""
    title = "Hypervolume over time"
    done = sorted([r for r in rows if r.state in ("ok", "pruned", "failed") and r.ended is not None],
                  key=lambda r: (r.ended, r.tid))
    history = pareto.hypervolume_history([_losses(info, r) if _front_candidate(r) else None for r in done])
    pts = [(i + 1, r, v) for i, (r, v) in enumerate(zip(done, history)) if v is not None]
    if not pts:
        return _empty("hypervolume", title, "no complete trial that meets the constraints yet")
    trace = {"type": "scatter", "mode": "lines+markers", "name": "hypervolume", "x": [n for n, _, _ in pts],
             "y": [v for _, _, v in pts], "text": [f"after trial {r.tid}" for _, r, _ in pts],
             "hovertemplate": "%{text}<br>hypervolume %{y:.4g}<extra></extra>",
             "line": {"color": COLORS["best"], "shape": "hv", "width": 2}, "marker": {"size": 4}}
    layout = _layout(320, xaxis={**_AXIS, "title": {"text": "trials finished"}},
                     yaxis={**_AXIS, "title": {"text": "hypervolume (normalised)"}})
    return Chart("hypervolume", title, {"data": [trace], "layout": layout},
                 note=f"now {pts[-1][2]:.4g} (each objective scaled to [0, 1] over the complete feasible trials, "
                      f"reference point 1.1)")


# ---------------------------------------------------------------- parallel coordinates
def _ticks(lo: float, hi: float, log: bool, n: int = 5) -> tuple[list[float], list[str]]:
    if hi <= lo:
        return [lo], [_fmt(10 ** lo if log else lo)]
    vals = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
    return vals, [f"{(10 ** v if log else v):.3g}" for v in vals]


def parallel_chart(info: StudyInfo, rows: list[TrialRow]) -> Chart:
    title = "Parallel coordinates"
    fin = _finished(rows)
    if not fin:
        return _empty("parallel", title, "no trial with a metric value yet")
    params, constants = params_table(info, fin)
    if not params:
        return _empty("parallel", title, "no parameter varies across the finished trials"
                      + (f" (constant: {', '.join(constants)})" if constants else ""))
    dims = []
    for p in params:
        if p.numeric:
            vals = [None if v is None else (math.log10(v) if p.log else v) for v in p.values]
            fin_v = [v for v in vals if v is not None]
            lo, hi = min(fin_v), max(fin_v)
            tv, tt = _ticks(lo, hi, p.log)
            if any(v is None for v in vals):  # a conditional parameter: absent trials sit below the axis
                na = lo - 0.12 * ((hi - lo) or 1.0)
                vals = [na if v is None else v for v in vals]
                tv, tt, lo = [na] + tv, ["n/a"] + tt, na
            dims.append({"label": _t(p.name) + (" (log)" if p.log else ""), "values": vals, "range": [lo, hi],
                         "tickvals": tv, "ticktext": tt})
        else:
            cats = list(p.categories or [])
            if any(v is None for v in p.values):
                cats.append("n/a")
            index = {c: i for i, c in enumerate(cats)}
            vals = [index["n/a" if v is None else v] for v in p.values]
            # parcoords tick labels are plain text in plotly.js (no markup read): not escaped
            dims.append({"label": _t(p.name), "values": vals, "range": [-0.5, len(cats) - 0.5] if len(cats) > 1 else
                         [-1, 1], "tickvals": list(range(len(cats))), "ticktext": cats})
    metric = [r.metric for r in fin]
    dims.append({"label": _t(info.metric), "values": metric})
    trace = {"type": "parcoords", "dimensions": dims,
             "domain": {"x": [0, 0.9]},
             "line": {"color": metric, **_colorscale(info), "showscale": True,
                      "colorbar": {"title": {"text": _t(info.metric)}, "thickness": 12, "x": 0.97}},
             "labelangle": -20, "labelside": "top"}
    layout = _layout(420, margin={"l": 70, "r": 30, "t": 90, "b": 30})
    layout.pop("xaxis"), layout.pop("yaxis")
    note = f"{len(fin)} trials with a {info.metric}; colour: {_metric_label(info)}"
    if constants:
        note += "; constant: " + ", ".join(f"{k}={_fmt(v)}" for k, v in constants.items())
    return Chart("parallel", title, {"data": [trace], "layout": layout}, note=note)


# ---------------------------------------------------------------- slices
def slice_chart(info: StudyInfo, rows: list[TrialRow], cols: int = 3) -> Chart:
    title = f"{info.metric} against each parameter"
    fin = _finished(rows)
    if not fin:
        return _empty("slices", title, "no trial with a metric value yet")
    params, constants = params_table(info, fin)
    if not params:
        return _empty("slices", title, "no parameter varies across the finished trials")
    cols = max(1, min(cols, len(params)))
    nrows = math.ceil(len(params) / cols)
    gx, gy = 0.07, 0.5 / max(nrows, 1) * 0.45
    w = (1 - gx * (cols - 1)) / cols
    h = (1 - gy * (nrows - 1)) / nrows
    gl = len(fin) > 400
    data, layout = [], _layout(max(300, 270 * nrows), showlegend=False, margin={"l": 60, "r": 70, "t": 20, "b": 40})
    tids = [r.tid for r in fin]
    is_pruned = [r.state == "pruned" for r in fin]
    for i, p in enumerate(params):
        n = "" if i == 0 else str(i + 1)
        c, rr = i % cols, i // cols
        x0 = c * (w + gx)
        y1 = 1 - rr * (h + gy)
        layout[f"xaxis{n}"] = {**_AXIS, "domain": [x0, x0 + w], "anchor": f"y{n}",
                               "title": {"text": _t(p.name), "standoff": 4},
                               **({"type": "log"} if p.numeric and p.log else {}),
                               **({} if p.numeric else {
                                   "type": "category", "categoryorder": "array",
                                   "categoryarray": [_t(c) for c in p.categories or []] + ["n/a"]})}
        layout[f"yaxis{n}"] = {**_AXIS, "domain": [max(0.0, y1 - h), y1], "anchor": f"x{n}",
                               **({"title": {"text": _t(info.metric)}} if c == 0 else {})}
        keep = [j for j, v in enumerate(p.values) if v is not None or not p.numeric]
        for pruned in (False, True):
            idx = [j for j in keep if is_pruned[j] == pruned]
            if not idx:
                continue
            xs = [("n/a" if p.values[j] is None else p.values[j] if p.numeric else _t(p.values[j])) for j in idx]
            marker = ({"color": COLORS["pruned"], "symbol": "triangle-down", "size": 7} if pruned else
                      {"color": [tids[j] for j in idx], "colorscale": "Blues", "cmin": min(tids),
                       "cmax": max(tids) if max(tids) > min(tids) else min(tids) + 1, "size": 7, "opacity": 0.8,
                       "line": {"width": 0.5, "color": "#5a6b80"}, "showscale": i == 0,
                       "colorbar": {"title": {"text": "trial"}, "thickness": 10, "len": min(1.0, 1.2 / nrows),
                                    "y": 1, "yanchor": "top"}})
            data.append({"type": "scattergl" if gl else "scatter", "mode": "markers", "x": xs,
                         "y": [fin[j].metric for j in idx], "xaxis": f"x{n}", "yaxis": f"y{n}",
                         "name": "pruned" if pruned else "trials", "marker": marker,
                         "customdata": [tids[j] for j in idx], "meta": [_t(p.name), _t(info.metric)],
                         # names go in through meta: in the template itself "%{...}" would be read
                         "hovertemplate": f"trial %{{customdata}}{' (pruned)' if pruned else ''}<br>%{{meta[0]}} "
                                          "%{x}<br>%{meta[1]} %{y:.4g}<extra></extra>"})
    note = f"{len(fin)} trials; colour: trial number (later trials darker)"
    if constants:
        note += "; constant: " + ", ".join(f"{k}={_fmt(v)}" for k, v in constants.items())
    return Chart("slices", title, {"data": data, "layout": layout}, note=note)


# ---------------------------------------------------------------- learning curves
def curves_chart(info: StudyInfo, rows: list[TrialRow]) -> Chart:
    title = "Learning curves"
    with_curve = [r for r in rows if r.curve]
    if not with_curve:
        return _empty("curves", title, "no per-epoch values recorded yet")
    best = best_row(info, rows)
    groups: dict[str, list[TrialRow]] = {"ok": [], "pruned": [], "failed": [], "running": []}
    for r in sorted(with_curve, key=lambda r: r.tid):
        if best is not None and r.tid == best.tid:
            continue
        groups.get(r.state, groups["ok"]).append(r)
    names = {"ok": "finished", "pruned": "pruned", "failed": "failed", "running": "running"}
    data = []
    for state, seq in groups.items():
        if not seq:
            continue
        xs, ys, tx = [], [], []
        for r in seq:
            for p in r.curve:
                xs.append(p["step"])
                ys.append(p["value"])
                tx.append(r.tid)
            xs.append(None), ys.append(None), tx.append(None)
        data.append({"type": "scatter", "mode": "lines", "name": names[state], "x": xs, "y": ys, "customdata": tx,
                     "connectgaps": False, "opacity": 0.45 if state == "ok" else 0.75,
                     "line": {"color": COLORS[state], "width": 1.2, **({"dash": "dot"} if state == "failed" else {})},
                     "hovertemplate": "trial %{customdata}<br>step %{x}<br>%{y:.4g}<extra></extra>"})
        if state == "pruned":
            ends = [(r.curve[-1]["step"] if r.pruned_at is None else r.pruned_at, r.curve[-1]["value"], r.tid)
                    for r in seq]
            data.append({"type": "scatter", "mode": "markers", "name": "pruned here", "x": [e[0] for e in ends],
                         "y": [e[1] for e in ends], "text": [f"trial {e[2]} pruned at step {_t(e[0])}" for e in ends],
                         "hoverinfo": "text", "marker": {"symbol": "x", "size": 8, "color": COLORS["pruned"],
                                                         "line": {"width": 1, "color": "#555"}}})
    if best is not None and best.curve:
        data.append({"type": "scatter", "mode": "lines+markers", "name": f"best (trial {best.tid})",
                     "x": [p["step"] for p in best.curve], "y": [p["value"] for p in best.curve],
                     "line": {"color": COLORS["best"], "width": 3}, "marker": {"size": 5},
                     "hovertemplate": f"trial {best.tid} (best)<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>"})
    layout = _layout(380, xaxis={**_AXIS, "title": {"text": "epoch"}},
                     yaxis={**_AXIS, "title": {"text": _t(info.metric) if info.metric != "loss" else
                                               "monitored metric"}})
    note = f"{len(with_curve)} trials with per-epoch values"
    return Chart("curves", title, {"data": data, "layout": layout}, note=note)


# ---------------------------------------------------------------- parameter importance
def param_importance(info: StudyInfo, rows: list[TrialRow], *, seed: int = 0) -> dict[str, float] | str:
    """Permutation importance of each varying parameter for the metric, from a random forest.

    scikit-learn fits a forest on (parameters -> metric) over the trials that
    have a metric, then measures how much shuffling each parameter's column
    worsens its fit (``sklearn.inspection.permutation_importance``).  The
    shares are normalised to sum to 1.  A string says why there is no answer.
    """
    fin = _finished(rows)
    if len(fin) < MIN_IMPORTANCE_TRIALS:
        return f"needs {MIN_IMPORTANCE_TRIALS} trials with a metric value (has {len(fin)})"
    params, _ = params_table(info, fin)
    if not params:
        return "no parameter varies across the finished trials"
    y = [r.metric for r in fin]
    if max(y) - min(y) <= 1e-12:
        return f"{info.metric} is the same in every finished trial"
    import numpy as np
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance

    cols = []
    for p in params:
        if p.numeric:
            cols.append([np.nan if v is None else (math.log10(v) if p.log else v) for v in p.values])
        else:
            index = {c: i for i, c in enumerate(p.categories or [])}
            cols.append([np.nan if v is None else float(index.get(v, -1)) for v in p.values])
    x = np.asarray(cols, dtype=float).T
    yv = np.asarray(y, dtype=float)
    forest = RandomForestRegressor(n_estimators=48, min_samples_leaf=2, random_state=seed, n_jobs=1)
    forest.fit(x, yv)
    res = permutation_importance(forest, x, yv, n_repeats=4, random_state=seed, n_jobs=1)
    imp = np.clip(res.importances_mean, 0, None)
    total = float(imp.sum())
    if total <= 0:
        return "no parameter explains the metric's variation"
    return {p.name: float(v / total) for p, v in zip(params, imp)}


def importance_chart(info: StudyInfo, rows: list[TrialRow], importances: dict | str | None = None) -> Chart:
    title = "Parameter importance"
    imp = param_importance(info, rows) if importances is None else importances
    if isinstance(imp, str):
        return _empty("importance", title, imp)
    items = sorted(imp.items(), key=lambda kv: kv[1])
    trace = {"type": "bar", "orientation": "h", "x": [v for _, v in items], "y": [_t(k) for k, _ in items],
             "marker": {"color": COLORS["ok"]}, "text": [f"{v:.0%}" for _, v in items], "textposition": "outside",
             "hovertemplate": "%{y}: %{x:.1%}<extra></extra>", "cliponaxis": False}
    layout = _layout(max(220, 60 + 28 * len(items)), showlegend=False,
                     xaxis={**_AXIS, "title": {"text": f"share of {_t(info.metric)} explained"}, "tickformat": ".0%",
                            "range": [0, max(v for _, v in items) * 1.18]},
                     yaxis={**_AXIS, "automargin": True}, margin={"l": 120, "r": 30, "t": 16, "b": 48})
    n = len(_finished(rows))
    note = f"permutation importance on a random forest (scikit-learn), {n} trials"
    return Chart("importance", title, {"data": [trace], "layout": layout}, note=note, extra={"importance": imp})


# ---------------------------------------------------------------- pool timeline
def _lane(r: TrialRow) -> str:
    """A trial's lane: its worker process (two workers of one host, or of one GPU, are two lanes)."""
    w = r.worker or {}
    return str(w.get("id") or w.get("host") or "unknown worker")


def lane_labels(rows: list[TrialRow]) -> dict[str, str]:
    """Each lane's label: host, GPU (CPU workers have none) and pid; the worker id where those collide."""
    labels: dict[str, str] = {}
    for r in rows:
        w = r.worker or {}
        lane = _lane(r)
        if lane in labels:
            continue
        gpu = w.get("gpu")
        parts = [str(w.get("host") or "?")] + ([f"GPU {gpu}"] if gpu not in (None, "", "none") else [])
        labels[lane] = " · ".join(parts + ([f"pid {w['pid']}"] if w.get("pid") is not None else []))
    seen: dict[str, int] = {}
    for label in labels.values():
        seen[label] = seen.get(label, 0) + 1
    return {lane: (label if seen[label] == 1 else f"{label} · {lane}") for lane, label in labels.items()}


def utilisation(rows: list[TrialRow], now: datetime.datetime | None = None) -> dict:
    """Busy time over lanes x span: how much of the pool's time went to trials."""
    bars = []
    for r in rows:
        if r.started is None or r.state == "queued":
            continue
        end = r.ended if r.state != "running" else (now or r.refreshed or r.started)
        if end is None or end < r.started:
            continue
        bars.append((_lane(r), r.started, end))
    if not bars:
        return {"lanes": 0, "span_s": 0.0, "busy_s": 0.0, "utilisation": None}
    t0, t1 = min(b[1] for b in bars), max(b[2] for b in bars)
    span = (t1 - t0).total_seconds()
    lanes = sorted({b[0] for b in bars})
    # a lane's busy time is the union of its bars (a requeued trial can overlap its successor)
    busy = 0.0
    for lane in lanes:
        cur_s = cur_e = None
        for _, s, e in sorted((b for b in bars if b[0] == lane), key=lambda b: b[1]):
            if cur_e is None or s > cur_e:
                if cur_e is not None:
                    busy += (cur_e - cur_s).total_seconds()
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
        busy += (cur_e - cur_s).total_seconds()
    return {"lanes": len(lanes), "span_s": round(span, 3), "busy_s": round(busy, 3),
            "utilisation": round(busy / (len(lanes) * span), 4) if span > 0 else None,
            "start": _iso(t0), "end": _iso(t1)}


def timeline_chart(info: StudyInfo, rows: list[TrialRow], now: datetime.datetime | None = None) -> Chart:
    title = "Pool timeline"
    u = utilisation(rows, now)
    if not u["lanes"]:
        return _empty("timeline", title, "no trial has started yet")
    data = []
    labels = lane_labels(rows)
    lanes = set()
    for state in ("ok", "pruned", "failed", "running"):
        seq = [r for r in rows if r.state == state and r.started is not None]
        xs, base, ys, tx = [], [], [], []
        for r in seq:
            end = r.ended if state != "running" else (now or r.refreshed or r.started)
            if end is None or end < r.started:
                continue
            dur = (end - r.started).total_seconds()
            lanes.add(labels[_lane(r)])
            xs.append(round(dur * 1000.0, 1))
            base.append(_iso(r.started))
            ys.append(_t(labels[_lane(r)]))
            tx.append(f"trial {r.tid} ({state}) {dur:.1f}s")
        if xs:
            data.append({"type": "bar", "orientation": "h", "name": state, "x": xs, "base": base, "y": ys,
                         "text": tx, "hoverinfo": "text", "textposition": "none",
                         "marker": {"color": COLORS[state], "line": {"width": 0.6, "color": "#ffffff"}}})
    order = [_t(lane) for lane in sorted(lanes, reverse=True)]
    layout = _layout(max(200, 90 + 34 * len(order)), barmode="overlay", bargap=0.25,
                     xaxis={**_AXIS, "type": "date", "title": {"text": "time (UTC)"}},
                     yaxis={**_AXIS, "type": "category", "categoryorder": "array", "categoryarray": order},
                     margin={"l": 150, "r": 24, "t": 16, "b": 70}, legend={"orientation": "h", "y": -0.35, "x": 0})
    pct = "n/a" if u["utilisation"] is None else f"{u['utilisation']:.0%}"
    note = (f"pool utilisation {pct} (busy time / ({u['lanes']} lanes x {u['span_s']:.0f} s span)); "
            "gaps are idle workers")
    return Chart("timeline", title, {"data": data, "layout": layout}, note=note, extra={"utilisation": u})


# ---------------------------------------------------------------- failures and the final test
def failure_rows(rows: list[TrialRow]) -> list[dict]:
    labels = lane_labels(rows)
    out = []
    for r in sorted(rows, key=lambda r: r.tid):
        if r.state != "failed":
            continue
        f = r.failure or {}
        out.append({"tid": r.tid, "kind": f.get("kind", "unknown"), "reason": f.get("reason", ""),
                    "worker": labels[_lane(r)] if r.worker else None, "attempts": r.attempts, "ended": _iso(r.ended)})
    return out


def confusion_chart(info: StudyInfo) -> Chart | None:
    """The final test's confusion matrix, when ``final`` stored the matrix itself (else its PNG is shown)."""
    final = info.final or {}
    cm = final.get("confusion_matrix")
    if not isinstance(cm, list) or not cm or not all(isinstance(r, list) for r in cm):
        return None
    names = [_t(c) for c in (final.get("class_names") or range(len(cm)))]
    totals = [max(1, sum(r)) for r in cm]
    z = [[v / totals[i] for v in r] for i, r in enumerate(cm)]
    trace = {"type": "heatmap", "z": z, "x": names, "y": names, "colorscale": "Blues", "zmin": 0, "zmax": 1,
             "text": [[str(v) for v in r] for r in cm], "texttemplate": "%{text}" if len(cm) <= 20 else None,
             "hovertemplate": "true %{y}, predicted %{x}: %{text}<extra></extra>"}
    side = min(720, 220 + 28 * len(cm))
    layout = _layout(side, xaxis={**_AXIS, "title": {"text": "predicted"}, "type": "category"},
                     yaxis={**_AXIS, "title": {"text": "true"}, "type": "category", "autorange": "reversed"})
    return Chart("confusion", "Test confusion matrix", {"data": [trace], "layout": layout})


# ---------------------------------------------------------------- everything
def summary(info: StudyInfo, rows: list[TrialRow], now: datetime.datetime | None = None) -> dict:
    from .study_data import rows_by_state

    best = best_row(info, rows)
    out = {"counts": rows_by_state(rows), "trials": len(rows),
           "best": None if best is None else {"tid": best.tid, "loss": best.loss, "metric": best.metric,
                                              "pruned": best.state == "pruned", "params": best.params},
           "utilisation": utilisation(rows, now)}
    if info.constraints:
        out["infeasible"] = sum(1 for r in rows if r.state in ("ok", "pruned") and not r.feasible)
    if len(info.objectives) > 1:
        out["front"] = [r.tid for r in front_rows(info, rows)]
    return out


def build_charts(info: StudyInfo, rows: list[TrialRow], now: datetime.datetime | None = None, *,
                 importances: dict | str | None = None) -> list[Chart]:
    """Every chart of a study, in the order the report shows them."""
    charts = [history_chart(info, rows)]
    if len(info.objectives) > 1:
        charts += [front_chart(info, rows), hypervolume_chart(info, rows)]
    charts += [parallel_chart(info, rows), slice_chart(info, rows), curves_chart(info, rows),
               importance_chart(info, rows, importances), timeline_chart(info, rows, now)]
    cm = confusion_chart(info)
    if cm is not None:
        charts.append(cm)
    return charts
