"""Uniqueness certificate of an exact answer: how far its nearest single-move neighbour is from the data.

``exact`` says the answer fits ``pred`` on every row. The certificate says no order one move away comes close:
every neighbour - each adjacent swap, swap of two blocks, insertion of a block at another position and
re-pairing (two blocks exchange their out pieces) - is measured by its max abs error over all rows, and
``min_neighbour_error_ratio`` is the smallest of those divided by the answer's tolerance. A ratio far above 1
means the data rejects every neighbour by a wide margin.

Exact minimum without scoring every neighbour on every row
----------------------------------------------------------
Scoring all ~4,400 neighbours of the public puzzle on all 10,000 rows is 1.4e9 block-rows (minutes). The
minimum is found exactly with far less, by branch and bound over rows:

* A neighbour's max abs error over a subset of rows is a lower bound of its max over all rows: each row's
  output depends on that row alone, and the core computes it with the same per-row arithmetic whichever rows
  and candidates share a call (``_core.branch_errors``; tested), so the subset max is a max over a subset of
  the very numbers the all-rows max is taken over.
* Once one neighbour (the "champion") is scored on every row, its error U bounds the minimum from above, so
  any neighbour whose lower bound is already >= U cannot be below it and is dropped. Neighbours are dropped
  only that way; every other one ends up scored on every row. Hence the reported minimum is exactly what
  scoring every neighbour on every row would give, and the move reported achieves it (one of them, should
  several tie exactly).

Everything else only decides the cost. Rows are ranked by the answer's own rounding error (largest first):
rows where float32 noise grows most are the ones where wrong orders err most, so most neighbours exceed the
bound within the first few ranked rows. Every neighbour is screened on the top row; the first champion is
picked by successive halving on the next ranked rows; the survivors then get further ranked rows in doubling
batches, and a new champion (the lowest bound) is scored on every row whenever that costs less than the next
batch would.

The core batches all candidates that apply the same block at the same position into one product, so one row
of every neighbour costs about as much as that many rows of one neighbour (``score_candidates`` over cached
prefixes would pad each neighbour to a 24-row tile: 24x the work for the screen).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from . import moves as mv
from . import native as _native
from .cancel import INTERRUPTED, CancelToken

#: The neighbourhood: every single move of these kinds (moves.enumerate_moves; no two give the same order).
KINDS = (mv.ADJACENT, mv.SWAP, mv.INSERT, mv.REPAIR)
#: Picking the first champion: each round keeps the lowest-bound tenth of the pool and scores it on this many
#: further ranked rows (measured on the public puzzle: these found the nearest neighbour at the least cost).
HALVING_ROWS = (2, 16, 128)


@dataclass
class Certificate:
    """How far the answer's nearest single-move neighbour is from the data (see the module docstring).

    ``neighbours``: single-move neighbours of the answer; ``neighbours_checked``: those whose all-rows max abs
    error is known to be at least ``min_neighbour_max_abs_err`` (all of them when ``complete``).
    ``min_neighbour_error_ratio`` = ``min_neighbour_max_abs_err`` / ``tolerance`` (the answer's); inf when a
    neighbour's output is not finite anywhere it was measured, None when there is no neighbour (N = 1) or the
    certificate was stopped before any neighbour was scored on every row. ``move``: the nearest neighbour as
    {kind, i, j, pieces}: kind adjacent/swap (blocks at positions i and j trade places), insert (the block at
    i moves to position j), repair (blocks i and j exchange their out pieces); ``pieces`` = [[inp, out] piece
    ids of the answer's block at i], [... at j]]. ``complete`` False with ``stopped`` ('interrupted' or
    'time_limit') when the solve's cancel token stopped it; the figures are then those of the neighbours
    scored so far (an upper bound of the true minimum). Cost: ``full_scored`` neighbours scored on every row,
    ``neighbour_rows`` (neighbour, row) pairs scored in all, of ``neighbours`` x rows for brute force."""

    neighbours: int
    neighbours_checked: int
    min_neighbour_error_ratio: Optional[float]
    min_neighbour_max_abs_err: Optional[float]
    tolerance: float
    move: Optional[Dict[str, object]]
    complete: bool
    stopped: Optional[str] = None
    full_scored: int = 0
    neighbour_rows: int = 0
    rows: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the CLI's human output."""
        if self.neighbours == 0:
            return "no single-move neighbours (one block)"
        head = (f"{self.neighbours_checked}/{self.neighbours} single-move neighbours checked on all {self.rows} rows"
                if self.complete else
                f"stopped ({self.stopped}) after {self.neighbours_checked}/{self.neighbours} neighbours")
        if self.move is None:
            return head
        m = self.move
        pieces = " and ".join("/".join(map(str, p)) for p in m["pieces"])
        return (f"{head}; nearest: {m['kind']} ({m['i']}, {m['j']}) of blocks {pieces}, max abs err "
                f"{self.min_neighbour_max_abs_err:.3g} = {self.min_neighbour_error_ratio:.4g} x tolerance "
                f"[{self.seconds:.2f}s]")


def neighbours(order_in: Sequence[int], order_out: Sequence[int]):
    """Every single-move neighbour of an order as candidates of the scoring contract: (starts (K,), seq_in
    (K, L), seq_out (K, L), moves (K, 3) rows [kind, i, j]), int64, in ``moves.generate_candidates`` order."""
    oi = np.asarray(order_in, dtype=np.int64)
    oo = np.asarray(order_out, dtype=np.int64)
    c = _native.core()
    if c is not None:
        return c.generate_candidates(_native._i64(oi), _native._i64(oo), list(KINDS))
    return mv.generate_candidates(oi.tolist(), oo.tolist(), KINDS)


# A scorer: (candidate indices, row indices or None for all rows, per_row) -> max abs error per candidate
# (float64, NaN mapped to inf) and, with per_row, the (len(idx), len(rows)) per-row errors.
Scorer = Callable[[np.ndarray, Optional[np.ndarray], bool], Tuple[np.ndarray, Optional[np.ndarray]]]


def _native_scorer(puzzle, order_in, order_out, cand, token: CancelToken) -> Scorer:
    core = _native.core()
    a = puzzle.arrays
    w = [_native._f32(x) for x in (a.W_in, a.b_in, a.W_out, a.b_out, a.W_last, a.b_last)]
    X, pred = _native._f32(a.X), _native._f32(a.pred)
    oi, oo = _native._i64(order_in), _native._i64(order_out)
    starts, seq_in, seq_out = cand

    def score(idx, rows, per_row=False):
        Xr, tr = (X, pred) if rows is None else (_native._f32(X[rows]), _native._f32(pred[rows]))
        res = core.branch_errors(Xr, oi, oo, _native._i64(starts[idx]), _native._i64(seq_in[idx]),
                                 _native._i64(seq_out[idx]), *w, tr, per_row=per_row, stop=token.core_flag(),
                                 time_limit_s=token.core_time_limit())
        return _no_nan(res[0]), (_no_nan(res[2]) if per_row else None)

    return score


def reference_scorer(puzzle, order_in, order_out, cand) -> Scorer:
    """The scorer with the torch reference (``unshuffle.reference``): for tests, and when the core is not built."""
    import torch

    from . import reference

    starts, seq_in, seq_out = (torch.from_numpy(np.asarray(x, dtype=np.int64)) for x in cand)

    def score(idx, rows, per_row=False):
        X, pred = (puzzle.X, puzzle.pred) if rows is None else (puzzle.X[rows], puzzle.pred[rows])
        t = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        prefix = reference.forward_prefixes(X, order_in, order_out, puzzle.W_in, puzzle.b_in, puzzle.W_out,
                                            puzzle.b_out)
        _, out = reference.score_candidates(prefix, starts[t], seq_in[t], seq_out[t], puzzle.W_in, puzzle.b_in,
                                            puzzle.W_out, puzzle.b_out, puzzle.W_last, puzzle.b_last, pred,
                                            return_outputs=True)
        err = (out.double() - pred.double()).abs().amax(dim=2).numpy()  # (K, rows)
        err = _no_nan(np.where(np.isnan(err).any(axis=1, keepdims=True), np.nan, err))
        return err.max(axis=1) if err.shape[1] else np.zeros(len(idx)), (err if per_row else None)

    return score


def answer_row_errors(puzzle, order_in, order_out) -> np.ndarray:
    """The order's own max abs error per row (R,), float64: ``solver.verify(...).row_err``."""
    from .solver import verify

    return verify(puzzle, order_in, order_out).row_err


def _no_nan(a: np.ndarray) -> np.ndarray:
    # A non-finite output fits no data: rank it above every finite error.
    return np.where(np.isnan(a), np.inf, a)


class _Stop(Exception):
    pass


def certify(puzzle, order_in: Sequence[int], order_out: Sequence[int], tolerance: float, *,
            row_errors: Optional[np.ndarray] = None, token: Optional[CancelToken] = None,
            scorer: Optional[Scorer] = None) -> Certificate:
    """The certificate of the order (stack indices; see the module docstring): every single-move neighbour's
    max abs error against ``puzzle.pred``, minimum exact over all rows, relative to ``tolerance``.

    ``row_errors`` (R,): the answer's own max abs error per row (``Verification.row_err``; computed if
    None), which ranks the rows. ``token``: a ``CancelToken``, polled between steps and inside the core; a
    stop returns an incomplete certificate. ``scorer``: how neighbours are scored (default: the C++ core, else ``reference_scorer``)."""
    t0 = time.perf_counter()
    token = CancelToken() if token is None else token
    order_in, order_out = [int(x) for x in order_in], [int(x) for x in order_out]
    R, N = puzzle.n_rows, len(order_in)
    try:
        starts, seq_in, seq_out, moves = neighbours(order_in, order_out)
    except KeyboardInterrupt:  # a second Ctrl-C (the first only cancels the token)
        return Certificate(neighbours=0, neighbours_checked=0, min_neighbour_error_ratio=None,
                           min_neighbour_max_abs_err=None, tolerance=float(tolerance), move=None, complete=False,
                           stopped=INTERRUPTED, rows=R, seconds=time.perf_counter() - t0)
    K = len(starts)
    if scorer is None:
        scorer = (_native_scorer(puzzle, order_in, order_out, (starts, seq_in, seq_out), token)
                  if _native.available() else reference_scorer(puzzle, order_in, order_out, (starts, seq_in, seq_out)))
    lengths = (np.asarray(seq_in) >= 0).sum(axis=1) if K else np.zeros(0, dtype=np.int64)

    lb = np.zeros(K)  # max abs error over the rows scored so far: a lower bound of the all-rows max
    exact = np.full(K, np.nan)  # all-rows max, for neighbours scored on every row
    alive = np.ones(K, dtype=bool)  # neither scored on every row nor dropped
    U, best = np.inf, -1
    cost = {"rows": 0, "full": 0}
    stopped: Optional[str] = None

    def run(idx, rows, per_row=False):
        why = token.reason()
        if why is not None:
            raise _Stop(why)
        try:
            out = scorer(idx, rows, per_row)
        except RuntimeError as exc:
            core = _native.core()
            if core is not None and isinstance(exc, core.Stopped):  # the token's flag or deadline fired
                raise _Stop(token.reason() or str(exc) or INTERRUPTED) from None
            raise
        cost["rows"] += len(idx) * (R if rows is None else len(rows))
        return out

    seen = np.zeros(R, dtype=bool)  # rows every alive neighbour has been scored on

    def champion(c: int) -> None:  # score c on every row; it may become the best
        nonlocal U, best
        m = float(run(np.array([c]), None)[0][0])
        exact[c], lb[c], alive[c] = m, m, False
        cost["full"] += 1
        if m < U or best < 0:
            U, best = m, c

    try:
        if K:
            if row_errors is None:
                row_errors = answer_row_errors(puzzle, order_in, order_out)
            # Rows where the answer's own rounding error is largest are where wrong orders err most (measured
            # on the public puzzle: most near neighbours exceed the bound within the first 13 such rows).
            ranking = np.argsort(-_no_nan(np.asarray(row_errors, dtype=np.float64)), kind="stable")
            lb[:] = run(np.arange(K), ranking[:1])[0]
            seen[ranking[0]] = True
            # The first champion, by successive halving: the lowest tenth of the bounds get 8x as many of the
            # next ranked rows, and so on (this only picks whom to score on every row; it drops nothing).
            pool, used = np.arange(K), 1
            for n in HALVING_ROWS:
                if len(pool) <= 1 or used >= R:
                    break
                pool = pool[np.argsort(lb[pool], kind="stable")[:max(1, len(pool) // 10)]]
                lb[pool] = np.maximum(lb[pool], run(pool, ranking[used:used + n])[0])
                used += n
            champion(int(pool[np.argmin(lb[pool])]))
            alive &= lb < U
            full_cost = N * R  # block-rows of one neighbour on every row (base prefix + tail)
            step = 1
            while alive.any():
                idx = np.flatnonzero(alive)
                if seen.all():  # they have been scored on every row: their bounds are their all-rows errors
                    exact[idx] = lb[idx]
                    alive[idx] = False
                    cost["full"] += len(idx)
                    c = int(idx[np.argmin(lb[idx])])
                    if lb[c] < U:
                        U, best = float(lb[c]), c
                    break
                batch = ranking[~seen[ranking]][:step]
                batch_cost = (int(lengths[idx].sum()) + int(starts[idx].max())) * len(batch)
                if len(idx) == 1 or batch_cost > full_cost:
                    champion(int(idx[np.argmin(lb[idx])]))  # lowest bound: likely the nearest neighbour
                else:
                    lb[idx] = np.maximum(lb[idx], run(idx, batch)[0])
                    seen[batch] = True
                    step *= 2
                alive &= lb < U  # >= U: cannot be below the champion
    except _Stop as s:
        stopped = str(s)
    except KeyboardInterrupt:
        stopped = INTERRUPTED

    complete = stopped is None
    # Settled: scored on every row, or dropped with a bound >= the error of one that was.
    checked = int((~alive).sum())
    move = None
    if best >= 0:
        k, i, j = (int(x) for x in moves[best])
        move = {"kind": mv.KIND_NAMES[k], "i": i, "j": j,
                "pieces": [[puzzle.inp_ids[order_in[p]], puzzle.out_ids[order_out[p]]] for p in (i, j)]}
    return Certificate(
        neighbours=K, neighbours_checked=checked,
        min_neighbour_error_ratio=(U / tolerance if tolerance > 0 else np.inf) if best >= 0 else None,
        min_neighbour_max_abs_err=U if best >= 0 else None, tolerance=float(tolerance), move=move,
        complete=complete, stopped=stopped, full_scored=cost["full"], neighbour_rows=cost["rows"], rows=R,
        seconds=time.perf_counter() - t0)
