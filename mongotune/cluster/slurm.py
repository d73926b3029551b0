"""The worker pool as a Slurm job array: render, submit, watch and cancel it.

One array task runs one ``mongotune worker`` (``exec``-ed, so the signals
Slurm sends to the batch shell reach the worker itself).  The worker already
hands its running trial back to the queue on SIGTERM; the script asks Slurm
for that signal ``signal_before_s`` seconds before the time limit
(``--signal=B:TERM@N``), and scancel, preemption and ``scontrol requeue``
send it too.  ``--requeue`` lets a preempted task come back, and it simply
joins the pool again.  Each task logs to its own file (``%A_%a``, appended
across requeues).

The MongoDB password never appears in the script, on a command line or in
the environment Slurm stores with the job: the script carries the URL
without it, and reads the password at run time from a file only the user can
read (mode 0600, on the shared home directory) into
``$MONGOTUNE_MONGO_PASSWORD``, which ``mongotune.store`` picks up.

Every submitted array is recorded in the pool's database (collection
``slurm_arrays``) so that ``status`` and ``cancel`` find them again, and each
worker started by Slurm records its array job and task on its ``workers``
document (``slurm`` field, see ``worker_identity``) so that ``status`` can
put tasks and workers side by side.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .. import paths
from ..errors import ConfigError, UserError

#: Environment variables never handed to sbatch (whose default --export=ALL
#: would store them with the job): the script sets its own.
SECRET_ENV = ("MONGOTUNE_MONGO_PASSWORD", "MONGOTUNE_MONGO")
ARRAYS = "slurm_arrays"
SLURM_TIMEOUT_S = 60


class SlurmError(UserError):
    """A Slurm command that is missing or refused what we asked."""


# ---------------------------------------------------------------- the spec
@dataclass
class SlurmSpec:
    """What to submit.  ``validate`` checks it without touching Slurm or MongoDB."""

    workers: int
    gpus_per_worker: int = 1
    time: str = "12:00:00"
    partition: str | None = None
    account: str | None = None
    sbatch_args: list[str] = field(default_factory=list)
    study: str | None = None
    job_name: str | None = None
    cpus_per_worker: int | None = None
    signal_before_s: int = 120
    idle_timeout: float | None = None
    gpu_flag: str = "gres"  # "gres" -> --gres=gpu:N, "gpus" -> --gpus=N
    setup: list[str] = field(default_factory=list)  # shell lines run before the worker (module load ...)
    python: str = field(default_factory=lambda: sys.executable)
    log_dir: Path | None = None
    password_file: Path | None = None

    @property
    def name(self) -> str:
        if self.job_name:
            return self.job_name
        return f"mongotune-{self.study}" if self.study else "mongotune"

    def logs(self) -> Path:
        return Path(self.log_dir or slurm_dir() / "logs").expanduser().absolute()

    def validate(self) -> "SlurmSpec":
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"--workers must be a positive integer, got {self.workers}")
        if self.gpus_per_worker < 0:
            raise ConfigError(f"--gpus-per-worker must be 0 (CPU) or more, got {self.gpus_per_worker}")
        if self.cpus_per_worker is not None and self.cpus_per_worker < 1:
            raise ConfigError(f"--cpus-per-worker must be positive, got {self.cpus_per_worker}")
        if self.gpu_flag not in ("gres", "gpus"):
            raise ConfigError(f"--gpu-flag must be gres or gpus, got {self.gpu_flag!r}")
        if self.signal_before_s < 0:
            raise ConfigError(f"--signal-before must be 0 or more seconds, got {self.signal_before_s}")
        limit = parse_time(self.time)
        if limit is not None and self.signal_before_s >= limit:
            raise ConfigError(f"--signal-before ({self.signal_before_s}s) must be shorter than --time "
                              f"({self.time} = {limit}s), or the workers get SIGTERM at once")
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ConfigError(f"--idle-timeout must be positive, got {self.idle_timeout}")
        for value, what in ((self.partition, "--partition"), (self.account, "--account"),
                            (self.job_name, "--job-name"), (self.study, "--study")):
            if value is not None and (not value.strip() or any(c.isspace() for c in value)):
                raise ConfigError(f"{what} must be one word, got {value!r}")
        for arg in self.sbatch_args:
            if not arg.startswith("-") or "\n" in arg or "\r" in arg:
                raise ConfigError(f"--sbatch-arg takes one sbatch option such as --mem=16G, got {arg!r}")
            if arg.split("=")[0] in ("--array", "-a", "--output", "-o", "--error", "-e", "--wrap"):
                raise ConfigError(f"--sbatch-arg {arg!r}: mongotune sets {arg.split('=')[0]} itself")
        if any(c.isspace() for c in str(self.logs())):
            raise ConfigError(f"--log-dir must not contain spaces (sbatch cannot quote them): {self.logs()}")
        for line in self.setup:
            if "\n" in line or "\r" in line:
                raise ConfigError("--setup takes one shell line per use")
        return self

    @property
    def wants_gpu(self) -> bool:
        """True when the task gets a GPU, either from us or from the user's own sbatch options."""
        if self.gpus_per_worker > 0:
            return True
        return any((a.startswith("--gres=") and "gpu" in a) or re.match(r"(--gpus(-per-\w+)?|-G)(=|\s|$)", a)
                   for a in self.sbatch_args)


