"""pair(): which inp piece goes with which out piece, from the weights alone.

For a correctly paired block, ``W_out @ W_in`` (d x d) has a strongly negative diagonal standing out of its
off-diagonal mass (trained residual blocks partly undo the input direction they read). Every (inp, out)
combination is scored and the assignment solved with the Hungarian algorithm. With the C++ core built,
the scores come from one batched product and the assignment from the core's solver (the same assignment as
``scipy.optimize.linear_sum_assignment``, which takes ~0.3 s to import); ``score_matrices`` (torch, float64)
and scipy are the references they are tested against and the fallback without the core.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np

from . import native as _native
from ._lazy import torch
from .native import linear_sum_assignment
from .puzzle import Puzzle


@dataclass
class PairResult:
    """Result of ``pair()``.

    ``out_of[a]`` is the W_out stack index paired with W_in stack index ``a``; ``pairs`` lists (inp_id, out_id).
    ``ratio`` and ``neg_trace`` are the (N, N) score matrices (rows: inp, columns: out; higher = better).
    ``margin_row[a]``/``margin_col[a]``: chosen score minus the best other score in its row / column, for
    the primary score; ``gap[a]``: chosen score / best other score in row and column. ``confident`` is True
    when every margin is positive and both scores choose the same assignment.
    """

    out_of: List[int]
    pairs: List[Tuple[int, int]]
    method: str
    ratio: np.ndarray
    neg_trace: np.ndarray
    margin_row: np.ndarray
    margin_col: np.ndarray
    gap: np.ndarray
    agree: bool
    confident: bool
    seconds: float
    info: Dict[str, float] = field(default_factory=dict)

    @property
    def min_gap(self) -> float:
        return float(self.gap.min()) if self.gap.size else float("inf")


def score_matrices(W_in: torch.Tensor, W_out: torch.Tensor, chunk: int = 16) -> Tuple[np.ndarray, np.ndarray]:
    """Park's diagonal-dominance ratio and the negative normalised trace for every (inp a, out b).

    ratio[a, b] = -mean(diag M) / mean(|offdiag M|) with M = W_out[b] @ W_in[a]: the signed form of the
    paper's ratio (correct pairs have strongly negative diagonals, so direction matters);
    neg_trace[a, b] = -trace(M) / d.
    """
    N, h, d = W_in.shape
    Wi = W_in.double()
    Wo = W_out.double()
    ratio = np.empty((N, W_out.shape[0]))
    ntr = np.empty_like(ratio)
    for a0 in range(0, N, chunk):
        M = torch.einsum("bdh,ahe->abde", Wo, Wi[a0 : a0 + chunk])  # (c, No, d, d)
        diag = torch.diagonal(M, dim1=2, dim2=3)
        tr = diag.sum(-1)
        off = (M.abs().sum((2, 3)) - diag.abs().sum(-1)) / max(1, d * (d - 1))
        ratio[a0 : a0 + chunk] = (-(tr / d) / off.clamp_min(1e-30)).numpy()
        ntr[a0 : a0 + chunk] = (-tr / d).numpy()
    return ratio, ntr


def _margins(S: np.ndarray, cols: np.ndarray):
    N = S.shape[0]
    rows = np.arange(N)
    chosen = S[rows, cols]
    Sr = S.copy()
    Sr[rows, cols] = -np.inf
    best_row = Sr.max(axis=1) if S.shape[1] > 1 else np.full(N, -np.inf)
    best_col_other = np.full(N, -np.inf)
    if N > 1:
        colmax = Sr.max(axis=0)  # best other in each column
        best_col_other = colmax[cols]
    with np.errstate(divide="ignore", invalid="ignore"):
        other = np.maximum(best_row, best_col_other)
        gap = np.where(other > 0, chosen / other, np.inf)
    return chosen - best_row, chosen - best_col_other, gap


def _corr_rows(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Pearson correlation of every row of A (Na, h) with every row of B (Nb, h): (Na, Nb)."""
    A = A - A.mean(1, keepdims=True)
    B = B - B.mean(1, keepdims=True)
    return (A / (np.linalg.norm(A, axis=1, keepdims=True) + 1e-30)) @ (B / (np.linalg.norm(B, axis=1, keepdims=True) + 1e-30)).T


