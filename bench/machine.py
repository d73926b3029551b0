"""What a benchmark result records about the code and the machine it was measured on."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def package_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - not installed
        return None


def host_info(packages=("hyperopt", "pymongo", "mongoeco"), **extra) -> dict:
    """Host, CPUs, Python, package versions and the git commit measured (dirty when mongotune/ has
    uncommitted changes); ``extra`` is merged in as given."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "mongotune"], cwd=REPO,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"host": platform.node(), "cpu_count": os.cpu_count(),
            "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": {m: package_version(m) for m in packages},
            "git_commit": commit, "mongotune_dirty": dirty, **extra}
