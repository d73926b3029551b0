"""``mongotune gc STUDY``: what a study's artifact store holds that nothing needs any more.

Garbage is:

* a checkpoint object (``trial-N/ckpt-...``) that its trial's pointer does not
  name, once the trial is no longer running or the object is older than the
  grace period (a save in progress writes its objects before it points at
  them);
* the checkpoint of a finished trial (its objects, then its pointer): a worker
  deletes it when it records the result, unless it died in between;
* what writes cut off left: GridFS chunks without a file, temporary files of
  the directory store (older than the grace period, ``ArtifactStore.sweep``).

Other objects stay.  ``dry_run`` counts without deleting.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

from .artifacts import ArtifactStore, ObjectInfo
from .studies import exp_key_of
from .trialdoc import DONE, RUNNING, TrialStore

CKPT = re.compile(r"^trial-(\d+)/(ckpt-[^/]+)/[^/]+$")
GRACE_S = 3600.0


@dataclass
class GcReport:
    deleted: int = 0
    freed_bytes: int = 0
    pointers: int = 0  # pointers of finished trials dropped
    swept: int = 0  # pieces of writes cut off (GridFS chunks, temporary files)
    swept_bytes: int = 0
    kept: int = 0
    kept_bytes: int = 0


def _old(info: ObjectInfo, grace_s: float) -> bool:
    if info.created is None:
        return True
    created = info.created.replace(tzinfo=None)
    return (datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - created).total_seconds() > grace_s


def _garbage(info: ObjectInfo, refs: dict, grace_s: float) -> bool:
    m = CKPT.match(info.key)
    if m is None:
        return False
    state, ref = refs.get(int(m.group(1)), (None, None))
    named = ref is not None and ref.get("prefix") == f"trial-{m.group(1)}/{m.group(2)}"
    if named:
        return state == DONE
    return state != RUNNING or _old(info, grace_s)


def collect(store: ArtifactStore, trials: TrialStore, study: str, *, grace_s: float = GRACE_S,
            dry_run: bool = False) -> GcReport:
    """Delete (or with ``dry_run`` count) the study's garbage in ``store`` (see the module docstring)."""
    exp_key, report = exp_key_of(study), GcReport()
    refs = trials.checkpoint_refs(exp_key)
    for info in store.list():
        if not _garbage(info, refs, grace_s):
            report.kept += 1
            report.kept_bytes += info.size
            continue
        report.deleted += 1
        report.freed_bytes += info.size
        if not dry_run:
            store.delete(info.key)
    for tid, (state, ref) in refs.items():
        if state == DONE and isinstance(ref.get("prefix"), str):
            report.pointers += 1
            if not dry_run:
                trials.forget_checkpoint(exp_key, tid, ref["prefix"])
    if not dry_run:
        report.swept, report.swept_bytes = store.sweep(grace_s)
    return report