# extra_scores per puzzle: solve() asks for them again for each pairing it tries (auto, the data_fo choice, each
# fallback); a hit needs the same rows and the very same arrays (a replaced array recomputes)
_EXTRA: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def extra_scores(puzzle: Puzzle, rows: int = 1000) -> Dict[str, np.ndarray]:
    """``_extra_scores`` (below), computed once per puzzle and rows."""
    a = puzzle.arrays
    arrays = (a.W_in, a.b_in, a.W_out, a.b_out, a.W_last, a.b_last, a.X, a.pred)
    hit = _EXTRA.get(puzzle)
    if hit is None or hit[0] != rows or any(u is not v for u, v in zip(hit[1], arrays)):
        hit = _EXTRA[puzzle] = (rows, arrays, _extra_scores(puzzle, rows))
    return dict(hit[2])


def _extra_scores(puzzle: Puzzle, rows: int) -> Dict[str, np.ndarray]:
    """More pairing signals (numpy, float64), for networks whose W_out W_in has no diagonal structure
    (docs/pairing_study.md: weight decay or a small init give none, but these work there):
    'unitnorm': correlation over hidden units j of ||W_in[a][j, :]|| and ||W_out[b][:, j]|| (weights only);
    'data_norm': E||u(x)||^2 of the block update on the recorded inputs (a trained pair's update is larger);
    'data_dot': -E<u(x), x> (the data analogue of the negative trace);
    'data_fo': the first-order fit of the output: the correlation, over rows and outputs, of one block's
    contribution to the output with the stream at X, W_last u(x), with the residual pred - (W_last x + b_last)
    that the blocks must explain. It uses pred, so it works where the weights carry no pairing signal at all
    (networks barely moved from their init: 'brief', plain SGD), as long as the stream stays near X (16-32
    blocks, NOTES.md "Pairing")."""
    a = puzzle.arrays
    W_in, b_in, W_out, b_out = (np.asarray(t, np.float64) for t in (a.W_in, a.b_in, a.W_out, a.b_out))
    X = np.asarray(a.X[:rows], np.float64)
    out = {"unitnorm": _corr_rows(np.linalg.norm(W_in, axis=2), np.linalg.norm(W_out, axis=1))}
    H = np.maximum(np.einsum("rd,ahd->ahr", X, W_in, optimize=True) + b_in[:, :, None], 0.0)  # (Na, h, R)
    R = X.shape[0]
    G = H @ H.transpose(0, 2, 1) / R  # E[h h^T] per inp piece
    # E||W h + c||^2 = tr(W G W^T) + 2 c^T W E[h] + |c|^2, for every (a, b) without forming the updates
    quad = np.einsum("bdh,ahk,bdk->ab", W_out, G, W_out, optimize=True)
    lin = 2 * np.einsum("bd,bdh,ah->ab", b_out, W_out, H.mean(2), optimize=True)
    out["data_norm"] = quad + lin + (b_out**2).sum(1)[None, :]
    out["data_dot"] = -(np.einsum("bdh,ahd->ab", W_out, H @ X / R, optimize=True) + (b_out @ X.mean(0))[None, :])
    _, resid, V = _first_order_target(a, rows)
    out["data_fo"] = np.stack([_first_order_row(H[i].T, V, resid) for i in range(H.shape[0])])
    return out


def _first_order_target(a, rows: int):
    """(X rows (R, d), the centred residual pred - (W_last X + b_last) (R, k), V (No, k, h) = W_last W_out[b]:
    the output map of each out piece's hidden units), float64: what the first-order pairing fits."""
    X = np.asarray(a.X[:rows], np.float64)
    W_last, b_last = np.asarray(a.W_last, np.float64), np.asarray(a.b_last, np.float64)
    resid = np.asarray(a.pred[:rows], np.float64).reshape(X.shape[0], -1) - (X @ W_last.T + b_last)
    resid -= resid.mean(0)
    return X, resid, np.einsum("kd,bdh->bkh", W_last, np.asarray(a.W_out, np.float64), optimize=True)


def _first_order_row(h: np.ndarray, V: np.ndarray, resid: np.ndarray) -> np.ndarray:
    """One inp piece's first-order scores against every out piece b: E[c_b r] / sqrt(E[c_b c_b]) with
    c_b = V[b] (h - E h) its centred contribution to the output, h (R, h) its hidden units, r the residual."""
    R = h.shape[0]
    hc = h - h.mean(0)
    num = np.einsum("bkh,hk->b", V, hc.T @ resid / R, optimize=True)
    den = np.einsum("bkh,hj,bkj->b", V, hc.T @ hc / R, V, optimize=True)
    return num / np.sqrt(np.maximum(den, 1e-300))


