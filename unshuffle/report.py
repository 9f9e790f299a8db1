"""``--report DIR``: a short Markdown report with PNG plots of what the solver did (matplotlib, optional).

Plots: the pairing score matrix with the chosen pairs and their margins; the search loss (log scale) against
step with the move kinds marked; per position of the final order, how far the search start had the block
and how sharply the answer pins it (MSE after swapping it with its neighbour).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

from .errors import PuzzleError
from .moves import ADJACENT, KIND_NAMES, apply_move
from .safeio import atomic_path, atomic_write_text


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # optional dependency
        raise PuzzleError(f"--report needs matplotlib ({exc}); pip install 'unshuffle[report]'") from None
    return plt


def _save(fig, path: Path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")


def plot_pairing(pr, path: Path):
    plt = _plt()
    S = pr.ratio if pr.method == "ratio" else pr.neg_trace
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1.1, 1]})
    # rows and columns permuted so that chosen pairs lie on the diagonal
    cols = np.asarray(pr.out_of)
    im = ax.imshow(S[:, cols], cmap="viridis", aspect="auto")
    ax.plot(range(len(cols)), range(len(cols)), "r.", ms=3, label="chosen pair")
    ax.set_title(f"pairing score ({pr.method}); columns reordered to the chosen pairs")
    ax.set_xlabel("out piece (chosen partner order)")
    ax.set_ylabel("inp piece (stack index)")
    ax.legend(loc="lower left", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    m = np.minimum(pr.margin_row, pr.margin_col)
    ax2.bar(range(len(m)), m, color=["tab:green" if v > 0 else "tab:red" for v in m])
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_title(f"margin of each chosen pair (min {m.min():.3g}; gap {pr.min_gap:.3g})")
    ax2.set_xlabel("inp piece (stack index)")
    ax2.set_ylabel("chosen score - best other (row or column)")
    _save(fig, path)
    plt.close(fig)


def plot_search(o, path: Path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    seeds = o.seed_mse
    ax.scatter([0] * len(seeds), list(seeds.values()), marker="_", s=300, color="gray")
    for name, v in seeds.items():
        ax.annotate(name, (0, v), xytext=(4, 0), textcoords="offset points", fontsize=7, va="center")
    steps: List[int] = [0]
    losses: List[float] = [seeds[o.start]]
    kinds: Dict[str, list] = {}
    for s, h in enumerate(o.history, start=1):
        steps.append(s)
        losses.append(max(h[4], 1e-300))
        kinds.setdefault(KIND_NAMES[int(h[1])], []).append((s, max(h[4], 1e-300)))
    ax.plot(steps, losses, "-", color="tab:blue", lw=1)
    for name, pts in kinds.items():
        xs, ys = zip(*pts)
        ax.scatter(xs, ys, label=name, s=25, zorder=3)
    ax.set_yscale("log")
    ax.set_xlabel("search step (0 = seeds; start: %s)" % o.start)
    ax.set_ylabel("MSE vs pred on search rows")
    ax.set_title(f"search: {o.rounds} rounds, stopped: {o.stopped}")
    if kinds:
        ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_positions(puzzle, sol, path: Path):
    """Displacement of each block between the search start and the answer, and the MSE after swapping
    each position with the next one in the answer (how sharply each position is pinned)."""
    import torch

    from .solver import forward

    plt = _plt()
    o = sol.order_result
    n = len(o.order)
    pos_final = {a: t for t, a in enumerate(o.order)}
    shown = "greedy" if "greedy" in o.seed_orders else o.start
    start_order = o.seed_orders[shown]
    disp = [abs(pos_final[a] - t) for t, a in enumerate(start_order)]
    rows = torch.arange(min(1024, puzzle.n_rows))
    X, T = puzzle.X[rows], puzzle.pred[rows].double()
    swap_mse = []
    for t in range(n - 1):
        oi, oo = apply_move(o.order, o.order_out, ADJACENT, t, t + 1)
        y = forward(puzzle, oi, oo, X=X).double()
        swap_mse.append(float(((y - T) ** 2).mean()))
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    a1.bar(range(n), disp, color="tab:orange")
    a1.set_ylabel("|start pos - final pos|")
    a1.set_title(f"where the {shown} seed was wrong (search started from {o.start})")
    a2.semilogy(range(n - 1), swap_mse, "o-", ms=3)
    a2.axhline(max(sol.mse, 1e-300), color="tab:green", ls="--", label=f"answer MSE {sol.mse:.2g}")
    a2.set_ylabel("MSE after swapping t, t+1")
    a2.set_xlabel("position t in the answer")
    a2.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return disp, swap_mse


def write_report(folder, puzzle, sol) -> Path:
    """Write report.md and its PNG plots into ``folder`` (created if needed); returns report.md's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pr, o = sol.pair_result, sol.order_result
    plot_pairing(pr, folder / "pairing.png")
    plot_search(o, folder / "search.png")
    disp, swap_mse = plot_positions(puzzle, sol, folder / "positions.png")
    moved = sum(1 for v in disp if v)
    lines = [
        "# unshuffle report",
        "",
        f"Puzzle: `{puzzle.path}` — N={puzzle.n_blocks} blocks, d={puzzle.d}, h={puzzle.h}, k={puzzle.k}, {puzzle.n_rows} rows.",
        "",
        f"**exact: {sol.exact}** — max abs error {sol.max_abs_err:.3g} (tolerance {sol.tolerance:.3g}), MSE {sol.mse:.3g}; "
        f"sha256 `{sol.sha256}`; backend `{sol.backend}`.",
        "",
        "## Pairing",
        f"Method `{pr.method}`, confident: {pr.confident} (both scores agree: {pr.agree}); smallest margin "
        f"{min(pr.margin_row.min(), pr.margin_col.min()):.3g}, smallest gap {pr.min_gap:.3g}.",
        "",
        "![pairing](pairing.png)",
        "",
        "## Search",
        "| seed | MSE |",
        "|---|---|",
        *[f"| {k} | {v:.3g} |" for k, v in o.seed_mse.items()],
        "",
        f"Started from `{o.start}`; {o.rounds} rounds, moves used {o.moves_used}, {o.candidates_scored} candidates scored, "
        f"stopped: {o.stopped}. {moved} of {len(disp)} blocks were out of place in the greedy seed.",
        "",
        "![search](search.png)",
        "",
        "## Positions",
        f"Swapping any two neighbours of the answer raises the MSE to at least {min(swap_mse) if swap_mse else float('nan'):.3g}.",
        "",
        "![positions](positions.png)",
        "",
        "## Time",
        "| phase | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.3f} |" for k, v in sol.timings.items()],
        "",
    ]
    path = folder / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