_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time(text: str) -> int | None:
    """Seconds in a Slurm time limit (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``).

    ``None`` for ``UNLIMITED``/``INFINITE``.
    """
    t = (text or "").strip()
    if t.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = _TIME.match(t)
    if not m:
        raise ConfigError(f"--time {text!r} is not a Slurm time (minutes, MM:SS, HH:MM:SS or D-HH:MM:SS)")
    days, a, b, c = m.groups()
    if days is not None:  # D-H, D-H:M, D-H:M:S
        secs = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # H:M:S
        secs = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # M:S
        secs = int(a) * 60 + int(b)
    else:  # M
        secs = int(a) * 60
    if secs <= 0:
        raise ConfigError(f"--time {text!r} must be longer than zero")
    return secs


# ---------------------------------------------------------------- secrets
def slurm_dir() -> Path:
    """Where submit keeps scripts, logs and the password file (``$MONGOTUNE_HOME/slurm``)."""
    return paths.home() / "slurm"


def split_password(url: str) -> tuple[str, str | None]:
    """``(url without its password, password or None)``.

    The password may be in the URL or, for a URL with a user and no password,
    in ``$MONGOTUNE_MONGO_PASSWORD`` (as for every mongotune command).
    """
    from ..store import parse_mongo_url

    parsed = parse_mongo_url(url)  # raises ConnectionFailure (a UserError) on a bad URL
    scheme, _, rest = url.partition("://")
    end = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0], default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        netloc = f"{userinfo.partition(':')[0]}@{hosts}"
    public = f"{scheme}://{netloc}{tail}"
    return public, parsed.password


def default_password_file(public_url: str) -> Path:
    digest = hashlib.sha256(public_url.encode()).hexdigest()[:12]
    return slurm_dir() / "secrets" / f"mongo-{digest}.password"


def write_password_file(path: Path, password: str) -> Path:
    """Write ``password`` to ``path`` with mode 0600 (its folder 0700), replacing it atomically."""
    path = Path(path).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.parent.name == "secrets":
        os.chmod(path.parent, 0o700)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, password.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- the script
