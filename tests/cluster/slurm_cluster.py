"""A private single-node Slurm for tests: munged, slurmctld and slurmd under one tmp directory.

Everything the daemons write (munge key and socket, slurm.conf, state, spool,
logs, pid files) lives under ``root``; the ports are free ports, so several
of these can run on one machine beside each other and beside a system Slurm.
Client commands find this cluster through ``$SLURM_CONF`` (see ``env``).

The node is this host, CPU-only: no GRES, ``proctrack/linuxproc``,
``task/none``, ``select/cons_tres``, no accounting.  ``cpus`` may exceed the
real core count (``SlurmdParameters=config_overrides``): test workers mostly
sleep, and a 2-core machine should still run four array tasks at once.

``ensure_installed`` installs Debian's ``slurm-wlm`` and ``munge`` when they
are missing and we are root; otherwise it returns the reason they cannot be
had, for the test to skip with.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo", "sacct")
PARTITION = "debug"


def _sbin_path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def missing_programs() -> list[str]:
    path = _sbin_path()
    return [p for p in DAEMONS + CLIENTS if shutil.which(p, path=path) is None]


def ensure_installed(log: Path | None = None) -> str | None:
    """Install slurm-wlm + munge where missing (root only). Return None, or why Slurm cannot be had."""
    if not missing_programs():
        return None
    if os.geteuid() != 0:
        return f"Slurm is not installed ({', '.join(missing_programs())} missing) and we are not root to apt-get it"
    if shutil.which("apt-get") is None:
        return f"Slurm is not installed ({', '.join(missing_programs())} missing) and there is no apt-get"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        for cmd in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=600", "slurm-wlm", "munge"]):
            r = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=1200)
            if r.returncode != 0:
                return f"'{' '.join(cmd)}' failed (exit {r.returncode})" + (f"; see {log}" if log else "")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"installing slurm-wlm and munge failed: {exc}"
    finally:
        if log:
            out.close()
    still = missing_programs()
    return f"after apt-get, still missing: {', '.join(still)}" if still else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_mb() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return max(512, int(line.split()[1]) // 1024 // 2)
    return 1024


class SlurmCluster:
    """Start with ``start()``, stop with ``stop()`` (or use it as a context manager)."""

    def __init__(self, root: Path, cpus: int | None = None, kill_wait_s: int = 5, cred_expire_s: int = 10):
        self.root = Path(root)
        self.node = socket.gethostname().split(".")[0]
        self.cpus = cpus or max(4, os.cpu_count() or 1)
        self.kill_wait_s = kill_wait_s
        self.cred_expire_s = cred_expire_s
        self.conf = self.root / "slurm.conf"
        self.socket = self.root / "munge" / "munge.socket"
        self._procs: list[tuple[str, Path]] = []  # (daemon, pid file)

    # ------------------------------------------------------------ files
    def _write_files(self) -> None:
        for d in ("munge", "state", "spool", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o711)  # munged wants its socket folder searchable by all
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        r = self.root
        lines = [
            "ClusterName=mongotune-test",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            f"SlurmUser={_user()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire: a requeued job waits this long before it may start again (default 120 s)
            f"AuthInfo=socket={self.socket},cred_expire={self.cred_expire_s}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            "SlurmdParameters=config_overrides",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "ReturnToService=2",
            f"KillWait={self.kill_wait_s}",
            "MinJobAge=300",
            "InactiveLimit=0",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            f"PlugStackConfig={r / 'plugstack.conf'}",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={_mem_mb()} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]
        (r / "plugstack.conf").write_text("")
        self.conf.write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------ control
    @property
    def env(self) -> dict:
        """Environment for Slurm client commands (and the processes they start)."""
        return {"SLURM_CONF": str(self.conf), "PATH": _sbin_path()}

    def _run(self, *args, **kw) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.env}
        return subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=60, **kw)

    def _daemon(self, name: str, args: list[str], pidfile: Path) -> None:
        env = {**os.environ, **self.env}
        log = self.root / "log" / f"{name}.out"
        with open(log, "ab") as out:
            r = subprocess.run([shutil.which(name, path=_sbin_path()), *args], stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=env, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"{name} failed to start (exit {r.returncode}): {self.logs(name)}")
        self._procs.append((name, pidfile))

    def start(self, timeout: float = 90.0) -> "SlurmCluster":
        self._write_files()
        m = self.root / "munge"
        self._daemon("munged", [f"--socket={self.socket}", f"--key-file={m / 'munge.key'}",
                                f"--pid-file={m / 'munged.pid'}", f"--log-file={m / 'munged.log'}",
                                f"--seed-file={m / 'munged.seed'}", "--force"], m / "munged.pid")
        self._daemon("slurmctld", ["-f", str(self.conf), "-i"], self.root / "slurmctld.pid")
        self._daemon("slurmd", ["-f", str(self.conf), "-N", self.node], self.root / "slurmd.pid")
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            r = self._run("sinfo", "-h", "-N", "-o", "%T")
            state = (r.stdout or r.stderr).strip()
            if r.returncode == 0 and state.rstrip("*") == "idle":
                return self
            time.sleep(0.5)
        raise RuntimeError(f"the Slurm node did not become idle in {timeout:.0f}s (sinfo: {state!r}); "
                           + self.logs())

    def logs(self, *names: str, tail: int = 20) -> str:
        files = {"munged": self.root / "munge" / "munged.log", "slurmctld": self.root / "log" / "slurmctld.log",
                 "slurmd": self.root / "log" / "slurmd.log"}
        parts = []
        for name in names or tuple(files):
            for f in (files[name], self.root / "log" / f"{name}.out"):
                if f.exists():
                    text = f.read_text(errors="replace").splitlines()[-tail:]
                    parts.append(f"--- {f.name}:\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job and wait for it to end, stop the daemons, then end any job process left over."""
        if self.conf.exists() and self._procs:
            self._run("scancel", "--user", _user())
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                r = self._run("squeue", "-h", "-o", "%i")
                if r.returncode != 0 or not r.stdout.strip():
                    break
                time.sleep(0.5)
        for _name, pidfile in reversed(self._procs):
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            _terminate(pid)
        self._procs.clear()
        for pid in self.job_processes():
            _terminate(pid, timeout=5)

    def job_processes(self) -> list[int]:
        """Processes started by this cluster's jobs (their environment names our slurm.conf)."""
        marker = f"SLURM_CONF={self.conf}".encode()
        mine = {os.getpid(), os.getppid()}
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in mine:
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    env = fh.read().split(b"\0")
            except OSError:
                continue
            if marker in env and any(v.startswith(b"SLURM_JOB_ID=") for v in env):
                found.append(int(entry))
        return found

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _terminate(pid: int, timeout: float = 15.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__":  # manual use: python tests/cluster/slurm_cluster.py DIR  (Ctrl-C stops it)
    import sys
    import tempfile

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="slurm-"))
    why = ensure_installed()
    if why:
        sys.exit(f"error: {why}")
    with SlurmCluster(root) as c:
        print(f"export SLURM_CONF={c.conf}", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
