"""``mongotune report`` and ``mongotune dashboard``: thin commands over ``report.html`` and ``dashboard``.

Input (the study name, the output paths, the address to listen on) is
checked before the database is opened or an embedded server is started.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from ._common import MONGO_HELP, _mongo, _user_errors, app, err, out

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

@app.command()
def report(study: str = typer.Argument(..., help="Study name."),
           out_file: Optional[Path] = typer.Option(None, "--out", help="HTML file to write "
                                                    "(default: STUDY-report.html in the current directory)."),
           png: Optional[Path] = typer.Option(None, "--png", help="Also write each chart as a PNG into this folder "
                                              "(drawn by kaleido with the system's Chromium)."),
           mongo: Optional[str] = typer.Option(None, "--mongo", help=MONGO_HELP, envvar="MONGOTUNE_MONGO")):
    """Write a study's charts into one self-contained HTML file that opens offline."""
    with _user_errors():
        if not _NAME.match(study):
            raise ConfigError(f"bad study name {study!r}: use letters, digits, '-', '_', '.' (max 100)")
        path = out_file or Path(f"{study}-report.html")
        if path.exists() and path.is_dir():
            raise ConfigError(f"--out {path} is a directory; give a file name such as {path / (study + '.html')}")
        if not path.parent.exists() and str(path.parent) not in ("", "."):
            raise ConfigError(f"--out {path}: folder {path.parent} does not exist")
        if png is not None and png.exists() and not png.is_dir():
            raise ConfigError(f"--png {png} is a file; give a folder")
        with _mongo(mongo) as url:
            from ..report.html import write_report
            from ..store import open_client

            client, db, parsed = open_client(url)
            try:
                files = write_report(db, study, path, png, jobs=parsed.collection)
            finally:
                client.close()
    out.print(f"wrote {files.html} ({files.bytes / 1e6:.1f} MB, {files.trials} trials; opens offline)",
                  highlight=False)
    for p in files.pngs:
        out.print(f"wrote {p}", highlight=False)


@app.command()
def dashboard(host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (loopback by default)."),
              port: int = typer.Option(8080, "--port", help="TCP port."),
              mongo: Optional[str] = typer.Option(None, "--mongo", help=MONGO_HELP, envvar="MONGOTUNE_MONGO"),
              poll: float = typer.Option(1.0, "--poll", help="Seconds between the page's updates.")):
    """Serve a live, read-only web dashboard of the studies, their trials and the workers."""
    with _user_errors():
        from ..dashboard.net import bind, is_loopback

        if not 0.2 <= poll <= 60:
            raise ConfigError(f"--poll must be between 0.2 and 60 seconds, got {poll}")
        sock = bind(host, port)
        if not is_loopback(host):
            err.print(f"[yellow]warning:[/] listening on {host}: anyone who can reach this machine can read "
                          "every study (the dashboard has no login); use --host 127.0.0.1 and an SSH tunnel "
                          "unless the network is trusted", highlight=False)
        with _mongo(mongo) as url:
            from ..dashboard.app import serve
            from ..store import open_client, redact

            client, db, parsed = open_client(url)
            shown = f"[{host}]" if ":" in host else host
            out.print(f"dashboard on http://{shown}:{sock.getsockname()[1]}/ reading {redact(url)} "
                          "(read-only; Ctrl-C to stop)", highlight=False)
            try:
                serve(db, sock, jobs=parsed.collection, poll_ms=int(poll * 1000), host=host)
            finally:
                client.close()
                sock.close()
