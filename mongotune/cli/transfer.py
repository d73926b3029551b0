"""Studies that travel: ``export``, ``import``, ``copy``; and ``gc`` of a study's artifact store.

The libraries are ``mongotune.store.transfer`` and ``mongotune.store.gc``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from ._common import MongoOpt, _check_url, _mongo, _user_errors, app, out

NoArtifactsOpt = typer.Option(False, "--no-artifacts", help="Leave the study's artifact store out.")
AsOpt = typer.Option(None, "--as", help="The study's name at the target (default: its own).")


def _summary(verb: str, s, where: str) -> None:
    queued = f", {s.requeued} running ones as queued" if s.requeued else ""
    out.print(f"{verb} study {s.study}: {s.trials} trials{queued}, {s.artifacts} artifacts "
              f"({s.artifact_bytes / 2**20:.1f} MiB) {where}", highlight=False)


def _open(url: str):
    from ..store import open_client

    client, db, parsed = open_client(url)
    return client, db, db[parsed.collection]


def _local_root() -> Path:
    from .. import paths

    return paths.artifacts_dir()


@app.command("export")
def export(study: str = typer.Argument(..., help="Study name."),
           file: Path = typer.Argument(..., help="The archive to write (a tar file)."),
           no_artifacts: bool = NoArtifactsOpt, mongo: Optional[str] = MongoOpt):
    """Write a study, its trials and its artifacts to one archive (running trials go as queued)."""
    with _user_errors():
        if not file.parent.is_dir():
            raise UserError(f"cannot write {file}: {file.parent} is not a directory")
        with _mongo(mongo) as url:
            from ..store.transfer import export_study

            client, db, jobs = _open(url)
            try:
                s = export_study(db, jobs, study, file, None if no_artifacts else _local_root())
            finally:
                client.close()
    _summary("exported", s, f"to {file}")


@app.command("import")
def import_(file: Path = typer.Argument(..., help="An archive written by `mongotune export`."),
            as_name: Optional[str] = AsOpt, mongo: Optional[str] = MongoOpt):
    """Add the study of an archive to the database (all or nothing; the name must be free)."""
    with _user_errors():
        if not file.is_file():
            raise UserError(f"no archive at {file}")
        from ..store.transfer import read_archive

        read_archive(file)  # a file that is not an archive fails before any server is started or reached
        with _mongo(mongo) as url:
            from ..store.transfer import import_study

            client, db, jobs = _open(url)
            try:
                s = import_study(db, jobs, file, _local_root(), as_name=as_name)
            finally:
                client.close()
    _summary("imported", s, f"from {file}")


@app.command("copy")
def copy(study: str = typer.Argument(..., help="Study name at the source."),
         from_url: str = typer.Option(..., "--from", help="The source's MongoDB URL."),
         to_url: str = typer.Option(..., "--to", help="The target's MongoDB URL."),
         as_name: Optional[str] = AsOpt, no_artifacts: bool = NoArtifactsOpt):
    """Copy a study between databases (all or nothing at the target; running trials go as queued)."""
    with _user_errors():
        _check_url(from_url)
        _check_url(to_url)
        from ..store.transfer import copy_study

        src, dst = _open(from_url), _open(to_url)
        try:
            s = copy_study(src[1:], dst[1:], study, _local_root(), as_name=as_name, artifacts=not no_artifacts)
        finally:
            src[0].close()
            dst[0].close()
    _summary("copied", s, "to the target")


@app.command("gc")
def gc(study: str = typer.Argument(..., help="Study name."),
       grace: float = typer.Option(3600.0, "--grace", help="Seconds: a checkpoint not yet pointed at, or a cut-off "
                                   "write, younger than this may still be in progress and stays."),
       dry_run: bool = typer.Option(False, "--dry-run", help="Count what would go; delete nothing."),
       mongo: Optional[str] = MongoOpt):
    """Delete what a study's artifact store holds that nothing needs: checkpoints of finished trials, checkpoints
    no trial points at, pieces of writes cut off."""
    with _user_errors():
        if grace < 0:
            raise UserError(f"--grace must be >= 0 seconds, got {grace:g}")
        with _mongo(mongo) as url:
            from ..store.gc import collect
            from ..store.studies import StudyStore
            from ..store.transfer import study_store
            from ..store.trialdoc import TrialStore

            client, db, jobs = _open(url)
            try:
                st = StudyStore(db).get(study)
                r = collect(study_store(db, st.name, st.artifact_store, _local_root()), TrialStore(db, jobs),
                            st.name, grace_s=grace, dry_run=dry_run)
            finally:
                client.close()
    verb = "would delete" if dry_run else "deleted"
    out.print(f"{study}: {verb} {r.deleted} objects ({r.freed_bytes / 2**20:.1f} MiB) and {r.pointers} pointers of "
              f"finished trials; {r.swept} pieces of cut-off writes ({r.swept_bytes / 2**20:.1f} MiB); kept "
              f"{r.kept} objects ({r.kept_bytes / 2**20:.1f} MiB)", highlight=False)
