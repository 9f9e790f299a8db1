"""numpy-facing helpers over the C++ core for the CPU solve path, which never imports torch.

Each has a torch (or scipy) reference elsewhere in the package that tests hold it to: ``search_rows`` ~
``torch.randperm``; ``seed_orders`` ~ ``ordering.seeds``; ``linear_sum_assignment`` ~ scipy's;
``pair_scores`` ~ ``pairing.score_matrices``; the forwards ~ ``solver.forward``.
"""
from __future__ import annotations

import functools
from typing import Dict, List, Sequence, Tuple

import numpy as np


@functools.lru_cache(maxsize=None)
def core():
    """The C++ extension ``unshuffle._core``, or None when it is not built."""
    try:
        from . import _core
    except ImportError:
        return None
    return _core


def available() -> bool:
    """Whether the C++ core is importable here."""
    return core() is not None


_F32, _F64, _I64 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int64)


def _exact(a, dt: np.dtype) -> np.ndarray:
    # C-contiguous with the canonical dtype object: the core checks dtype identity, and an equal dtype from
    # another path (e.g. a byte-order round trip) is a different object.
    a = np.ascontiguousarray(a, dtype=dt)
    return a if a.dtype is dt else a.view(dt)


def _f32(a) -> np.ndarray:
    return _exact(a, _F32)


def _i64(a) -> np.ndarray:
    return _exact(a, _I64)


def search_rows(n_rows: int, n: int, seed: int) -> np.ndarray:
    """Sorted row indices ``torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))[:n]``:
    the rows the search scores, the same whichever backend runs (the core reproduces torch's generator)."""
    n = min(int(n), int(n_rows))
    c = core()
    if c is None or n_rows >= 0xFFFFFFFF // 20:
        import torch

        g = torch.Generator().manual_seed(seed)
        return torch.randperm(n_rows, generator=g)[:n].sort().values.numpy()
    s = int(seed) & 0xFFFF_FFFF_FFFF_FFFF  # torch takes a negative seed as its 64-bit two's complement
    return np.sort(c.torch_randperm(int(n_rows), s)[:n])


def linear_sum_assignment(cost, maximize: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """``scipy.optimize.linear_sum_assignment``'s result (row indices, column indices), ties included, from the
    C++ core (scipy.optimize takes ~0.3 s to import); scipy itself when the core is not built."""
    c = core()
    if c is None:
        from scipy.optimize import linear_sum_assignment as lsa

        return lsa(cost, maximize=maximize)
    m = np.asarray(cost, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"expected a matrix (2-D array), got a {m.ndim}-D array")
    if maximize:
        m = -m
    transposed = m.shape[1] < m.shape[0]
    if transposed:
        m = m.T
    cols = c.lap_min_cost(_exact(m, _F64)) if m.size else np.zeros(m.shape[0], dtype=np.int64)
    rows = np.arange(m.shape[0])
    if transposed:
        order = np.argsort(cols)
        return cols[order], rows[order]
    return rows, cols


def pair_scores(W_in, W_out) -> Tuple[np.ndarray, np.ndarray]:
    """(ratio, neg_trace), each (N_in, N_out): ``pairing.score_matrices`` from one batched float32 product
    (the trace in float64), in the C++ core."""
    return core().pair_scores(_f32(W_in), _f32(W_out))


def seed_orders(X, weights, out_of: Sequence[int]) -> Tuple[Dict[str, List[int]], np.ndarray]:
    """``ordering.seeds`` on numpy arrays, the greedy seed in the C++ core: ({name: order}, mean update norm of
    each block at the first position (the delta-norm seed's key, and the insertion priority's))."""
    W_in, b_in, W_out, b_out = (_f32(w) for w in weights[:4])
    oo = _i64(list(out_of))
    greedy, first = core().greedy_seed(_f32(X), W_in, b_in, W_out, b_out, oo)
    fro = np.linalg.norm(W_out[oo].reshape(len(oo), -1).astype(np.float64), axis=1)
    return {
        "fro_asc": np.argsort(fro, kind="stable").tolist(),
        "fro_desc": np.argsort(-fro, kind="stable").tolist(),
        "delta_norm": np.argsort(first, kind="stable").tolist(),
        "greedy": greedy.tolist(),
    }, first


def update_priority(first_scores) -> List[int]:
    """``ordering.update_priority`` from ``seed_orders``' first-position update norms: largest first."""
    return np.argsort(-np.asarray(first_scores), kind="stable").tolist()


def insertion_seed(X, target, weights, out_of: Sequence[int], priority: Sequence[int]) -> List[int]:
    """``ordering.insertion_seed`` with the C++ scorer, on numpy arrays (the same core calls, so the same seed)."""
    c = core()
    X, target = _f32(X), _f32(target)
    w = tuple(_f32(x) for x in weights)
    oo = list(out_of)
    seq = [int(priority[0])]
    for blk in priority[1:]:
        blk, n = int(blk), len(seq)
        prefix = c.forward_prefixes(X, _i64(seq), _i64([oo[a] for a in seq]), *w[:4])
        si = np.full((n + 1, n + 1), -1, dtype=np.int64)
        so = si.copy()
        for pos in range(n + 1):
            tail = [blk] + seq[pos:]
            si[pos, : len(tail)] = tail
            so[pos, : len(tail)] = [oo[a] for a in tail]
        losses = c.score_candidates(prefix, np.arange(n + 1, dtype=np.int64), si, so, *w, target)
        seq.insert(int(np.argmin(losses)), blk)  # first minimum, as torch.argmin
    return seq


def order_losses(X, target, weights, orders: Sequence[Tuple[Sequence[int], Sequence[int]]]) -> np.ndarray:
    """Contract loss (sum of squared errors against ``target``, see ``unshuffle.reference``) of each full order
    (order_in, order_out), scored together by the fused C++ scorer."""
    K = len(orders)
    L = max((len(o[0]) for o in orders), default=0)
    si = np.full((K, L), -1, dtype=np.int64)
    so = np.full((K, L), -1, dtype=np.int64)
    for c, (oi, oo) in enumerate(orders):
        si[c, : len(oi)] = oi
        so[c, : len(oo)] = oo
    X = _f32(X)
    return core().score_candidates(X[None], np.zeros(K, dtype=np.int64), si, so, *(_f32(w) for w in weights),
                                   _f32(target))


def forward_f32(arrays, order_in, order_out, X=None) -> np.ndarray:
    """Network outputs (R, k) float32 for a block order, with the search scorer's block arithmetic."""
    a = arrays
    return core().forward_f32(_f32(a.X if X is None else X), _i64(order_in), _i64(order_out), _f32(a.W_in),
                              _f32(a.b_in), _f32(a.W_out), _f32(a.b_out), _f32(a.W_last), _f32(a.b_last))


def forward_f64(arrays, order_in, order_out, X=None) -> np.ndarray:
    """The same outputs computed in float64 (R, k); each row depends on that row only."""
    a = arrays
    return core().forward_f64(_f32(a.X if X is None else X), _i64(order_in), _i64(order_out), _f32(a.W_in),
                              _f32(a.b_in), _f32(a.W_out), _f32(a.b_out), _f32(a.W_last), _f32(a.b_last))


def pred_variance(target) -> float:
    """Mean over outputs of the unbiased variance of ``target`` (what ``torch.var(dim=0).mean()`` gives)."""
    t = np.asarray(target, dtype=np.float64)
    return float(t.var(axis=0, ddof=1).mean()) if t.shape[0] > 1 else float("nan")
