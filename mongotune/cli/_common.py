"""What every command module shares: the Typer app, consoles, URL resolution, error printing."""

from __future__ import annotations

import contextlib
import json
import logging
import sys

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from ..errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Distributed hyper-parameter tuning on a MongoDB-backed pool of GPU workers.")
out = Console(soft_wrap=True, emoji=False)  # ":up:" in a name or a message stays as written
err = Console(stderr=True, soft_wrap=True, emoji=False)

MONGO_HELP = ("MongoDB URL (mongodb://user@host:port/db, password from $MONGOTUNE_MONGO_PASSWORD or "
              "$MONGOTUNE_MONGO_PASSWORD_FILE; or hyperopt's mongo://host:port/db/jobs). Default: "
              "$MONGOTUNE_MONGO, $MONGOTUNE_MONGO_FILE, else the embedded server on $MONGOTUNE_HOME/db.")
MongoOpt = typer.Option(None, "--mongo", help=MONGO_HELP, envvar="MONGOTUNE_MONGO", show_envvar=False)
JsonOpt = typer.Option(False, "--json", help="Print JSON (for scripts) instead of tables.")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("pymongo", "hyperopt", "tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(exc: UserError):
    err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def _hide_password(url: str | None) -> None:
    """A URL typed on the command line with its password: rewrite this process's title without it,
    so `ps` shows the redacted form from now on."""
    if not url or "@" not in url:
        return
    from ..store._url import redact

    safe = [redact(a) if "://" in a else a for a in sys.argv]
    if safe != sys.argv:
        try:
            import setproctitle

            setproctitle.setproctitle(" ".join(["mongotune", *safe[1:]]))
        except Exception:  # noqa: BLE001 - best effort: the README says to keep passwords out of URLs
            pass


def _check_url(url: str | None) -> None:
    """A bad URL (given, or in $MONGOTUNE_MONGO or its file) fails now: before anything heavy loads, any
    download starts or any server is contacted."""
    from ..store._url import parse_mongo_url, url_from_env

    url = url or url_from_env()
    if url:
        parse_mongo_url(url)


@contextlib.contextmanager
def _mongo(url: str | None):
    """Yield a usable URL: the one given (option, $MONGOTUNE_MONGO or $MONGOTUNE_MONGO_FILE), or the
    per-user embedded server's (started if needed, kept up while the command runs, never stopped by it)."""
    from ..store._url import url_from_env

    url = url or url_from_env()
    if url:
        _hide_password(url)
        _check_url(url)  # one line for a bad URL, before any command imports pymongo to use it
        yield url
        return
    from ..store.local_server import embedded_session

    with embedded_session() as embedded_url:
        yield embedded_url


@contextlib.contextmanager
def _user_errors():
    try:
        yield
    except UserError as exc:
        _fail(exc)


def print_json(obj) -> None:
    """JSON on stdout, whatever the console width (for scripts)."""
    sys.stdout.write(json.dumps(obj, default=str, indent=2) + "\n")


def lit(v) -> Text:
    """``v`` as literal text for a rich table cell, title or header: a string from the database is never
    read as rich markup (``[bold]``, ``[link=...]``)."""
    return Text("-" if v is None else str(v))


def fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)
