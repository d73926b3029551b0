"""A command's output: copied to its log files and handed on in lines, with bounded memory."""

from __future__ import annotations

import os
import queue
import re

TAIL_LINES = 20
TAIL_CHARS = 2000
READ_CHUNK = 64 * 1024
MAX_LINE = 64 * 1024  # a longer line is parsed up to here (the log keeps all of it)
QUEUE_BATCHES = 64  # output read but not yet parsed: at most this many reads (a few MB)


def tail(path: str, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    text = "\n".join(data.replace("\r", "\n").rstrip().splitlines()[-lines:])
    return text[-chars:]


_LINE_END = re.compile(rb"\r\n|\r|\n")


def pump(stream, log_path: str, name: str, out: queue.Queue) -> None:
    """Copy one pipe to its log file; hand its lines (split on \\n and \\r) to ``out``, a batch per read.

    Memory stays bounded: ``out`` holds at most QUEUE_BATCHES batches (while it is full this thread waits,
    and so, once the pipe is full, does the child), and a line is handed over up to MAX_LINE bytes (the log
    keeps all of it).
    """
    with open(log_path, "ab", buffering=0) as log_file:
        pending, skipping = b"", False  # skipping: the rest of an over-long line, for the log only
        while True:
            chunk = stream.read1(READ_CHUNK) if hasattr(stream, "read1") else stream.read(READ_CHUNK)
            if not chunk:
                break
            log_file.write(chunk)
            *whole, pending = _LINE_END.split(pending + chunk)
            batch = []
            for raw in whole:
                if not skipping:
                    batch.append(raw[:MAX_LINE].decode("utf-8", errors="replace"))
                skipping = False
            if len(pending) > MAX_LINE:
                if not skipping:
                    batch.append(pending[:MAX_LINE].decode("utf-8", errors="replace"))
                pending, skipping = b"", True
            if batch:
                out.put((name, batch))
        if pending and not skipping:
            out.put((name, [pending.decode("utf-8", errors="replace")]))
    out.put((name, None))
