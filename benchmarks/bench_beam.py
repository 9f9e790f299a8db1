"""Probe beam with and without screening, side by side on the same puzzles, in one run.

The full beam (every candidate probed on all probe rows) is the reference here; the screened beam scores each
depth's candidates on the first ``--screen-rows`` rows and re-probes only the ``--keep`` x width best on all
rows (docs/ORDERING.md section 4). Both trust the generator's pairing, so the table says what screening costs
in beam quality (same best order? exact?) and what it saves in time, as a ratio.

    python benchmarks/bench_beam.py                          # fast/paper N=32 seeds 9001-9003, widths 16,32
    python benchmarks/bench_beam.py --blocks 48 --seeds 9001 --widths 16
    python benchmarks/bench_beam.py --quick                  # one N=16 puzzle, width 8 (seconds)

Puzzles come from (and are generated into) bench_reach's cache. Writes ``results/<name>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import List, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_reach as br  # noqa: E402  (puzzle cache, answer mapping, distances)


def compare(folder: Path, widths: Sequence[int], screen_rows: int = 500, keep: int = 16,
            probe_rows: int = 2000) -> List[dict]:
    """One record per width: the full and the screened beam on ``folder`` (a puzzle with answer.json)."""
    import numpy as np

    from unshuffle import beam as bm
    from unshuffle import load_puzzle

    puzzle = load_puzzle(folder)
    true_in, true_out = br.true_order(puzzle, br.read_answer(folder))
    out_of = [0] * len(true_in)
    for a, b in zip(true_in, true_out):
        out_of[a] = b
    a = puzzle.arrays
    rows = np.arange(min(probe_rows, puzzle.n_rows))
    X, T = a.X[rows], a.pred[rows]
    w = (a.W_in, a.b_in, a.W_out, a.b_out)
    allowed = bm.allowed_table(out_of)
    recs = []
    for width in widths:
        rec = {"puzzle": Path(folder).name, "blocks": puzzle.n_blocks, "width": int(width), "rows": len(rows),
               "screen_rows": int(screen_rows), "keep": int(keep) * int(width)}
        for name, kw in (("full", {}), ("screened", dict(screen_rows=screen_rows, screen_keep=keep * width))):
            t = time.perf_counter()
            r = bm.probe_beam(X, T, w, allowed, width=width, **kw)
            sec = time.perf_counter() - t
            best_in, best_out = r.orders[0]
            d = br.distances(best_in, best_out, true_in, true_out)
            rec[name] = {"seconds": sec, "candidates": r.candidates, "best_exact": d["kendall"] == 0 and
                         d["pairs_wrong"] == 0, "best_kendall": d["kendall"], "best_loss": r.losses[0],
                         "answer_in_beam": [list(o[0]) for o in r.orders].count(list(true_in)) > 0,
                         "order": list(best_in)}
        rec["same_best_order"] = rec["full"]["order"] == rec["screened"]["order"]
        rec["speedup"] = rec["full"]["seconds"] / rec["screened"]["seconds"]
        for name in ("full", "screened"):
            del rec[name]["order"]
        recs.append(rec)
    return recs


def format_table(recs: Sequence[dict]) -> str:
    head = ("| puzzle | W | full s | screened s | full / screened | full best exact (Kendall) | "
            "screened best exact (Kendall) | same best order |")
    lines = [head, "|" + "---|" * 8]
    for r in recs:
        f, s = r["full"], r["screened"]
        lines.append(f"| {r['puzzle']} | {r['width']} | {f['seconds']:.2f} | {s['seconds']:.2f} | "
                     f"{r['speedup']:.2f}x | {f['best_exact']} ({f['best_kendall']}) | "
                     f"{s['best_exact']} ({s['best_kendall']}) | {r['same_best_order']} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one fast N=16 puzzle (seed 9001), width 8")
    ap.add_argument("--blocks", type=lambda s: [int(v) for v in s.split(",")], default=[32])
    ap.add_argument("--regimes", default="fast,paper")
    ap.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=list(br.FULL_SEEDS))
    ap.add_argument("--dim", type=int, default=48)
    ap.add_argument("--hidden", type=int, default=96)
    ap.add_argument("--rows", type=int, default=2000, help="rows of data per puzzle (default 2000, the generator's)")
    ap.add_argument("--widths", type=lambda s: [int(v) for v in s.split(",")], default=[16, 32])
    ap.add_argument("--screen-rows", type=int, default=500, help="rows of the screening pass (default 500)")
    ap.add_argument("--keep", type=int, default=16,
                    help="re-probed on all rows: keep x width (default 16, the solver's)")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the C++ core")
    ap.add_argument("--cache", type=Path, default=br.DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=br.DEFAULT_OUT)
    ap.add_argument("--name", default=None, help="file stem (default bench_beam, or bench_beam_quick)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    br.apply_threads(args.threads)
    if args.quick:
        args.blocks, args.regimes, args.seeds, args.widths = [16], "fast", [9001], [8]
    recs = []
    for n in args.blocks:
        for regime in args.regimes.split(","):
            for seed in args.seeds:
                folder, _ = br.ensure_puzzle(br.Spec(regime, n, args.dim, args.hidden, seed, args.rows), args.cache)
                for r in compare(folder, args.widths, args.screen_rows, args.keep):
                    recs.append(r)
                    print(f"{r['puzzle']} W={r['width']}: full {r['full']['seconds']:.2f} s, screened "
                          f"{r['screened']['seconds']:.2f} s ({r['speedup']:.2f}x), same best order "
                          f"{r['same_best_order']}", flush=True)
    print()
    print(format_table(recs))
    from unshuffle.safeio import atomic_write_text

    name = args.name or ("bench_beam_quick" if args.quick else "bench_beam")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name}.json"
    doc = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "threads": os.environ.get("OMP_NUM_THREADS")}, "records": recs}
    atomic_write_text(path, json.dumps(doc, indent=1))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
