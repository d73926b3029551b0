"""Resumable HTTP downloads and file checksums.

A download goes to ``<dest>.part`` first.  When a ``.part`` file is already
there (an earlier run was interrupted) the request asks only for the missing
bytes with an HTTP ``Range`` header; a server that ignores it (answers 200
instead of 206) gets the whole file again.  The finished file is verified
against its known checksums and only then renamed to ``dest``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from mongotune.errors import DataError

Progress = Callable[[str, int, "int | None"], None]

USER_AGENT = "mongotune-data/0.1 (+python urllib)"
CHUNK = 1 << 16
HASH_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def file_digests(
    path: Path,
    algorithms: Iterable[str] = ("md5", "sha256"),
    progress: Progress | None = None,
    stage: str | None = None,
) -> dict[str, str]:
    """Hex digests of one file, computed in a single pass."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    total = os.path.getsize(path)
    done = 0
    with open(path, "rb") as fh:
        while block := fh.read(HASH_CHUNK):
            for h in hashers.values():
                h.update(block)
            done += len(block)
            if progress is not None and stage is not None:
                progress(stage, done, total)
    return {name: h.hexdigest() for name, h in hashers.items()}


def check_digests(
    path: Path,
    expected: Mapping[str, str | None],
    *,
    dataset: str,
    hint: str = "delete it or pass --source",
    digests: Mapping[str, str] | None = None,
    name: str | None = None,
) -> dict[str, str]:
    """Compare ``path`` with every known digest in ``expected``; raise on mismatch.

    Returns md5 and sha256 of the file (for the cache's record of its sources).
    """
    wanted = {k: v.lower() for k, v in expected.items() if v}
    algorithms = sorted(set(wanted) | {"md5", "sha256"})
    got = dict(digests) if digests is not None else {}
    if not set(algorithms) <= set(got):
        got = file_digests(path, algorithms)
    for algo, value in sorted(wanted.items()):
        if got[algo] != value:
            raise DataError(
                f"{dataset}: checksum mismatch for {name or Path(path).name} "
                f"(expected {algo} {value}, got {got[algo]}); {hint}"
            )
    return {"md5": got["md5"], "sha256": got["sha256"]}


class _Retry(Exception):
    """A transfer broke off; the ``.part`` file keeps what arrived."""


def _opener() -> urllib.request.OpenerDirector:
    # Built per call so that proxy settings are read from the environment now.
    return urllib.request.build_opener()


def _fetch(url: str, part: Path, *, stage: str, progress: Progress | None,
           timeout: float, size_hint: int | None) -> None:
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(
        url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    )
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = _opener().open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Nothing left to send: the .part file may already be complete
            # (the caller verifies it) or longer than the file (start over).
            exc.close()
            if size_hint is not None and offset > size_hint:
                part.unlink()
                raise _Retry(f"{url}: partial file longer than the remote file") from None
            return
        raise
    with response:
        total: int | None
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if offset and response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                # A range we did not ask for: do not splice it in.
                part.unlink()
                raise _Retry(f"{url}: server answered an unexpected range")
            total = int(match.group(3)) if match.group(3) != "*" else (
                offset + length if length is not None else size_hint)
            mode = "ab"
        else:
            offset = 0
            total = length if length is not None else size_hint
            mode = "wb"
        done = offset
        if progress is not None:
            progress(stage, done, total)
        try:
            with open(part, mode) as fh:
                while chunk := response.read(CHUNK):
                    fh.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(stage, done, total)
        except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError) as exc:
            raise _Retry(f"{url}: transfer broke off after {done} bytes ({exc})") from exc
        if total is not None and done < total:
            raise _Retry(f"{url}: transfer broke off after {done} of {total} bytes")


def download(
    urls: Iterable[str],
    dest: Path,
    *,
    dataset: str,
    expected: Mapping[str, str | None] | None = None,
    size_hint: int | None = None,
    progress: Progress | None = None,
    timeout: float = 60.0,
    attempts: int = 3,
) -> dict[str, str]:
    """Download ``dest`` from the first of ``urls`` that works.

    Each URL gets ``attempts`` tries; every retry resumes from the ``.part``
    file.  Returns the file's md5 and sha256.  Raises :class:`DataError` when
    no URL works or the result fails its checksum (the bad ``.part`` file is
    then removed, so the next run starts clean).
    """
    urls = list(urls)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    stage = f"download {dest.name}"
    errors: list[str] = []
    for url in urls:
        for _ in range(attempts):
            try:
                _fetch(url, part, stage=stage, progress=progress,
                       timeout=timeout, size_hint=size_hint)
            except _Retry as exc:
                errors.append(str(exc))
                continue
            except urllib.error.HTTPError as exc:
                errors.append(f"{url}: HTTP {exc.code} {exc.reason}")
                exc.close()
                break  # a server error will not go away by asking again
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                errors.append(f"{url}: {reason}")
                break
            if not part.exists():
                errors.append(f"{url}: nothing was received")
                continue
            digests = file_digests(part, progress=progress, stage=f"verify {dest.name}")
            try:
                result = check_digests(
                    part, expected or {}, dataset=dataset, digests=digests, name=dest.name,
                    hint=f"the download from {url} was removed; try again or pass --source",
                )
            except DataError:
                part.unlink(missing_ok=True)
                raise
            os.replace(part, dest)
            return result
    last = errors[-1] if errors else "no URL to try"
    raise DataError(
        f"{dataset}: could not download {dest.name} ({len(urls)} URL(s) tried, last error: "
        f"{last}); download it by hand and pass --source DIR"
    )
