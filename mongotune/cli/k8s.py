"""``mongotune k8s``: Kubernetes manifests for MongoDB and the GPU worker pool.

Thin: parse, call :mod:`mongotune.cluster.kubernetes`, print. User errors print one ``error:``
line and exit with code 2.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..errors import UserError

k8s_app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help="Kubernetes manifests: MongoDB, the GPU worker pool, coordinator Jobs.")
_out = Console(soft_wrap=True)
_err = Console(stderr=True, soft_wrap=True)

ManifestsOpt = typer.Option(None, "--manifests", help="The deploy/kubernetes folder to read "
                            "(default: the one of this mongotune checkout).")


@contextlib.contextmanager
def _user_errors():
    try:
        yield
    except UserError as exc:
        _err.print(f"error: {exc}", markup=False, highlight=False, emoji=False)
        raise typer.Exit(exc.exit_code) from None


@k8s_app.command()
def render(image: str = typer.Option(..., help="Worker image, e.g. registry.example.com/ml/mongotune-worker:0.1.0."),
           namespace: str = typer.Option(..., "--namespace", "-n", help="Namespace of every object."),
           workers: int = typer.Option(..., help="Worker pods (one GPU each)."),
           mongo_url: Optional[str] = typer.Option(None, "--mongo-url", help="Use this MongoDB instead of the "
                                                   "in-cluster one (no password: it goes in the Secret)."),
           out: Optional[Path] = typer.Option(None, "--out", help="Write one file per object and a "
                                              "kustomization.yaml here (default: YAML on stdout)."),
           manifests: Optional[Path] = ManifestsOpt):
    """The base manifests with your image, namespace and worker count (what kustomize edit sets)."""
    from ..cluster import kubernetes as k8s

    with _user_errors():
        objects = k8s.render(image, namespace, workers, mongo_url, manifests)
        if out is None:
            typer.echo(k8s.to_yaml(objects), nl=False)
            return
        files = k8s.write_manifests(objects, out)
    _out.print(f"wrote {len(files)} files to {out}", highlight=False, markup=False)
    _out.print(f"next: kubectl apply -k {out}   (after creating namespace {namespace} and the Secrets "
               "mongotune-mongo-app" + ("" if mongo_url else " and mongotune-mongo-root") + ")",
               highlight=False, markup=False)


@k8s_app.command(context_settings={"ignore_unknown_options": True})
def job(args: list[str] = typer.Argument(..., help="launch ... or resume ..., after '--'."),
        image: str = typer.Option(..., help="The image of the worker pool."),
        namespace: str = typer.Option(..., "--namespace", "-n", help="The pool's namespace."),
        name: Optional[str] = typer.Option(None, help="Job name (default: generated; use kubectl create)."),
        manifests: Optional[Path] = ManifestsOpt):
    """A coordinator Job for `launch`/`resume`, as YAML for `kubectl create -f -`."""
    from ..cluster import kubernetes as k8s

    with _user_errors():
        manifest = k8s.coordinator_job(image, namespace, list(args), name, manifests)
        typer.echo(k8s.to_yaml([manifest]), nl=False)
