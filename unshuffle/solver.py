"""solve(): pair, order, and prove the answer against the data."""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from . import native as _native
from ._lazy import torch
from .ordering import EPS32, OrderResult, order
from .pairing import PairResult, pair
from .puzzle import Puzzle, load_puzzle


def answer_sha256(permutation: Sequence[int]) -> str:
    """sha256 of ",".join(ids): the public puzzle's answer check."""
    return hashlib.sha256(",".join(str(int(i)) for i in permutation).encode()).hexdigest()


@dataclass
class Verification:
    """How well an order reproduces ``pred`` on every row.

    ``max_abs_err``/``mse``: float32 forward vs pred, on every row. ``fp_noise``: max |float32 forward -
    float64 forward| of the same order over ``noise_rows`` rows, i.e. this order's own rounding noise.
    ``tolerance`` = max(8 * fp_noise, 32 * eps32 * max(1, max|pred|)); ``exact`` = max_abs_err <= tolerance.
    The data's pred was itself computed in float32 (other hardware, other summation order), so the right
    order differs from it by a few rounding noises; a wrong order on any puzzle we have seen is off by orders
    of magnitude more (public puzzle: right 5e-7, tolerance 6e-6, best wrong order found > 1e-3)."""

    max_abs_err: float
    mse: float
    fp_noise: float
    tolerance: float
    exact: bool
    noise_rows: int = 0  # rows the noise was measured on (all of them in the reference)


def forward(puzzle: Puzzle, order_in: Sequence[int], order_out: Sequence[int], X=None, dtype=None):
    """The assembled network's outputs for the given block order (stack indices), in ``dtype`` (default
    float32), with torch (torch.nn.Linear arithmetic): the reference for the C++ forwards."""
    dtype = torch.float32 if dtype is None else dtype
    x = (puzzle.X if X is None else X).to(dtype)
    for a, b in zip(order_in, order_out):
        hid = torch.relu(torch.addmm(puzzle.b_in[a].to(dtype), x, puzzle.W_in[a].to(dtype).T))
        x = x + torch.addmm(puzzle.b_out[b].to(dtype), hid, puzzle.W_out[b].to(dtype).T)
    return torch.addmm(puzzle.b_last.to(dtype), x, puzzle.W_last.to(dtype).T)


def verify_reference(puzzle: Puzzle, order_in: Sequence[int], order_out: Sequence[int]) -> Verification:
    """``verify`` with torch: float32 and float64 forwards over every row (the reference)."""
    y32 = forward(puzzle, order_in, order_out)
    y64 = forward(puzzle, order_in, order_out, dtype=torch.float64)
    err = (y32.double() - puzzle.pred.double()).abs()
    noise = float((y32.double() - y64).abs().max())
    tol = max(8 * noise, 32 * EPS32 * max(1.0, float(puzzle.pred.abs().max())))
    mae = float(err.max())
    return Verification(mae, float((err**2).mean()), noise, tol, bool(mae <= tol), puzzle.n_rows)


NOISE_TOP_ROWS = 32  # the rows where the float32 forward is furthest from pred ...
NOISE_SPREAD_ROWS = 224  # ... and rows spread evenly over the data: where the float64 pass runs first


def verify(puzzle: Puzzle, order_in: Sequence[int], order_out: Sequence[int]) -> Verification:
    """Check an order against pred on every row (see ``Verification``), with the C++ core when built.

    The float32 forward and the error run on every row. The float64 pass, which only sizes the tolerance,
    runs first on NOISE_TOP_ROWS + NOISE_SPREAD_ROWS rows: each row's noise depends on that row alone, so the
    sampled noise is at most the all-rows noise and a sampled tolerance at most the all-rows one. Hence an
    answer exact under the sample is exact under the all-rows rule; only when the sample says "not exact"
    does the float64 pass run on every row to decide. ``exact`` is therefore always the all-rows decision."""
    if not _native.available():
        return verify_reference(puzzle, order_in, order_out)
    a = puzzle.arrays
    y32 = _native.forward_f32(a, order_in, order_out)
    pred = a.pred.astype(np.float64)
    err = np.abs(y32.astype(np.float64) - pred)
    mae, mse = float(err.max()), float((err**2).mean())
    floor = 32 * EPS32 * max(1.0, float(np.abs(pred).max()))
    R = puzzle.n_rows
    rows = np.arange(R)
    if R > NOISE_TOP_ROWS + NOISE_SPREAD_ROWS:
        row_err = err.max(axis=1)
        top = np.argpartition(-row_err, NOISE_TOP_ROWS)[:NOISE_TOP_ROWS]
        rows = np.unique(np.concatenate([top, np.linspace(0, R - 1, NOISE_SPREAD_ROWS).astype(np.int64)]))
    while True:
        X = a.X if len(rows) == R else a.X[rows]
        y64 = _native.forward_f64(a, order_in, order_out, X=X)
        noise = float(np.abs(y32[rows].astype(np.float64) - y64).max())
        tol = max(8 * noise, floor)
        if mae <= tol or len(rows) == R:
            return Verification(mae, mse, noise, tol, bool(mae <= tol), len(rows))
        rows = np.arange(R)


