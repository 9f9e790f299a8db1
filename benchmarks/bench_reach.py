"""Reach benchmark (issue 8, item 1): which generated networks unshuffle solves exactly under a fixed budget,
and how the time to exact grows with depth, beside a Park-style baseline on the same puzzles.

The grid: depths N x training regimes (``unshuffle.generate.REGIMES``) x widths d/h x seeds. Every puzzle is
generated once with its answer known (``answer.json``) and cached on disk; each is then solved, one at a
time, by ``unshuffle.solver.solve(puzzle, time_limit=budget)`` and by the baseline:

* **unshuffle**: whatever ``solve()`` does today (only public entry points are used, so the benchmark keeps
  working as the engine changes). Exact = ``Solution.exact`` (all rows within the float32 tolerance).
* **Park-style baseline**: the solver's first pairing (``unshuffle.pair`` with ``solve``'s first pairing
  method), the better of the two norm seeds (delta-norm and ||W_out||_F ascending, from
  ``unshuffle.native.seed_orders``), then best-improvement adjacent swaps only (the C++ local search with
  schedule ``[[adjacent]]``, no kicks, no multi-accept) until a local optimum or its own time limit; verified
  on every row like the solver's answer.

Per cell it reports: exact rate, median and max time to exact (wall seconds of ``solve()`` on the loaded
puzzle, loading excluded), median final MSE (all rows), pairs right by the first pairing, the certificate's ``min_neighbour_error_ratio`` when ``Solution`` has one, and the
baseline's exact rate and median MSE; for both, the median distance of the final order from the answer in
insertion moves (N - longest increasing subsequence of the true positions). "exact (other)" counts exact answers that are not the generator's
order: another order fits the data equally well (the answer is not unique), which is not a failure.

Outputs (``--out``, default benchmarks/results/, file names from ``--name``): a table on stdout,
``<name>.jsonl`` (one record per finished puzzle, appended as it finishes: ``--resume`` continues a killed
run), ``<name>.json`` (meta, records, per-cell summary, fitted exponent; atomic write) and two PNG plots:
``<name>_exact_rate.png`` (exact rate vs N, one line per regime) and ``<name>_time.png`` (time to exact vs
N, log-log, fitted exponent in the legend).

    python benchmarks/bench_reach.py --quick                      # a few minutes: N=16,32; fast, wd; 2 seeds
    python benchmarks/bench_reach.py                              # the full grid (hours on 2 cores)
    python benchmarks/bench_reach.py --resume                     # continue a killed full run
    python benchmarks/bench_reach.py --blocks 32 --regimes paper --seeds 9001 --budget 120
"""
from __future__ import annotations

import argparse
import bisect
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_CACHE = HERE / ".cache" / "reach"
DEFAULT_OUT = HERE / "results"

FULL_BLOCKS = (16, 32, 48, 64, 96)
FULL_WIDTHS = ((48, 96), (32, 64))
FULL_SEEDS = (9001, 9002, 9003)  # seeds no test uses
QUICK = dict(blocks=(16, 32), regimes=("fast", "wd"), seeds=(9001, 9002), widths=((48, 96),), budget=30.0,
             baseline_time_limit=30.0, name="reach_quick")


# --------------------------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class Spec:
    """One generated puzzle of the grid."""

    regime: str
    blocks: int
    dim: int
    hidden: int
    seed: int
    rows: int = 2000
    outputs: int = 1

    @property
    def cell(self) -> Tuple[str, int, int, int]:
        return (self.regime, self.blocks, self.dim, self.hidden)

    @property
    def dirname(self) -> str:
        rows = "" if self.rows == 2000 else f"_r{self.rows}"  # the default rows keep the short name
        out = "" if self.outputs == 1 else f"_k{self.outputs}"
        return f"{self.regime}_N{self.blocks}_d{self.dim}_h{self.hidden}_s{self.seed}{rows}{out}"


def make_grid(blocks: Sequence[int], regimes: Sequence[str], widths: Sequence[Tuple[int, int]],
              seeds: Sequence[int], rows: int = 2000, other_width_max_n: Optional[int] = 48) -> List[Spec]:
    """The specs of the grid, cell by cell (small N first, so a partial run covers the cheap cells). The
    first width runs at every depth; the others only up to ``other_width_max_n`` (None: all depths)."""
    specs = []
    for n in sorted(blocks):
        for wi, (d, h) in enumerate(widths):
            if wi > 0 and other_width_max_n is not None and n > other_width_max_n:
                continue
            for regime in regimes:
                for s in seeds:
                    specs.append(Spec(regime, int(n), int(d), int(h), int(s), int(rows)))
    return specs


