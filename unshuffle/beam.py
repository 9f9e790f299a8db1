"""Probe-guided ordering: the probe beam and the path search (docs/ORDERING.md).

A trained residual network makes its target progressively easier to read off the residual stream: the
least-squares readout of ``pred`` from the activations after the first p blocks (features [x, x*x, 1]) gets
better, depth by depth, along the true order, while a wrong block placed early usually stalls it. Two searches
use that *probe loss* (the readout's mean squared error):

* ``probe_beam`` builds orders front to back and keeps the ``width`` prefixes with the lowest probe loss;
* ``path_search`` improves a whole order by local moves (swaps, insertions, re-pairings) on
  J = sum over depths of the probe loss, which still sees a block whose benefit comes a few depths later.

Neither needs the weights to give depth away, and both see far beyond the output loss, whose basin around the
answer is only a couple of moves wide on networks trained with large steps. The C++ core runs both
(``unshuffle._core.probe_beam`` / ``path_search``); the numpy functions here are their references.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from . import moves as mv
from .cancel import CancelToken

FEATURES = ("quadratic", "linear")


# ------------------------------------------------------------------------------------------- reference
PIVOT = 1e-5  # features explaining less than this fraction of their own variance beyond earlier ones: dropped


def probe_features(x: np.ndarray, features: str = "quadratic") -> np.ndarray:
    """Readout features of rows x (R, d), float64: [z, min(u*u, 64), 1] (quadratic) or [z, 1] (linear).
    u = the columns of x standardised; z = u whitened column by column in the given order (z = L^-1 u for the
    Cholesky factor of u's correlation matrix: z_j is the part of u_j not explained by the earlier columns, at
    unit variance; a column whose remaining variance is below 1e-10 is dropped as collinear). z spans x, so a
    target linear in x is read exactly; the squares saturate at 8 standard deviations so that a few exploding
    rows cannot dominate."""
    x = np.asarray(x, dtype=np.float64)
    R, d = x.shape
    sd = x.std(axis=0)
    u = np.where(sd > 0, (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0), 0.0)
    corr = u.T @ u / R
    L = np.zeros((d, d))
    keep = np.zeros(d, bool)
    for j in range(d):  # Cholesky with dropping, as the core does
        diag = corr[j, j] - L[j, :j] @ L[j, :j]
        keep[j] = sd[j] > 0 and diag > 1e-10
        if not keep[j]:
            continue
        L[j, j] = np.sqrt(diag)
        L[j + 1:, j] = (corr[j + 1:, j] - L[j + 1:, :j] @ L[j, :j]) / L[j, j]
    z = np.zeros((R, d))
    if keep.any():
        z[:, keep] = np.linalg.solve(L[np.ix_(keep, keep)], u[:, keep].T).T
    cols = [z, np.minimum(u * u, 64.0)] if features == "quadratic" else [z]
    return np.hstack(cols + [np.ones((R, 1))])


def probe_sse_reference(x: np.ndarray, target: np.ndarray, features: str = "quadratic") -> float:
    """Sum of squared errors of the least-squares fit target ~ probe_features(x) C (numpy, float64), over the
    features the core keeps: in column order, one whose variance not explained by the earlier kept ones is below
    PIVOT of its own is dropped (near-collinear squares of a collapsed stream add nothing but rounding noise)."""
    A = probe_features(x, features)
    T = np.asarray(target, dtype=np.float64)
    norms = np.sqrt((A * A).sum(axis=0))
    kept: List[int] = []
    for j in range(A.shape[1]):
        if norms[j] == 0:
            continue
        a = A[:, j] / norms[j]
        if kept:
            Q, _ = np.linalg.qr(A[:, kept] / norms[kept])
            a = a - Q @ (Q.T @ a)
        if float(a @ a) > PIVOT:
            kept.append(j)
    C, *_ = np.linalg.lstsq(A[:, kept], T, rcond=None)
    return float(((T - A[:, kept] @ C) ** 2).sum())


def _block(x, W_in, b_in, W_out, b_out, a, b):
    """One residual block in float32 (x + W_out relu(W_in x + b_in) + b_out)."""
    h = np.maximum(x @ W_in[a].T + b_in[a], np.float32(0))
    return (x + (h @ W_out[b].T + b_out[b])).astype(np.float32)


def _pairable(allowed, used_in, used_out) -> bool:
    """Whether every unused in piece can get its own unused allowed out piece (Kuhn's augmenting paths)."""
    match = {}

    def aug(a, seen):
        for o in allowed[a]:
            o = int(o)
            if o < 0 or o in used_out or o in seen:
                continue
            seen.add(o)
            if o not in match or aug(match[o], seen):
                match[o] = a
                return True
        return False

    return all(aug(a, set()) for a in range(len(allowed)) if a not in used_in)


def _nan_last(v: float) -> float:
    return float("inf") if np.isnan(v) else v


def probe_beam_reference(X, target, W_in, b_in, W_out, b_out, allowed, width: int = 16,
                         features: str = "quadratic", prefix=None, screen_rows: int = 0, screen_keep: int = 0):
    """The probe beam in plain numpy (float64 lstsq probes): same candidate enumeration (state, then in piece,
    then allowed column), tie rule (lower candidate index) and, with more than one allowed column, the same
    rule that a candidate must leave the unused pieces pairable. ``screen_rows`` > 0 (fewer than the rows):
    a depth with more than M = max(``screen_keep``, ``width``) candidates scores them all on the first
    ``screen_rows`` rows and only the M best of those (ties: lower index) on all rows. Returns (orders_in,
    orders_out, losses) of the final states, best first."""
    X = np.asarray(X, np.float32)
    target = np.asarray(target, np.float32)
    N = W_in.shape[0]
    nvals = target.size
    allowed = np.asarray(allowed).reshape(N, -1)
    x = X.copy()
    oin, oout = [], []
    for a, b in (prefix or []):
        x = _block(x, W_in, b_in, W_out, b_out, a, b)
        oin.append(int(a)), oout.append(int(b))
    states = [(oin, oout, x)]
    losses: List[float] = []
    for _ in range(len(oin), N):
        cands = []
        for s, (si, so, xs) in enumerate(states):
            for a in range(N):
                if a in si:
                    continue
                for b in allowed[a]:
                    if b >= 0 and b not in so and (allowed.shape[1] == 1 or
                                                   _pairable(allowed, set(si) | {a}, set(so) | {int(b)})):
                        y = _block(xs, W_in, b_in, W_out, b_out, a, int(b))
                        cands.append((None, len(cands), s, a, int(b), y))
        S, M = screen_rows, max(screen_keep, width, 1)
        if 0 < S < len(target) and len(cands) > M:
            k = target.shape[1] if target.ndim > 1 else 1
            cheap = [probe_sse_reference(c[5][:S], target[:S], features) / (S * k) for c in cands]
            top = sorted(range(len(cands)), key=lambda i: (_nan_last(cheap[i]), i))[:M]
        else:
            top = range(len(cands))
        cands = [(probe_sse_reference(cands[i][5], target, features) / nvals,) + cands[i][1:] for i in top]
        cands.sort(key=lambda c: (_nan_last(c[0]), c[1]))
        kept = cands[: max(1, width)]
        states = [(states[s][0] + [a], states[s][1] + [b], y) for (_, _, s, a, b, y) in kept]
        losses = [c[0] for c in kept]
    return [s[0] for s in states], [s[1] for s in states], losses


def path_losses_reference(X, target, W_in, b_in, W_out, b_out, order_in, order_out,
                          features: str = "quadratic") -> np.ndarray:
    """Probe loss (SSE / (R k)) after each depth 1..N of an order, numpy."""
    x = np.asarray(X, np.float32)
    out = []
    for a, b in zip(order_in, order_out):
        x = _block(x, W_in, b_in, W_out, b_out, a, b)
        out.append(probe_sse_reference(x, target, features) / np.asarray(target).size)
    return np.asarray(out)


def path_search_reference(X, target, W_in, b_in, W_out, b_out, order_in, order_out,
                          kinds=(mv.ADJACENT, mv.SWAP, mv.INSERT), first: int = 0, features: str = "quadratic",
                          max_rounds: int = 1000, repairable: Optional[Sequence[bool]] = None,
                          list_keep: int = 0):
    """Best-improvement local search on J = sum of probe losses over depths > first, evaluating every
    candidate in full (the core prunes; the chosen moves are the same). A re-pairing move is a candidate only
    when both its in pieces are ``repairable`` (one flag per in piece; None = all). ``list_keep`` > 0 (a
    candidate list): a full round stores the J of every move that improves the order; the next rounds score
    only the ``list_keep`` stored moves of lowest J (ties: lower index; a move that no longer improves leaves
    the list, the others take their new J) and take the best if it improves, else a full round rebuilds the
    list, so the search still ends where no move improves. Returns (order_in, order_out, J, history
    [(round, kind, i, j, J)])."""
    oi, oo = list(order_in), list(order_out)
    N = len(oi)
    L = max(0, int(list_keep))
    lval = None  # the candidate list: {move index: its last J while it improved}

    from .search import improves  # the core's path_improves: the same strict-improvement rule as the search's

    def J(a, b):
        return float(path_losses_reference(X, target, W_in, b_in, W_out, b_out, a, b, features)[first:].sum())

    cur, hist = J(oi, oo), []
    moves = [(k, i, j) for k in kinds for (i, j) in mv.enumerate_moves(N, k) if min(i, j) >= first]
    for rnd in range(1, max_rounds + 1):
        ok = [c for c, (k, i, j) in enumerate(moves)
              if not (k == mv.REPAIR and repairable is not None and not (repairable[oi[i]] and repairable[oi[j]]))]
        best = None
        if L and lval is not None:
            okset = set(ok)
            for c in sorted(sorted(lval, key=lambda c: (lval[c], c))[:L]):
                if c not in okset:  # a re-pairing no longer allowed where the pieces now stand: leaves the list
                    del lval[c]
                    continue
                v = J(*mv.apply_move(oi, oo, *moves[c]))
                if improves(v, cur):
                    lval[c] = v
                else:
                    del lval[c]
                if best is None or v < best[0]:
                    best = (v, c)
            if best is not None and not improves(best[0], cur):
                best = None
        if best is None:
            vals = {}
            for c in ok:
                v = vals[c] = J(*mv.apply_move(oi, oo, *moves[c]))
                if best is None or v < best[0]:
                    best = (v, c)
            if best is None or not improves(best[0], cur):
                break
            if L:
                lval = {c: v for c, v in vals.items() if improves(v, cur)}
        if L:
            lval.pop(best[1], None)
        cur, c = best
        k, i, j = moves[c]
        oi, oo = mv.apply_move(oi, oo, k, i, j)
        hist.append((rnd, k, i, j, cur))
    return oi, oo, cur, hist


# ----------------------------------------------------------------------------------------------- core
@dataclass
class BeamOutcome:
    """Final states of a probe beam, best first: ``orders`` [(order_in, order_out)], their probe ``losses``,
    the best probe loss at each depth (``best_path``), prefixes scored and why it ended (done, interrupted,
    time_limit: then ``orders`` is empty)."""

    orders: List[tuple]
    losses: List[float]
    best_path: List[float]
    candidates: int
    stopped: str

    def common_prefix(self) -> int:
        """Length of the prefix all final states share (where the beam's lineages met)."""
        if not self.orders:
            return 0
        first = self.orders[0]
        n = 0
        while n < len(first[0]) and all(o[0][n] == first[0][n] and o[1][n] == first[1][n] for o in self.orders):
            n += 1
        return n


@dataclass
class PathOutcome:
    order_in: List[int]
    order_out: List[int]
    J: float
    path: List[float]
    history: List[tuple] = field(default_factory=list)
    rounds: int = 0
    candidates: int = 0
    probes: int = 0
    stopped: str = ""
    full_rounds: int = 0  # rounds that scored every candidate on all rows


def allowed_table(out_of: Sequence[int], alternatives: Optional[np.ndarray] = None, extra: int = 0) -> np.ndarray:
    """(Ni, 1 + extra) int64: column 0 the pairing's out piece; then the ``extra`` best other out pieces by
    ``alternatives`` (a score matrix, higher = better), -1 where there are none."""
    N = len(out_of)
    tab = np.full((N, 1 + max(0, extra)), -1, dtype=np.int64)
    tab[:, 0] = np.asarray(out_of, dtype=np.int64)
    if extra and alternatives is not None:
        for a in range(N):
            order = [int(b) for b in np.argsort(-alternatives[a], kind="stable") if b != out_of[a]]
            tab[a, 1:1 + len(order[:extra])] = order[:extra]
    return tab


def _f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def probe_beam(X, target, weights, allowed, width: int = 16, features: str = "quadratic", prefix=None,
               token: Optional[CancelToken] = None, n_threads: int = 0, screen_rows: int = 0,
               screen_keep: int = 0) -> BeamOutcome:
    """The probe beam in the C++ core. ``weights`` = (W_in, b_in, W_out, b_out, ...) numpy arrays; ``allowed``
    from ``allowed_table``; ``prefix`` [(a, b), ...] fixed first blocks. Stops on ``token``. ``screen_rows``
    > 0 scores each depth's candidates on that many rows first and only the max(``screen_keep``, ``width``)
    best of them on all rows (see ``probe_beam_reference``; docs/ORDERING.md section 2)."""
    from . import _core

    W_in, b_in, W_out, b_out = (_f32(w) for w in weights[:4])
    kw = {}
    if prefix:
        kw = dict(prefix_in=np.asarray([p[0] for p in prefix], np.int64),
                  prefix_out=np.asarray([p[1] for p in prefix], np.int64))
    if token is not None:
        kw.update(stop=token.core_flag(), time_limit_s=token.core_time_limit())
    r = _core.probe_beam(_f32(X), _f32(target), W_in, b_in, W_out, b_out, np.ascontiguousarray(allowed, np.int64),
                         width=int(width), features=features, n_threads=n_threads, screen_rows=int(screen_rows),
                         screen_keep=int(screen_keep), **kw)
    orders = [(list(map(int, a)), list(map(int, b))) for a, b in zip(r["orders_in"], r["orders_out"])]
    return BeamOutcome(orders, [float(v) for v in r["losses"]], [float(v) for v in r["best_path"]],
                       int(r["candidates"]), str(r["stopped"]))


def probe_curve(X, target, weights, order_in, order_out, token: Optional[CancelToken] = None,
                n_threads: int = 0) -> np.ndarray:
    """The probe loss (per value) of an order at depths 0..N: of X itself, then after each block (the core's
    probe, as the path search computes it; reference: ``probe_sse_reference`` / ``path_losses_reference``)."""
    from . import _core

    first = float(_core.probe_sse(_f32(X), _f32(target))) / np.asarray(target).size
    rest = path_search(X, target, weights, order_in, order_out, max_rounds=0, token=token, n_threads=n_threads).path
    return np.asarray([first] + list(rest), dtype=np.float64)


def stall_depth(curve: Sequence[float], tol: float = 0.02) -> int:
    """The depth where an order's probe loss stops falling: the first depth whose loss is within ``tol`` of the
    curve's whole fall (curve[0] - min) above its minimum. Along the true order of a trained net the loss falls
    to ~0 at depth N; a beam order that took a wrong block stalls a few depths after it (chaotic N=48 reach
    nets: the first wrong block 3-7 depths before this point on 5 of 6 beam orders, NOTES.md)."""
    c = np.asarray(curve, dtype=np.float64)
    m = float(np.nanmin(c))
    return int(np.argmax(c <= m + tol * max(float(c[0]) - m, 0.0)))


def path_search(X, target, weights, order_in, order_out, kinds=(mv.ADJACENT, mv.SWAP, mv.INSERT), first: int = 0,
                features: str = "quadratic", max_rounds: int = 1000, token: Optional[CancelToken] = None,
                n_threads: int = 0, repairable: Optional[Sequence[bool]] = None, list_keep: int = 0) -> PathOutcome:
    """The path search in the C++ core (see ``path_search_reference``, also for ``list_keep``). Stops on
    ``token``."""
    from . import _core

    W_in, b_in, W_out, b_out = (_f32(w) for w in weights[:4])
    kw = {} if token is None else dict(stop=token.core_flag(), time_limit_s=token.core_time_limit())
    if repairable is not None:
        kw["repairable"] = [bool(v) for v in repairable]
    r = _core.path_search(_f32(X), _f32(target), W_in, b_in, W_out, b_out, np.asarray(order_in, np.int64),
                          np.asarray(order_out, np.int64), kinds=[int(k) for k in kinds], first=int(first),
                          features=features, max_rounds=int(max_rounds), n_threads=n_threads,
                          list_keep=int(list_keep), **kw)
    hist = [(int(h[0]), int(h[1]), int(h[2]), int(h[3]), float(h[4])) for h in np.asarray(r["history"]).reshape(-1, 5)]
    return PathOutcome(list(map(int, r["order_in"])), list(map(int, r["order_out"])), float(r["J"]),
                       [float(v) for v in r["path"]], hist, int(r["rounds"]), int(r["candidates"]), int(r["probes"]),
                       str(r["stopped"]), int(r["full_rounds"]))
