"""``mongotune slurm submit|status|cancel``: the worker pool as a Slurm job array (``mongotune.cluster.slurm``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import UserError
from ._common import _user_errors, err, lit, out

slurm_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="The worker pool as a Slurm job array: submit, status, cancel.")

SLURM_MONGO_HELP = ("MongoDB URL the compute nodes can reach (mongodb://user:pw@host:port/db). Default: "
                    "$MONGOTUNE_MONGO. The password never goes into the script or the job's environment.")
SlurmMongoOpt = typer.Option(None, "--mongo", help=SLURM_MONGO_HELP, envvar="MONGOTUNE_MONGO")
JobIdsArg = typer.Argument(None, help="Array job ids (default: the arrays submitted to this pool).")
PasswordFileOpt = typer.Option(None, "--password-file", help="File holding the password of a --mongo URL "
                               "that has a user and no password.")


def _need_url(url: str | None) -> str:
    if not url:
        raise UserError("a Slurm pool needs a MongoDB URL its compute nodes can reach: give --mongo URL or set "
                        "$MONGOTUNE_MONGO (e.g. `mongotune server --host 0.0.0.0` on a reachable machine, "
                        "or a MongoDB)")
    return url


def _local_only(url: str) -> bool:
    hosts = url.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    return all(h.rsplit(":", 1)[0].strip("[]") in ("127.0.0.1", "localhost", "::1") for h in hosts.split(","))


@slurm_app.command()
def submit(
    workers: int = typer.Option(..., "--workers", help="Array tasks: one worker each."),
    gpus_per_worker: int = typer.Option(1, "--gpus-per-worker", help="GPUs per task; 0 on CPU-only clusters."),
    time: str = typer.Option("12:00:00", "--time", help="Time limit per task (Slurm format: MM, HH:MM:SS, D-HH)."),
    partition: Optional[str] = typer.Option(None, "--partition", help="Slurm partition."),
    account: Optional[str] = typer.Option(None, "--account", help="Slurm account to charge."),
    sbatch_arg: Optional[List[str]] = typer.Option(None, "--sbatch-arg", help="Extra sbatch option, e.g. "
                                                   "--sbatch-arg=--mem=16G (repeat for more)."),
    study: Optional[str] = typer.Option(None, "--study", help="Workers run only this study's trials."),
    mongo: Optional[str] = SlurmMongoOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the sbatch script; submit nothing, write nothing."),
    cpus_per_worker: Optional[int] = typer.Option(None, "--cpus-per-worker", help="CPUs per task."),
    signal_before: int = typer.Option(120, "--signal-before", help="Seconds before the time limit when Slurm "
                                      "sends SIGTERM, so the worker hands its trial back (Slurm may send it "
                                      "up to a minute earlier)."),
    idle_timeout: Optional[float] = typer.Option(None, "--idle-timeout", help="Workers leave (and free their "
                                                 "GPU) after this many idle seconds."),
    gpu_flag: str = typer.Option("gres", "--gpu-flag", help="Ask for GPUs with --gres=gpu:N (gres) or --gpus=N."),
    job_name: Optional[str] = typer.Option(None, "--job-name", help="Default: mongotune-STUDY or mongotune."),
    setup: Optional[List[str]] = typer.Option(None, "--setup", help="Shell line run before the worker, e.g. "
                                              "'module load cuda' (repeat for more)."),
    python: Optional[str] = typer.Option(None, "--python", help="Python with mongotune on the compute nodes "
                                         "(default: this one)."),
    log_dir: Optional[Path] = typer.Option(None, "--log-dir", help="One log per task here "
                                           "(default $MONGOTUNE_HOME/slurm/logs; must be on a shared disk)."),
    password_file: Optional[Path] = typer.Option(None, "--password-file", help="Where the MongoDB password is "
                                                 "kept for the tasks, mode 0600 (default under "
                                                 "$MONGOTUNE_HOME/slurm/secrets)."),
):
    """Submit a job array of workers (or print its script with --dry-run)."""
    from ..cluster import slurm

    with _user_errors():
        spec = slurm.SlurmSpec(workers=workers, gpus_per_worker=gpus_per_worker, time=time, partition=partition,
                               account=account, sbatch_args=list(sbatch_arg or []), study=study, job_name=job_name,
                               cpus_per_worker=cpus_per_worker, signal_before_s=signal_before,
                               idle_timeout=idle_timeout, gpu_flag=gpu_flag, setup=list(setup or []),
                               log_dir=log_dir, password_file=password_file)
        if python:
            spec.python = python
        spec.validate()
        url = _need_url(mongo)
        if dry_run:
            public, password, pfile, write = slurm.prepare(spec, url)
            typer.echo(slurm.render_script(spec, public, pfile), nl=False)
            if write:
                err.print(f"note: the script reads the MongoDB password from {pfile}, which --dry-run did not "
                          "write: create it (mode 0600) before you submit", highlight=False, soft_wrap=True)
            err.print(f"note: create the log folder {spec.logs()} before you submit", highlight=False, soft_wrap=True)
            return
        res = slurm.submit(spec, url)
    out.print(f"submitted array job [bold]{res.job_id}[/]: {workers} worker(s)"
              + (f" for study {study}" if study else "") + f", {gpus_per_worker} GPU(s) each, time {time}",
              highlight=False, soft_wrap=True)
    out.print(f"logs: {res.log_pattern}", highlight=False, soft_wrap=True)
    if res.password_file:
        out.print(f"MongoDB password for the tasks: {res.password_file} (mode 0600)", highlight=False, soft_wrap=True)
    out.print("watch: mongotune slurm status    stop: mongotune slurm cancel", highlight=False, soft_wrap=True)
    if _local_only(url):
        err.print("note: the MongoDB URL is local to this machine: only tasks that run on this node can reach it",
                  highlight=False, soft_wrap=True)


def _wide() -> Console:
    """stdout; wide when it is not a terminal, so that piped tables keep whole ids."""
    return out if out.is_terminal else Console(width=240, soft_wrap=True)


def _age(w: dict | None) -> str:
    if not w or w.get("heartbeat_age_s") is None:
        return "-"
    return f"{w['heartbeat_age_s']:.1f}s"


def _trial(w: dict | None) -> str:
    cur = (w or {}).get("current") or {}
    return f"{cur.get('study')}#{cur.get('tid')}" if cur else "-"


@slurm_app.command()
def status(job_ids: Optional[List[str]] = JobIdsArg, mongo: Optional[str] = SlurmMongoOpt,
           study: Optional[str] = typer.Option(None, "--study", help="Only this study's arrays and workers."),
           password_file: Optional[Path] = PasswordFileOpt):
    """The pool's array tasks (squeue/sacct) beside its live workers."""
    from ..cluster import slurm

    with _user_errors():
        if not mongo and not job_ids:
            _need_url(mongo)
        st = slurm.status(mongo and slurm.with_password_file(mongo, password_file), job_ids, study)
    con = _wide()
    t = Table(title="slurm array tasks")
    for col in ("task", "state", "elapsed", "limit", "node", "reason", "worker", "worker state", "trial",
                "heartbeat age"):
        t.add_column(col)
    for r in st.tasks:
        w = r.worker
        t.add_row(*map(lit, (r.task, r.state, r.elapsed, r.time_limit, r.node,
                             r.reason if r.reason not in ("None", "") else "-", w["_id"] if w else "-",
                             w["state"] if w else "-", _trial(w), _age(w))))
    con.print(t)
    if not st.tasks:
        con.print("no array tasks known to Slurm" + ("" if st.arrays or job_ids else " (nothing submitted)"))
    if st.other_workers:
        o = Table(title="other live workers of the pool")
        for col in ("worker", "host", "gpu", "state", "trial", "heartbeat age", "slurm"):
            o.add_column(col)
        for w in st.other_workers:
            s = w.get("slurm") or {}
            o.add_row(*map(lit, (w["_id"], w["host"], w.get("gpu"), w["state"], _trial(w), _age(w),
                                 f"{s.get('array_job')}_{s.get('array_task')}" if s else "-")))
        con.print(o)
    for note in st.notes:
        err.print(f"note: {note}", highlight=False, soft_wrap=True)


@slurm_app.command()
def cancel(job_ids: Optional[List[str]] = JobIdsArg, mongo: Optional[str] = SlurmMongoOpt,
           study: Optional[str] = typer.Option(None, "--study", help="Only this study's arrays."),
           password_file: Optional[Path] = PasswordFileOpt):
    """scancel the pool's arrays (or the given ones): workers hand their trials back first."""
    from ..cluster import slurm

    with _user_errors():
        if not mongo and not job_ids:
            _need_url(mongo)
        ids = slurm.cancel(mongo and slurm.with_password_file(mongo, password_file), job_ids, study)
    if ids:
        out.print(f"cancelled array job(s) {', '.join(ids)}; their workers hand running trials back to the queue",
                  highlight=False, soft_wrap=True)
    else:
        out.print("no array to cancel")
