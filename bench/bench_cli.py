"""How fast the CLI answers on the embedded default: read-only commands cold and warm, bad input, imports.

* cold: no server running, so the command pays for starting the background server;
* warm: the server is up (the case the issue targets: under 1-2 s);
* bad input: time to the ``error:`` line of every case in ``BAD_INPUT`` (an unknown model, dataset,
  algorithm, pruner or study, a bad study name, URL or device, ``--max-evals 0``, ``--lease -5``, a grid
  over a continuous space, for each kind of study), with its exit code and whether it answered with one
  ``error:`` line at all (a case that runs past ``--bad-timeout`` seconds is stopped and says so);
* ``embedded_url()``: the cost of finding a running server (flock probe, state file, one TCP connect);
* imports: which top-level packages a warm ``studies`` imports, and what each costs (``-X importtime``).

Wall times are medians of several runs of ``python -m mongotune ...`` as real processes, in a fresh
``MONGOTUNE_HOME`` with one small study (synthetic objective).  CPU is the command's own user+sys time
(the background server's is not in it).

    python bench/bench_cli.py [--runs 5] [--quick] [--bad-only] [--baseline DIR] [--out NAME.json]

``--bad-only`` measures the bad-input cases alone (results to ``cli-bad.json`` unless ``--out`` names
another file in bench/results/).  ``--baseline DIR`` runs each bad-input case also on another checkout
(``git worktree add DIR COMMIT``), alternating with this one, for a before/after under the same load.
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
CMD = ["--command", "python train.py --lr {lr}", "--param", "lr:1e-4:1e-1:log", "--metric", "acc"]
BAD_INPUT = {
    # Keras built-in models
    "launch: unknown model": ["launch", "resnet9000"],
    "launch: unknown dataset": ["launch", "baseline", "--dataset", "imagenet9"],
    "launch: unknown algorithm": ["launch", "baseline", "--algo", "bayes"],
    "launch: unknown pruner": ["launch", "baseline", "--pruner", "sometimes"],
    "launch: bad study name": ["launch", "baseline", "--study", "no/such name"],
    "launch: bad URL": ["launch", "baseline", "--mongo", "mongodb://[bad"],
    "launch: --max-evals 0": ["launch", "baseline", "--max-evals", "0"],
    "launch: --lease -5": ["launch", "baseline", "--lease", "-5"],
    "launch: grid over a continuous space": ["launch", "baseline", "--algo", "grid"],
    "launch --space /nonexistent.json": ["launch", "baseline", "--space", "/nonexistent.json"],
    # command studies
    "launch --command: unknown algorithm": ["launch", "--study", "c", *CMD, "--algo", "bayes"],
    "launch --command: unknown pruner": ["launch", "--study", "c", *CMD, "--pruner", "sometimes"],
    "launch --command: bad param": ["launch", "--study", "c", "--command", "python train.py --lr {lr}",
                                    "--param", "lr:1e-1:1e-4:log", "--metric", "acc"],
    "launch --command: grid over a continuous space": ["launch", "--study", "c", *CMD, "--algo", "grid"],
    "launch --command: --max-evals 0": ["launch", "--study", "c", *CMD, "--max-evals", "0"],
    # --model-fn studies
    "launch --model-fn: unknown dataset": ["launch", "--model-fn", "my_models:build", "--space", "SPACE",
                                           "--dataset", "imagenet9"],
    # the pool and studies
    "resume: unknown study": ["resume", "nosuch"],
    "final nosuch": ["final", "nosuch"],
    "worker --gpu banana": ["worker", "--gpu", "banana"],
    "hyperopt-worker --gpu banana": ["hyperopt-worker", "--allow-pickle", "--gpu", "banana"],
    "hyperopt-worker without --allow-pickle": ["hyperopt-worker"],
}


def run_bad(args: list[str], env: dict, timeout: float) -> tuple[float, float, dict]:
    """(wall s, cpu s, outcome) of a bad-input command: its exit code and whether it answered with one
    ``error:`` line; one that runs past ``timeout`` (say, a worker that started) is stopped there."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    tree = env["PYTHONPATH"].split(os.pathsep)[0]  # `python -m` imports from its working directory first
    proc = subprocess.Popen([sys.executable, "-m", "mongotune", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True,
                            cwd=tree)
    try:
        _, stderr = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # this benchmark's own child and what it started
        _, stderr = proc.communicate()
        timed_out = True
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    outcome = {"exit": None if timed_out else proc.returncode, "timed_out": timed_out,
               "one_error_line": len(lines) == 1 and lines[0].startswith("error:") and proc.returncode == 2,
               "first_line": lines[0][:200] if lines else ""}
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), outcome


