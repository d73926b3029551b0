"""Paths built from what the database says, checked where they are used.

Anyone who can write to the database can write a study name, a trial's
artifact path or a final report's path.  Such a string is never joined to a
local path unchecked: a study name must be one plain name (letters, digits,
``-``, ``_``, ``.``; never ``..``, a separator or an absolute path), and a
path named by a document is used only when it resolves (symlinks followed)
inside one of the directories the local user chose.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ConfigError

STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def check_study_name(name) -> str:
    """``name`` if it is a plain study name, else ``ConfigError`` saying why it is refused."""
    if not isinstance(name, str) or not STUDY_NAME.match(name):
        raise ConfigError(f"bad study name {name!r}: use letters, digits, '-', '_', '.' (max 100), "
                          "starting with a letter or digit")
    return name


def resolved(path: str | Path) -> Path:
    """``path`` made absolute with ``~`` expanded and every symlink resolved (the file need not exist)."""
    return Path(os.path.expanduser(str(path))).resolve()


def inside(path: str | Path, roots) -> Path | None:
    """The resolved ``path`` when it lies inside one of ``roots`` (or is one), else None."""
    try:
        p = resolved(path)
    except (OSError, RuntimeError, ValueError):
        return None
    for root in roots:
        try:
            r = resolved(root)
        except (OSError, RuntimeError, ValueError):
            continue
        if p == r or r in p.parents:
            return p
    return None


def study_dir(root: str | Path, name: str) -> Path:
    """``root/name`` for a checked study name, refused if it would resolve outside ``root``
    (a symlink named like the study, planted in a shared root, pointing elsewhere)."""
    path = Path(os.path.expanduser(str(root))) / check_study_name(name)
    if inside(path, [root]) is None or resolved(path) == resolved(root):
        raise ConfigError(f"the artifact directory of study {name!r} resolves outside {root}")
    return path


def env_allowed_roots() -> list[Path]:
    """The directories named by ``$MONGOTUNE_ALLOWED_ROOTS`` (``os.pathsep``-separated)."""
    raw = os.environ.get("MONGOTUNE_ALLOWED_ROOTS", "")
    return [Path(r) for r in raw.split(os.pathsep) if r]
