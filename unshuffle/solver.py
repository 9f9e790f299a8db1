"""solve(): pair, order, and prove the answer against the data."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from .cancel import DEFAULT_TIME_LIMIT, INTERRUPTED, TIME_LIMIT, Budget, Cancelled, CancelToken
from .certificate import Certificate, certify
from . import native as _native
from ._lazy import torch
from .ordering import EPS32, OrderResult, order
from .pairing import PairResult, pair
from .puzzle import Puzzle, answer_sha256, load_puzzle  # answer_sha256: re-exported
from .reference import block_forward

log = logging.getLogger("unshuffle")


@dataclass
class Verification:
    """How well an order reproduces ``pred`` on every row.

    ``max_abs_err``/``mse``: float32 forward vs pred, on every row. ``fp_noise``: max |float32 forward -
    float64 forward| of the same order over ``noise_rows`` rows, i.e. this order's own rounding noise.
    ``tolerance`` = max(8 * fp_noise, 32 * eps32 * max(1, max|pred|)); ``exact`` = max_abs_err <= tolerance.
    The data's pred was itself computed in float32 (other hardware, other summation order), so the right
    order differs from it by a few rounding noises (8x: room for a summation order other than ours; the floor:
    32 float32 ulps of the outputs' scale when the network's own noise is tinier); a wrong order on any puzzle
    we have seen is off by orders of magnitude more. Public puzzle: right order 2.1e-6 with the core's
    arithmetic (4.8e-7 with torch's), tolerance 8.2e-6 (the floor), and the nearest single-move neighbour
    8.4e-2, about 1e4 tolerances (``Solution.certificate``). ``row_err`` (R,): max abs error per row."""

    max_abs_err: float
    mse: float
    fp_noise: float
    tolerance: float
    exact: bool
    noise_rows: int = 0  # rows the noise was measured on (all of them in the reference)
    row_err: Optional[np.ndarray] = field(default=None, repr=False, compare=False)


def forward(puzzle: Puzzle, order_in: Sequence[int], order_out: Sequence[int], X=None, dtype=None):
    """The assembled network's outputs for the given block order (stack indices), in ``dtype`` (default
    float32), with torch (``reference.block_forward``: torch.nn.Linear arithmetic): the reference for the C++
    forwards."""
    dtype = torch.float32 if dtype is None else dtype
    x = (puzzle.X if X is None else X).to(dtype)
    for a, b in zip(order_in, order_out):
        x = block_forward(x, puzzle.W_in[a].to(dtype), puzzle.b_in[a].to(dtype), puzzle.W_out[b].to(dtype),
                          puzzle.b_out[b].to(dtype))
    return torch.nn.functional.linear(x, puzzle.W_last.to(dtype), puzzle.b_last.to(dtype))


def verify_reference(puzzle: Puzzle, order_in: Sequence[int], order_out: Sequence[int]) -> Verification:
    """``verify`` with torch: float32 and float64 forwards over every row (the reference)."""
    y32 = forward(puzzle, order_in, order_out)
    y64 = forward(puzzle, order_in, order_out, dtype=torch.float64)
    err = (y32.double() - puzzle.pred.double()).abs()
    noise = float((y32.double() - y64).abs().max())
    tol = max(8 * noise, 32 * EPS32 * max(1.0, float(puzzle.pred.abs().max())))
    mae = float(err.max())
    return Verification(mae, float((err**2).mean()), noise, tol, bool(mae <= tol), puzzle.n_rows,
                        err.amax(dim=1).numpy())


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
            return Verification(mae, mse, noise, tol, bool(mae <= tol), len(rows), err.max(axis=1))
        rows = np.arange(R)


def _choose_pairing(puzzle: Puzzle, first: PairResult, seed: int, token: CancelToken) -> PairResult:
    """When the weights give no confident pairing: the fused weight pairing or the first-order data pairing
    ('data_fo'), whichever lets the seed orders fit pred better (the best seed's MSE on the search rows, no
    search: well under a second; data_fo must win by the factor ``DATA_FO_MARGIN``). Measured (NOTES.md
    "Pairing"): on 'brief' and plain-SGD nets the weights pair 0-2 of 16 blocks and data_fo 9-16; on
    Adam-trained nets fused pairs all and data_fo few; the seed MSE picked the better one on 9 of 10 generated
    nets (the tenth: both poor). Where the fused pairing's seeds explode (median seed MSE over
    ``EXPLOSIVE_SEEDS`` x var(pred)) the net is a chaotic one, whose seed MSEs say nothing about the pairing,
    and data_fo (a linearisation around X) does not hold there: fused stays."""
    def seed_mse(pr):
        return order(puzzle, pr, seed=seed, strategy="seeds", token=token).seed_mse

    mine = seed_mse(first)
    var = float(np.var(puzzle.arrays.pred, axis=0, dtype=np.float64).mean())
    if float(np.median(list(mine.values()))) > EXPLOSIVE_SEEDS * var:
        log.info("pairing: %s seeds explode (chaotic net): data_fo not tried", first.method)
        return first
    alt = pair(puzzle, "data_fo")
    if alt.out_of == first.out_of:
        return first
    a, b = min(mine.values()), min(seed_mse(alt).values())
    log.info("pairing: %s seeds fit at mse %.3g, data_fo at %.3g", first.method, a, b)
    return alt if b < DATA_FO_MARGIN * a else first


#: _choose_pairing: data_fo replaces the weight pairing only when its best seed fits at least this much better.
#: Measured (NOTES.md "Tame nets"): where data_fo is right and fused wrong (brief, SGD, wd N=32 seed 9002) the
#: ratio was 0.12-0.72; on wd N=32 seed 7001 fused was right, data_fo had 5 pairs wrong and won at 0.89.
DATA_FO_MARGIN = 0.8

#: _choose_pairing: median seed MSE / var(pred) above which the fused pairing is kept without a comparison.
#: Measured on 35 generated nets (NOTES.md "Pairing"): tame nets (brief, SGD, wd) 0.6-22, chaotic ones (fast,
#: paper) whose trace is not confident 865-1.5e10.
EXPLOSIVE_SEEDS = 100.0


@dataclass
class Solution:
    """Result of ``solve()``. ``permutation``: piece ids in execution order (inp_1, out_1, ..., last); None
    (with ``sha256`` None and ``exact`` False) only when the solve was stopped before any order existed.
    ``stopped``: why the search ended (exact, local_optimum, max_rounds, time_limit, interrupted);
    ``budget``: how the time budget was spent (see ``cancel.Budget``); ``verified``: False when the answer was
    returned without the all-rows check (a second interrupt during the solve). ``certificate``: how far the
    answer's nearest single-move neighbour is from the data (``unshuffle.certificate``); None unless the
    answer is exact and the certificate was asked for."""

    permutation: Optional[List[int]]
    sha256: Optional[str]
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
    budget: Dict[str, object] = field(default_factory=dict)
    verified: bool = True
    certificate: Optional[Certificate] = None
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
                "estimated_wrong_positions": o.estimated_wrong, "runner_up": o.runner_up,
                "runs": [list(r) for r in o.runs],
                "history": [list(h) for h in o.history],
            }
        return d


class _Tracker:
    """Phase timing, the phase hook and the best answer so far for one solve()."""

    def __init__(self, token: CancelToken, on_phase: Optional[Callable[[str], None]]):
        self.token, self.on_phase = token, on_phase
        self.timings: Dict[str, float] = {}
        self.phase: Optional[str] = None
        self._t = time.perf_counter()
        self.best = None  # (PairResult, order_in, order_out, OrderResult or None)
        self._hold = os.environ.get("UNSHUFFLE_TEST_HOLD", "")

    def enter(self, name: str, check: bool = True) -> None:
        self.leave()
        self.phase, self._t = name, time.perf_counter()
        log.info("phase %s", name)
        if self.on_phase is not None:
            self.on_phase(name)
        if self._hold == name:  # test hook: hold here until cancelled (bounded), so signal tests need no sleeps
            self.token.wait(60.0)
        if check:
            self.token.check()

    def leave(self) -> None:
        if self.phase is not None:
            self.timings[self.phase] = self.timings.get(self.phase, 0.0) + time.perf_counter() - self._t
            self.phase = None


def solve(
    puzzle: Union[Puzzle, str, Path],
    *,
    backend: str = "auto",
    seed: int = 0,
    time_limit: Optional[float] = DEFAULT_TIME_LIMIT,
    token: Optional[CancelToken] = None,
    bt: bool = False,
    pairing_methods: Sequence[str] = ("auto", "fused", "data_fo", "trace", "ratio", "unitnorm", "data_dot", "data_norm"),
    progress=None,
    on_phase: Optional[Callable[[str], None]] = None,
    certificate: bool = True,
    start: Optional[Sequence[int]] = None,
    **order_kwargs,
) -> Solution:
    """Load (if given a path), pair, order and verify. ``exact`` is True only when the answer reproduces
    pred on every row within the float32 tolerance (see ``Verification``). ``pairing_methods``: the first
    pairs the blocks; when the search cannot make that exact, each next method's distinct pairing is
    searched in turn (the order's search can also re-pair blocks itself).

    Budget and interrupts: ``time_limit`` seconds (default ``DEFAULT_TIME_LIMIT`` = 600; None or 0: none)
    bound the whole solve, checked in every phase. ``token`` (a ``CancelToken``) lets another thread or a
    signal handler stop it. A stop anywhere (cancel, deadline or Ctrl-C) returns the best answer so far,
    verified on every row when one exists (``stopped`` says why; ``budget`` says where the time went and
    which phase was running); ``permutation`` is None if no order existed yet. ``on_phase(name)`` is called
    as each phase starts (load, pair, order, verify, fallback.<method>, certificate).

    ``certificate``: when the answer is exact, score every single-move neighbour on all rows (see
    ``unshuffle.certificate``; a fraction of the solve time) and return it as ``Solution.certificate``. It
    runs under the same token and budget: a stop during it leaves it incomplete and sets ``stopped``.

    ``start``: piece ids in execution order (``permutation`` of an earlier Solution, e.g. one that ran out of
    time; ``puzzle.load_order`` reads one from a file) to warm-start the order search from (``order(start=)``);
    ValueError when they are not this puzzle's pieces. Only the first pairing's search starts there: a fallback
    pairing's search from the same order (the first pairing's out pieces) would repeat it, not try its pairing."""
    token = CancelToken(time_limit) if token is None else token.limited(time_limit)
    tr = _Tracker(token, on_phase)
    t0 = time.perf_counter()
    stopped: Optional[str] = None
    stopped_in: Optional[str] = None
    verified = True
    v: Optional[Verification] = None
    v_of = None  # the order v verified
    try:
        if not isinstance(puzzle, Puzzle):
            tr.enter("load")
            puzzle = load_puzzle(puzzle)
        warm = None if start is None else puzzle.blocks_of(start)
        tr.enter("pair")
        pr = pair(puzzle, pairing_methods[0])
        if pairing_methods[0] == "auto" and not pr.confident:
            pr = _choose_pairing(puzzle, pr, seed, token)
        tr.enter("order")
        orr = order(puzzle, pr, backend=backend, seed=seed, bt=bt, progress=progress, token=token, start=warm,
                    on_best=lambda oi, oo: setattr(tr, "best", (pr, oi, oo, None)), **order_kwargs)
        tr.best = (pr, orr.order, orr.order_out, orr)
        tr.enter("verify", check=False)  # the answer found so far is verified even after a stop
        v = verify(puzzle, orr.order, orr.order_out)
        v_of = (list(orr.order), list(orr.order_out))
        stopped = orr.stopped
        # Fallback pairings: a network trained differently may lack the diagonal signal; each distinct
        # pairing from another signal gets a full order() until one verifies exact (the data decides).
        tried = {tuple(pr.out_of)}
        for method in pairing_methods[1:]:
            if v.exact or stopped in (INTERRUPTED, TIME_LIMIT):
                break
            tr.enter(f"fallback.{method}")
            alt = pair(puzzle, method)
            if tuple(alt.out_of) in tried:
                continue
            tried.add(tuple(alt.out_of))
            o2 = order(puzzle, alt, backend=backend, seed=seed, bt=bt, progress=progress, token=token, **order_kwargs)
            v2 = verify(puzzle, o2.order, o2.order_out)
            if o2.stopped in (INTERRUPTED, TIME_LIMIT):
                stopped = o2.stopped
            if v2.exact or v2.mse < v.mse:
                pr, orr, v = alt, o2, v2
                v_of = (list(orr.order), list(orr.order_out))
                tr.best = (pr, orr.order, orr.order_out, orr)
                if v2.exact:
                    stopped = o2.stopped
        if stopped in (INTERRUPTED, TIME_LIMIT):
            stopped_in = "order"
    except Cancelled as exc:
        stopped, stopped_in = exc.reason, tr.phase
    except KeyboardInterrupt:  # a Ctrl-C not turned into a cancel (no handler) or a second one: stop now
        token.cancel(INTERRUPTED)
        stopped, stopped_in = INTERRUPTED, tr.phase
    tr.leave()
    budget = Budget(time_limit=token.time_limit, stopped=stopped or "", stopped_in=stopped_in)
    if tr.best is None:  # stopped before any order existed
        budget.spent, budget.phases = time.perf_counter() - t0, dict(tr.timings)
        nan = float("nan")
        return Solution(permutation=None, sha256=None, exact=False, max_abs_err=nan, mse=nan, tolerance=nan,
                        fp_noise=nan, pairs=[], order=[], backend="", timings={**tr.timings, "total": budget.spent},
                        stopped=stopped or INTERRUPTED, seed=seed, budget=budget.to_dict(), verified=False)
    pr, o_in, o_out, orr = tr.best
    if v is None or v_of != (list(o_in), list(o_out)):
        try:  # an answer found before the stop is still checked on every row (fast; not interruptible)
            t = time.perf_counter()
            v = verify(puzzle, o_in, o_out)
            tr.timings["verify"] = tr.timings.get("verify", 0.0) + time.perf_counter() - t
        except KeyboardInterrupt:
            verified = False
    cert = None
    if certificate and v is not None and verified and v.exact:
        already = token.reason()  # a token already stopped gives an incomplete certificate at once
        tr.enter("certificate", check=False)
        cert = certify(puzzle, o_in, o_out, v.tolerance, row_errors=v.row_err, token=token)
        tr.leave()
        if not cert.complete and already is None:
            stopped = budget.stopped = cert.stopped
            budget.stopped_in = "certificate"
    total = time.perf_counter() - t0
    timings = dict(tr.timings)
    if orr is not None:
        timings.update({f"order.{k}": val for k, val in orr.timings.items()})
    timings["total"] = total
    budget.spent, budget.phases = total, dict(tr.timings)
    perm = puzzle.answer(o_in, o_out)
    nan = float("nan")
    return Solution(
        permutation=perm,
        sha256=answer_sha256(perm),
        exact=bool(v.exact) if (v is not None and verified) else False,
        max_abs_err=v.max_abs_err if v is not None and verified else nan,
        mse=v.mse if v is not None and verified else nan,
        tolerance=v.tolerance if v is not None and verified else nan,
        fp_noise=v.fp_noise if v is not None and verified else nan,
        pairs=[[puzzle.inp_ids[a], puzzle.out_ids[b]] for a, b in zip(o_in, o_out)],
        order=[puzzle.inp_ids[a] for a in o_in],
        backend=orr.backend if orr is not None else "",
        timings=timings,
        stopped=stopped or (orr.stopped if orr is not None else INTERRUPTED),
        seed=seed,
        budget=budget.to_dict(),
        verified=verified,
        certificate=cert,
        pair_result=pr,
        order_result=orr,
    )
