"""What every command module shares: the Typer app, consoles, URL resolution, error printing."""

from __future__ import annotations

import contextlib
import logging
import sys

import typer
from rich.console import Console

from ..errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Distributed hyper-parameter tuning of Keras image classifiers on MongoDB workers.")
out = Console(soft_wrap=True)
err = Console(stderr=True)

MONGO_HELP = ("MongoDB URL (mongodb://user:pw@host:port/db or hyperopt's mongo://host:port/db/jobs). "
              "Default: $MONGOTUNE_MONGO, else the embedded server on $MONGOTUNE_HOME/db.")
MongoOpt = typer.Option(None, "--mongo", help=MONGO_HELP, envvar="MONGOTUNE_MONGO")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("pymongo", "hyperopt", "tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(exc: UserError):
    err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


@contextlib.contextmanager
def _mongo(url: str | None):
    """Yield a usable URL: the one given, or the per-user embedded server's (started if needed, kept up
    while the command runs, never stopped by it)."""
    if url:
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
