"""The local-search round loop (reference semantics of docs/SEARCH.md), driving any scorer backend.

The C++ core runs the same loop without Python in it (``unshuffle._core.local_search``); this one is the
reference it is tested against, and the loop used with the torch and Triton scorers. Both stop on a
``CancelToken`` (cancel or deadline), on Ctrl-C and on ``time_limit``, returning the best order so far, and
take a progress callback.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

from . import moves as mv
from .cancel import INTERRUPTED, TIME_LIMIT, CancelToken
from ._lazy import torch
from .reference import final_sse

DEFAULT_SCHEDULE = ((mv.ADJACENT,), (mv.SWAP, mv.INSERT), (mv.REPAIR,))

#: Kick redraws per kick before the search gives up as 'local_optimum' (every nearby kick already visited).
#: The C++ core uses 2**24: it redraws a thousand times faster.
MAX_KICK_DRAWS = 100_000


@dataclass
class SearchOutcome:
    order_in: List[int]
    order_out: List[int]
    loss: float  # sum of squared errors on the search rows
    history: List[tuple] = field(default_factory=list)  # (round, kind, i, j, loss, n_candidates)
    rounds: int = 0
    candidates_scored: int = 0
    block_rows: int = 0
    stopped: str = ""


def improves(new: float, cur: float) -> bool:
    """Strict improvement guarded against float noise (docs/SEARCH.md)."""
    return new < cur * (1.0 - 1e-9) - 1e-30


def local_search(
    scorer,
    X: torch.Tensor,
    target: torch.Tensor,
    W_in, b_in, W_out, b_out, W_last, b_last,
    order_in: Sequence[int],
    order_out: Sequence[int],
    schedule: Sequence[Sequence[int]] = DEFAULT_SCHEDULE,
    stop_loss: float = 0.0,
    max_rounds: int = 10_000,
    kicks: int = 0,
    seed: int = 0,
    time_limit: Optional[float] = None,
    progress: Optional[Callable[[int, str, float], None]] = None,
    multi: bool = False,
    token: Optional[CancelToken] = None,
) -> SearchOutcome:
    """Best-improvement local search over the schedule's move sets; see docs/SEARCH.md. Stops with the best
    order so far when ``token`` is cancelled ('interrupted') or past its deadline, after ``time_limit``
    seconds ('time_limit'), or on Ctrl-C ('interrupted'; the token, if given, is cancelled too)."""
    t0 = time.perf_counter()
    n = len(order_in)
    R = int(X.shape[0])
    oi, oo = list(order_in), list(order_out)
    rng = mv.SplitMix64(seed)
    visited = {mv.ordering_hash(oi, oo)}
    weights = (W_in, b_in, W_out, b_out, W_last, b_last)
    prefix = scorer.forward_prefixes(X, oi, oo, W_in, b_in, W_out, b_out)
    cur = final_sse(prefix[-1], W_last, b_last, target)
    out = SearchOutcome(list(oi), list(oo), cur)
    level, kicks_left = 0, kicks
    try:
        while True:
            if cur <= stop_loss:
                out.stopped = "exact"
                break
            if out.rounds >= max_rounds:
                out.stopped = "max_rounds"
                break
            why = token.reason() if token is not None else None
            if why is None and time_limit is not None and time.perf_counter() - t0 > time_limit:
                why = TIME_LIMIT
            if why is not None:
                out.stopped = why
                break
            if level >= len(schedule):
                if kicks_left <= 0 or n < 3:
                    out.stopped = "local_optimum"
                    break
                kicks_left -= 1
                found = False
                for _ in range(MAX_KICK_DRAWS):  # bounded: with n = 3 every kick may already be visited
                    i, j = rng.next() % n, rng.next() % n
                    if abs(i - j) < 2:
                        continue
                    ki, ko = mv.apply_move(oi, oo, mv.KICK, i, j)
                    if mv.ordering_hash(ki, ko) not in visited:
                        found = True
                        break
                if not found:
                    out.stopped = "local_optimum"
                    break
                oi, oo = ki, ko
                visited.add(mv.ordering_hash(oi, oo))
                prefix = scorer.forward_prefixes(X, oi, oo, W_in, b_in, W_out, b_out)
                cur = final_sse(prefix[-1], W_last, b_last, target)
                out.history.append((out.rounds, mv.KICK, i, j, cur, 0))
                if cur < out.loss:  # a kick can land lower; best-so-far follows it as the C++ core does
                    out.order_in, out.order_out, out.loss = list(oi), list(oo), cur
                level = 0
                continue
            starts, si, so, moves = mv.generate_candidates(oi, oo, schedule[level])
            out.rounds += 1
            if len(starts) == 0:
                level += 1
                continue
            st = torch.from_numpy(starts)
            losses = scorer.score(prefix, st, torch.from_numpy(si), torch.from_numpy(so), *weights, target)
            out.candidates_scored += len(starts)
            out.block_rows += int((n - starts).sum()) * R
            best = int(torch.argmin(losses))  # first minimum: ties go to the lowest index
            bl = float(losses[best])
            if improves(bl, cur):
                k, i, j = (int(v) for v in moves[best])
                applied = [(k, i, j)]
                ni, no = mv.apply_move(oi, oo, k, i, j)
                if multi and tuple(schedule[level]) == (mv.ADJACENT,):
                    combo = _combine_adjacent(moves, losses, cur)
                    if len(combo) > 1:
                        ci, co = oi, oo
                        for (_, a, b) in combo:
                            ci, co = mv.apply_move(ci, co, mv.ADJACENT, a, b)
                        cp = scorer.forward_prefixes(X, ci, co, W_in, b_in, W_out, b_out)
                        cl = final_sse(cp[-1], W_last, b_last, target)
                        out.block_rows += n * R
                        if improves(cl, bl):
                            applied, ni, no, bl = combo, ci, co, cl
                oi, oo = ni, no
                visited.add(mv.ordering_hash(oi, oo))
                prefix = scorer.forward_prefixes(X, oi, oo, W_in, b_in, W_out, b_out)
                cur = bl
                for (k, i, j) in applied:
                    out.history.append((out.rounds, k, i, j, cur, len(starts)))
                if cur < out.loss:
                    out.order_in, out.order_out, out.loss = list(oi), list(oo), cur
                level = 0
                if progress is not None:
                    progress(out.rounds, mv.KIND_NAMES[k], cur)
            else:
                level += 1
    except KeyboardInterrupt:
        out.stopped = INTERRUPTED
        if token is not None:
            token.cancel(INTERRUPTED)
    if cur < out.loss:
        out.order_in, out.order_out, out.loss = list(oi), list(oo), cur
    return out


def _combine_adjacent(moves, losses, cur: float):
    """Improving adjacent swaps that touch disjoint positions, best first (for ``multi``); they act on
    different parts of the order, so applying them together usually improves on the best one alone."""
    cand = sorted((float(l), int(c)) for c, l in enumerate(losses.tolist()) if improves(float(l), cur))
    taken, used = [], set()
    for _, c in cand:
        k, i, j = (int(v) for v in moves[c])
        if i in used or j in used:
            continue
        used.update((i, j))
        taken.append((k, i, j))
    return taken


def local_search_native(
    X, target, W_in, b_in, W_out, b_out, W_last, b_last, order_in, order_out,
    schedule=DEFAULT_SCHEDULE, stop_loss=0.0, max_rounds=10_000, kicks=0, seed=0, time_limit=None,
    progress=None, multi=False, poll=0.1, token: Optional[CancelToken] = None,
) -> SearchOutcome:
    """The same search run entirely in the C++ core (``unshuffle._core.local_search``, GIL released).

    It runs in a worker thread so that Ctrl-C still works: the main thread waits, and on KeyboardInterrupt
    cancels the token, whose core flag the search polls once per scored work item; the core then returns
    the best order so far as 'interrupted' within microseconds. ``token`` (one per solve; a private one if
    None) also carries the deadline. The flag is never cleared, so a second Ctrl-C cannot leave the worker
    running. ``progress`` (if given) is called with the elapsed seconds while waiting."""
    import threading

    import numpy as np

    from . import _core

    f = lambda t: np.ascontiguousarray(t if isinstance(t, np.ndarray) else t.detach().cpu().numpy(), dtype=np.float32)
    args = [f(X), f(target), f(W_in), f(b_in), f(W_out), f(b_out), f(W_last), f(b_last),
            np.asarray(order_in, dtype=np.int64), np.asarray(order_out, dtype=np.int64)]
    token = token if token is not None else CancelToken()
    limits = [t for t in (time_limit, token.remaining()) if t is not None]
    kw = dict(schedule=[list(s) for s in schedule], stop_loss=float(stop_loss), max_rounds=int(max_rounds),
              kicks=int(kicks), seed=int(seed), multi=bool(multi), stop=token.core_flag(),
              time_limit_s=max(min(limits), 1e-9) if limits else None)  # the core wants > 0
    box = {}
    done = threading.Event()  # waited on instead of Thread.join: an interrupted join can mark the thread finished

    def work():
        try:
            box["res"] = _core.local_search(*args, **kw)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["exc"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="unshuffle-search", daemon=True).start()
    t0 = time.perf_counter()
    try:
        while not done.wait(poll):
            if progress is not None:
                progress(-1, "native", time.perf_counter() - t0)
    except KeyboardInterrupt:
        token.cancel(INTERRUPTED)  # the core returns its best order so far as 'interrupted'
        done.wait(5.0)  # microseconds in practice; a second Ctrl-C here propagates, the flag stays set
    if "exc" in box:
        raise box["exc"]
    if "res" not in box:  # the worker did not answer in time: its flag is set, so it still stops
        raise KeyboardInterrupt
    r = box["res"]
    hist = [(int(h[0]), int(h[1]), int(h[2]), int(h[3]), float(h[4]), int(h[5])) for h in np.asarray(r["history"]).reshape(-1, 6)]
    return SearchOutcome(
        order_in=[int(v) for v in r["order_in"]], order_out=[int(v) for v in r["order_out"]], loss=float(r["loss"]),
        history=hist, rounds=int(r["rounds"]), candidates_scored=int(r["candidates_scored"]),
        block_rows=int(r["block_rows"]), stopped=str(r["stopped_reason"]),
    )
