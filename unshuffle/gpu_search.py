"""Device-resident local search for the triton backend: the loop of ``unshuffle.search.local_search``
(docs/SEARCH.md) with its state on the GPU, and many searches advanced together in one launch per round.

What stays on the device for the whole search (``unshuffle.kernels.search``): the pieces, uploaded once in
the kernel's padded layout; every search's current order (S, n) int32; every search's prefix activations
(S, n + 1, R, d). A move candidate is a row (search, kind, i, j): the kernel decodes the moved order itself,
so the host never builds or copies block sequences.

A round, for all S searches at once:
  1. one H2D copy of the round's move rows (cached when unchanged, e.g. a single search's levels);
  2. one scoring launch over every active search's candidates;
  3. a segmented min/argmin on the device, and ONE small D2H copy: (best loss, best index) per search,
     plus the adjacent losses of searches that may multi-accept (docs/SEARCH.md);
  4. host decisions (the reference's rules, same functions), one H2D copy of the changed orders and one
     forward launch that advances the prefixes of every search that moved (no sync).
Kicks and multi-accept combinations cost one more forward launch and D2H copy in the rounds where they
happen. Orders are validated once per search; moves keep them in range, so launches skip index checks.

The Python loop (``search.local_search``) stays the oracle. With the same inputs a device search takes the
same moves, rounds, candidate counts and block rows (tests pin this on small problems under the
interpreter), with one difference in arithmetic: losses are the kernel's (tiled fp32 products, float64
sums) where the reference's scorer sums in another order. They agree to ~1e-7 relative, so the trajectories
are identical unless two candidates' losses are within that of each other (a near-tie the two loops may
break differently), or a loss lies within that of the ``improves`` threshold or of ``stop_loss``.

Reduced precision (``precision`` = "tf32", "tf32x3", "bf16"): candidates are scored in that precision,
and every search's best candidate is re-scored in fp32 before the ``improves`` test (one extra launch and
copy per round), so accepted losses, stop tests and the result are fp32 numbers; only the choice among
near-equal candidates may differ.

Searches run in lockstep; each keeps its own random stream, visited set, level, kicks and best-so-far, so
a search's trajectory does not depend on the others it shares launches with (tested). ``should_stop``
(checked once per round) and ``time_limit`` end every search with stopped = "interrupted" / "time_limit";
Ctrl-C likewise ("interrupted"). With ``stop_when_exact`` the first exact search ends the others
("superseded").
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import moves as mv
from .search import DEFAULT_SCHEDULE, SearchOutcome, _combine_adjacent, improves

__all__ = ["device_local_search", "device_multi_search", "prepare_problem", "CALLS"]

CALLS = {"device_local_search": 0, "device_multi_search": 0}  # how often each ran (benchmarks report it)


def _kernels():
    from .kernels import search as ks  # imported lazily: triton is optional

    return ks


def prepare_problem(X, target, W_in, b_in, W_out, b_out, W_last, b_last, device=None, block_h=None):
    """Upload the pieces, search rows and target once (the kernel's padded layout); pass the result as
    ``problem=`` to several searches over the same rows to skip the upload."""
    return _kernels().prepare(X, target, W_in, b_in, W_out, b_out, W_last, b_last, device=device, block_h=block_h)


class _Level:
    """One schedule level's move set: its moves (K, 3), their kernel rows (K, 4) with sid 0, and the block
    rows one scoring of it costs per row (sum of n - start)."""

    def __init__(self, n: int, kinds: Sequence[int]):
        moves = [(k, i, j) for k in kinds for (i, j) in mv.enumerate_moves(n, k)]
        self.moves = np.asarray(moves, dtype=np.int64).reshape(len(moves), 3)
        self.K = len(moves)
        self.rows = np.zeros((self.K, 4), dtype=np.int32)
        self.rows[:, 1:] = self.moves
        self.blocks = int((n - np.minimum(self.moves[:, 1], self.moves[:, 2])).sum()) if self.K else 0
        self.adjacent_only = tuple(kinds) == (mv.ADJACENT,)


class _Search:
    """Host-side state of one search (the reference loop's local variables)."""

    def __init__(self, sid: int, oi: List[int], oo: List[int], seed: int, kicks: int):
        self.sid, self.oi, self.oo = sid, list(oi), list(oo)
        self.rng = mv.SplitMix64(seed)
        self.visited = {mv.ordering_hash(oi, oo)}
        self.level, self.kicks_left = 0, kicks
        self.cur = float("inf")
        self.out = SearchOutcome(list(oi), list(oo), float("inf"))
        self.done = False

    def finish(self, why: str) -> None:
        self.out.stopped, self.done = why, True

    def note_best(self) -> None:
        if self.cur < self.out.loss:
            self.out.order_in, self.out.order_out, self.out.loss = list(self.oi), list(self.oo), self.cur


def _validate_orders(starts, Ni: int, No: int) -> int:
    if len(starts) == 0:
        raise ValueError("no starting orders given")
    n = len(starts[0][0])
    for s, (oi, oo) in enumerate(starts):
        if len(oi) != n or len(oo) != n:
            raise ValueError(f"start {s}: order_in/order_out must both have {n} entries, got {len(oi)}/{len(oo)}")
        for name, o, hi in (("order_in", oi, Ni), ("order_out", oo, No)):
            bad = [int(v) for v in o if not 0 <= int(v) < hi]
            if bad:
                raise ValueError(f"start {s}: {name} has piece indices outside [0, {hi}): {bad[:5]}")
    return n


def device_multi_search(
    scorer,
    X: torch.Tensor,
    target: torch.Tensor,
    W_in, b_in, W_out, b_out, W_last, b_last,
    starts: Sequence[Tuple[Sequence[int], Sequence[int]]],
    *,
    seeds: Union[int, Sequence[int]] = 0,
    schedule: Sequence[Sequence[int]] = DEFAULT_SCHEDULE,
    stop_loss: float = 0.0,
    max_rounds: int = 10_000,
    kicks: int = 0,
    time_limit: Optional[float] = None,
    progress: Optional[Callable[[int, str, float], None]] = None,
    multi: bool = False,
    should_stop: Optional[Callable[[], bool]] = None,
    precision: str = "fp32",
    stop_when_exact: bool = False,
    device=None,
    problem=None,
    block_r: Optional[int] = None,
    num_warps: Optional[int] = None,
    stats: Optional[Dict[str, float]] = None,
) -> List[SearchOutcome]:
    """Run one local search per start (a list of (order_in, order_out)), all advanced together, each with
    the semantics of ``search.local_search`` (docs/SEARCH.md) and its own kick ``seeds`` (one int for all,
    or one per start). Returns one SearchOutcome per start, in order.

    ``scorer`` is accepted for the signature of ``local_search`` (its ``device``, if any, is used; nothing
    else). ``precision``: "fp32" (default), "tf32", "tf32x3" or "bf16" (see the module docstring).
    ``should_stop`` is called once per round; True ends every search as "interrupted". ``stop_when_exact``:
    the first search to reach ``stop_loss`` ends the others as "superseded". ``problem``: a
    ``prepare_problem`` result for these rows (skips the upload). ``block_r``/``num_warps``: launch knobs.
    ``stats`` (a dict, filled in): launches, syncs (D2H copies), uploads, lockstep rounds, seconds.
    """
    ks = _kernels()
    CALLS["device_multi_search"] += 1
    t0 = time.perf_counter()
    if precision not in ks.PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(ks.PRECISIONS)}, got {precision!r}")
    if device is None:
        device = getattr(scorer, "device", None)
    prob = problem if problem is not None else prepare_problem(X, target, W_in, b_in, W_out, b_out, W_last, b_last, device=device)
    n = _validate_orders(starts, prob.Ni, prob.No)
    S = len(starts)
    seed_list = [int(seeds)] * S if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
    if len(seed_list) != S:
        raise ValueError(f"{len(seed_list)} seeds for {S} starts")
    dev, R = prob.device, prob.R
    st_all = [_Search(s, [int(v) for v in oi], [int(v) for v in oo], seed_list[s], kicks) for s, (oi, oo) in enumerate(starts)]
    levels = [_Level(n, kinds) for kinds in schedule]
    lowp = precision != "fp32"
    counters = dict(launches=0, syncs=0, uploads=0, lockstep_rounds=0)

    cols = max(n, 1)  # the kernel never sees an empty order tensor
    h_orders = np.zeros((2, S, cols), dtype=np.int32)  # in- and out-pieces of every search, one copy up
    d_orders = torch.zeros((2, S, cols), dtype=torch.int32, device=dev)
    h_in, h_out = h_orders[0], h_orders[1]
    d_in, d_out = d_orders[0], d_orders[1]  # contiguous views
    prefix = ks.new_prefix(prob, S, n)
    if block_r is None and not prob.interpret:
        # One row tiling for every launch of this search, whatever the launch's size: a candidate's loss (its
        # per-tile partial sums) then has the same bits alone or beside other searches' candidates.
        block_r = 32 if prob.R_PAD <= 256 else 64
    knobs = dict(block_r=block_r, num_warps=num_warps)

    def set_order(st: _Search, oi, oo) -> None:
        st.oi, st.oo = list(oi), list(oo)
        h_in[st.sid, :n], h_out[st.sid, :n] = st.oi, st.oo

    def upload_orders() -> None:
        d_orders.copy_(torch.from_numpy(h_orders))
        counters["uploads"] += 1

    def forward(items: List[Tuple[_Search, int]], want_loss: bool) -> Optional[np.ndarray]:
        """Advance the prefixes of these searches from their start positions (one launch); the losses of
        their orders are copied back only when wanted (one D2H)."""
        if not items:
            return None
        upload_orders()
        rows = torch.tensor([[st.sid, ks.FORWARD, p, p] for st, p in items], dtype=torch.int32).to(dev)
        counters["uploads"] += 1
        losses = ks.forward_rows(prob, prefix, d_in, d_out, rows, **knobs)
        counters["launches"] += 1
        if not want_loss:
            return None
        counters["syncs"] += 1
        return losses.cpu().numpy()

    table_cache: Dict[tuple, Tuple[torch.Tensor, torch.Tensor, int]] = {}

    def round_table(active: List[_Search]):
        """The round's move rows (K, 4) and each row's slot in the padded (len(active), Kmax) loss matrix,
        uploaded together in one copy (cached per (search, level) combination)."""
        key = tuple((st.sid, st.level) for st in active)
        hit = table_cache.get(key)
        if hit is not None:
            return hit
        kmax = max(levels[st.level].K for st in active)
        parts, slots = [], []
        for r, st in enumerate(active):
            lv = levels[st.level]
            rows = lv.rows.copy()
            rows[:, 0] = st.sid
            parts.append(rows.ravel())
            slots.append(r * kmax + np.arange(lv.K, dtype=np.int32))
        K = sum(levels[st.level].K for st in active)
        buf = torch.from_numpy(np.concatenate(parts + slots).astype(np.int32)).to(dev)
        counters["uploads"] += 1
        hit = (buf[: 4 * K].view(K, 4), buf[4 * K:].long(), kmax)
        if len(table_cache) >= 16:
            table_cache.clear()
        table_cache[key] = hit
        return hit

    try:
        for st in st_all:
            set_order(st, st.oi, st.oo)
        init = forward([(st, 0) for st in st_all], want_loss=True)
        for st, loss in zip(st_all, init):
            st.cur = st.out.loss = float(loss)

        while True:
            stop_now = bool(should_stop()) if should_stop is not None else False
            # ---- loop head of every search (reference order of tests); kicks batched per pass ----------
            pending = [st for st in st_all if not st.done]
            ready: List[_Search] = []
            while pending:
                kicked: List[Tuple[_Search, int, int]] = []
                for st in pending:
                    while True:
                        if st.cur <= stop_loss:
                            st.finish("exact")
                        elif st.out.rounds >= max_rounds:
                            st.finish("max_rounds")
                        elif time_limit is not None and time.perf_counter() - t0 > time_limit:
                            st.finish("time_limit")
                        elif stop_now:
                            st.finish("interrupted")
                        elif st.level >= len(levels):
                            if st.kicks_left <= 0 or n < 3:
                                st.finish("local_optimum")
                            else:
                                st.kicks_left -= 1
                                while True:
                                    i, j = st.rng.next() % n, st.rng.next() % n
                                    if abs(i - j) < 2:
                                        continue
                                    ki, ko = mv.apply_move(st.oi, st.oo, mv.KICK, i, j)
                                    if mv.ordering_hash(ki, ko) not in st.visited:
                                        break
                                set_order(st, ki, ko)
                                st.visited.add(mv.ordering_hash(ki, ko))
                                kicked.append((st, i, j))
                        elif levels[st.level].K == 0:
                            st.out.rounds += 1
                            st.level += 1
                            continue
                        else:
                            ready.append(st)
                        break
                if kicked:
                    losses = forward([(st, min(i, j)) for st, i, j in kicked], want_loss=True)
                    for (st, i, j), loss in zip(kicked, losses):
                        st.cur = float(loss)
                        st.out.history.append((st.out.rounds, mv.KICK, i, j, st.cur, 0))
                        st.note_best()  # a kick can land lower; best-so-far follows it (as the reference)
                        st.level = 0
                pending = [st for st, _, _ in kicked]
            if stop_when_exact and any(st.done and st.out.stopped == "exact" for st in st_all):
                for st in st_all:
                    if not st.done:
                        st.finish("superseded")
                break
            active = [st for st in ready if not st.done]
            if not active:
                break
            counters["lockstep_rounds"] += 1

            # ---- one scoring launch for every active search, one copy back ----------------------------
            rows, slots, kmax = round_table(active)
            losses = ks.score_moves(prob, prefix, d_in, d_out, rows, precision=precision, **knobs)
            counters["launches"] += 1
            padded = torch.full((len(active) * kmax,), float("inf"), dtype=torch.float64, device=dev)
            padded.index_copy_(0, slots, losses)
            vals, idx = padded.view(len(active), kmax).min(dim=1)  # first minimum: ties -> lowest index
            want_all = [st for st in active if multi and levels[st.level].adjacent_only]
            offs, o = {}, 0
            for st in active:
                offs[st.sid] = o
                o += levels[st.level].K
            parts = [vals, idx.to(torch.float64)]
            parts += [losses[offs[st.sid]: offs[st.sid] + levels[st.level].K] for st in want_all]
            back = torch.cat(parts).cpu().numpy()
            counters["syncs"] += 1
            A = len(active)
            best_l, best_i = back[:A], back[A: 2 * A].astype(np.int64)
            seg, o = {}, 2 * A
            for st in want_all:
                seg[st.sid] = back[o: o + levels[st.level].K]
                o += levels[st.level].K
            if lowp:  # re-score each search's chosen candidate in fp32: decisions use fp32 losses only
                best_rows = torch.from_numpy(np.stack([
                    np.array([st.sid, *levels[st.level].moves[best_i[r]]], dtype=np.int32) for r, st in enumerate(active)
                ])).to(dev)
                best_l = ks.score_moves(prob, prefix, d_in, d_out, best_rows, precision="fp32", **knobs).cpu().numpy()
                counters["launches"] += 1
                counters["syncs"] += 1
                counters["uploads"] += 1

            # ---- decisions (the reference's rules) -----------------------------------------------------
            accepted, combos = [], []
            for r, st in enumerate(active):
                lv = levels[st.level]
                st.out.rounds += 1
                st.out.candidates_scored += lv.K
                st.out.block_rows += lv.blocks * R
                bl = float(best_l[r])
                if not improves(bl, st.cur):
                    st.level += 1
                    continue
                k, i, j = (int(v) for v in lv.moves[best_i[r]])
                ni, no = mv.apply_move(st.oi, st.oo, k, i, j)
                entry = dict(st=st, applied=[(k, i, j)], order=(ni, no), start=min(i, j), loss=bl, K=lv.K, kind=k)
                if multi and lv.adjacent_only:
                    combo = _combine_adjacent(lv.moves, seg[st.sid], st.cur)
                    if len(combo) > 1:
                        ci, co = st.oi, st.oo
                        for (_, a, b) in combo:
                            ci, co = mv.apply_move(ci, co, mv.ADJACENT, a, b)
                        entry["combo"] = (combo, (ci, co), min(a for _, a, _ in combo))
                        combos.append(entry)
                accepted.append(entry)
            if combos:  # evaluate every combination with one forward launch and one copy back
                for e in combos:
                    set_order(e["st"], *e["combo"][1])
                cls = forward([(e["st"], e["combo"][2]) for e in combos], want_loss=True)
                for e, cl in zip(combos, cls):
                    e["st"].out.block_rows += n * R
                    cl = float(cl)
                    if improves(cl, e["loss"]):  # the combined order stands; its prefixes are already there
                        e["applied"], e["order"], e["loss"], e["done_fwd"] = e["combo"][0], e["combo"][1], cl, True
                    else:  # back to the best single move, forward again from the combination's first position
                        e["start"] = e["combo"][2]
            updates = []
            for e in accepted:
                st = e["st"]
                set_order(st, *e["order"])
                if not e.get("done_fwd"):
                    updates.append((st, e["start"]))
            forward(updates, want_loss=False)  # no copy back: the next round's launch queues behind it
            for e in accepted:
                st = e["st"]
                st.visited.add(mv.ordering_hash(st.oi, st.oo))
                st.cur = e["loss"]
                for (k, i, j) in e["applied"]:
                    st.out.history.append((st.out.rounds, k, i, j, st.cur, e["K"]))
                st.note_best()
                st.level = 0
                if progress is not None:
                    progress(st.out.rounds, mv.KIND_NAMES[e["kind"]], st.cur)
    except KeyboardInterrupt:
        for st in st_all:
            if not st.done:
                st.finish("interrupted")
    for st in st_all:
        st.note_best()
    if stats is not None:
        stats.update(counters, seconds=time.perf_counter() - t0, searches=S, precision=precision)
    return [st.out for st in st_all]


def device_local_search(
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
    should_stop: Optional[Callable[[], bool]] = None,
    **options,
) -> SearchOutcome:
    """Drop-in for ``search.local_search`` (same arguments and result) running on the device; extra keyword
    ``options`` go to :func:`device_multi_search` (precision, device, problem, block_r, num_warps, stats)."""
    CALLS["device_local_search"] += 1
    return device_multi_search(
        scorer, X, target, W_in, b_in, W_out, b_out, W_last, b_last, [(order_in, order_out)], seeds=seed,
        schedule=schedule, stop_loss=stop_loss, max_rounds=max_rounds, kicks=kicks, time_limit=time_limit,
        progress=progress, multi=multi, should_stop=should_stop, **options,
    )[0]
