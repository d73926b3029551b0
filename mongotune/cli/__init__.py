"""The ``mongotune`` command line: parse, call library code, print with rich.

One module per command group; this package only assembles them.  User errors
(``UserError``) print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import sys

from ..errors import UserError
from ._common import app, err
from . import launch, pool, report, server, study  # noqa: F401,E402  (registers the commands)
from . import recipes  # noqa: F401,E402


from .data import data_app  # noqa: E402

app.add_typer(data_app, name="data", help="Prepare, inspect and list cached datasets.")

from .k8s import k8s_app  # noqa: E402

app.add_typer(k8s_app, name="k8s", help="Kubernetes manifests: MongoDB, the GPU worker pool, coordinator Jobs.")

from .slurm import slurm_app  # noqa: E402

app.add_typer(slurm_app, name="slurm", help="The worker pool as a Slurm job array: submit, status, cancel.")


def main():
    try:
        app()
    except UserError as exc:  # raised outside a command's own handler
        err.print(f"error: {exc}", highlight=False)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
