"""End-to-end solve timings on a puzzle (default: the public one in ../shared), per pipeline and backend.

Pipelines: ``paper`` = seeds, Bradley-Terry ranking, then single-move local search (the paper's recipe);
``unshuffle`` = greedy seed then local search with multi-accept (the default). Every row is one solve() in
this process; the table prints phase times and the ratio to the paper pipeline on the torch backend.

    python benchmarks/bench_solve.py [PUZZLE_DIR] [--backends torch,cpp] [--repeat 3] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from unshuffle import load_puzzle
from unshuffle.backends import available_backends
from unshuffle.safeio import atomic_write_text
from unshuffle.solver import solve

PIPELINES = {"paper": dict(bt=True, multi=False), "unshuffle": dict(bt=False, multi=True)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1].parent / "shared" / "puzzles" / "droppedaneuralnet"
    ap.add_argument("puzzle", nargs="?", default=str(default))
    ap.add_argument("--backends", default=",".join(b for b, (ok, _) in available_backends().items() if ok and b != "reference"))
    ap.add_argument("--pipelines", default="paper,unshuffle")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="write results to this file")
    args = ap.parse_args(argv)
    puzzle = load_puzzle(args.puzzle)
    rows = []
    for backend in args.backends.split(","):
        for pipe in args.pipelines.split(","):
            times, sol = [], None
            for r in range(args.repeat):
                sol = solve(puzzle, backend=backend, seed=0, **PIPELINES[pipe])
                times.append(sol.timings)
            med = {k: statistics.median(t[k] for t in times) for k in times[0]}
            o = sol.order_result
            rows.append(dict(backend=backend, pipeline=pipe, exact=sol.exact, sha256=sol.sha256, timings=med,
                             rounds=o.rounds, moves=o.moves_used, block_rows=o.block_rows, seed_mse=o.seed_mse,
                             search_rows=o.search_rows))
    base = next((r["timings"]["total"] for r in rows if r["backend"] == "torch" and r["pipeline"] == "paper"), None)
    print(f"puzzle {args.puzzle}  torch {torch.__version__}  threads {torch.get_num_threads()}  median of {args.repeat}")
    hdr = f"{'backend':8s} {'pipeline':10s} {'exact':5s} {'pair':>6s} {'seeds':>6s} {'BT':>6s} {'search':>7s} {'verify':>6s} {'total':>7s} {'vs torch/paper':>14s} {'rounds':>6s} {'Mblock-rows':>11s}"
    print(hdr)
    for r in rows:
        t = r["timings"]
        ratio = f"{base / t['total']:.1f}x" if base else "-"
        print(f"{r['backend']:8s} {r['pipeline']:10s} {str(r['exact']):5s} {t['pair']:6.2f} {t.get('order.seeds', 0):6.2f} "
              f"{t.get('order.bradley_terry', 0):6.2f} {t.get('order.search', 0):7.2f} {t['verify']:6.2f} {t['total']:7.2f} "
              f"{ratio:>14s} {r['rounds']:6d} {r['block_rows'] / 1e6:11.2f}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"puzzle": args.puzzle, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
