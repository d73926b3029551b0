"""`mongotune server`: the embedded MongoDB-compatible server."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import _setup_logging, _user_errors, app, out

@app.command()
def server(dbpath: Optional[Path] = typer.Option(None, help="Database directory (default $MONGOTUNE_HOME/db)."),
           port: int = typer.Option(27117, help="TCP port on 127.0.0.1."),
           host: str = typer.Option("127.0.0.1", help="Interface to listen on.")):
    """Serve a persistent MongoDB-wire-compatible database until stopped (Ctrl-C)."""
    _setup_logging()
    from ..store.embedded import serve

    with _user_errors():
        out.print(f"serving {dbpath or 'default database'} on mongodb://{host}:{port} (Ctrl-C to stop)")
        serve(dbpath, port, host)