def first_order_scores(puzzle: Puzzle, order_in: Sequence[int], order_out: Sequence[int], rows: int = 2000) -> np.ndarray:
    """'data_fo' around an order (Na, No): each inp piece's hidden units are taken on the stream where the order
    runs it, not on X. Why: pred - (W_last X + b_last) = W_last sum_p u_p(x_{p-1}) holds exactly for the true
    order, so with the stream right the first-order fit is the exact model and the true out piece of each block
    stands out; near the answer it re-pairs what a search cannot (plain-SGD nets, NOTES.md "Pairing")."""
    a = puzzle.arrays
    W_in, b_in, W_out, b_out = (np.asarray(t, np.float64) for t in (a.W_in, a.b_in, a.W_out, a.b_out))
    x, resid, V = _first_order_target(a, rows)
    S = np.zeros((W_in.shape[0], W_out.shape[0]))
    for ai, bi in zip(order_in, order_out):
        h = np.maximum(x @ W_in[ai].T + b_in[ai], 0.0)
        S[ai] = _first_order_row(h, V, resid)
        x = x + h @ W_out[bi].T + b_out[bi]
    return S


def _standardised(S: np.ndarray) -> np.ndarray:
    """Row-standardised plus column-standardised scores: signals on different scales become comparable, and a
    pair stands out when it is high both for its inp piece and for its out piece."""
    S = np.asarray(S, np.float64)
    r = (S - S.mean(1, keepdims=True)) / (S.std(1, keepdims=True) + 1e-300)
    c = (S - S.mean(0, keepdims=True)) / (S.std(0, keepdims=True) + 1e-300)
    return r + c


#: The signals the fused score adds (data_norm is left out: near chance on most generated networks).
FUSED = ("trace", "ratio", "unitnorm", "data_dot")


METHODS = ("auto", "trace", "ratio", "fused", "unitnorm", "data_norm", "data_dot", "data_fo")


def pair(puzzle: Puzzle, method: str = "auto") -> PairResult:
    """Pair every inp piece with an out piece: Hungarian assignment on the score matrix of ``method``, one of
    ``METHODS``: 'trace', 'ratio' (the diagonal of W_out W_in), 'unitnorm', 'data_norm', 'data_dot' (see
    ``extra_scores``), 'fused' (the standardised sum of the ``FUSED`` signals) or 'auto' (the default):
    'trace' when it is confident (every margin positive and the same assignment as 'ratio'), else 'fused'.
    On 14 generated networks of N = 48-96 trained with Adam at lr 1e-2 (NOTES.md) 'fused' paired every block
    right where 'trace' alone missed up to 10 of 96; 'auto' keeps the cheap weights-only path for the rest.

    'trace' (-tr(W_out W_in)/d) is the default: on generated networks it pairs right where Park's ratio
    slips (docs/pairing_study.md: N=24 fast regime 100% vs 81%); on the public puzzle both are perfect.
    Both diagonal scores are always computed and reported; ``agree`` says whether the chosen method's
    assignment coincides with the other diagonal score's ('ratio' for 'trace', else 'trace'). The other
    three are what solve() tries next, in that order, when the search cannot make the first pairing exact."""
    t0 = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"unknown pairing method {method!r} (choose one of {', '.join(METHODS)})")
    if _native.available():
        ratio, ntr = _native.pair_scores(puzzle.arrays.W_in, puzzle.arrays.W_out)
    else:
        ratio, ntr = score_matrices(puzzle.W_in, puzzle.W_out)
    if method == "auto":
        tr = pair(puzzle, "trace")
        if tr.confident:
            return tr
        method = "fused"
    S = {"ratio": ratio, "trace": ntr}.get(method)
    if S is None:
        ex = extra_scores(puzzle)
        if method == "fused":
            sig = {"ratio": ratio, "trace": ntr, **ex}
            S = sum(_standardised(sig[k]) for k in FUSED)
        else:
            S = ex[method]
    other = ntr if method == "ratio" else ratio
    _, cols = linear_sum_assignment(S, maximize=True)
    _, cols2 = linear_sum_assignment(other, maximize=True)
    mr, mc, gap = _margins(S, cols)
    agree = bool(np.array_equal(cols, cols2))
    # fused already contains both diagonal scores: its own margins are its confidence
    confident = bool((agree or method == "fused") and (mr > 0).all() and (mc > 0).all())
    out_of = [int(c) for c in cols]
    return PairResult(
        out_of=out_of,
        pairs=[(puzzle.inp_ids[a], puzzle.out_ids[b]) for a, b in enumerate(out_of)],
        method=method,
        ratio=ratio,
        neg_trace=ntr,
        margin_row=mr,
        margin_col=mc,
        gap=gap,
        agree=agree,
        confident=confident,
        seconds=time.perf_counter() - t0,
    )
