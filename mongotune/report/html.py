"""``mongotune report``: one self-contained HTML file per study, and PNGs of its charts.

The file embeds plotly.js (from the installed ``plotly`` package), its
styles and every figure's data, so it opens offline from disk: no CDN, no
server.  PNGs are drawn by kaleido, which drives the system's Chromium.

Every string from the database is escaped here (``_esc``) or by the chart
builders (``charts._t``), and the file carries a Content-Security-Policy that
runs only its own inline scripts (by hash: no event-handler attribute, no
other script) and loads nothing from the network.  Files named by the study
document (``final.report_path``, ``final.confusion_matrix_path``) are embedded
only from the study's own artifact directory (``embed_roots``).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import paths, safepath
from ..errors import ConfigError
from .charts import Chart, build_charts, failure_rows, summary
from .study_data import StudyInfo, TrialRow, load_study_data, server_now

STYLE = """
:root { --fg:#1f2933; --muted:#6b7785; --line:#e4e8ee; --bg:#f4f6f9; --card:#fff; --ok:#3b6fd8; --bad:#d93a3a;
        --run:#1fa35c; --pruned:#9a9a9a; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif; color:var(--fg);
       background:var(--bg); }
header { background:#1d2a3a; color:#fff; padding:16px 28px; }
header h1 { margin:0; font-size:22px; font-weight:600; }
header .sub { color:#b9c5d3; margin-top:4px; }
header a { color:#b9d4ff; }
main { padding:18px 28px 40px; max-width:1500px; margin:0 auto; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin-bottom:16px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px 14px; min-width:120px; }
.card .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card .v { font-size:20px; font-weight:600; }
.grid { display:grid; grid-template-columns: repeat(auto-fit, minmax(640px, 1fr)); gap:16px; }
section.chart, section.block { background:var(--card); border:1px solid var(--line); border-radius:8px;
       padding:12px 14px; min-width:0; }
section.wide { grid-column: 1 / -1; }
section h2 { font-size:16px; margin:0 0 2px; }
.note { color:var(--muted); font-size:12.5px; margin:0 0 6px; min-height:1em; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { color:var(--muted); font-weight:600; font-size:12px; }
td.num { font-variant-numeric: tabular-nums; }
.state { display:inline-block; padding:1px 7px; border-radius:9px; font-size:12px; color:#fff; }
.state.ok { background:var(--ok); } .state.failed { background:var(--bad); } .state.running { background:var(--run); }
.state.pruned { background:var(--pruned); } .state.queued { background:#b4bcc8; }
.state.idle { background:#7d8b9c; } .state.lost { background:#d97a1a; } .state.stopped { background:#b4bcc8; }
pre { background:#f7f8fa; border:1px solid var(--line); padding:10px; overflow:auto; font-size:12.5px; }
.empty { color:var(--muted); }
footer { color:var(--muted); font-size:12px; margin-top:24px; }
"""

WIDE = ("history", "parallel", "slices", "timeline")  # the charts that take a whole row
_PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}

RENDER_JS = """
function mtRender(el, fig) {
  return Plotly.react(el, fig.data, fig.layout, %s).then(function () { el.dataset.rendered = '1'; },
    function (err) { el.dataset.rendered = 'error'; console.error('chart ' + el.id + ': ' + err); });
}
""" % json.dumps(_PLOTLY_CONFIG)


def plotly_js() -> str:
    """plotly.js as shipped inside the installed ``plotly`` Python package (about 4.8 MB)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _json(obj) -> str:
    def default(o):
        if isinstance(o, (datetime.datetime, datetime.date)):
            return o.isoformat()
        return str(o)

    # "</" would end the <script> element early
    return json.dumps(obj, default=default, separators=(",", ":")).replace("</", "<\\/")


MAX_TEXT_BYTES = 1_000_000  # a classification report embedded from disk
MAX_PNG_BYTES = 20_000_000  # a confusion matrix image embedded from disk
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def embed_roots(info: StudyInfo) -> list[Path]:
    """The directories whose files the report of ``info`` may embed: the study's own directory under
    this machine's artifact root, and under the study's shared root when ``$MONGOTUNE_ALLOWED_ROOTS``
    trusts it (the study document, which anyone with write access can change, names that root)."""
    roots = [paths.artifacts_dir()]
    if info.artifacts_root and safepath.inside(info.artifacts_root, safepath.env_allowed_roots()):
        roots.append(Path(info.artifacts_root))
    out = []
    for root in roots:
        try:
            out.append(safepath.study_dir(root, info.name))
        except ConfigError:
            continue
    return out


def _read_embeddable(path, roots: list[Path], limit: int) -> tuple[bytes | None, str | None]:
    """``(data, None)`` for a regular file inside ``roots`` of at most ``limit`` bytes, else ``(None, why)``."""
    p = safepath.inside(str(path), roots)
    if p is None:
        return None, f"not embedded: {path} is outside the study's artifact directory"
    try:
        if not p.is_file():
            return None, f"not found at {path}"
        with open(p, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError:
        return None, f"not found at {path}"
    if len(data) > limit:
        return None, f"not embedded: {path} is larger than {limit:,} bytes"
    return data, None


def _esc(v) -> str:
    return html.escape("" if v is None else str(v))


def _fmt(v, digits: int = 5) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return _esc(v)


def _cards(info: StudyInfo, rows: list[TrialRow], s: dict) -> str:
    c = s["counts"]
    best = s["best"]
    u = s["utilisation"]["utilisation"]
    items = [("trials", f"{len(rows)}" + (f" / {info.max_evals}" if info.max_evals else "")),
             ("ok", c["ok"]), ("failed", c["failed"]), ("pruned", c["pruned"]), ("running", c["running"]),
             ("queued", c["queued"]),
             (f"best {info.metric}", "-" if not best or best["metric"] is None else _fmt(best["metric"])),
             ("best trial", "-" if not best else best["tid"]),
             ("pool utilisation", "-" if u is None else f"{u:.0%}")]
    if "front" in s:
        items.append(("Pareto front", f"{len(s['front'])} trials"))
    if "infeasible" in s:
        items.append(("infeasible", s["infeasible"]))
    return "".join(f'<div class="card"><div class="k">{_esc(k)}</div><div class="v">{_esc(v)}</div></div>'
                   for k, v in items)


def _failure_table(rows: list[TrialRow]) -> str:
    fails = failure_rows(rows)
    if not fails:
        return '<p class="empty">no failed trials</p>'
    body = "".join(f"<tr><td class=num>{_esc(f['tid'])}</td><td>{_esc(f['kind'])}</td><td>{_esc(f['reason'])}</td>"
                   f"<td>{_esc(f['worker'] or '-')}</td><td class=num>{_esc(f['attempts'])}</td></tr>" for f in fails)
    return ("<table><thead><tr><th>trial</th><th>kind</th><th>reason</th><th>worker</th><th>attempts</th>"
            f"</tr></thead><tbody>{body}</tbody></table>")


def _report_text(final: dict, roots: list[Path]) -> str:
    """The classification report: as ``final`` recorded it, else from its file (inside ``roots`` only)."""
    text = final.get("report_text")
    if isinstance(text, str) and text:
        return f"<pre>{_esc(text)}</pre>"
    if isinstance(final.get("classification_report"), dict):
        return f"<pre>{_esc(json.dumps(final['classification_report'], indent=1))}</pre>"
    if not final.get("report_path"):
        return '<p class="empty">no classification report recorded</p>'
    data, why = _read_embeddable(final["report_path"], roots, MAX_TEXT_BYTES)
    if data is None:
        return f'<p class="empty">classification report {_esc(why)}</p>'
    return f"<pre>{_esc(data.decode('utf-8', errors='replace'))}</pre>"


def _confusion_png(final: dict, roots: list[Path]) -> str:
    png = final.get("confusion_matrix_path")
    if not png:
        return ""
    data, why = _read_embeddable(png, roots, MAX_PNG_BYTES)
    if data is not None and not data.startswith(PNG_MAGIC):
        data, why = None, f"not embedded: {png} is not a PNG image"
    if data is None:
        return f'<p class="empty">confusion matrix {_esc(why)}</p>'
    return (f'<img id="confusion-png" alt="confusion matrix" style="max-width:100%" '
            f'src="data:image/png;base64,{base64.b64encode(data).decode()}">')


def _final_section(info: StudyInfo, charts: list[Chart], roots: list[Path]) -> str:
    final = info.final
    if not isinstance(final, dict) or not final:
        return ""
    parts = [f"<p>trial {_esc(final.get('tid'))} retrained on {_esc(final.get('train_images'))} images for "
             f"{_esc(final.get('epochs'))} epoch(s); test accuracy <b>{_fmt(final.get('test_accuracy'), 4)}</b>"
             + (f" (validation {_fmt(final.get('validation_accuracy'), 4)})"
                if final.get("validation_accuracy") is not None else "") + "</p>", _report_text(final, roots)]
    if not any(c.key == "confusion" for c in charts):
        parts.append(_confusion_png(final, roots))
    return ('<section class="block wide" id="final"><h2>Final test (mongotune final)</h2>'
            + "".join(parts) + "</section>")


def _csp(*scripts: str) -> str:
    """A policy that runs exactly these inline scripts (by hash) and fetches nothing over the network;
    plotly.js needs eval (parcoords' WebGL code) and inline styles."""
    hashes = " ".join("'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
                      for s in scripts)
    return (f"default-src 'none'; script-src {hashes} 'unsafe-eval'; style-src 'unsafe-inline'; "
            "img-src data: blob:; font-src data:; worker-src blob:; base-uri 'none'; form-action 'none'")


def render_report(info: StudyInfo, rows: list[TrialRow], *, now: datetime.datetime | None = None,
                  charts: list[Chart] | None = None, roots: list[Path] | None = None) -> str:
    """The whole report as one HTML document (plotly.js, styles and data inline); files the study names
    are embedded only from ``roots`` (default ``embed_roots(info)``)."""
    now = now or datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    charts = charts if charts is not None else build_charts(info, rows, now)
    s = summary(info, rows, now)
    sections = []
    for c in charts:
        wide = " wide" if c.key in WIDE else ""
        sections.append(f'<section class="chart{wide}" id="section-{c.key}"><h2>{_esc(c.title)}</h2>'
                        f'<p class="note">{_esc(c.note or "")}</p>'
                        f'<div class="plot" id="plot-{c.key}" data-empty="{_esc(c.empty or "")}"></div></section>')
    sections.append('<section class="block wide" id="failures"><h2>Failed trials</h2>'
                    + _failure_table(rows) + "</section>")
    final = _final_section(info, charts, embed_roots(info) if roots is None else roots)
    sub = " · ".join(_esc(x) for x in (f"objective {info.objective}", info.model and f"model {info.model}",
                                        info.dataset and f"dataset {info.dataset}",
                                        f"metric {info.metric} ({info.goal})", info.status and f"status {info.status}",
                                        f"generated {now:%Y-%m-%d %H:%M} UTC") if x)
    figures = {c.key: c.figure for c in charts}
    lib = plotly_js()
    draw = f"""{RENDER_JS}
var MT_FIGURES = {_json(figures)};
Object.keys(MT_FIGURES).forEach(function (k) {{ mtRender(document.getElementById('plot-' + k), MT_FIGURES[k]); }});
"""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="{_csp(lib, draw)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mongotune report: {_esc(info.name)}</title><style>{STYLE}</style>
<script>{lib}</script></head>
<body><header><h1>Study {_esc(info.name)}</h1><div class="sub">{sub}</div></header>
<main><div class="cards">{_cards(info, rows, s)}</div>
<div class="grid">{''.join(sections)}{final}</div>
<footer>mongotune report · {len(rows)} trials · charts by plotly.js, embedded: this file needs no network</footer>
</main>
<script>{draw}</script></body></html>
"""


def write_pngs(charts: list[Chart], png_dir: str | Path, *, width: int = 1100, scale: float = 1.0) -> list[Path]:
    """Each chart as ``<key>.png`` in ``png_dir``, drawn by kaleido with the system's Chromium."""
    import plotly.io as pio

    out = Path(png_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{c.key}.png" for c in charts]
    figs = []
    for c in charts:
        fig = json.loads(_json(c.figure))  # datetimes as ISO strings, as the browser gets them
        fig["layout"]["title"] = {"text": html.escape(c.title, quote=False)
                                  + (f"<br><sup>{html.escape(c.note, quote=False)}</sup>" if c.note else ""),
                                  "x": 0.01}
        fig["layout"]["margin"] = {**fig["layout"].get("margin", {}), "t": 140 if c.key == "parallel" else 70}
        figs.append(fig)
    if figs:
        pio.write_images(figs, paths, format="png", width=width, scale=scale, validate=False)
    return paths


@dataclass
class ReportFiles:
    html: Path
    pngs: list[Path] = field(default_factory=list)
    trials: int = 0
    bytes: int = 0


def write_report(db, name: str, out: str | Path | None = None, png_dir: str | Path | None = None, *,
                 jobs: str = "jobs") -> ReportFiles:
    """Read study ``name`` from ``db`` and write its report (and PNGs with ``png_dir``)."""
    safepath.check_study_name(name)
    info, rows = load_study_data(db, name, jobs=jobs)
    now = server_now(db)
    charts = build_charts(info, rows, now)
    path = Path(out) if out else Path(f"{name}-report.html")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_report(info, rows, now=now, charts=charts)
    path.write_text(text, encoding="utf-8")
    pngs = write_pngs(charts, png_dir) if png_dir else []
    return ReportFiles(path, pngs, len(rows), len(text.encode()))
