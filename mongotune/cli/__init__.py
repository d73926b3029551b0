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
from . import transfer  # noqa: F401,E402
from . import hyperopt_worker  # noqa: F401,E402


from .data import data_app  # noqa: E402

app.add_typer(data_app, name="data", help="Prepare, inspect and list cached datasets.")

from .k8s import k8s_app  # noqa: E402

app.add_typer(k8s_app, name="k8s", help="Kubernetes manifests: MongoDB, the GPU worker pool, coordinator Jobs.")

from .slurm import slurm_app  # noqa: E402

app.add_typer(slurm_app, name="slurm", help="The worker pool as a Slurm job array: submit, status, cancel.")


def _kinds(exc: BaseException) -> set[str]:
    """Class names of ``exc`` and its bases (Typer ships its own copy of click's exception classes)."""
    return {c.__name__ for c in type(exc).__mro__}


def main():
    try:
        code = app(standalone_mode=False)
    except UserError as exc:  # raised outside a command's own handler
        err.print(f"error: {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - click's usage errors become one line; anything else propagates
        kinds = _kinds(exc)
        if "NoArgsIsHelpError" in kinds:
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2))
        if "UsageError" in kinds:  # an unknown option, a missing argument, a bad value
            ctx, names = getattr(exc, "ctx", None), []
            while ctx is not None and ctx.parent is not None:  # the sub-command names, without the program's
                names.insert(0, ctx.info_name)
                ctx = ctx.parent
            hint = f" (see `mongotune {' '.join(['', *names]).strip()} --help`)".replace("  ", " ")
            err.print(f"error: {exc.format_message()}{hint}", highlight=False, soft_wrap=True)
            sys.exit(2)
        if "Abort" in kinds:
            err.print("aborted", highlight=False)
            sys.exit(130)
        if "Exit" in kinds:
            sys.exit(getattr(exc, "exit_code", 0))
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
