"""Whole-solve timings on a puzzle (default: the public one in ../shared), with in-run yardsticks.

Three parts, one run, so that figures compare across machines as ratios:

1. Whole process: ``python -m unshuffle solve PUZZLE --json --quiet`` via subprocess, alternating with a bare
   ``python -c "import torch"``; medians of ``--runs``. Ratio: solve / import torch (target <= 0.5).
2. In process: ``load_puzzle`` and ``solve()`` phase times (pair, seeds, search, verify, total), medians of
   ``--repeat``, next to the naive full-forward yardstick: one torch float32 forward of the answer's order
   over every row (torch.addmm per block, the way nn.Linear runs it). Ratio: solve / forward (target <= 1).
3. Optionally (``--pipelines``), per backend and pipeline (``paper`` = seeds + Bradley-Terry + single-move
   search; ``unshuffle`` = the default), the phase table of earlier versions.

The machine is shared: the load average is recorded before and after, and every figure is a median.
Runs against another checkout work too (``PYTHONPATH=/path/to/old/checkout python benchmarks/bench_solve.py``);
only APIs that exist since the first release are used.

    python benchmarks/bench_solve.py [PUZZLE_DIR] [--runs 7] [--repeat 5] [--json FILE] [--pipelines ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "puzzles" / "droppedaneuralnet"
PIPELINES = {"paper": dict(bt=True, multi=False), "unshuffle": dict(bt=False, multi=True)}
PHASES = ("load", "pair", "order.seeds", "order.search", "verify", "total")


def _wall(cmd):
    """(wall seconds, CPU seconds user+system) of one run of cmd."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    # cwd: a neutral folder, since `python -m` puts the working directory ahead of PYTHONPATH
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tempfile.gettempdir())
    dt = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.decode(errors='replace')[-500:]}")
    return dt, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def whole_process(puzzle: str, runs: int) -> dict:
    """Alternating subprocess runs: the CLI solve and a bare torch import (after one warm-up of each)."""
    solve_cmd = [sys.executable, "-m", "unshuffle", "solve", puzzle, "--json", "--quiet"]
    torch_cmd = [sys.executable, "-c", "import torch"]
    out = subprocess.run(solve_cmd, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if out.returncode not in (0, 1):
        raise RuntimeError(f"solve failed: {out.stderr[-500:]}")
    answer = json.loads(out.stdout)
    _wall(torch_cmd)
    solve_s, torch_s, solve_cpu, torch_cpu = [], [], [], []
    for _ in range(runs):
        for cmd, wall, cpu in ((solve_cmd, solve_s, solve_cpu), (torch_cmd, torch_s, torch_cpu)):
            w, c = _wall(cmd)
            wall.append(w)
            cpu.append(c)
    s, t = statistics.median(solve_s), statistics.median(torch_s)
    return {"solve_s": solve_s, "import_torch_s": torch_s, "solve_median": s, "import_torch_median": t,
            "ratio": s / t, "solve_cpu_median": statistics.median(solve_cpu),
            "import_torch_cpu_median": statistics.median(torch_cpu), "sha256": answer["sha256"],
            "exact": answer["exact"], "backend": answer["backend"]}


def in_process(puzzle_dir: str, repeat: int) -> dict:
    """Median phase times of load_puzzle + solve(), and the naive torch forward of the same order."""
    import torch

    from unshuffle import load_puzzle
    from unshuffle.solver import forward, solve

    loads, runs, sol, puzzle = [], [], None, None
    for _ in range(repeat):
        t = time.perf_counter()
        puzzle = load_puzzle(puzzle_dir)
        loads.append(time.perf_counter() - t)
    solve(puzzle)  # warm-up: first-call costs (thread pools, page faults) are not the solver's
    cpu = []
    for _ in range(repeat):
        c = time.process_time()
        sol = solve(puzzle)
        cpu.append(time.process_time() - c)
        runs.append(sol.timings)
    phases = {"load": statistics.median(loads)}
    phases.update({k: statistics.median(r.get(k, 0.0) for r in runs) for k in PHASES if k != "load"})
    o = sol.order_result
    forward(puzzle, o.order, o.order_out)  # warm-up
    fwd = []
    for _ in range(repeat):
        t = time.perf_counter()
        forward(puzzle, o.order, o.order_out)
        fwd.append(time.perf_counter() - t)
    f = statistics.median(fwd)
    return {"phases": phases, "solve_cpu_s": statistics.median(cpu), "naive_forward_s": f,
            "ratio": phases["total"] / f, "sha256": sol.sha256,
            "exact": sol.exact, "backend": sol.backend, "torch_threads": torch.get_num_threads(),
            "rows": puzzle.n_rows, "blocks": puzzle.n_blocks}


def pipelines(puzzle_dir: str, backends, pipes, repeat: int) -> list:
    from unshuffle import load_puzzle
    from unshuffle.solver import solve

    puzzle = load_puzzle(puzzle_dir)
    rows = []
    for backend in backends:
        for pipe in pipes:
            times, sol = [], None
            for _ in range(repeat):
                sol = solve(puzzle, backend=backend, seed=0, **PIPELINES[pipe])
                times.append(sol.timings)
            med = {k: statistics.median(t.get(k, 0.0) for t in times) for k in times[0]}
            o = sol.order_result
            rows.append(dict(backend=backend, pipeline=pipe, exact=sol.exact, sha256=sol.sha256, timings=med,
                             rounds=o.rounds, block_rows=o.block_rows))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("puzzle", nargs="?", default=str(DEFAULT))
    ap.add_argument("--runs", type=int, default=7, help="whole-process runs of each command (median)")
    ap.add_argument("--repeat", type=int, default=5, help="in-process repeats (median)")
    ap.add_argument("--pipelines", default="", help="also the per-pipeline table, e.g. paper,unshuffle")
    ap.add_argument("--backends", default="cpp", help="backends for --pipelines (comma-separated)")
    ap.add_argument("--skip-process", action="store_true", help="no whole-process part")
    ap.add_argument("--json", help="write the results to this file (e.g. benchmarks/results/solve.json)")
    args = ap.parse_args(argv)

    load0 = os.getloadavg()
    res = {"puzzle": args.puzzle, "python": platform.python_version(), "cpus": os.cpu_count(),
           "load_before": load0, "unshuffle_path": None}
    import unshuffle

    res["unshuffle_path"] = str(Path(unshuffle.__file__).parent)
    if not args.skip_process:
        res["whole_process"] = wp = whole_process(args.puzzle, args.runs)
    res["in_process"] = ip = in_process(args.puzzle, args.repeat)
    if args.pipelines:
        res["pipelines"] = pipelines(args.puzzle, args.backends.split(","), args.pipelines.split(","), args.repeat)
    res["load_after"] = os.getloadavg()

    print(f"puzzle {args.puzzle} ({ip['blocks']} blocks, {ip['rows']} rows)  unshuffle from {res['unshuffle_path']}")
    print(f"load average before {load0[0]:.2f}, after {res['load_after'][0]:.2f} ({os.cpu_count()} CPUs)")
    if not args.skip_process:
        print(f"\nwhole process, median of {args.runs} alternating runs (seconds):")
        print(f"  unshuffle solve --json --quiet   {wp['solve_median']:6.3f}   ({wp['backend']}, exact={wp['exact']})")
        print(f"  python -c 'import torch'         {wp['import_torch_median']:6.3f}")
        print(f"  ratio solve / import torch       {wp['ratio']:6.2f}   (target <= 0.5)")
        print(f"  CPU seconds (user+sys): solve {wp['solve_cpu_median']:.3f}, import torch {wp['import_torch_cpu_median']:.3f}")
    ph = ip["phases"]
    print(f"\nin process, median of {args.repeat} (seconds), backend {ip['backend']}, exact={ip['exact']}:")
    print("  " + " ".join(f"{k:>12s}" for k in PHASES) + f" {'naive fwd':>10s} {'solve/fwd':>10s}")
    print("  " + " ".join(f"{ph[k]:12.4f}" for k in PHASES) + f" {ip['naive_forward_s']:10.4f} {ip['ratio']:10.2f}")
    print(f"  solve() CPU seconds (all threads): {ip['solve_cpu_s']:.4f}")
    for r in res.get("pipelines", []):
        t = r["timings"]
        print(f"  {r['backend']:6s} {r['pipeline']:10s} exact={r['exact']!s:5s} " + " ".join(
            f"{k} {t.get(k, 0.0):.3f}" for k in ("pair", "order.seeds", "order.bradley_terry", "order.search", "verify", "total")))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1) + "\n")
        os.replace(tmp, args.json)  # atomic: no half-written result file
    return 0


if __name__ == "__main__":
    sys.exit(main())