def budget_for(blocks: int, small: float, large: float, large_from: int) -> float:
    """The solve budget of a depth: ``small`` seconds below ``large_from`` blocks, else ``large``."""
    return float(large if blocks >= large_from else small)


def ensure_puzzle(spec: Spec, cache: Path, regen: bool = False) -> Tuple[Path, Optional[float]]:
    """The cached puzzle folder for ``spec``, generated when its ``answer.json`` is missing (the generator
    writes it last, so its presence marks a complete puzzle) or ``regen``. Returns (folder, seconds spent
    generating, or None when reused). Raises ValueError when training diverges."""
    folder = Path(cache) / spec.dirname
    if (folder / "answer.json").is_file() and not regen:
        return folder, None
    from unshuffle import make_puzzle

    t = time.perf_counter()
    make_puzzle(folder, blocks=spec.blocks, dim=spec.dim, hidden=spec.hidden, outputs=spec.outputs,
                rows=spec.rows, seed=spec.seed, regime=spec.regime)
    return folder, time.perf_counter() - t


def read_answer(folder: Path) -> List[int]:
    """The generator's answer: piece ids in execution order inp_1, out_1, ..., inp_N, out_N, last."""
    return [int(i) for i in json.loads((Path(folder) / "answer.json").read_text())["answer"]]


# ------------------------------------------------------------------------------- answer and distances
def true_order(puzzle, answer: Sequence[int]) -> Tuple[List[int], List[int]]:
    """The answer as stack indices (order_in, order_out), the form the search works on."""
    return puzzle.blocks_of(answer)


def pairs_right(pairs: Iterable[Sequence[int]], answer: Sequence[int]) -> int:
    """How many (inp id, out id) pairs are the answer's."""
    n = (len(answer) - 1) // 2
    truth = {(int(answer[2 * t]), int(answer[2 * t + 1])) for t in range(n)}
    return sum((int(a), int(b)) in truth for a, b in pairs)


def lis_length(seq: Sequence[int]) -> int:
    """Length of the longest strictly increasing subsequence (patience sorting, O(n log n))."""
    tails: List[int] = []
    for v in seq:
        k = bisect.bisect_left(tails, v)
        if k == len(tails):
            tails.append(v)
        else:
            tails[k] = v
    return len(tails)


def distances(order_in: Sequence[int], order_out: Sequence[int], true_in: Sequence[int],
              true_out: Sequence[int]) -> Dict[str, int]:
    """How far an order is from the answer. Positions follow the inp pieces: ``pos[t]`` is the true position
    of the block run at t. ``kendall``: pairs of blocks in the wrong relative order (= the fewest adjacent
    swaps); ``wrong_positions``: blocks not at their true position; ``insertions``: the fewest insertion
    moves, N - LIS(pos); ``pairs_wrong``: blocks whose out piece is not their inp piece's true partner."""
    where = {int(a): t for t, a in enumerate(true_in)}
    partner = {int(a): int(b) for a, b in zip(true_in, true_out)}
    pos = np.array([where[int(a)] for a in order_in])
    n = len(pos)
    return {
        "kendall": int(np.triu(pos[:, None] > pos[None, :], 1).sum()),
        "wrong_positions": int((pos != np.arange(n)).sum()),
        "insertions": int(n - lis_length(pos.tolist())),
        "pairs_wrong": int(sum(partner[int(a)] != int(b) for a, b in zip(order_in, order_out))),
    }


def search_stop_loss(target: np.ndarray) -> float:
    """The search's exactness threshold on its rows: every value within 32 float32 ulps at the output
    scale (the solver's own rule, restated here so the benchmark does not depend on engine internals)."""
    eps = float(np.finfo(np.float32).eps)
    return float(target.size) * (32 * eps * max(1.0, float(np.abs(target).max()))) ** 2


def search_data(puzzle, search_rows: int, seed: int):
    """(X, target, weights) on the rows the solver's search scores (``native.search_rows``)."""
    from unshuffle import native

    a = puzzle.arrays
    idx = native.search_rows(puzzle.n_rows, search_rows, seed)
    return a.X[idx], a.pred[idx], (a.W_in, a.b_in, a.W_out, a.b_out, a.W_last, a.b_last)


