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
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

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


def _corr_rows(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of every row of A (Na, h) with every row of B (Nb, h): (Na, Nb)."""
    A = A - A.mean(1, keepdim=True)
    B = B - B.mean(1, keepdim=True)
    return (A / (A.norm(dim=1, keepdim=True) + 1e-30)) @ (B / (B.norm(dim=1, keepdim=True) + 1e-30)).T


def extra_scores(puzzle: Puzzle, rows: int = 1000) -> Dict[str, np.ndarray]:
    """Fallback pairing signals for networks whose W_out W_in has no diagonal structure
    (docs/pairing_study.md: weight decay or a small init give none, but these work there):
    'unitnorm': correlation over hidden units j of ||W_in[a][j, :]|| and ||W_out[b][:, j]|| (weights only);
    'data_norm': E||u(x)||^2 of the block update on the recorded inputs (a trained pair's update is larger);
    'data_dot': -E<u(x), x> (the data analogue of the negative trace)."""
    W_in, b_in, W_out, b_out = (t.double() for t in (puzzle.W_in, puzzle.b_in, puzzle.W_out, puzzle.b_out))
    X = puzzle.X[:rows].double()
    out = {"unitnorm": _corr_rows(W_in.norm(dim=2), W_out.norm(dim=1))}
    H = torch.relu(torch.einsum("rd,ahd->ahr", X, W_in) + b_in[:, :, None])  # (Na, h, R)
    R = X.shape[0]
    G = H @ H.transpose(1, 2) / R  # E[h h^T] per inp piece
    # E||W h + c||^2 = tr(W G W^T) + 2 c^T W E[h] + |c|^2, for every (a, b) without forming the updates
    quad = torch.einsum("bdh,ahk,bdk->ab", W_out, G, W_out)
    lin = 2 * torch.einsum("bd,bdh,ah->ab", b_out, W_out, H.mean(2))
    out["data_norm"] = quad + lin + (b_out**2).sum(1)[None, :]
    out["data_dot"] = -(torch.einsum("bdh,ahd->ab", W_out, H @ X / R) + (b_out @ X.mean(0))[None, :])
    return {k: v.numpy() for k, v in out.items()}


METHODS = ("trace", "ratio", "unitnorm", "data_norm", "data_dot")


def pair(puzzle: Puzzle, method: str = "trace") -> PairResult:
    """Pair every inp piece with an out piece: Hungarian assignment on the score matrix of ``method``, one of
    ``METHODS``: 'trace', 'ratio' (the diagonal of W_out W_in), 'unitnorm', 'data_norm', 'data_dot' (see
    ``extra_scores``).

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
    S = {"ratio": ratio, "trace": ntr}.get(method)
    if S is None:
        S = extra_scores(puzzle)[method]
    other = ntr if method == "ratio" else ratio
    _, cols = linear_sum_assignment(S, maximize=True)
    _, cols2 = linear_sum_assignment(other, maximize=True)
    mr, mc, gap = _margins(S, cols)
    agree = bool(np.array_equal(cols, cols2))
    confident = bool(agree and (mr > 0).all() and (mc > 0).all())
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
