"""Landscape diagnostic (issue 8, item 4): does the local search climb back to the answer from k moves away,
and where does it stop when it does not?

From the true answer of a generated puzzle, apply k random moves (kinds: insert, swap, adjacent, repair, or
mixed = a random kind per move), then run the C++ local search (``unshuffle.search.local_search_native``, no
kicks) under each schedule and record: whether it returns to the answer, the final MSE on the search rows,
and how far the local optimum it stops at is from the answer - Kendall tau distance (pairs of blocks in the
wrong relative order, = the fewest adjacent swaps), positions wrong, the fewest insertion moves
(N - longest increasing subsequence of the true positions) and pairs wrong. The same distances of the
perturbed start are recorded, since k random moves can partly undo each other.

Schedules (``--schedules``): ``default`` = ``unshuffle.search.DEFAULT_SCHEDULE`` as it is today (cheapest
move set first), ``all`` = every kind in one move set (best improvement over all of them at once), or a
custom one written as move sets separated by ``/`` with kinds joined by ``+``, e.g. ``adjacent/swap+insert``.

Instead of random moves, ``--start FILE`` starts from a given order: a JSON list of piece ids in execution
order, a JSON object with ``permutation`` (``unshuffle solve --json`` output) or ``answer``, or the ids as
comma-separated text.

Outputs (``--out``, default benchmarks/results/, stem ``--name``): a table on stdout, ``<name>.json`` (every
trial and the per-(kind, schedule, k) summary; atomic write) and ``<name>.png`` (return rate vs k, one line per
schedule, one panel per move kind).

    python benchmarks/landscape.py --regime fast --blocks 32 --seed 9001            # cached like bench_reach
    python benchmarks/landscape.py benchmarks/.cache/reach/fast_N32_d48_h96_s9001 --k 1,2,4,8 --trials 4
    python benchmarks/landscape.py PUZZLE_DIR --start solve_output.json             # from a given order
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_reach as br  # noqa: E402  (the puzzle cache, answer mapping and distances are shared)

KINDS = ("insert", "swap", "adjacent", "repair", "mixed")
DEFAULT_K = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96)


def parse_schedule(text: str) -> Tuple[str, List[List[int]]]:
    """(name, schedule as lists of move codes) for 'default', 'all' or 'adjacent/swap+insert/...'."""
    from unshuffle import moves as mv
    from unshuffle.search import DEFAULT_SCHEDULE

    t = text.strip()
    if t == "default":
        return t, [list(s) for s in DEFAULT_SCHEDULE]
    if t == "all":
        return t, [[mv.ADJACENT, mv.SWAP, mv.INSERT, mv.REPAIR]]
    sched = []
    for level in t.split("/"):
        kinds = []
        for k in level.split("+"):
            if k not in mv.KIND_CODES or k == "kick":
                raise ValueError(f"unknown move kind {k!r} in schedule {text!r} (adjacent, swap, insert, repair)")
            kinds.append(mv.KIND_CODES[k])
        sched.append(kinds)
    return t, sched


def k_values(spec: str, n: int) -> List[int]:
    """The k list: 'auto' (1, 2, 3, 4, 6, 8, 12, ... up to N, and N), 'all' (1..N) or comma-separated."""
    if spec == "all":
        return list(range(1, n + 1))
    if spec == "auto":
        return sorted({k for k in DEFAULT_K if k <= n} | {n})
    return [int(k) for k in spec.split(",") if k.strip()]


def random_moves(order_in: Sequence[int], order_out: Sequence[int], k: int, kind: str,
                 rng: np.random.Generator) -> Tuple[List[int], List[int], List[tuple]]:
    """Apply k uniformly drawn moves of ``kind`` ('mixed': a random kind each time) to the order; returns
    (order_in, order_out, the moves as (kind name, i, j))."""
    from unshuffle import moves as mv

    oi, oo = list(order_in), list(order_out)
    n = len(oi)
    applied = []
    for _ in range(k):
        name = kind if kind != "mixed" else str(rng.choice(KINDS[:4]))
        code = mv.KIND_CODES[name]
        cands = mv.enumerate_moves(n, code)
        if not cands:  # e.g. no insert/swap with |i-j| >= 2 on 2 blocks
            continue
        i, j = cands[int(rng.integers(len(cands)))]
        oi, oo = mv.apply_move(oi, oo, code, i, j)
        applied.append((name, int(i), int(j)))
    return oi, oo, applied


def read_start(path: Path, puzzle) -> Tuple[List[int], List[int]]:
    """A starting order from a file (see the module docstring; ``unshuffle.puzzle.load_order``) as stack
    indices (order_in, order_out)."""
    from unshuffle.puzzle import load_order

    return puzzle.blocks_of(load_order(path, puzzle))


def run_search(X, target, weights, order_in, order_out, schedule, time_limit: Optional[float], multi: bool,
               seed: int = 0):
    """The C++ local search from one order, no kicks (``local_search_native``); returns its SearchOutcome."""
    from unshuffle.search import local_search_native

    return local_search_native(X, target, *weights, list(order_in), list(order_out), schedule=schedule,
                               stop_loss=br.search_stop_loss(target), kicks=0, multi=multi, max_rounds=10**9,
                               time_limit=time_limit, seed=seed)


def trial(X, target, weights, true_in, true_out, start_in, start_out, schedule, time_limit, multi) -> dict:
    """One search from (start_in, start_out): returned?, final MSE, distances at the start and at the end."""
    from unshuffle import moves as mv

    nvals = target.size
    start_loss = float(_losses(X, target, weights, [(start_in, start_out)])[0])
    t = time.perf_counter()
    res = run_search(X, target, weights, start_in, start_out, schedule, time_limit, multi)
    used: Dict[str, int] = {}
    for h in res.history:
        used[mv.KIND_NAMES[int(h[1])]] = used.get(mv.KIND_NAMES[int(h[1])], 0) + 1
    return {
        "returned": list(res.order_in) == list(true_in) and list(res.order_out) == list(true_out),
        "final_mse": res.loss / nvals, "start_mse": start_loss / nvals, "stopped": res.stopped,
        "rounds": int(res.rounds), "moves_used": used, "seconds": time.perf_counter() - t,
        "start": br.distances(start_in, start_out, true_in, true_out),
        "final": br.distances(res.order_in, res.order_out, true_in, true_out),
        "final_order_in": [int(v) for v in res.order_in], "final_order_out": [int(v) for v in res.order_out],
    }


def _losses(X, target, weights, orders):
    from unshuffle import native

    return native.order_losses(X, target, weights, orders)


def summarise(trials: Sequence[dict]) -> List[dict]:
    """Per (kind, schedule, k): trials, return rate, median final MSE, median start/final distances."""
    groups: Dict[tuple, List[dict]] = {}
    for t in trials:
        groups.setdefault((t["kind"], t["schedule"], t["k"]), []).append(t)
    out = []
    for (kind, sched, k), ts in groups.items():
        med = lambda key, where: statistics.median(t[where][key] for t in ts)
        out.append({"kind": kind, "schedule": sched, "k": k, "trials": len(ts),
                    "returned": sum(t["returned"] for t in ts), "return_rate": sum(t["returned"] for t in ts) / len(ts),
                    "final_mse_median": statistics.median(t["final_mse"] for t in ts),
                    **{f"start_{d}_median": med(d, "start") for d in ("insertions", "kendall", "wrong_positions", "pairs_wrong")},
                    **{f"final_{d}_median": med(d, "final") for d in ("insertions", "kendall", "wrong_positions", "pairs_wrong")},
                    "final_insertions_max": max(t["final"]["insertions"] for t in ts),
                    "rounds_median": statistics.median(t["rounds"] for t in ts)})
    kind_rank = {k: i for i, k in enumerate(KINDS + ("file",))}
    sched_rank = {s: i for i, s in enumerate(dict.fromkeys(t["schedule"] for t in trials))}  # as given
    out.sort(key=lambda r: (kind_rank.get(r["kind"], 99), sched_rank[r["schedule"]], r["k"]))
    return out


def format_table(rows: Sequence[dict]) -> str:
    """The summary as a markdown table. Distances are medians: start -> final (0 = at the answer)."""
    head = ("| kind | schedule | k | trials | returned | final MSE med | insertions (start -> final) | "
            "Kendall (start -> final) | positions wrong (start -> final) | pairs wrong (start -> final) | rounds med |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    g = lambda r, d: f"{r[f'start_{d}_median']:g} -> {r[f'final_{d}_median']:g}"
    for r in rows:
        lines.append(f"| {r['kind']} | {r['schedule']} | {r['k']} | {r['trials']} | {r['returned']}/{r['trials']} | "
                     f"{r['final_mse_median']:.2g} | {g(r, 'insertions')} (max {r['final_insertions_max']}) | "
                     f"{g(r, 'kendall')} | {g(r, 'wrong_positions')} | {g(r, 'pairs_wrong')} | {r['rounds_median']:g} |")
    return "\n".join(lines)


def plot(rows: Sequence[dict], path: Path, title: str) -> None:
    """Return rate vs k, one line per schedule, one panel per move kind (atomic write)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    from unshuffle.safeio import atomic_path

    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    scheds = list(dict.fromkeys(r["schedule"] for r in rows))
    cols = min(3, len(kinds))
    nrows = -(-len(kinds) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.8 * cols + 0.6, 3.3 * nrows + 0.4), sharey=True, squeeze=False)
    for ax in axes.flat[len(kinds):]:
        ax.set_visible(False)
    for ax, kind in zip(axes.flat, kinds):
        for i, s in enumerate(scheds):
            pts = sorted((r["k"], r["return_rate"]) for r in rows if r["kind"] == kind and r["schedule"] == s)
            if pts:
                ax.plot(*zip(*pts), marker="o", color=f"C{i}", label=s)
        ax.set_title(f"{kind} moves")
        ax.set_xscale("log")
        ks = sorted({r["k"] for r in rows if r["kind"] == kind})
        ax.set_xticks(ks, [str(k) for k in ks], fontsize=7)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # plain ticks at the k values only
        ax.set_xlabel("k random moves from the answer")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("returned to the answer")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def run(puzzle_dir: Path, ks: Optional[Sequence[int]], kinds: Sequence[str], schedules: Sequence[str], trials: int,
        time_limit: Optional[float], search_rows: int = 256, seed: int = 0, multi: bool = True,
        start: Optional[Path] = None, progress=print) -> dict:
    """The whole diagnostic on one puzzle; returns {'puzzle', 'n', 'trials': [...], 'summary': [...]}."""
    from unshuffle import load_puzzle

    puzzle = load_puzzle(puzzle_dir)
    answer = br.read_answer(puzzle_dir)
    true_in, true_out = br.true_order(puzzle, answer)
    X, target, weights = br.search_data(puzzle, search_rows, seed)
    n = puzzle.n_blocks
    scheds = [parse_schedule(s) for s in schedules]
    if start is not None:
        si, so = read_start(start, puzzle)
        jobs = [("file", br.distances(si, so, true_in, true_out)["insertions"], 0, si, so, [])]
    else:
        jobs = []
        for kind in kinds:
            for k in ks:
                for tr in range(trials):
                    rng = np.random.default_rng([seed, k, tr, KINDS.index(kind)])
                    si, so, applied = random_moves(true_in, true_out, k, kind, rng)
                    jobs.append((kind, k, tr, si, so, applied))
    out = []
    for idx, (kind, k, tr, si, so, applied) in enumerate(jobs, 1):
        for name, sched in scheds:
            r = trial(X, target, weights, true_in, true_out, si, so, sched, time_limit, multi)
            r.update(kind=kind, k=int(k), trial=tr, schedule=name, schedule_kinds=sched, moves_applied=applied)
            out.append(r)
            if progress is not None:
                progress(f"[{idx}/{len(jobs)}] {kind:8s} k={k:<3d} #{tr} {name:8s}: "
                         f"{'returned' if r['returned'] else 'stuck   '} MSE {r['final_mse']:.2g}, insertions "
                         f"{r['start']['insertions']} -> {r['final']['insertions']}, {r['rounds']} rounds, {r['seconds']:.1f} s")
    return {"puzzle": str(puzzle_dir), "n": n, "d": puzzle.d, "h": puzzle.h, "trials": out, "summary": summarise(out)}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="landscape.py", description=__doc__.split("\n\n")[0].replace("\n", " "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The puzzle: PUZZLE_DIR (with the generator's answer.json), or --regime/--blocks/--dim/--hidden/"
               "--seed/--rows, generated into bench_reach's cache (reused when there).\n\nexamples:\n"
               "  python benchmarks/landscape.py --regime fast --blocks 32 --seed 9001\n"
               "  python benchmarks/landscape.py PUZZLE_DIR --kinds insert --k 1,2,4 --trials 4 --schedules default,all\n"
               "  python benchmarks/landscape.py PUZZLE_DIR --start solve.json --schedules default,all,adjacent/insert")
    ap.add_argument("puzzle", nargs="?", type=Path, help="puzzle folder with answer.json (else generated, see below)")
    g = ap.add_argument_group("puzzle to generate (when PUZZLE_DIR is not given)")
    g.add_argument("--regime", default="fast", help="training regime (default fast)")
    g.add_argument("--blocks", type=int, default=32, help="N (default 32)")
    g.add_argument("--dim", type=int, default=48, help="d (default 48)")
    g.add_argument("--hidden", type=int, default=96, help="h (default 96)")
    g.add_argument("--seed", type=int, default=9001, help="puzzle seed (default 9001)")
    g.add_argument("--rows", type=int, default=2000, help="rows (default 2000)")
    g.add_argument("--cache", type=Path, default=br.DEFAULT_CACHE, help="puzzle cache (bench_reach's by default)")
    e = ap.add_argument_group("experiment")
    e.add_argument("--k", default="auto", help="moves from the answer: 'auto' (1,2,3,4,6,8,12,... and N), 'all' (1..N), or a list")
    e.add_argument("--kinds", default=",".join(KINDS), help=f"move kinds to perturb with (default {','.join(KINDS)})")
    e.add_argument("--trials", type=int, default=3, help="random perturbations per (kind, k) (default 3)")
    e.add_argument("--schedules", default="default,all",
                   help="'default', 'all', or custom like adjacent/swap+insert/repair; comma-separated (default default,all)")
    e.add_argument("--start", type=Path, default=None, help="start from this order file instead of random moves")
    e.add_argument("--time-limit", type=float, default=60.0, help="seconds per search (default 60; 0: none)")
    e.add_argument("--search-rows", type=int, default=256, help="rows scoring the search (default 256, the solver's)")
    e.add_argument("--search-seed", type=int, default=0, help="seed of the search rows and the perturbations (default 0)")
    e.add_argument("--no-multi", action="store_true", help="without multi-accept of adjacent swaps (solve() uses it)")
    e.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the C++ core (default: the environment's)")
    o = ap.add_argument_group("files")
    o.add_argument("--out", type=Path, default=br.DEFAULT_OUT, help="results folder (default benchmarks/results)")
    o.add_argument("--name", default=None, help="file stem (default landscape_<puzzle folder name>)")
    o.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    br.apply_threads(args.threads)
    from unshuffle.safeio import atomic_write_text

    kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        print(f"error: unknown move kind(s) {bad}; choose from {', '.join(KINDS)}", file=sys.stderr)
        return 2
    try:
        schedules = [s for s in args.schedules.split(",") if s]
        for s in schedules:
            parse_schedule(s)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    folder = args.puzzle
    if folder is None:
        spec = br.Spec(args.regime, args.blocks, args.dim, args.hidden, args.seed, args.rows)
        folder, gen_s = br.ensure_puzzle(spec, args.cache)
        if gen_s is not None:
            print(f"generated {folder} in {gen_s:.1f} s")
    if not (Path(folder) / "answer.json").is_file():
        print(f"error: {folder} has no answer.json (the diagnostic needs a generated puzzle)", file=sys.stderr)
        return 2
    from unshuffle import load_puzzle

    n = load_puzzle(folder).n_blocks
    ks = k_values(args.k, n)
    t0 = time.perf_counter()
    try:
        res = run(Path(folder), ks, kinds, schedules, args.trials, args.time_limit or None, args.search_rows,
                  args.search_seed, multi=not args.no_multi, start=args.start)
    except ValueError as exc:  # a bad --start file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    res["meta"] = {"argv": sys.argv[1:] if argv is None else list(argv), "commit": br.git_commit(),
                   "date": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(),
                   "seconds": time.perf_counter() - t0, "load_after": os.getloadavg(), "k": ks, "kinds": kinds,
                   "schedules": {s: parse_schedule(s)[1] for s in schedules}, "multi": not args.no_multi,
                   "time_limit": args.time_limit, "search_rows": args.search_rows, "start": str(args.start) if args.start else None}
    name = args.name or f"landscape_{Path(folder).name}"
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_plot:
        plot(res["summary"], args.out / f"{name}.png",
             f"{Path(folder).name}: return to the answer after k random moves (no kicks)")
    atomic_write_text(args.out / f"{name}.json", json.dumps(res, indent=1) + "\n")
    print()
    print(format_table(res["summary"]))
    print(f"\nresults: {args.out / (name + '.json')}" + ("" if args.no_plot else f", {name}.png")
          + f"  ({res['meta']['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