def first_pairing_method() -> str:
    """The pairing ``solve()`` tries first (its ``pairing_methods[0]``; 'trace' if it has no such option)."""
    from unshuffle.solver import solve

    p = inspect.signature(solve).parameters.get("pairing_methods")
    try:
        return str(p.default[0])
    except (AttributeError, IndexError, TypeError):
        return "trace"


def certificate_ratio(sol) -> Optional[float]:
    """``Solution.certificate.min_neighbour_error_ratio`` when the solver provides one (else None)."""
    cert = getattr(sol, "certificate", None)
    if cert is None:
        return None
    v = cert.get("min_neighbour_error_ratio") if isinstance(cert, dict) else getattr(cert, "min_neighbour_error_ratio", None)
    return None if v is None else float(v)


# ----------------------------------------------------------------------------------------------- solves
def run_unshuffle(puzzle, answer: Sequence[int], budget: float, seed: int = 0, backend: str = "auto") -> dict:
    """``solve()`` under ``budget`` seconds; what it found, how long it took, how close it got."""
    from unshuffle.solver import solve

    t = time.perf_counter()
    sol = solve(puzzle, seed=seed, time_limit=budget, backend=backend)
    wall = time.perf_counter() - t
    rec = {"exact": bool(sol.exact), "seconds": wall, "mse": _num(sol.mse), "max_abs_err": _num(sol.max_abs_err),
           "stopped": sol.stopped, "backend": sol.backend, "sha256": sol.sha256,
           "matches_answer": sol.permutation is not None and list(sol.permutation) == list(answer),
           "pairs_right_final": pairs_right(sol.pairs, answer) if sol.pairs else None,
           "certificate_ratio": certificate_ratio(sol),
           "timings": {k: float(v) for k, v in (sol.timings or {}).items()}}
    pr = getattr(sol, "pair_result", None)
    rec["pairs_right_solution_pairing"] = pairs_right(pr.pairs, answer) if pr is not None else None
    o = getattr(sol, "order_result", None)
    rec["kind"], rec["plan"] = (None, None) if o is None else (o.kind, list(o.plan))  # which plan auto chose
    if sol.permutation is not None:
        ti, to = true_order(puzzle, answer)
        oi, oo = true_order(puzzle, sol.permutation)
        rec["distance"] = distances(oi, oo, ti, to)
        # the solver's own estimate of wrong positions beside the true count (calibrates the anytime diagnosis)
        rec["wrong_positions"] = sum(1 for p in range(len(ti)) if (oi[p], oo[p]) != (ti[p], to[p]))
        rec["estimated_wrong"] = None if o is None else o.estimated_wrong
        rec["runs"] = None if o is None else [list(r) for r in o.runs]
    return rec


def run_baseline(puzzle, answer: Sequence[int], time_limit: float, search_rows: int = 256, seed: int = 0,
                 method: Optional[str] = None) -> dict:
    """Park-style baseline: first pairing, best norm seed, adjacent best-improvement hill-climb (no kicks)."""
    from unshuffle import moves, native, pair
    from unshuffle.search import local_search_native
    from unshuffle.solver import verify

    t = time.perf_counter()
    method = method or first_pairing_method()
    pr = pair(puzzle, method)
    out_of = list(pr.out_of)
    X, target, weights = search_data(puzzle, search_rows, seed)
    nvals = target.size
    cands, _ = native.seed_orders(X, weights, out_of)
    names = [k for k in ("delta_norm", "fro_asc") if k in cands]
    losses = native.order_losses(X, target, weights, [(cands[k], [out_of[a] for a in cands[k]]) for k in names])
    best = int(np.argmin(losses))
    start = list(cands[names[best]])
    res = local_search_native(X, target, *weights, start, [out_of[a] for a in start],
                              schedule=[[moves.ADJACENT]], stop_loss=search_stop_loss(target), kicks=0,
                              multi=False, max_rounds=10**9, time_limit=time_limit, seed=seed)
    v = verify(puzzle, res.order_in, res.order_out)
    wall = time.perf_counter() - t
    perm = puzzle.answer(res.order_in, res.order_out)
    ti, to = true_order(puzzle, answer)
    return {"exact": bool(v.exact), "seconds": wall, "mse": float(v.mse), "max_abs_err": float(v.max_abs_err),
            "stopped": res.stopped, "rounds": int(res.rounds), "seed": names[best],
            "seed_mse": {k: float(l) / nvals for k, l in zip(names, losses)}, "search_mse": res.loss / nvals,
            "pairing": method, "pairs_right": pairs_right(pr.pairs, answer),
            "matches_answer": list(perm) == list(answer), "distance": distances(res.order_in, res.order_out, ti, to)}


