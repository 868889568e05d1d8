"""Throughput of rlft.sandbox against a bare ``subprocess.run([sys.executable, "-c", code])``.

A batch of 256 small programs from rlft's code tasks: half correct, the rest wrong (buggy bodies,
wrong answers, a few syntax and runtime errors) and 8 that hang until the time limit. Both sides run
the batch with the same number of parallel workers (default: the CPUs) and the same time limit; the
bare side runs the program with its asserts appended, without any isolation or result protocol.

Reported: wall time and programs per second for the batch, and the per-program overhead: the median
latency of one short correct program run alone, minus the bare one (serial, 20 runs each). A second
bare row runs the same interpreter with the sandbox's flags (-I -S -B: no site, no user paths), which
is most of the sandbox's own start-up saving. Sides alternate (A B C A B C), medians are reported.

    python benchmarks/sandbox.py                 # ~3 min on 2 cores
    python benchmarks/sandbox.py --out runs/bench/sandbox.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlft.sandbox import bwrap_available, isolation, run_batch, run_tests
from rlft.tasks.code import code_prefix
from rlft.tasks.code_problems import PROBLEMS


def programs(n: int = 256, hanging: int = 8) -> list[dict]:
    """n jobs: n/2 correct, `hanging` infinite loops, the rest wrong in various ways."""
    jobs = []
    for i in range(n):
        p = PROBLEMS[i % len(PROBLEMS)]
        head = code_prefix(p)
        if i % 2 == 0:
            body = p.body
        elif i % 32 == 1 and hanging > 0:
            body, hanging = "    while True:\n        pass\n", hanging - 1
        elif i % 16 == 3:
            body = "    return (\n"                            # syntax error
        elif i % 16 == 5:
            body = "    raise ValueError('no')\n"              # runtime error
        elif p.bug:
            body = p.bug[0]
        else:
            body = "    return None\n"
        jobs.append({"program": head + body, "tests": list(p.tests), "entry_point": p.name})
    return jobs


def bare(job: dict, timeout_s: float, flags=None) -> float:
    code = job["program"] + "\n" + "\n".join(job["tests"]) + "\n"
    exe = [sys.executable] if flags is None else [os.path.realpath(sys.executable), *flags]
    t0 = time.monotonic()
    try:
        subprocess.run([*exe, "-c", code], capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        pass
    return time.monotonic() - t0


def batch(jobs, workers, timeout_s, side):
    """side: None = bare subprocess.run, "-I -S" = bare with the sandbox's interpreter flags,
    True / False = the sandbox with / without bwrap."""
    t0 = time.monotonic()
    if side is None or isinstance(side, str):
        flags = None if side is None else side.split()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda j: bare(j, timeout_s, flags), jobs))
        return time.monotonic() - t0, None
    res = run_batch(jobs, workers=workers, timeout_s=timeout_s, use_bwrap=side)
    return time.monotonic() - t0, res


def one(job, timeout_s, side) -> float:
    """Wall seconds of one program run alone."""
    t0 = time.monotonic()
    if side is None or isinstance(side, str):
        bare(job, timeout_s, None if side is None else side.split())
    else:
        run_tests(**job, timeout_s=timeout_s, use_bwrap=side)
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--programs", type=int, default=256)
    ap.add_argument("--hanging", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=2.0, help="time limit of one program (s)")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeats", type=int, default=20, help="serial runs for the latency medians")
    ap.add_argument("--rounds", type=int, default=2, help="batches per side (median)")
    ap.add_argument("--out", default="runs/bench/sandbox.json")
    args = ap.parse_args()

    jobs = programs(args.programs, args.hanging)
    sides = [("bare subprocess.run([sys.executable, '-c', code])", None),
             ("bare, same interpreter flags as the sandbox (-I -S -B)", "-I -S -B"), ("sandbox, plain", False)]
    if bwrap_available()[0]:
        sides.append(("sandbox, bwrap", True))
    quick = jobs[0]                                               # a short correct program
    # Latency and CPU of one program, and the batch: sides interleaved (A B C A B C ...) so that the
    # load of a shared machine falls on all of them alike; medians.
    lat = {name: [] for name, _ in sides}
    for _ in range(args.repeats):
        for name, mode in sides:
            lat[name].append(one(quick, args.timeout, mode))
    walls, results = {name: [] for name, _ in sides}, {}
    for _ in range(args.rounds):
        for name, mode in sides:
            wall, res = batch(jobs, args.workers, args.timeout, mode)
            walls[name].append(wall)
            results[name] = res
    rows = []
    for name, _mode in sides:
        wall = statistics.median(walls[name])
        row = {"side": name, "wall_s": round(wall, 2), "programs_per_s": round(len(jobs) / wall, 1),
               "latency_ms": round(1000 * statistics.median(lat[name]), 1),
               "walls_s": [round(w, 2) for w in walls[name]]}
        res = results[name]
        if res is not None:
            row["statuses"] = {s: sum(r.status == s for r in res) for s in sorted({r.status for r in res})}
            row["all_pass"] = sum(r.all_passed for r in res)
        rows.append(row)
        print(f"{name}: {row}", file=sys.stderr)
    base = rows[0]
    for row in rows[1:]:
        row["overhead_ms"] = round(row["latency_ms"] - base["latency_ms"], 1)
        row["batch_wall_ratio"] = round(row["wall_s"] / base["wall_s"], 2)

    hang = sum("while True" in j["program"] for j in jobs)
    print(f"\n{len(jobs)} programs ({hang} hanging until {args.timeout:g} s), {args.workers} workers, "
          f"{platform.machine()}, Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}\n")
    print("| side | batch wall (s) | programs/s | one program alone (ms, median) | overhead vs bare (ms) |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['side']} | {row['wall_s']} | {row['programs_per_s']} | {row['latency_ms']} | "
              f"{row.get('overhead_ms', '-')} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"programs": len(jobs), "hanging": args.hanging, "timeout_s": args.timeout,
                               "workers": args.workers, "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                               "bwrap": bwrap_available()[0], "landlock": isolation(False)["landlock"],
                               "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
