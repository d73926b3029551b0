"""Benchmark of the data pipeline (a script, not a test).

    python bench/bench_data.py [--n 70000] [--size 128] [--out bench/results/data.json]

Measures, on N random 28x28 uint8 images (the shape of Fashion-MNIST):

1. resize throughput (images/s) to SIZE x SIZE for each interpolation, with
   the threads the cache build uses and with one thread;
2. a full ``prepare`` of those images (resize + write + hash) and the size of
   the uint8 cache on disk next to what float32 arrays would take;
3. memory of worker processes that ``load`` the cache and read every pixel:
   one worker alone, then 4 at once, and (for contrast) 4 workers holding
   private in-memory copies.  RSS counts shared page-cache pages once per
   process, so USS (pages only that process has) and PSS (shared pages split
   between their users) are reported next to it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MiB = 2**20


def bench_resize(x: np.ndarray, size: int) -> dict:
    from mongotune.data._prepare import transform_into
    from mongotune.data._spec import INTERPOLATIONS

    out = np.zeros((len(x), size, size, 1), dtype=np.uint8)
    out.fill(1)  # fault the pages in now, not inside the first timing
    index = np.arange(len(x))
    results = {}
    for interp in INTERPOLATIONS:
        row = {}
        for label, threads in (("threads", None), ("one_thread", 1)):
            n = len(x) if threads is None else min(len(x), 20000)
            t = time.perf_counter()
            transform_into(out, x, index[:n], size, interp, None, threads=threads)
            row[f"images_per_s_{label}"] = round(n / (time.perf_counter() - t))
        results[interp] = row
    return results


def _worker(spec_dict, cache_dir, private, ready, go):
    import psutil

    from mongotune.data import DataSpec, load

    proc = psutil.Process()
    before = proc.memory_full_info()
    ds = load(DataSpec.from_dict(spec_dict), cache_dir)
    x = np.array(ds.x_train) if private else ds.x_train
    checksum = 0
    for lo in range(0, len(x), 4096):  # touch every page
        checksum += int(x[lo:lo + 4096].sum(dtype=np.uint64))
    ready.put((os.getpid(), checksum, before.rss, before.uss))
    go.wait()


def measure_workers(spec_dict: dict, cache_dir: str, k: int, private: bool) -> dict:
    import psutil

    ctx = mp.get_context("spawn")
    ready, go = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_worker, args=(spec_dict, cache_dir, private, ready, go))
             for _ in range(k)]
    for p in procs:
        p.start()
    try:
        reports = [ready.get(timeout=600) for _ in procs]
        rows = []
        for pid, checksum, rss0, uss0 in reports:
            info = psutil.Process(pid).memory_full_info()
            rows.append({"pid": pid, "rss": info.rss, "uss": info.uss, "pss": info.pss,
                         "rss_before_load": rss0, "uss_before_load": uss0, "checksum": checksum})
    finally:
        go.set()
        for p in procs:
            p.join(timeout=60)
    assert len({r["checksum"] for r in rows}) == 1, "workers read different data"
    return {
        "workers": k,
        "private_copies": private,
        "sum_rss_mib": round(sum(r["rss"] for r in rows) / MiB, 1),
        "sum_uss_mib": round(sum(r["uss"] for r in rows) / MiB, 1),
        "sum_pss_mib": round(sum(r["pss"] for r in rows) / MiB, 1),
        "mean_rss_before_load_mib": round(np.mean([r["rss_before_load"] for r in rows]) / MiB, 1),
        "per_worker": rows,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=70000, help="number of 28x28 images")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "data.json"))
    parser.add_argument("--workdir", default=None, help="where the npz and cache go (default: a temp dir)")
    parser.add_argument("--no-private", action="store_true", help="skip the private-copy run")
    args = parser.parse_args(argv)

    import cv2

    from mongotune.data import DataSpec, prepare

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.n, 28, 28, 1), dtype=np.uint8)
    y = rng.permutation(np.arange(args.n) % 10)
    result: dict = {
        "n": args.n, "size": args.size, "cpus": os.cpu_count(),
        "python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__,
        "cv2_threads": cv2.getNumThreads(), "machine": platform.machine(),
    }

    print(f"resizing {args.n} 28x28 images to {args.size}x{args.size} ...", flush=True)
    result["resize"] = bench_resize(x, args.size)

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        npz = work / "bench.npz"
        np.savez(npz, x=x, y=y)
        cache_dir = work / "cache"
        spec = DataSpec("npz", source=str(npz), size=args.size, interpolation="area")
        print("building the cache ...", flush=True)
        t = time.perf_counter()
        ds = prepare(spec, cache_dir)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        prepare(spec, cache_dir)  # intact: verified by hashing every byte
        verify_s = time.perf_counter() - t
        files = [ds.path / name for name in ds.meta["files"]]
        apparent = sum(f.stat().st_size for f in files)
        allocated = sum(f.stat().st_blocks * 512 for f in files)
        pixels = sum(int(np.prod(ds.meta["files"][f"x_{s}.npy"]["shape"])) for s in ("train", "val", "test"))
        result["cache"] = {
            "build_s": round(build_s, 2),
            "verify_s": round(verify_s, 2),
            "images": int(sum(ds.meta["splits"].values())),
            "bytes_on_disk": apparent,
            "bytes_allocated": allocated,
            "uint8_pixels_mib": round(pixels / MiB, 1),
            "float32_equivalent_mib": round(pixels * 4 / MiB, 1),
            "on_disk_mib": round(apparent / MiB, 1),
            "ratio_float32_to_uint8": round(pixels * 4 / apparent, 2),
            "x_train_mib": round(ds.meta["files"]["x_train.npy"]["bytes"] / MiB, 1),
        }
        del ds
        print("measuring worker memory ...", flush=True)
        runs = [measure_workers(spec.to_dict(), str(cache_dir), 1, False),
                measure_workers(spec.to_dict(), str(cache_dir), 4, False)]
        if not args.no_private:
            runs.append(measure_workers(spec.to_dict(), str(cache_dir), 4, True))
        result["memory"] = runs
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    _print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")
    return result


def _print_table(r: dict) -> None:
    print(f"\nresize {r['n']} x 28x28 -> {r['size']}x{r['size']} "
          f"({r['cpus']} CPUs, OpenCV {r['opencv']})")
    print(f"  {'interpolation':<14}{'images/s (threads)':>20}{'images/s (1 thread)':>21}")
    for interp, row in r["resize"].items():
        print(f"  {interp:<14}{row['images_per_s_threads']:>20,}{row['images_per_s_one_thread']:>21,}")
    c = r["cache"]
    print(f"\ncache of {c['images']} images: {c['on_disk_mib']} MiB on disk (uint8) vs "
          f"{c['float32_equivalent_mib']} MiB as float32 (x{c['ratio_float32_to_uint8']}); "
          f"build {c['build_s']} s, full verify {c['verify_s']} s; x_train {c['x_train_mib']} MiB")
    print(f"\n  {'workers':<26}{'sum RSS MiB':>13}{'sum PSS MiB':>13}{'sum USS MiB':>13}")
    for m in r["memory"]:
        label = f"{m['workers']} x {'private copy' if m['private_copies'] else 'memmap'}"
        print(f"  {label:<26}{m['sum_rss_mib']:>13,.1f}{m['sum_pss_mib']:>13,.1f}{m['sum_uss_mib']:>13,.1f}")
    print(f"  (a worker's RSS before loading: about {r['memory'][0]['mean_rss_before_load_mib']} MiB)")


if __name__ == "__main__":
    main()
