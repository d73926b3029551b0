"""The embedded server's private Unix socket against TCP on loopback: what each costs a client.

Starts one embedded server (its own process, as ``mongotune`` does) listening on
both its socket and a loopback TCP port, and measures, alternating the two
transports round by round so that both see the same machine load:

  connect     a bare connect and close (what ``find_server``'s probe costs)
  find        ``local_server.find_server`` whole: lock probe, state file, connect
  first_op    a new ``pymongo.MongoClient`` until its first ``ping`` returns
              (connection, handshake, the command), then closed
  ping        one ``ping`` on a connected client
  find_one    one ``find_one`` by ``_id`` in a 1,000-document collection
  insert_one  one acknowledged ``insert_one`` of a ~200-byte document

Medians and 90th percentiles in milliseconds.

    python bench/bench_private_server.py              # 2,000 samples per operation and transport
    python bench/bench_private_server.py --quick      # 300

Writes JSON to bench/results/private_server.json (private_server-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from machine import host_info  # noqa: E402


def _stats(samples: list[float]) -> dict:
    ms = sorted(s * 1000 for s in samples)
    return {"median_ms": round(statistics.median(ms), 4), "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 4),
            "n": len(ms)}


def _connect(addr) -> None:
    family = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.connect(addr)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(n: int) -> dict:
    import pymongo

    from mongotune.store import embedded, local_server

    tmp = Path(tempfile.mkdtemp(prefix="bench-private-"))
    server = embedded.start_server(tmp / "db", port=0)
    try:
        urls = {"unix": server.url, "tcp": server.tcp_url}
        addrs = {"unix": str(server.socket), "tcp": ("127.0.0.1", server.port)}
        clients = {k: pymongo.MongoClient(u, serverSelectionTimeoutMS=10000) for k, u in urls.items()}
        coll = {k: c.get_default_database().bench for k, c in clients.items()}
        coll["unix"].insert_many([{"_id": i, "x": "y" * 100} for i in range(1000)])
        for c in clients.values():
            c.admin.command("ping")
        samples: dict[str, dict[str, list[float]]] = {k: {} for k in urls}
        ops = {
            "connect": lambda k: _connect(addrs[k]),
            "first_op": lambda k: _first_op(pymongo, urls[k]),
            "ping": lambda k: clients[k].admin.command("ping"),
            "find_one": lambda k: coll[k].find_one({"_id": 500}),
            "insert_one": lambda k: coll[k].insert_one({"k": k, "x": "z" * 200}),
        }
        for name, op in ops.items():
            rounds = n if name != "first_op" else max(50, n // 10)
            for i in range(rounds):
                for k in (("unix", "tcp") if i % 2 == 0 else ("tcp", "unix")):
                    samples[k].setdefault(name, []).append(_timed(lambda: op(k)))
        samples["unix"]["find"] = [_timed(lambda: local_server.find_server(tmp / "db")) for _ in range(n)]
        for c in clients.values():
            c.close()
        return {k: {name: _stats(v) for name, v in ops_.items()} for k, ops_ in samples.items()}
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _first_op(pymongo, url: str) -> None:
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=10000)
    try:
        client.admin.command("ping")
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-n", type=int, default=None, help="samples per operation and transport")
    args = parser.parse_args()
    n = args.n or (300 if args.quick else 2000)
    load_before = os.getloadavg()
    started = time.time()
    results = run(n)
    out = {"bench": "private_server", "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "seconds": round(time.time() - started, 1), "load_before": [round(x, 2) for x in load_before],
           "load_after": [round(x, 2) for x in os.getloadavg()], "machine": host_info(), "results": results}
    path = HERE / "results" / ("private_server-quick.json" if args.quick else "private_server.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    for k, ops in results.items():
        for name, st in ops.items():
            print(f"{k:5} {name:11} median {st['median_ms']:8.3f} ms   p90 {st['p90_ms']:8.3f} ms   (n={st['n']})")
    print(f"load average {out['load_before']} -> {out['load_after']}; written to {path}")


if __name__ == "__main__":
    main()