def render_script(spec: SlurmSpec, public_url: str, password_file: Path | None) -> str:
    """The sbatch script of the array; it holds no password (only the path of the file that does)."""
    q = shlex.quote
    limit = parse_time(spec.time)
    log = str(spec.logs()).replace("%", "%%") + f"/{spec.name}_%A_%a.log"
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name={spec.name}",
             f"#SBATCH --array=0-{spec.workers - 1}",
             f"#SBATCH --time={spec.time}",
             "#SBATCH --ntasks=1",
             "#SBATCH --nodes=1"]
    if spec.partition:
        lines.append(f"#SBATCH --partition={spec.partition}")
    if spec.account:
        lines.append(f"#SBATCH --account={spec.account}")
    if spec.gpus_per_worker > 0:
        flag = f"--gres=gpu:{spec.gpus_per_worker}" if spec.gpu_flag == "gres" else f"--gpus={spec.gpus_per_worker}"
        lines.append(f"#SBATCH {flag}")
    if spec.cpus_per_worker:
        lines.append(f"#SBATCH --cpus-per-task={spec.cpus_per_worker}")
    lines += [f"#SBATCH --output={log}",
              "#SBATCH --open-mode=append"]
    if limit is not None and spec.signal_before_s > 0:
        lines.append(f"#SBATCH --signal=B:TERM@{spec.signal_before_s}")
    lines.append("#SBATCH --requeue")
    lines += [f"#SBATCH {a}" for a in spec.sbatch_args]
    lines += [
        "#",
        "# mongotune worker pool: one worker per array task, written by `mongotune slurm submit`.",
        "# Each worker hands its running trial back to the queue on SIGTERM: Slurm sends it"
        + (f" {spec.signal_before_s}s before the time limit," if limit is not None and spec.signal_before_s else ""),
        "# on scancel, on preemption and on requeue; a requeued task joins the pool again.",
        "# The MongoDB password is not in this file" + (f": it is read from {password_file}" if password_file
                                                          else " (the URL has none)") + ".",
        "",
    ]
    lines += list(spec.setup)
    lines += ["set -eu",
              f"export MONGOTUNE_MONGO={q(public_url)}"]
    if password_file is not None:
        pf = q(str(password_file))
        lines += [f"if ! MONGOTUNE_MONGO_PASSWORD=\"$(cat {pf})\"; then",
                  f"    echo \"mongotune: cannot read the MongoDB password file \"{pf} >&2; exit 1",
                  "fi",
                  "export MONGOTUNE_MONGO_PASSWORD"]
    lines.append('echo "mongotune: array task ${SLURM_ARRAY_JOB_ID:-?}_${SLURM_ARRAY_TASK_ID:-?} '
                 '(job ${SLURM_JOB_ID:-?}, restart ${SLURM_RESTART_COUNT:-0}) on $(hostname), pid $$"')
    worker = [q(spec.python), "-m", "mongotune", "worker"]
    if spec.study:
        worker += ["--study", q(spec.study)]
    if spec.idle_timeout is not None:
        worker += ["--idle-timeout", f"{spec.idle_timeout:g}"]
    if spec.wants_gpu:
        lines += ["# the GPU(s) Slurm gave this task",
                  'set -- ; if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then set -- --gpu "$CUDA_VISIBLE_DEVICES"; fi']
        worker.append('"$@"')
    else:
        worker += ["--gpu", "none"]
    lines += ["# exec: the worker replaces this shell, so Slurm's signals reach it", "exec " + " ".join(worker), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- running Slurm commands
def require(program: str = "sbatch") -> str:
    path = shutil.which(program)
    if path is None:
        raise SlurmError(f"{program} not found on PATH: run this on a Slurm login node (or load Slurm's module)")
    return path


def _slurm_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in SECRET_ENV}