def _num(x) -> Optional[float]:
    x = float(x)
    return None if np.isnan(x) else x


def run_one(spec: Spec, cache: Path, budget: float, baseline_time_limit: Optional[float], regen: bool = False,
            solve_seed: int = 0, backend: str = "auto", search_rows: int = 256) -> dict:
    """Generate (or reuse) one puzzle, solve it, run the baseline: one JSONL record."""
    from unshuffle import load_puzzle

    rec = {"key": record_key(spec, budget, baseline_time_limit, solve_seed), "spec": asdict(spec),
           "dirname": spec.dirname, "budget": budget, "baseline_time_limit": baseline_time_limit,
           "solve_seed": solve_seed}
    try:
        folder, gen_s = ensure_puzzle(spec, cache, regen)
    except ValueError as exc:  # training diverged: no puzzle, not a solver failure
        rec.update(status="generation_failed", error=str(exc))
        return rec
    rec["generation_seconds"] = gen_s
    answer = read_answer(folder)
    puzzle = load_puzzle(folder)
    method = first_pairing_method()
    from unshuffle import pair

    rec["first_pairing"] = method
    rec["pairs_right_first"] = pairs_right(pair(puzzle, method).pairs, answer)
    rec["unshuffle"] = run_unshuffle(puzzle, answer, budget, seed=solve_seed, backend=backend)
    if baseline_time_limit is not None and baseline_time_limit > 0:
        rec["baseline"] = run_baseline(puzzle, answer, baseline_time_limit, search_rows=search_rows,
                                       seed=solve_seed, method=method)
    rec["status"] = "done"
    return rec


def record_key(spec: Spec, budget: float, baseline_time_limit: Optional[float], solve_seed: int) -> str:
    """What makes two records the same measurement (for ``--resume``)."""
    bl = "none" if not baseline_time_limit else f"{float(baseline_time_limit):g}"
    return f"{spec.dirname}|budget={float(budget):g}|baseline={bl}|solve_seed={solve_seed}"


# ----------------------------------------------------------------------------------------------- JSONL
def read_jsonl(path: Path) -> List[dict]:
    """Records of a JSONL file; a line cut short by a kill (the last one) is skipped."""
    out = []
    if not Path(path).is_file():
        return out
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"note: skipping an unreadable line in {path} (a run killed mid-write)", file=sys.stderr)
    return out


def repair_jsonl(path: Path) -> List[dict]:
    """Read a JSONL file and, if its last line was cut short, rewrite it (atomically) with the whole
    records only, so that the next append starts on a fresh line."""
    from unshuffle.safeio import atomic_write_text

    recs = read_jsonl(path)
    p = Path(path)
    if p.is_file():
        text = p.read_text()
        if text and (not text.endswith("\n") or len(recs) != len(text.splitlines())):
            atomic_write_text(p, "".join(json.dumps(r) + "\n" for r in recs))
    return recs


