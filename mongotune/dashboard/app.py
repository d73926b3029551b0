"""The dashboard's web app: Starlette routes over ``Dashboard`` (``state.py``), served by uvicorn.

Routes (all GET; the app has no route that takes a body):

* ``/`` and ``/study/{name}``: the page (one HTML shell; ``dashboard.js`` draws it);
* ``/api/studies``: every study with its counts and best trial, and the workers;
* ``/api/study/{name}?since=G``: what changed after generation G (everything without ``since``);
* ``/static/plotly.min.js`` (from the installed ``plotly`` package) and ``/static/dashboard.js``.

Nothing from the database is markup: the page is a fixed shell (its title is
escaped), ``dashboard.js`` puts every string in as text, and the chart
builders escape what plotly would read as markup.  The page's Content-Security-
Policy allows only the app's own scripts (no inline script, no event-handler
attributes), as a second line.  Bound to loopback, the app serves only
requests whose ``Host`` is a loopback name or the bound one (``net.HostCheck``:
DNS rebinding).
"""

from __future__ import annotations

import contextlib
import html
import logging
import socket
import threading
import uuid
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..errors import StudyNotFound
from ..report.html import STYLE, plotly_js
from .net import HostCheck, is_loopback
from .readonly import ReadOnlyDatabase
from .state import Dashboard, dumps

log = logging.getLogger("mongotune.dashboard")
STATIC = Path(__file__).with_name("static")
# plotly.js compiles shaders and parcoords code with `new Function` (unsafe-eval) and sets inline styles
CSP = ("default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


def _page(title: str, poll_ms: int, study: bool = False) -> str:
    # a study page fetches plotly.js itself, alongside the study's JSON; the preload starts it at once
    preload = '<link rel="preload" href="/static/plotly.min.js" as="script">' if study else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{STYLE}
header nav a {{ margin-right:14px; }} #status {{ float:right; color:#b9c5d3; font-size:12px; }}
#status.stale {{ color:#ffb4a8; }} .studies td a {{ font-weight:600; }} h2 .count {{ color:var(--muted); font-weight:400; }}
</style>
{preload}</head>
<body><header><span id="status">connecting…</span><h1 id="title">mongotune</h1>
<div class="sub" id="subtitle"><a href="/">all studies</a></div></header>
<main id="app" data-poll-ms="{int(poll_ms)}"></main>
<script src="/static/dashboard.js"></script></body></html>"""


def create_app(db, *, jobs: str = "jobs", poll_ms: int = 1000, warm: bool = True,
               host: str | None = None) -> Starlette:
    """The dashboard over ``db`` (a pymongo ``Database``; it is wrapped read-only here), bound to ``host``
    (None: loopback; see ``_host_check``)."""
    dash = Dashboard(ReadOnlyDatabase(db), jobs=jobs)
    boot = uuid.uuid4().hex[:8]
    js = (STATIC / "dashboard.js").read_text()
    state = {"plotly": None}

    def page(request: Request) -> HTMLResponse:
        name = request.path_params.get("name")
        return HTMLResponse(_page(f"{name} · mongotune" if name else "mongotune dashboard", poll_ms, bool(name)),
                            headers=SECURITY_HEADERS)

    def static_plotly(request: Request) -> Response:
        if state["plotly"] is None:
            state["plotly"] = plotly_js().encode()
        return Response(state["plotly"], media_type="application/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})

    def static_js(request: Request) -> Response:
        return Response(js, media_type="application/javascript",
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    def api_studies(request: Request) -> Response:
        data = dash.studies()
        data["boot"] = boot
        return Response(dumps(data), media_type="application/json", headers={"Cache-Control": "no-store"})

    def api_study(request: Request) -> Response:
        name = request.path_params["name"]
        since = request.query_params.get("since")
        try:
            since_gen = int(since) if since not in (None, "") else None
        except ValueError:
            return JSONResponse({"error": f"since must be an integer, got {since!r}"}, status_code=400)
        view = dash.view(name)
        try:
            view.refresh()
        except StudyNotFound as exc:
            with dash.lock:
                dash.views.pop(name, None)
            return JSONResponse({"error": str(exc)}, status_code=404)
        body = view.payload(since_gen)
        body = body[:-1] + f',"boot":"{boot}"}}'
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if warm:
            threading.Thread(target=_warm, args=(dash,), name="dashboard-warm", daemon=True).start()
        yield

    routes = [Route("/", page), Route("/study/{name}", page), Route("/api/studies", api_studies),
              Route("/api/study/{name}", api_study), Route("/static/plotly.min.js", static_plotly),
              Route("/static/dashboard.js", static_js),
              Route("/favicon.ico", lambda request: Response(status_code=204))]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=_host_check(host))
    app.state.dashboard = dash
    return app


def _host_check(host: str | None) -> list[Middleware]:
    """Bound to loopback (or None), every request's ``Host`` header is checked (``net.HostCheck``);
    bound to another address, every name is served (the dashboard is reachable anyway)."""
    return [Middleware(HostCheck, host=host)] if host is None or is_loopback(host) else []


def _warm(dash: Dashboard) -> None:
    try:
        dash.warm()
    except Exception as exc:  # noqa: BLE001 - warming is an optimisation; requests read on demand
        log.warning("could not pre-read the studies: %s", exc)


def serve(db, sock: socket.socket, *, jobs: str = "jobs", poll_ms: int = 1000, host: str | None = None) -> None:
    """Serve the dashboard for ``db`` on the bound socket ``sock`` (bound to ``host``, by default the
    socket's own address) until interrupted (blocking)."""
    import uvicorn

    app = create_app(db, jobs=jobs, poll_ms=poll_ms, host=host or sock.getsockname()[0])
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