def _run(args: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    require(args[0])
    try:
        return subprocess.run(args, capture_output=True, text=True, input=input, env=_slurm_env(),
                              timeout=SLURM_TIMEOUT_S, stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{args[0]} did not answer in {SLURM_TIMEOUT_S}s (is slurmctld up?)") from None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


@dataclass
class Submitted:
    job_id: str
    script_path: Path
    log_pattern: Path
    password_file: Path | None
    public_url: str


def prepare(spec: SlurmSpec, url: str) -> tuple[str, str | None, Path | None, bool]:
    """``(public url, password, password file, whether submit writes that file)``; writes nothing.

    A password in the URL (or in ``$MONGOTUNE_MONGO_PASSWORD``) goes to
    ``spec.password_file`` or a default file; a URL with a user and no
    password may instead name the user's own file with ``password_file``.
    """
    from ..store import parse_mongo_url

    public, password = split_password(url)
    if password is not None:
        return public, password, Path(spec.password_file or default_password_file(public)).expanduser().absolute(), True
    if spec.password_file is not None:
        if parse_mongo_url(url).username is None:
            raise ConfigError("--password-file needs a user in the URL (mongodb://USER@host:port/db)")
        return public, None, Path(spec.password_file).expanduser().absolute(), False
    return public, None, None, False


def check_password_file(path: Path) -> None:
    """The user's own password file must exist and be readable by nobody else."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"--password-file {path}: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise ConfigError(f"--password-file {path} is readable by others (mode {st.st_mode & 0o777:o}): "
                          f"chmod 600 {path}")


def with_password_file(url: str, password_file: Path | str | None):
    """``url`` parsed with the password read from ``password_file`` (for a URL with a user and no password)."""
    if password_file is None:
        return url
    from ..store import parse_mongo_url

    return parse_mongo_url(url, pwfile=str(Path(password_file).expanduser()))


def ping(url, timeout_ms: int = 5000) -> None:
    """Raise ``ConnectionFailure`` (a UserError) unless the MongoDB at ``url`` answers."""
    from ..store import open_client

    client, _, _ = open_client(url, timeout_ms=timeout_ms)
    client.close()


def submit(spec: SlurmSpec, url: str) -> Submitted:
    """Check, write the password file and the script, run sbatch, record the array in the database.

    Raises ``ConfigError``/``SlurmError``/``ConnectionFailure`` (all UserErrors)
    before submitting anything when the spec, sbatch or the database is wrong.
    """
    spec.validate()
    require("sbatch")
    public, password, pfile, write = prepare(spec, url)
    if pfile is not None and not write:
        check_password_file(pfile)
        url = with_password_file(url, pfile)
    ping(url)
    if write:
        write_password_file(pfile, password)
    spec.logs().mkdir(parents=True, exist_ok=True)
    scripts = slurm_dir() / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    script = render_script(spec, public, pfile)
    from ..store import utcnow

    stamp = utcnow().strftime("%Y%m%d-%H%M%S-%f")
    script_path = scripts / f"{spec.name}-{stamp}.sbatch"
    script_path.write_text(script)
    r = _run(["sbatch", "--parsable", str(script_path)])
    if r.returncode != 0:
        raise SlurmError(f"sbatch refused the job: {_last_line(r.stderr or r.stdout)}")
    job_id = _parse_job_id(r.stdout)
    _record(url, {"_id": job_id, "name": spec.name, "study": spec.study, "workers": spec.workers,
                  "gpus_per_worker": spec.gpus_per_worker, "time": spec.time, "partition": spec.partition,
                  "account": spec.account, "script": str(script_path), "logs": str(spec.logs()),
                  "submitted": utcnow(), "cancelled": None})
    return Submitted(job_id, script_path, spec.logs() / f"{spec.name}_{job_id}_%a.log", pfile, public)


def _parse_job_id(stdout: str) -> str:
    first = _last_line(stdout).split(";")[0].strip()
    if not first.isdigit():
        raise SlurmError(f"could not read a job id from sbatch's answer {first!r}")
    return first


def _record(url, doc: dict) -> None:
    from ..store import open_client

    client, db, _ = open_client(url)
    try:
        db[ARRAYS].replace_one({"_id": doc["_id"]}, doc, upsert=True)
    finally:
        client.close()


# ---------------------------------------------------------------- status and cancel
@dataclass
class TaskRow:
    task: str  # "JOB_TASK" as Slurm writes it
    array_job: str
    array_task: str
    state: str
    elapsed: str = "-"
    time_limit: str = "-"
    node: str = "-"
    reason: str = "-"
    worker: dict | None = None


@dataclass
class PoolStatus:
    arrays: list[dict]  # recorded arrays (those asked about)
    tasks: list[TaskRow]
    other_workers: list[dict]  # live workers of the pool that no listed task runs
    notes: list[str] = field(default_factory=list)


def worker_identity(environ=None) -> dict | None:
    """The Slurm task a worker runs in, from its environment (None outside Slurm)."""
    env = os.environ if environ is None else environ
    if not env.get("SLURM_JOB_ID"):
        return None
    ident = {"job": env.get("SLURM_JOB_ID"), "array_job": env.get("SLURM_ARRAY_JOB_ID"),
             "array_task": env.get("SLURM_ARRAY_TASK_ID"), "restarts": int(env.get("SLURM_RESTART_COUNT") or 0)}
    return {k: v for k, v in ident.items() if v is not None}


def _arrays(db, job_ids: list[str] | None, study: str | None, active_only: bool) -> list[dict]:
    query: dict = {}
    if job_ids:
        query["_id"] = {"$in": [str(j) for j in job_ids]}
    if study:
        query["study"] = study
    if active_only:
        query["cancelled"] = None
    return list(db[ARRAYS].find(query).sort("submitted", 1))


def _squeue(job_ids: list[str]) -> list[TaskRow]:
    if not job_ids:
        return []
    r = _run(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i|%F|%K|%T|%M|%l|%N|%r"])
    if r.returncode != 0:
        if "Invalid job id" in (r.stderr or ""):  # every one of them is gone
            return []
        raise SlurmError(f"squeue failed: {_last_line(r.stderr or r.stdout)}")
    rows = []
    for line in r.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 8:
            continue
        task, array_job, array_task, state, elapsed, limit, node, reason = parts
        if array_task in ("N/A", ""):
            array_task = task.partition("_")[2] or "-"
        rows.append(TaskRow(task, array_job, array_task, state, elapsed, limit, node or "-", reason))
    return rows


def _sacct(job_ids: list[str]) -> tuple[list[TaskRow], str | None]:
    """Finished tasks from accounting; ``(rows, why not)`` when accounting is off."""
    if not job_ids or shutil.which("sacct") is None:
        return [], None
    r = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "--format=JobID,State,Elapsed,Timelimit,NodeList"])
    if r.returncode != 0:
        return [], f"sacct: {_last_line(r.stderr or r.stdout)}"
    rows = []
    for line in r.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5 or "_" not in parts[0]:
            continue
        task, state, elapsed, limit, node = parts
        array_job, _, array_task = task.partition("_")
        if array_task.startswith("["):  # a pending range: squeue -r lists those one by one
            continue
        rows.append(TaskRow(task, array_job, array_task, state.split()[0], elapsed, limit, node or "-"))
    return rows, None


def status(url, job_ids: list[str] | None = None, study: str | None = None) -> PoolStatus:
    """The pool's array tasks (squeue, plus sacct for finished ones) beside its workers.

    With ``url``: the arrays recorded by ``submit`` (or just ``job_ids``) and
    the pool's live workers, each task next to the worker it runs.  Without a
    URL only ``job_ids`` can be shown, without workers.
    """
    require("squeue")
    notes: list[str] = []
    arrays: list[dict] = []
    workers: list[dict] = []
    if url:
        from ..report.workers import list_workers
        from ..store import open_client

        client, db, _ = open_client(url)
        try:
            arrays = _arrays(db, job_ids, study, active_only=False)
        finally:
            client.close()
        workers = list_workers(url)
        if study:
            workers = [w for w in workers if w.get("study") in (study, None)]
    ids = [str(j) for j in job_ids] if job_ids else [a["_id"] for a in arrays]
    tasks = _squeue(ids)
    seen = {t.task for t in tasks}
    done, why = _sacct(ids)
    tasks += [t for t in done if t.task not in seen]
    if why:
        notes.append(f"finished tasks are not listed ({why})")
    by_task = {}
    for w in workers:
        s = w.get("slurm") or {}
        if s.get("array_job") and s.get("array_task") is not None:
            by_task[(str(s["array_job"]), str(s["array_task"]))] = w
    matched = set()
    for t in tasks:
        w = by_task.get((t.array_job, t.array_task))
        if w is not None and t.state in ("RUNNING", "COMPLETING"):
            t.worker = w
            matched.add(w["_id"])
    tasks.sort(key=lambda t: (int(t.array_job) if t.array_job.isdigit() else 0,
                              int(t.array_task) if t.array_task.isdigit() else -1))
    others = [w for w in workers if w["_id"] not in matched]
    return PoolStatus(arrays, tasks, others, notes)


def cancel(url, job_ids: list[str] | None = None, study: str | None = None) -> list[str]:
    """scancel the given arrays, or every array recorded for the pool (of ``study``) not yet cancelled.

    The workers get SIGTERM and hand their trials back.  Returns the job ids.
    """
    require("scancel")
    ids = [str(j) for j in job_ids or []]
    db_client = None
    if url:
        from ..store import open_client

        db_client, db, _ = open_client(url)
    try:
        if not ids:
            if db_client is None:
                raise UserError("give the job ids to cancel, or --mongo to cancel the pool's arrays")
            ids = [a["_id"] for a in _arrays(db, None, study, active_only=True)]
        if not ids:
            return []
        r = _run(["scancel", *ids])
        if r.returncode != 0:
            raise SlurmError(f"scancel failed: {_last_line(r.stderr or r.stdout)}")
        if db_client is not None:
            from ..store import utcnow

            db[ARRAYS].update_many({"_id": {"$in": ids}}, {"$set": {"cancelled": utcnow()}})
        return ids
    finally:
        if db_client is not None:
            db_client.close()
