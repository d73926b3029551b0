"""``mongotune hyperopt-worker``: hyperopt-mongo-worker's options, on the pool's leases."""

from __future__ import annotations

import os
from typing import Optional

import typer

from ._common import MongoOpt, _check_url, _mongo, _setup_logging, _user_errors, app, err


@app.command("hyperopt-worker")
def hyperopt_worker(
        mongo: Optional[str] = MongoOpt,
        exp_key: Optional[str] = typer.Option(None, help="Only run jobs of this exp_key (default: any that is "
                                                         "not a mongotune study's)."),
        max_jobs: Optional[int] = typer.Option(None, help="Stop after this many jobs (default: no limit)."),
        poll_interval: float = typer.Option(1.0, help="Seconds between looks at an empty queue (jittered)."),
        reserve_timeout: float = typer.Option(120.0, help="Stop after this many seconds without a job; 0: never."),
        workdir: Optional[str] = typer.Option(None, help="Working directory of every job (default: the job's "
                                                         "misc.workdir, else the current one, plus the job id)."),
        last_job_timeout: Optional[float] = typer.Option(None, help="Reserve no job after this many seconds."),
        max_consecutive_failures: int = typer.Option(4, help="Stop after this many jobs in a row raised."),
        allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                          help="Required: run the objectives fmin pickled into the database. "
                                               "Only if you trust every writer of this database."),
        gpu: Optional[str] = typer.Option(None, help="GPU index to pin (sets CUDA_VISIBLE_DEVICES); 'none' = CPU."),
        lease: float = typer.Option(60.0, help="Seconds without a heartbeat before a job is given to another "
                                               "worker."),
        max_attempts: int = typer.Option(3, help="Expired leases before a job is failed."),
        verbose: bool = typer.Option(False, "--verbose", "-v")):
    """Run stock hyperopt jobs (fmin with mongotune.store.MongoTrials) under the pool's leases."""
    from ..devices import cuda_visible_devices
    from ..pool.hyperopt_config import HyperoptWorkerConfig

    config = HyperoptWorkerConfig(
        mongo="", exp_key=exp_key, max_jobs=max_jobs, poll_interval=poll_interval,
        reserve_timeout=reserve_timeout or None, workdir=workdir, last_job_timeout=last_job_timeout,
        max_consecutive_failures=max_consecutive_failures, allow_pickle=allow_pickle, gpu=gpu, lease_s=lease,
        max_attempts=max_attempts)
    with _user_errors():
        config.validate()  # before anything heavy loads, any server is started or contacted
        _check_url(mongo)
    if gpu is not None:  # before an objective can import TensorFlow
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices(gpu)
    _setup_logging(verbose)
    with _user_errors(), _mongo(mongo) as url:
        from ..pool.hyperopt_worker import HyperoptWorker, install_signal_handlers

        config.mongo = url
        w = HyperoptWorker(config)
        install_signal_handlers(w)
        reason = w.run()
    err.print(f"hyperopt-worker stopped ({reason}) after {w.jobs_done} job(s)")
