"""How fast the CLI answers on the embedded default: read-only commands cold and warm, bad input, imports.

* cold: no server running, so the command pays for starting the background server;
* warm: the server is up (the case the issue targets: under 1-2 s);
* bad input: time to the ``error:`` line of ``launch --space /nonexistent.json`` and ``final nosuch``;
* ``embedded_url()``: the cost of finding a running server (flock probe, state file, one TCP connect);
* imports: which top-level packages a warm ``studies`` imports, and what each costs (``-X importtime``).

Wall times are medians of several runs of ``python -m mongotune ...`` as real processes, in a fresh
``MONGOTUNE_HOME`` with one small study (synthetic objective).  CPU is the command's own user+sys time
(the background server's is not in it).

    python bench/bench_cli.py [--runs 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STUDY = "bench"
READ_COMMANDS = {"studies": ["studies"], "status": ["status", STUDY], "leaderboard": ["leaderboard", STUDY],
                 "workers": ["workers"]}
BAD_INPUT = {"launch --space /nonexistent.json": ["launch", "baseline", "--space", "/nonexistent.json"],
             "final nosuch": ["final", "nosuch"]}


def run(args: list[str], env: dict, expect: int = 0) -> tuple[float, float]:
    """(wall s, cpu s) of ``python -m mongotune ARGS``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mongotune", *args], env=env, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != expect:
        raise SystemExit(f"`mongotune {' '.join(args)}` exited {r.returncode}, expected {expect}:\n"
                         f"{r.stdout[-2000:]}{r.stderr[-2000:]}")
    if expect == 2:
        assert r.stderr.startswith("error:"), r.stderr
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def summary(samples: list[tuple[float, float]]) -> dict:
    walls = [w for w, _ in samples]
    return {"median_s": round(statistics.median(walls), 3), "min_s": round(min(walls), 3),
            "max_s": round(max(walls), 3), "cpu_median_s": round(statistics.median(c for _, c in samples), 3),
            "runs": len(samples), "samples_s": [round(w, 3) for w in walls]}


def stop_server(env: dict) -> None:
    subprocess.run([sys.executable, "-m", "mongotune", "server", "stop", "--force"], env=env,
                   capture_output=True, timeout=120, check=True)


def import_breakdown(args: list[str], env: dict, top: int = 12) -> dict:
    """Cumulative import time (ms) of the top-level packages a command imports."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "mongotune", *args], env=env,
                       capture_output=True, text=True, timeout=600)
    pkgs: dict[str, float] = {}
    total = 0.0
    for line in r.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        cumulative_ms, depth, name = int(m.group(2)) / 1000, len(m.group(3)), m.group(4)
        if depth == 1:  # imported at top level (by the interpreter or the entry point)
            total += cumulative_ms
            pkg = name.split(".")[0]
            pkgs[pkg] = pkgs.get(pkg, 0.0) + cumulative_ms
    # what each heavy third-party package costs wherever it was first imported
    heavy = {}
    for line in r.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m and m.group(4) in ("hyperopt", "scipy", "scipy.stats", "numpy", "pandas", "networkx", "tensorflow",
                                "keras", "pymongo", "mongoeco", "rich", "typer", "psutil", "sklearn"):
            heavy[m.group(4)] = max(heavy.get(m.group(4), 0.0), int(m.group(2)) / 1000)
    ranked = sorted(pkgs.items(), key=lambda kv: -kv[1])[:top]
    return {"total_top_level_ms": round(total), "top_level_ms": {k: round(v) for k, v in ranked},
            "heavy_packages_ms": {k: round(v) for k, v in sorted(heavy.items(), key=lambda kv: -kv[1])}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="3 runs each; results to cli-quick.json")
    args = ap.parse_args()
    runs = 3 if args.quick else args.runs
    home = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    env = os.environ.copy()
    env["MONGOTUNE_TEST_OBJECTIVES"] = "1"  # the study runs the test-only synthetic objective
    env.update(MONGOTUNE_HOME=str(home), MONGOTUNE_SERVER_PORT="0", MONGOTUNE_SERVER_IDLE="600",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="")
    env.pop("MONGOTUNE_MONGO", None)
    results: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                 "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
                                 "platform": platform.platform()},
                     "runs": runs}
    try:
        print("seeding a study ...", file=sys.stderr)
        run(["launch", "x", "--study", STUDY, "--objective", "synthetic", "--options", '{"sleep_s": 0.05}',
             "--max-evals", "5", "--workers", "1", "-q"], env)
        results["help_s"] = summary([run(["--help"], env) for _ in range(runs)])

        cold, warm = {}, {}
        for name, cmd in READ_COMMANDS.items():
            samples = []
            for _ in range(runs):
                stop_server(env)
                samples.append(run(cmd, env))
            cold[name] = summary(samples)
            run(cmd, env)  # up again
            warm[name] = summary([run(cmd, env) for _ in range(runs)])
            print(f"{name:12s} cold {cold[name]['median_s']:.2f} s   warm {warm[name]['median_s']:.2f} s",
                  file=sys.stderr)
        results["cold"], results["warm"] = cold, warm

        bad = {}
        for name, cmd in BAD_INPUT.items():
            bad[name] = summary([run(cmd, env, expect=2) for _ in range(runs)])
            print(f"{name:32s} error in {bad[name]['median_s']:.2f} s (server warm)", file=sys.stderr)
        results["bad_input_warm"] = bad

        # finding a running server, in-process
        os.environ.update({k: env[k] for k in ("MONGOTUNE_HOME", "MONGOTUNE_SERVER_PORT")})
        from mongotune.store.local_server import embedded_url

        embedded_url()
        t = []
        for _ in range(50):
            t0 = time.perf_counter()
            embedded_url()
            t.append(time.perf_counter() - t0)
        results["embedded_url_warm_ms"] = round(statistics.median(t) * 1000, 3)

        results["imports_studies_warm"] = import_breakdown(READ_COMMANDS["studies"], env)
        results["imports_status_warm"] = import_breakdown(READ_COMMANDS["status"], env)
        results["imports_help"] = import_breakdown(["--help"], env)
    finally:
        try:
            stop_server(env)
        except Exception:
            pass
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = ROOT / "bench" / "results" / ("cli-quick.json" if args.quick else "cli.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: results[k] for k in ("cold", "warm")}, indent=1)[:4000])
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