def append_jsonl(path: Path, rec: dict) -> None:
    """Append one record as a line, flushed and fsynced (a kill loses at most the line being written)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------- summary
def summarise(records: Sequence[dict]) -> List[dict]:
    """Per cell (regime, N, d, h): counts, exact rates, times to exact, MSEs, pairs right, certificate,
    baseline. Cells in grid order (N, then width, then regime as first seen)."""
    cells: Dict[tuple, List[dict]] = {}
    for r in records:
        s = r["spec"]
        cells.setdefault((s["regime"], s["blocks"], s["dim"], s["hidden"]), []).append(r)
    out = []
    for (regime, n, d, h), recs in cells.items():
        done = [r for r in recs if r.get("status") == "done"]
        u = [r["unshuffle"] for r in done]
        b = [r["baseline"] for r in done if "baseline" in r]
        t_exact = [x["seconds"] for x in u if x["exact"]]
        certs = [x["certificate_ratio"] for x in u if x.get("certificate_ratio") is not None]
        pf = [r["pairs_right_first"] for r in done]
        out.append({
            "regime": regime, "blocks": n, "dim": d, "hidden": h, "puzzles": len(done),
            "generation_failed": len(recs) - len(done),
            "exact": sum(x["exact"] for x in u), "exact_rate": _rate(sum(x["exact"] for x in u), len(u)),
            "exact_other": sum(x["exact"] and not x["matches_answer"] for x in u),
            "t_exact_median": statistics.median(t_exact) if t_exact else None,
            "t_exact_max": max(t_exact) if t_exact else None,
            "mse_median": _median([x["mse"] for x in u]),
            "pairs_right_first_median": _median(pf), "pairs_right_first_min": min(pf) if pf else None,
            "certificate_ratio_min": min(certs) if certs else None,
            "insertions_median": _median([x["distance"]["insertions"] for x in u if "distance" in x]),
            "stopped": _counts(x["stopped"] for x in u),
            "baseline_puzzles": len(b), "baseline_exact": sum(x["exact"] for x in b),
            "baseline_exact_rate": _rate(sum(x["exact"] for x in b), len(b)),
            "baseline_mse_median": _median([x["mse"] for x in b]),
            "baseline_insertions_median": _median([x["distance"]["insertions"] for x in b]),
        })
    out.sort(key=lambda c: (c["blocks"], -c["dim"], c["regime"]))
    return out


def _rate(k: int, n: int) -> Optional[float]:
    return k / n if n else None


def _median(xs) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _counts(xs) -> Dict[str, int]:
    c: Dict[str, int] = {}
    for x in xs:
        c[x] = c.get(x, 0) + 1
    return c


def fit_exponent(points: Sequence[Tuple[float, float]]) -> Optional[dict]:
    """Least-squares fit of log t = a + b log N over (N, t) points: {'exponent': b, 'coef': e^a, 'points'};
    None with fewer than two distinct N."""
    pts = [(float(n), float(t)) for n, t in points if t is not None and t > 0]
    if len({n for n, _ in pts}) < 2:
        return None
    ln, lt = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    b, a = np.polyfit(ln, lt, 1)
    return {"exponent": float(b), "coef": float(np.exp(a)), "points": len(pts)}


def exact_points(records: Sequence[dict], regime: Optional[str] = None) -> List[Tuple[int, float]]:
    """(N, seconds) of every exact unshuffle solve (of one regime, or all)."""
    return [(r["spec"]["blocks"], r["unshuffle"]["seconds"]) for r in records
            if r.get("status") == "done" and r["unshuffle"]["exact"]
            and (regime is None or r["spec"]["regime"] == regime)]


def _fmt(x, spec: str = ".3g", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def format_table(cells: Sequence[dict]) -> str:
    """The per-cell table (markdown, so it can go into NOTES.md as printed)."""
    head = ("| regime | N | d/h | puzzles | exact | exact (other) | t exact med (s) | t exact max (s) | MSE med | "
            "pairs right (first, med/min) | insertions to answer (med) | cert ratio (min) | baseline exact | "
            "baseline MSE med | baseline insertions (med) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in cells:
        n = c["blocks"]
        gen = f" (+{c['generation_failed']} diverged)" if c["generation_failed"] else ""
        lines.append(
            f"| {c['regime']} | {n} | {c['dim']}/{c['hidden']} | {c['puzzles']}{gen} | {c['exact']}/{c['puzzles']} | "
            f"{c['exact_other']} | {_fmt(c['t_exact_median'], '.3g')} | {_fmt(c['t_exact_max'], '.3g')} | "
            f"{_fmt(c['mse_median'], '.2g')} | {_fmt(c['pairs_right_first_median'], 'g')}/{_fmt(c['pairs_right_first_min'], 'g')} of {n} | "
            f"{_fmt(c['insertions_median'], 'g')} | {_fmt(c['certificate_ratio_min'], '.3g')} | "
            + (f"{c['baseline_exact']}/{c['baseline_puzzles']}" if c["baseline_puzzles"] else "-")
            + f" | {_fmt(c['baseline_mse_median'], '.2g')} | {_fmt(c['baseline_insertions_median'], 'g')} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _n_axis(ax, ns) -> None:
    """Log-scaled depth axis with a plain tick at every depth of the grid."""
    from matplotlib.ticker import NullLocator

    ns = sorted(set(int(n) for n in ns))
    ax.set_xscale("log")
    ax.set_xlim(ns[0] / 1.2, ns[-1] * 1.2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.xaxis.set_minor_locator(NullLocator())  # log minor ticks would print 3x10^1 etc. beside the depths
    ax.set_xlabel("blocks N")


def plot_exact_rate(cells: Sequence[dict], path: Path) -> None:
    """Exact rate vs N, one line per regime (solid: the first width, dashed: others); the baseline beside."""
    from unshuffle.safeio import atomic_path

    plt = _plt()
    regimes = list(dict.fromkeys(c["regime"] for c in cells))
    widths = list(dict.fromkeys((c["dim"], c["hidden"]) for c in sorted(cells, key=lambda c: -c["dim"])))
    colors = {r: f"C{i}" for i, r in enumerate(regimes)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, (key, title) in zip(axes, (("exact_rate", "unshuffle solve()"), ("baseline_exact_rate", "Park-style baseline"))):
        for r in regimes:
            for wi, w in enumerate(widths):
                pts = sorted((c["blocks"], c[key]) for c in cells
                             if c["regime"] == r and (c["dim"], c["hidden"]) == w and c[key] is not None)
                if pts:  # markers shrink regime by regime so that equal rates stay visible
                    i = regimes.index(r)
                    ax.plot(*zip(*pts), marker="osD^v<>p"[i % 8], ms=max(3.0, 10 - 1.6 * i), color=colors[r],
                            ls="-" if wi == 0 else "--", lw=max(0.8, 2.4 - 0.35 * i), label=f"{r} {w[0]}/{w[1]}")
        ax.set_title(title)
        _n_axis(ax, [c["blocks"] for c in cells])
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("exact rate")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def plot_time(records: Sequence[dict], path: Path) -> Optional[dict]:
    """Time to exact vs N on log-log axes, every exact solve a point, one colour per regime (grey crosses: solves
    that did not end exact, at the time they spent); the least-squares fits over exact solves (all regimes, and
    per regime with two or more depths) as lines with their exponents in the legend. Returns the overall fit."""
    from unshuffle.safeio import atomic_path

    plt = _plt()
    regimes = list(dict.fromkeys(r["spec"]["regime"] for r in records))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    allfit = fit_exponent(exact_points(records))
    for i, reg in enumerate(regimes):
        pts = exact_points(records, reg)
        if not pts:
            continue
        fit = fit_exponent(pts)
        lab = reg + (f" (N^{fit['exponent']:.2f})" if fit else "")
        ax.scatter(*zip(*pts), color=f"C{i}", s=18, label=lab)
        if fit:
            ns = np.array(sorted({p[0] for p in pts}), dtype=float)
            ax.plot(ns, fit["coef"] * ns ** fit["exponent"], color=f"C{i}", lw=0.8, alpha=0.7)
    fails = [(r["spec"]["blocks"], r["unshuffle"]["seconds"]) for r in records
             if r.get("status") == "done" and not r["unshuffle"]["exact"]]
    if fails:
        ax.scatter(*zip(*fails), marker="x", color="0.5", s=22, label="not exact (time spent)")
    if allfit:
        ns = np.array(sorted({p[0] for p in exact_points(records)}), dtype=float)
        ax.plot(ns, allfit["coef"] * ns ** allfit["exponent"], color="k", lw=1.5,
                label=f"all: t ~ N^{allfit['exponent']:.2f} ({allfit['points']} solves)")
    ax.set_yscale("log")
    _n_axis(ax, [r["spec"]["blocks"] for r in records])
    ax.set_ylabel("time to exact (s)")
    ax.set_title("unshuffle: time to exact")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no exact solves", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return allfit


# ------------------------------------------------------------------------------------------------- main
def git_commit() -> Optional[str]:
    """The checkout's commit (and '+dirty' when it has changes), for the record."""
    try:
        c = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                           timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (c + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_results(out: Path, name: str, meta: dict, records: List[dict], plots: bool = True) -> dict:
    """Summarise ``records``, write ``<name>.json`` (atomic) and the two plots; return the result dict."""
    from unshuffle.safeio import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    cells = summarise(records)
    res = {"meta": meta, "cells": cells, "fit": fit_exponent(exact_points(records)),
           "fit_per_regime": {r: fit_exponent(exact_points(records, r))
                              for r in dict.fromkeys(x["spec"]["regime"] for x in records)},
           "records": records}
    if plots and records:
        plot_exact_rate(cells, out / f"{name}_exact_rate.png")
        plot_time(records, out / f"{name}_time.png")
        res["plots"] = [str(out / f"{name}_exact_rate.png"), str(out / f"{name}_time.png")]
    atomic_write_text(out / f"{name}.json", json.dumps(res, indent=1, default=str) + "\n")
    return res


def _ints(s: str) -> List[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _widths(s: str) -> List[Tuple[int, int]]:
    out = []
    for w in s.split(","):
        d, h = w.split("/")
        out.append((int(d), int(h)))
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bench_reach.py", description=__doc__.split("\n\n")[0].replace("\n", " "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Default grid: N=16,32,48,64,96; every regime; widths 48/96 (all N) and 32/64 (N<=48); seeds "
               "9001-9003; budget 60 s (N<64) / 600 s (N>=64). Puzzles run one at a time.\n\n"
               "examples:\n  python benchmarks/bench_reach.py --quick\n  python benchmarks/bench_reach.py "
               "--resume\n  python benchmarks/bench_reach.py --blocks 32 --regimes fast --seeds 9001 --budget 120")
    g = ap.add_argument_group("grid")
    g.add_argument("--quick", action="store_true",
                   help="a few minutes: N=16,32; regimes fast,wd; seeds 9001,9002; 48/96; 30 s budgets; name reach_quick")
    g.add_argument("--blocks", type=_ints, default=None, help="depths, comma-separated (default 16,32,48,64,96)")
    g.add_argument("--regimes", default=None, help="comma-separated (default: every regime in unshuffle.generate.REGIMES)")
    g.add_argument("--widths", type=_widths, default=None, help="d/h list, e.g. 48/96,32/64 (default); the first runs at every N")
    g.add_argument("--other-width-max-n", type=int, default=48,
                   help="widths after the first only up to this N (default 48; 0: every N)")
    g.add_argument("--seeds", type=_ints, default=None, help="puzzle seeds (default 9001,9002,9003; tests use others)")
    g.add_argument("--rows", type=int, default=2000, help="rows of data per puzzle (default 2000, the generator's)")
    b = ap.add_argument_group("budgets and solver")
    b.add_argument("--budget", type=float, default=None, help="solve() time limit in seconds for every N (overrides the two below)")
    b.add_argument("--budget-small", type=float, default=60.0, help="time limit below --large-from blocks (default 60)")
    b.add_argument("--budget-large", type=float, default=600.0, help="time limit from --large-from blocks (default 600)")
    b.add_argument("--large-from", type=int, default=64, help="depth from which --budget-large applies (default 64)")
    b.add_argument("--baseline-time-limit", type=float, default=None,
                   help="baseline's own time limit in seconds (default: the puzzle's solve budget; 0: no baseline)")
    b.add_argument("--solve-seed", type=int, default=0, help="seed= for solve() and the baseline's search rows (default 0)")
    b.add_argument("--backend", default="auto", help="solve() backend (default auto)")
    b.add_argument("--search-rows", type=int, default=256, help="baseline's search rows (default 256, the solver's)")
    b.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS for the C++ core (set before it loads; default: the environment's)")
    o = ap.add_argument_group("files")
    o.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"puzzle cache (default {DEFAULT_CACHE.relative_to(REPO)})")
    o.add_argument("--regen", action="store_true", help="regenerate cached puzzles")
    o.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT.relative_to(REPO)})")
    o.add_argument("--name", default=None, help="file stem of the results (default reach, or reach_quick)")
    o.add_argument("--resume", action="store_true",
                   help="keep <name>.jsonl and skip puzzles already in it (without it an old file is kept as .bak)")
    o.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    o.add_argument("--report-only", action="store_true", help="no solving: summarise <name>.jsonl as it stands")
    return ap