def bench_bad(env: dict, runs: int, timeout: float, space_file: str, baseline: dict | None = None) -> dict:
    """Each bad-input case ``runs`` times; with ``baseline`` (the environment of another checkout), that
    checkout's answer to the same case right after each run, so both see the same load."""
    bad = {}
    for name, cmd in BAD_INPUT.items():
        cmd = [space_file if a == "SPACE" else a for a in cmd]
        sides = {"now": env, **({"baseline": baseline} if baseline else {})}
        samples: dict = {side: [] for side in sides}
        outcome: dict = {}
        for _ in range(runs):
            for side, side_env in sides.items():
                if outcome.get(side, {}).get("timed_out"):
                    continue  # once is enough to know
                wall, cpu, outcome[side] = run_bad(cmd, side_env, timeout)
                samples[side].append((wall, cpu))
        bad[name] = {**summary(samples["now"]), **outcome["now"]}
        if baseline:
            bad[name]["baseline"] = {**summary(samples["baseline"]), **outcome["baseline"]}
        for side in sides:
            o, median = outcome[side], summary(samples[side])["median_s"]
            ok = "one error line" if o["one_error_line"] else ("TIMED OUT" if o["timed_out"] else
                                                               f"exit {o['exit']}, not one error line")
            print(f"{name:46s} {side:8s} {median:6.2f} s  {ok}: {o['first_line'][:80]}", file=sys.stderr)
    return bad


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
    ap.add_argument("--bad-only", action="store_true", help="only the bad-input cases; results to cli-bad.json")
    ap.add_argument("--bad-timeout", type=float, default=60.0, help="stop a bad-input case after this long")
    ap.add_argument("--out", default=None, help="results file name in bench/results/")
    ap.add_argument("--baseline", default=None, help="another checkout (e.g. a git worktree of an older commit): "
                                                     "its answers to the bad-input cases, run alternately")
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
    baseline = None
    if args.baseline:
        baseline = {**env, "PYTHONPATH": str(Path(args.baseline).resolve()) + os.pathsep + os.environ.get(
            "PYTHONPATH", "")}
        results["baseline"] = {"tree": str(Path(args.baseline).resolve()), "commit": subprocess.run(
            ["git", "-C", args.baseline, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()}
    results["commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                       text=True).stdout.strip()
    space_file = home / "space.json"
    space_file.write_text('{"units": {"hp": "choice", "options": [32, 64]}}')
    if args.bad_only:
        try:
            run(["studies"], env)  # the server up: the cases are measured warm
            results["bad_input_warm"] = bench_bad(env, runs, args.bad_timeout, str(space_file), baseline)
        finally:
            stop_server(env)
        write(results, args.out or "cli-bad.json")
        return
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

        results["bad_input_warm"] = bench_bad(env, runs, args.bad_timeout, str(space_file), baseline)

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
    write(results, args.out or ("cli-quick.json" if args.quick else "cli.json"))
    print(json.dumps({k: results[k] for k in ("cold", "warm")}, indent=1)[:4000])


def write(results: dict, name: str) -> None:
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = ROOT / "bench" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
