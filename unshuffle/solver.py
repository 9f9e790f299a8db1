"""solve(): pair, order, and prove the answer against the data."""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .ordering import EPS32, OrderResult, order
from .pairing import PairResult, pair
from .puzzle import Puzzle, load_puzzle


def answer_sha256(permutation: Sequence[int]) -> str:
    """sha256 of ",".join(ids): the public puzzle's answer check."""
    return hashlib.sha256(",".join(str(int(i)) for i in permutation).encode()).hexdigest()


@dataclass
class Verification:
    """How well an order reproduces ``pred`` on every row.

    ``max_abs_err``/``mse``: float32 forward (torch.nn.Linear arithmetic) vs pred. ``fp_noise``: max |float32
    forward - float64 forward| of the same order, i.e. this order's own rounding noise. ``tolerance`` =
    max(8 * fp_noise, 32 * eps32 * max(1, max|pred|)); ``exact`` = max_abs_err <= tolerance. The data's
    pred was itself computed in float32 (other hardware, other summation order), so the right order differs
    from it by a few rounding noises; a wrong order on any puzzle we have seen is off by orders of magnitude
    more (public puzzle: right 5e-7, tolerance 6e-6, best wrong order found > 1e-3)."""

    max_abs_err: float
    mse: float
    fp_noise: float
    tolerance: float
    exact: bool


def forward(puzzle: Puzzle, order_in: Sequence[int], order_out: Sequence[int], X=None, dtype=torch.float32):
    """The assembled network's outputs for the given block order (stack indices), in ``dtype``."""
    x = (puzzle.X if X is None else X).to(dtype)
    for a, b in zip(order_in, order_out):
        hid = torch.relu(torch.addmm(puzzle.b_in[a].to(dtype), x, puzzle.W_in[a].to(dtype).T))
        x = x + torch.addmm(puzzle.b_out[b].to(dtype), hid, puzzle.W_out[b].to(dtype).T)
    return torch.addmm(puzzle.b_last.to(dtype), x, puzzle.W_last.to(dtype).T)


def verify(puzzle: Puzzle, order_in: Sequence[int], order_out: Sequence[int]) -> Verification:
    """Check an order against pred on every row (see ``Verification``)."""
    y32 = forward(puzzle, order_in, order_out)
    y64 = forward(puzzle, order_in, order_out, dtype=torch.float64)
    err = (y32.double() - puzzle.pred.double()).abs()
    noise = float((y32.double() - y64).abs().max())
    tol = max(8 * noise, 32 * EPS32 * max(1.0, float(puzzle.pred.abs().max())))
    mae = float(err.max())
    return Verification(mae, float((err**2).mean()), noise, tol, bool(mae <= tol))


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