def apply_threads(threads: Optional[int]) -> None:
    """``--threads``: OMP_NUM_THREADS for the C++ core (only effective before the core is first loaded)."""
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    apply_threads(args.threads)
    from unshuffle.generate import REGIMES

    q = QUICK if args.quick else {}
    blocks = args.blocks or list(q.get("blocks", FULL_BLOCKS))
    regimes = args.regimes.split(",") if args.regimes else list(q.get("regimes", REGIMES))
    unknown = [r for r in regimes if r not in REGIMES]
    if unknown:
        print(f"error: unknown regime(s) {unknown}; choose from {sorted(REGIMES)}", file=sys.stderr)
        return 2
    widths = args.widths or list(q.get("widths", FULL_WIDTHS))
    seeds = args.seeds or list(q.get("seeds", FULL_SEEDS))
    name = args.name or q.get("name", "reach")
    budget_s = args.budget if args.budget is not None else q.get("budget")
    bl_default = q.get("baseline_time_limit")
    specs = make_grid(blocks, regimes, widths, seeds, rows=args.rows, other_width_max_n=args.other_width_max_n or None)

    def budget(spec: Spec) -> float:
        return budget_s if budget_s is not None else budget_for(spec.blocks, args.budget_small, args.budget_large, args.large_from)

    def baseline_limit(spec: Spec) -> Optional[float]:
        if args.baseline_time_limit is not None:
            return args.baseline_time_limit or None
        return bl_default if bl_default is not None else budget(spec)

    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = args.out / f"{name}.jsonl"
    keys = {record_key(s, budget(s), baseline_limit(s), args.solve_seed) for s in specs}
    if args.resume or args.report_only:
        old = repair_jsonl(jsonl)
    else:
        old = []
        if jsonl.exists():
            bak = jsonl.with_name(f"{jsonl.name}.{time.strftime('%Y%m%d-%H%M%S')}.bak")
            os.replace(jsonl, bak)
            print(f"note: the previous {jsonl.name} was moved to {bak.name} (use --resume to continue a run)")
    have = {r["key"]: r for r in old if r.get("key") in keys}
    meta = {"argv": sys.argv[1:] if argv is None else list(argv), "commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "python": platform.python_version(), "cpus": os.cpu_count(), "load_before": os.getloadavg(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "grid": {
                "blocks": blocks, "regimes": regimes, "widths": widths, "seeds": seeds, "rows": args.rows,
                "budget": budget_s, "budget_small": args.budget_small, "budget_large": args.budget_large,
                "large_from": args.large_from}}
    todo = [s for s in specs if record_key(s, budget(s), baseline_limit(s), args.solve_seed) not in have]
    print(f"{len(specs)} puzzles in the grid, {len(specs) - len(todo)} already in {jsonl.name}, {len(todo)} to run")
    t_run = time.perf_counter()
    if not args.report_only:
        for i, spec in enumerate(todo, 1):
            rec = run_one(spec, args.cache, budget(spec), baseline_limit(spec), regen=args.regen,
                          solve_seed=args.solve_seed, backend=args.backend, search_rows=args.search_rows)
            rec["load_avg"] = os.getloadavg()[0]
            append_jsonl(jsonl, rec)
            have[rec["key"]] = rec
            print(f"[{i}/{len(todo)}] {_line(rec)}", flush=True)
    meta["seconds"] = time.perf_counter() - t_run
    meta["report_only"] = bool(args.report_only)
    meta["load_after"] = os.getloadavg()
    records = [have[k] for k in (record_key(s, budget(s), baseline_limit(s), args.solve_seed) for s in specs) if k in have]
    res = write_results(args.out, name, meta, records, plots=not args.no_plots)
    print()
    print(format_table(res["cells"]))
    fit = res["fit"]
    print(f"\ntime to exact ~ N^{fit['exponent']:.2f} over {fit['points']} exact solves" if fit
          else "\ntime to exact: no fit (exact solves at fewer than two depths)")
    print(f"results: {args.out / (name + '.json')}, {jsonl}" + ("" if args.no_plots else
          f", {name}_exact_rate.png, {name}_time.png") + f"  ({meta['seconds']:.0f} s)")
    return 0


def _line(rec: dict) -> str:
    """One progress line for a finished puzzle."""
    s = rec["spec"]
    head = f"{s['regime']:5s} N={s['blocks']:<3d} {s['dim']}/{s['hidden']} s{s['seed']}"
    if rec.get("status") != "done":
        return f"{head}: generation failed ({rec.get('error', '')[:80]})"
    u, b = rec["unshuffle"], rec.get("baseline")
    txt = (f"{head}: unshuffle {'EXACT' if u['exact'] else 'not exact'} in {u['seconds']:.1f} s, MSE {_fmt(u['mse'], '.2g')} "
           f"({u['stopped']}), pairs right {rec['pairs_right_first']}/{s['blocks']}")
    if b:
        txt += f"; baseline {'EXACT' if b['exact'] else 'not exact'}, MSE {b['mse']:.2g}"
    return txt


if __name__ == "__main__":
    sys.exit(main())