@dataclass
class Solution:
    """Result of ``solve()``. ``permutation``: piece ids in execution order (inp_1, out_1, ..., last)."""

    permutation: List[int]
    sha256: str
    exact: bool
    max_abs_err: float
    mse: float
    tolerance: float
    fp_noise: float
    pairs: List[List[int]]
    order: List[int]  # block positions as inp piece ids, for reading
    backend: str
    timings: Dict[str, float]
    stopped: str
    seed: int
    pair_result: Optional[PairResult] = field(default=None, repr=False)
    order_result: Optional[OrderResult] = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """JSON-ready dict of the public fields (plus a summary of pairing and search)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("pair_result", "order_result")}
        if self.pair_result is not None:
            pr = self.pair_result
            d["pairing"] = {
                "method": pr.method, "confident": pr.confident, "agree": pr.agree, "min_gap": pr.min_gap,
                "min_margin_row": float(pr.margin_row.min()), "min_margin_col": float(pr.margin_col.min()),
            }
        if self.order_result is not None:
            o = self.order_result
            d["search"] = {
                "seed_mse": o.seed_mse, "start": o.start, "rounds": o.rounds, "moves_used": o.moves_used,
                "candidates_scored": o.candidates_scored, "block_rows": o.block_rows,
                "search_rows": o.search_rows, "repaired": o.repaired, "search_mse": o.mse,
                "history": [list(h) for h in o.history],
            }
        return d


def solve(
    puzzle: Union[Puzzle, str, Path],
    *,
    backend: str = "auto",
    seed: int = 0,
    time_limit: Optional[float] = None,
    bt: bool = False,
    pairing_methods: Sequence[str] = ("trace", "ratio", "unitnorm", "data_norm", "data_dot"),
    progress=None,
    **order_kwargs,
) -> Solution:
    """Load (if given a path), pair, order and verify. ``exact`` is True only when the answer reproduces
    pred on every row within the float32 tolerance (see ``Verification``). ``pairing_methods``: the first
    pairs the blocks; when the search cannot make that exact, each next method's distinct pairing is
    searched in turn (the order's search can also re-pair blocks itself)."""
    t0 = time.perf_counter()
    timings: Dict[str, float] = {}
    if not isinstance(puzzle, Puzzle):
        puzzle = load_puzzle(puzzle)
        timings["load"] = time.perf_counter() - t0
    deadline = None if time_limit is None else time.perf_counter() + time_limit
    t = time.perf_counter()
    pr = pair(puzzle, pairing_methods[0])
    timings["pair"] = time.perf_counter() - t
    t = time.perf_counter()
    orr = order(puzzle, pr, backend=backend, seed=seed, time_limit=time_limit, bt=bt, progress=progress, **order_kwargs)
    timings["order"] = time.perf_counter() - t
    timings.update({f"order.{k}": v for k, v in orr.timings.items()})
    t = time.perf_counter()
    v = verify(puzzle, orr.order, orr.order_out)
    timings["verify"] = time.perf_counter() - t
    # Fallback pairings: a network trained differently may lack the diagonal signal; each distinct pairing
    # from another signal gets a full order() until one verifies exact (the data decides, not the weights).
    tried = {tuple(pr.out_of)}
    for method in pairing_methods[1:]:
        if v.exact or orr.stopped == "interrupted" or (deadline is not None and time.perf_counter() >= deadline):
            break
        t = time.perf_counter()
        alt = pair(puzzle, method)
        if tuple(alt.out_of) in tried:
            continue
        tried.add(tuple(alt.out_of))
        left = None if deadline is None else max(0.0, deadline - time.perf_counter())
        o2 = order(puzzle, alt, backend=backend, seed=seed, time_limit=left, bt=bt, progress=progress, **order_kwargs)
        v2 = verify(puzzle, o2.order, o2.order_out)
        timings[f"fallback.{method}"] = time.perf_counter() - t
        if v2.exact or v2.mse < v.mse:
            pr, orr, v = alt, o2, v2
    timings["total"] = time.perf_counter() - t0
    perm = puzzle.answer(orr.order, orr.order_out)
    return Solution(
        permutation=perm,
        sha256=answer_sha256(perm),
        exact=v.exact,
        max_abs_err=v.max_abs_err,
        mse=v.mse,
        tolerance=v.tolerance,
        fp_noise=v.fp_noise,
        pairs=[[puzzle.inp_ids[a], puzzle.out_ids[b]] for a, b in zip(orr.order, orr.order_out)],
        order=[puzzle.inp_ids[a] for a in orr.order],
        backend=orr.backend,
        timings=timings,
        stopped=orr.stopped,
        seed=seed,
        pair_result=pr,
        order_result=orr,
    )
