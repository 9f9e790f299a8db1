"""order(): the execution order of the paired blocks, found by search and scored against ``pred``.

Pipeline: seeds (||W_out||_F ascending/descending, delta-norm on the data, sequential greedy), the paper's
Bradley-Terry ranking from pairwise swap comparisons, then local search (docs/SEARCH.md) from the best start,
scored on a row subsample with prefix-activation caching; the final order is verified on every row.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import moves as mv
from . import native as _native
from ._lazy import torch
from .backends import get_scorer, round_gflop
from .cancel import INTERRUPTED, TIME_LIMIT, CancelToken, Cancelled
from .pairing import PairResult, pair
from .puzzle import Puzzle, _as_numpy
from .reference import final_sse
from .search import DEFAULT_SCHEDULE, local_search, local_search_native

EPS32 = float(np.finfo(np.float32).eps)
# progress(BEST, run name, mse): a run found a new best order (mse on the search rows); the searches themselves
# report progress(round, move, sse) per round and progress(-1, label, seconds) while the C++ loop runs
BEST = -2
#: Search rows of each descent of the iterated local search (tame nets; of the 256, its result re-scored on all
#: of them before it is kept): half the rows, twice the descents in a budget (NOTES.md "Tame nets").
ILS_ROWS = 128
#: Search rows of the short polish after each widening beam of a chaotic net (of the 256): near the answer
#: one wrong move costs such a net MSE ~0.2 (var(pred) ~0.6), so a few rows rank the moves, and a full
#: swap+insert round at N=48 costs ~3 s on 256 rows (NOTES.md "Tame nets ...; chaotic N=48: cheaper polish").
WIDEN_POLISH_ROWS = 64
#: Tail beams after each widening beam of a chaotic net, (back, width factor) in turn: re-run the beam from
#: ``back`` depths before the stall of the best beam order's probe loss (``beam.stall_depth``), ``factor`` x the
#: stage's width; skipped when the probe loss fell by less than TAIL_MIN_FALL of its value at depth 0 along that
#: order, and when it would cost more than the next stage's whole beam (factor (N-k)^2 > 2 N^2: a beam's work
#: grows with width x the square of the depths it builds) (NOTES.md "Tail beams").
TAIL_STEPS = ((8, 4), (16, 4))
TAIL_MIN_FALL = 0.25
#: Deep tame networks (not easy, not explosive, at least DEEP_TAME_BLOCKS blocks): the output loss's basin
#: around the answer is tiny there (wd N=48: 4 random insertions from the answer already descend to another
#: local optimum) while the path search's (the sum of probe losses over depths) holds 8 insertions (Kendall
#: 181); so the plan starts with the probe beam and a path search over the whole order (from depth 0 only) on
#: PATH_ROWS of the probe rows (250 rows were too few; on 500, one of three row draws solved wd N=48 seed 7001
#: from the polished beam order and two were at Kendall 12 and 40 when stopped; a path round cost ~20 s there
#: on 2 cores at 500 rows with the quadratic probe, ~10 s with PATH_FEATURES, 4x less than on all 2,000 rows)
#: (NOTES.md "Deep tame nets: the path search").
DEEP_TAME_BLOCKS = 40
PATH_ROWS = 500
#: The deep tame path search reads the probe with linear features and moves blocks only (no re-pairing): on
#: wd N=48 seed 7001 from the polished beam order, 4 of 4 row draws of 500 rows ended 0-3 insertions from the
#: answer (the quadratic probe: exact on the one draw run to the end on 2 cores), at 0.2 ms per probe instead
#: of 0.7; with re-pairing moves the product's first draw ended at a worse optimum (NOTES.md "The linear path").
PATH_FEATURES = "linear"
#: ... with a candidate list: after a full round (every move scored) only the PATH_LIST_KEEP moves that improved
#: most are re-scored, until none of them improves (then a full round again; it still ends at a local optimum of
#: the draw). Draw 0 from the polished beam order, one thread: wd N=48 seed 7007 the same end in 269 s instead of
#: 487 s; 7008 a better one (J 1.557 vs 1.586, 5 insertions from the answer vs 13) in 250 s instead of 330 s;
#: whole solves, one thread each: 7008 exact in 768 s (before: not in 1200 s), fresh seed 7009 exact in 683 s
#: (before: not in 900 s) (NOTES.md "A candidate list for the path search").
PATH_LIST_KEEP = 64
#: On a deep tame net whose pairing is not confident, each path search over the blocks is followed by one over
#: the pairing alone (swaps of out pieces), then the blocks again, at most PATH_PAIR_TURNS times: from the true
#: order with the fused pairing, the path loss over re-pairing moves alone fixed 2 of 2 wrong pairs on wd N=48
#: seed 7003 and 9 of 9 on 7002, while the block moves alone drifted 12 Kendall from the answer on 7003 (NOTES.md
#: "Re-pairing on the path").
PATH_PAIR_TURNS = 4
#: ... and only the PATH_PAIR_SHARE least confident in pieces (by their pairing margin) may be re-paired there:
#: on the wd N=48 nets whose fused pairing is wrong (7002, 7003, 7005, 7006) the wrong pairs rank 0-23 of 48 by
#: margin, 25 of 29 of them among the first quarter; unlimited re-pairing took wd N=48 seed 7007 (every pair
#: right) to 2 wrong pairs.
PATH_PAIR_SHARE = 0.25
#: A network is explosive (chaotic: its output loss explodes away from the answer) when the median seed's MSE
#: exceeds EXPLOSIVE_RATIO x var(pred), from DEEP_TAME_BLOCKS blocks on DEEP_EXPLOSIVE_RATIO x. Why two: the
#: ratio of a chaotic net grows with depth. Measured on generated d/h 48/96 nets (NOTES.md "Which plan"): at
#: N=48, fast/paper 1.7e3-9e18 (18 nets), weight decay 1.2-225 (8), brief 36-75 (2); at N=32, fast/paper 22-2.5e5
#: (12 nets; the chaotic plan's beams solve the two at 22-32, the tame plan is not measured there), weight decay
#: 0.86-8. The single threshold of 10 sent 5 of those 8 wd N=48 nets to the chaotic plan, which never runs the
#: whole-order path search that solves deep tame nets.
EXPLOSIVE_RATIO = 10.0
DEEP_EXPLOSIVE_RATIO = 500.0
#: The pairing beam (stage "pairbeam"): a probe beam that picks each block's out piece among all unused ones, so
#: the pairing is built with the order. For tame nets whose pairing comes from the data (``data_fo``: brief or
#: plain-SGD training, weights near init, no pairing signal in them). Along the true prefix of such nets the true
#: out piece gives the true next in piece the lowest probe loss at every depth (brief N=32, two nets, 32 of 32
#: depths each), so a beam that keeps the pieces pairable builds pairing and order together (NOTES.md "Tame
#: nets: the pairing beam"). The widths in turn, each beam polished, until exact or the stage's share ends:
#: width 4 (~20 s at N=32 on 2 cores) paired 28-30 of 32 on two nets where width 8 (~40 s) paired all 32.
PAIR_BEAM_WIDTHS = (4, 8, 16)
#: Rounds of the output-loss polish after each pairing beam: a beam order with every pair right was exact within
#: 2-15 rounds on the brief/sgd N=32 nets measured but one (33); a miss's polish ran 15-37 rounds to a local
#: optimum that no later stage mended, and on brief seed 7106 it left the width-8 beam too little of the share
#: (with the cap: exact in 108.5 s; the 33-round net is exact through width 8, 96.2 s instead of 65.8 s).
PAIR_BEAM_POLISH_ROUNDS = 24
#: The stages order() can run (``stages=``); "auto" picks a plan of them from the seeds.
STAGES = ("search", "ils", "refit", "pairbeam", "probe", "probe2", "probe4", "probe+", "probe++")

log = logging.getLogger("unshuffle")


@dataclass
class OrderResult:
    """Result of ``order()``. ``order`` lists W_in stack indices in execution order; ``order_out`` the W_out
    stack index of each position (equal to the pairing's unless the search re-paired blocks).
    ``seed_mse`` maps each seed (and 'bradley_terry') to its MSE on the search rows; ``history`` lists
    (round, move kind, i, j, mse after the move, candidates scored that round)."""

    order: List[int]
    order_out: List[int]
    mse: float
    seed_mse: Dict[str, float]
    start: str
    history: List[tuple]
    rounds: int
    candidates_scored: int
    block_rows: int
    stopped: str
    backend: str
    search_rows: int
    repaired: bool
    timings: Dict[str, float] = field(default_factory=dict)
    seed_orders: Dict[str, List[int]] = field(default_factory=dict)
    runs: List[tuple] = field(default_factory=list)  # (start seed, final mse, stopped, rounds) per restart
    # anytime diagnosis (None when exact, or when no second, independent result exists): the number of
    # positions whose block differs from the best result of another stage/start, as an estimate of how many
    # positions are wrong (docs/ORDERING.md "How close did it get")
    estimated_wrong: Optional[int] = None
    runner_up: Optional[str] = None  # the run it was compared with
    # which plan "auto" chose and why: the network's kind by its seeds ("easy", "explosive", "deep tame",
    # "tame"; docs/ORDERING.md) and the stages in plan order (``stages=`` when given)
    kind: str = ""
    plan: List[str] = field(default_factory=list)

    @property
    def moves_used(self) -> Dict[str, int]:
        counts: Dict[str, int] = {}
        for h in self.history:
            name = mv.KIND_NAMES[int(h[1])]
            counts[name] = counts.get(name, 0) + 1
        return counts


def _delta(x, W_in, b_in, W_out, b_out, a_idx, b_idx):
    """Block updates out(relu(inp(x))) for several blocks at once: (len(a_idx), R, d)."""
    hid = torch.relu(torch.einsum("rd,khd->krh", x, W_in[a_idx]) + b_in[a_idx].unsqueeze(1))
    return torch.einsum("krh,kdh->krd", hid, W_out[b_idx]) + b_out[b_idx].unsqueeze(1)


def greedy_seed(X, W_in, b_in, W_out, b_out, out_of: Sequence[int]) -> List[int]:
    """Sequential greedy: at each position, the remaining block that changes the activations least."""
    n = len(out_of)
    rem = list(range(n))
    x = X
    order = []
    oo = torch.as_tensor(list(out_of))
    while rem:
        a = torch.as_tensor(rem)
        dl = _delta(x, W_in, b_in, W_out, b_out, a, oo[a])
        k = int(torch.argmin(dl.norm(dim=2).mean(dim=1)))
        order.append(rem.pop(k))
        x = x + dl[k]
    return order


def insertion_seed(scorer, X, target, weights, out_of: Sequence[int], priority: Sequence[int],
                   token: Optional[CancelToken] = None) -> List[int]:
    """Insertion construction (NEH, from flow-shop scheduling): take blocks in ``priority`` order and insert
    each where the partial network (the blocks placed so far, in order; the others skipped) fits ``target``
    best. Every insertion position is one candidate of the scoring contract, scored from the partial
    order's cached prefixes. Needs no depth trend in the weights, which greedy_seed relies on."""
    W_in, b_in, W_out, b_out = weights[:4]
    seq = [int(priority[0])]
    for blk in priority[1:]:
        if token is not None:
            token.check()
        blk = int(blk)
        n = len(seq)
        prefix = scorer.forward_prefixes(X, seq, [out_of[a] for a in seq], W_in, b_in, W_out, b_out)
        si = torch.full((n + 1, n + 1), -1, dtype=torch.int64)
        so = si.clone()
        for pos in range(n + 1):
            tail = [blk] + seq[pos:]
            si[pos, : len(tail)] = torch.as_tensor(tail)
            so[pos, : len(tail)] = torch.as_tensor([out_of[a] for a in tail])
        losses = scorer.score(prefix, torch.arange(n + 1), si, so, *weights, target)
        pos = int(torch.argmin(losses))
        seq.insert(pos, blk)
    return seq


def seeds(X, target, weights, out_of: Sequence[int], scorer) -> Dict[str, List[int]]:
    """Every seed order (lists of W_in stack indices)."""
    W_in, b_in, W_out, b_out = weights[:4]
    oo = torch.as_tensor(list(out_of))
    fro = W_out[oo].flatten(1).norm(dim=1)
    dn = _delta(X, W_in, b_in, W_out, b_out, torch.arange(len(out_of)), oo).norm(dim=2).mean(dim=1)
    return {
        "fro_asc": torch.argsort(fro, stable=True).tolist(),
        "fro_desc": torch.argsort(-fro, stable=True).tolist(),
        "delta_norm": torch.argsort(dn, stable=True).tolist(),
        "greedy": greedy_seed(X, W_in, b_in, W_out, b_out, out_of),
    }


def fingerprint_seeds(X, weights, out_of: Sequence[int]) -> Dict[str, List[int]]:
    """Two seeds from a depth fingerprint of each paired block on the rows X (numpy float64; X and weights as
    numpy arrays or torch tensors): 'fingerprint' sorts the blocks by the sum of two ranks, that of the mean
    update norm E||u(x)|| (largest first) and that of -E<u(x), x> (largest first); 'fingerprint_rev' is the
    same order reversed (the direction is left to the seed MSE). Why: on weight-decay nets both correlate
    with the true depth at Spearman -0.6 to -0.9 (larger updates, pointing against the stream, run first),
    and the fused rank put the seed at Kendall 161-279 of 1,128 from the answer on wd N=48 nets, where every
    other seed was at 394-956, and the descent from it landed at 0.07-0.10 MSE instead of 0.13-0.40
    (NOTES.md "Tame nets: the fingerprint race"). Ties keep the lower stack index first."""
    W_in, b_in, W_out, b_out, X = (np.asarray(_as_numpy(t), dtype=np.float64) for t in (*weights[:4], X))
    oo = np.asarray(list(out_of), dtype=np.int64)
    hid = np.maximum(np.einsum("rd,ahd->arh", X, W_in, optimize=True) + b_in[:, None, :], 0.0)
    upd = np.einsum("arh,adh->ard", hid, W_out[oo], optimize=True) + b_out[oo][:, None, :]
    norm = np.linalg.norm(upd, axis=2).mean(axis=1)
    dot = np.einsum("ard,rd->a", upd, X, optimize=True) / X.shape[0]

    def rank(v):  # 0 = first; ordinal ranks, ties by stack index
        r = np.empty(len(v), dtype=np.int64)
        r[np.argsort(v, kind="stable")] = np.arange(len(v))
        return r

    key = rank(-norm) + rank(dot)  # (-norm) ascending = largest norm first; dot ascending = -<u, x> largest first
    fp = np.argsort(key, kind="stable").tolist()
    return {"fingerprint": fp, "fingerprint_rev": fp[::-1]}


def update_priority(X, weights, out_of: Sequence[int]) -> List[int]:
    """Blocks by mean update norm on X, largest first (NEH places the longest jobs first)."""
    W_in, b_in, W_out, b_out = weights[:4]
    oo = torch.as_tensor(list(out_of))
    dn = _delta(X, W_in, b_in, W_out, b_out, torch.arange(len(out_of)), oo).norm(dim=2).mean(dim=1)
    return torch.argsort(-dn, stable=True).tolist()


def bradley_terry(wins: np.ndarray, iters: int = 200, prior: float = 0.5) -> np.ndarray:
    """Bradley-Terry strengths from a win-count matrix (wins[u, v]: times u should precede v), fitted with
    Hunter's MM algorithm; ``prior`` pseudo-wins against every other item keep it finite."""
    n = wins.shape[0]
    W = wins + prior * (1 - np.eye(n))
    games = W + W.T
    p = np.ones(n)
    for _ in range(iters):
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1)
        p_new = W.sum(axis=1) / denom
        p_new /= p_new.sum()
        if np.allclose(p_new, p, rtol=1e-10, atol=0):
            p = p_new
            break
        p = p_new
    return p


def bt_order(scorer, X, target, weights, order_in, order_out) -> List[int]:
    """The paper's ranking step: every pair of positions is compared by the loss of swapping the two
    blocks; the block that should come first wins. Order by Bradley-Terry strength (strongest first)."""
    W_in, b_in, W_out, b_out, W_last, b_last = weights
    n = len(order_in)
    prefix = scorer.forward_prefixes(X, order_in, order_out, W_in, b_in, W_out, b_out)
    cur = final_sse(prefix[-1], W_last, b_last, target)
    starts, si, so, moves = mv.generate_candidates(order_in, order_out, (mv.ADJACENT, mv.SWAP))
    losses = scorer.score(prefix, torch.from_numpy(starts), torch.from_numpy(si), torch.from_numpy(so), *weights, target)
    wins = np.zeros((n, n))
    for (k, i, j), loss in zip(moves.tolist(), losses.tolist()):
        u, v = order_in[i], order_in[j]  # u currently before v
        if loss < cur:
            wins[v, u] += 1
        else:
            wins[u, v] += 1
    strength = bradley_terry(wins)
    return [int(u) for u in np.argsort(-strength, kind="stable")]


def explosive_ratio(n_blocks: int) -> float:
    """The median-seed MSE / var(pred) above which an ``n_blocks`` network counts as explosive."""
    return DEEP_EXPLOSIVE_RATIO if n_blocks >= DEEP_TAME_BLOCKS else EXPLOSIVE_RATIO


def least_confident(pairing, share: float) -> Optional[List[bool]]:
    """Flags (by in piece) on the ``share`` of in pieces with the lowest pairing margin (the lower of the row and
    column margins; at least 2), None when ``pairing`` carries no margins (then every piece may re-pair)."""
    mr, mc = getattr(pairing, "margin_row", None), getattr(pairing, "margin_col", None)
    if mr is None or mc is None or len(mr) == 0:
        return None
    m = np.minimum(np.asarray(mr, np.float64), np.asarray(mc, np.float64))
    keep = np.argsort(m, kind="stable")[: max(2, int(round(share * len(m))))]
    flags = [False] * len(m)
    for a in keep:
        flags[int(a)] = True
    return flags


def search_threshold(pred: torch.Tensor) -> float:
    """Per-value error below which a search-row residual counts as float32 rounding (32 ulp at the output
    scale; a wrong order on the public puzzle is off by >1e-3 RMS, the right one by ~2e-7)."""
    return 32 * EPS32 * max(1.0, float(abs(pred).max()))  # abs(): torch tensor or numpy array


def order(
    puzzle: Puzzle,
    pairing: Optional[PairResult] = None,
    *,
    backend: str = "auto",
    seed: int = 0,
    search_rows: int = 256,
    bt: bool = False,
    repair: bool = True,
    kicks: int = 30,
    max_rounds: int = 10_000,
    time_limit: Optional[float] = None,
    multi: bool = True,
    starts: int = 3,
    native: bool = True,
    insertion_trigger: float = 0.01,
    progress=None,
    token: Optional[CancelToken] = None,
    on_best=None,
    strategy: str = "auto",
    probe_rows: int = 2000,
    beam_width: int = 16,
    beam_screen: Optional[int] = None,
    stages: Optional[Sequence[str]] = None,
    start: Optional[Tuple[Sequence[int], Sequence[int]]] = None,
) -> OrderResult:
    """Find the execution order of the paired blocks.

    ``search_rows`` rows (drawn with ``seed``) score the search (the answer is verified on every row by
    solve()). ``bt`` adds the paper's Bradley-Terry ranking as one more seed (off by default: it scores all
    N(N-1)/2 swaps, ~15x the work of the multi-accept search that replaces it). ``repair`` lets the search
    re-pair blocks (needed when the weight-only pairing is wrong). ``multi`` applies every improving,
    non-overlapping adjacent swap of a round at once when that beats the best single swap. ``starts`` is how
    many distinct seeds (best MSE first) the search may start from before it gives up at a local optimum.
    ``kicks`` random insertions per start escape local optima (docs/SEARCH.md). With the cpp backend the
    round loop runs in C++ (``native``); other backends use the Python loop with their scorer. The insertion
    seed is built when the best cheap seed's MSE exceeds ``insertion_trigger`` x var(pred) (0 = always).

    ``token`` (a ``CancelToken``; one per solve) stops every phase: a cancel or a passed deadline ends the
    search with the best order so far and ``stopped`` 'interrupted' / 'time_limit' (also when a later
    restart, not the best one, was the one stopped). ``time_limit`` adds a deadline of its own. A stop
    before any order exists raises ``Cancelled``. ``on_best(order_in, order_out)`` is called whenever a
    better order is known (best seed, then each restart's result), so a caller can report it if stopped.

    ``strategy`` (docs/ORDERING.md): "search" is the output-loss local search from the seeds above; "probe"
    builds orders with the probe beam (``beam_width`` prefixes, ``probe_rows`` rows) and repairs them with the
    path search, then polishes with the output loss; "auto" runs both, the probe stages first when the seeds
    show a network whose output loss explodes away from the answer (median seed MSE > ``explosive_ratio`` x
    var(pred): 10, or 500 from ``DEEP_TAME_BLOCKS`` blocks on), and
    then wider beams while time is left, each followed by tail beams re-run from a few depths before where its
    probe loss stalls (tame networks also get the iterated local search "ils" and the
    re-pairing "refit" stages, and, when their seeds are poor, a search that first races descents from the
    fingerprint seed and the best seed: ``fingerprint_seeds``); "seeds" returns
    the best seed without any search. The probe stages need the C++ core. ``beam_screen`` rows (default a
    quarter of the probe rows; 0 = off) screen each beam depth's candidates before the 16 x width best of them
    are probed on all rows. ``stages`` replaces the plan "auto" would choose by an explicit list of stage names
    (``STAGES``: search, ils, refit, pairbeam, probe, probe2, probe4, probe+, probe++), run in that order with
    the same time shares. When the pairing came from the data (``PairResult.method`` "data_fo") on a net that
    is neither easy nor explosive, "auto" runs the pairing beam ("pairbeam": pairing and order built together)
    before its plan.

    ``start`` = (order_in, order_out), stack indices (``Puzzle.blocks_of`` turns piece ids into them): a warm
    start, e.g. the best order of an earlier solve that ran out of time. It is scored as the run "start" and,
    under the "auto" strategy, the plan begins with the iterated local search from the best order so far
    (the stages near the answer), then goes on as it would have."""
    timings: Dict[str, float] = {}
    if stages is not None:  # before any work
        bad = [s_ for s_ in stages if s_ not in STAGES]
        if bad:
            raise ValueError(f"unknown stage(s) {bad} (known: {', '.join(STAGES)})")
        if any(s_.startswith("probe") or s_ == "pairbeam" for s_ in stages) and not _native.available():
            raise ValueError("the probe stages need the C++ core (unshuffle._core), which is not built")
    if start is not None:  # before any work
        start = _check_start(start, puzzle.n_blocks)
    if token is None:
        token = CancelToken(time_limit)
    elif time_limit is not None:
        token = token.limited(time_limit)
    if pairing is None:
        pairing = pair(puzzle)
    scorer = get_scorer(backend, work=round_gflop(puzzle.n_blocks, puzzle.d, puzzle.h, min(search_rows, puzzle.n_rows)))
    # cpp + native: numpy arrays and the C++ core all the way (torch is not imported); otherwise torch tensors.
    fast = scorer.name == "cpp" and native
    idx = _native.search_rows(puzzle.n_rows, search_rows, seed)  # = torch.randperm(R, manual_seed(seed))[:n]
    if fast:
        a = puzzle.arrays
        X, target = a.X[idx], a.pred[idx]
        weights = (a.W_in, a.b_in, a.W_out, a.b_out, a.W_last, a.b_last)
    else:
        idx = torch.from_numpy(idx)
        X, target = puzzle.X[idx].contiguous(), puzzle.pred[idx].contiguous()
        weights = (puzzle.W_in, puzzle.b_in, puzzle.W_out, puzzle.b_out, puzzle.W_last, puzzle.b_last)
    out_of = list(pairing.out_of)
    nvals = X.shape[0] * puzzle.k

    def mse_of(o_in, o_out):
        if fast:
            return float(_native.order_losses(X, target, weights, [(o_in, o_out)])[0]) / nvals
        x = scorer.forward_prefixes(X, o_in, o_out, *weights[:4])[-1]
        return final_sse(x, puzzle.W_last, puzzle.b_last, target) / nvals

    def torch_inputs():  # Bradley-Terry works on torch tensors
        if not fast:
            return X, target, weights
        return torch.from_numpy(X), torch.from_numpy(target), tuple(torch.from_numpy(w) for w in weights)

    t = time.perf_counter()
    token.check()
    if fast:
        cands, first = _native.seed_orders(X, weights, out_of)
        losses = _native.order_losses(X, target, weights, [(o, [out_of[a] for a in o]) for o in cands.values()])
        seed_mse = {name: float(v) / nvals for name, v in zip(cands, losses)}
        var = _native.pred_variance(target)
    else:
        cands = seeds(X, target, weights, out_of, scorer)
        seed_mse = {name: mse_of(o, [out_of[a] for a in o]) for name, o in cands.items()}
        var = float(target.double().var(dim=0).mean())
    # The insertion seed costs ~N^3/6 block passes: build it only when the cheap seeds are poor (MSE above
    # 1% of pred's variance; on the public puzzle greedy is at 0.2% and search finishes it in one round).
    if min(seed_mse.values()) > insertion_trigger * var:
        try:
            if fast:
                cands["insertion"] = _native.insertion_seed(X, target, weights, out_of, _native.update_priority(first))
            else:
                cands["insertion"] = insertion_seed(scorer, X, target, weights, out_of,
                                                    update_priority(X, weights, out_of), token=token)
            seed_mse["insertion"] = mse_of(cands["insertion"], [out_of[a] for a in cands["insertion"]])
        except Cancelled:
            pass  # the cheap seeds stand; the search below returns at once with the stop reason
    timings["seeds"] = time.perf_counter() - t
    if on_best is not None:
        b = min(seed_mse, key=seed_mse.get)
        on_best(list(cands[b]), [out_of[a] for a in cands[b]])
    if bt and token.reason() is None:
        t = time.perf_counter()
        best_seed = min(seed_mse, key=seed_mse.get)
        o = cands[best_seed]
        cands["bradley_terry"] = bt_order(scorer, *torch_inputs(), o, [out_of[a] for a in o])
        seed_mse["bradley_terry"] = mse_of(cands["bradley_terry"], [out_of[a] for a in cands["bradley_terry"]])
        timings["bradley_terry"] = time.perf_counter() - t
    t = time.perf_counter()
    schedule = DEFAULT_SCHEDULE if repair else DEFAULT_SCHEDULE[:2]
    stop = nvals * search_threshold(target) ** 2
    stats = dict(rounds=0, scored=0, block_rows=0)
    runs: List[tuple] = []
    state = dict(best=None, start=None, stopped_by=None)  # best SearchOutcome so far (by search-rows loss)
    results: List[tuple] = []  # (loss, name, order_in, order_out) of every run, for the anytime diagnosis

    def tally(res):  # the work of a run, counted whether or not it is kept
        stats["rounds"] += res.rounds
        stats["scored"] += res.candidates_scored
        stats["block_rows"] += res.block_rows

    def consider(res, name):
        # The search rows' stop test is 32 float32 ulps per value; a chaotic network's own rounding noise can
        # exceed that while the order is right, so a small loss is settled by the all-rows verification.
        if res.stopped != "exact" and res.loss <= 1e6 * stop:
            from .solver import verify  # (solver imports this module)

            if verify(puzzle, res.order_in, res.order_out).exact:
                res.stopped = "exact"
        tally(res)
        log.info("run %s: MSE %.4g (%s, %d rounds)", name, res.loss / nvals, res.stopped, res.rounds)
        runs.append((name, res.loss / nvals, res.stopped, res.rounds))
        results.append((res.loss, name, list(res.order_in), list(res.order_out)))
        if state["best"] is None or res.loss < state["best"].loss:
            state["best"], state["start"] = res, name
            if on_best is not None:
                on_best(list(res.order_in), list(res.order_out))
            if progress is not None:
                progress(BEST, name, res.loss / nvals)
        if res.stopped in (TIME_LIMIT, INTERRUPTED):
            state["stopped_by"] = res.stopped

    def local(o_in, o_out, tok, rows=None, **over):
        """The output-loss local search (C++, device or Python loop) from one order, under ``tok``; on the
        first ``rows`` search rows only when given (the rows are a random draw, so a prefix of them is one
        too), its loss then re-scored on all of them."""
        n_all = int(X.shape[0])
        r = n_all if rows is None else max(1, min(int(rows), n_all))
        Xr, Tr = (X, target) if r == n_all else (X[:r], target[:r])
        kw = dict(schedule=schedule, stop_loss=stop * r / n_all, max_rounds=max_rounds, kicks=kicks, seed=seed,
                  progress=progress, multi=multi, token=tok)
        kw.update(over)
        if fast:  # the whole round loop in C++ (same trajectory, no Python per round)
            res = local_search_native(Xr, Tr, *weights, list(o_in), list(o_out), **kw)
        elif scorer.name == "triton" and native:  # the whole round loop on the device (unshuffle.gpu_search)
            from .gpu_search import device_local_search

            kw.pop("token")
            res = device_local_search(scorer, Xr, Tr, *weights, list(o_in), list(o_out),
                                      time_limit=tok.remaining(), should_stop=lambda: tok.reason() is not None, **kw)
        else:
            res = local_search(scorer, Xr, Tr, *weights, list(o_in), list(o_out), **kw)
        if r < n_all:  # back to the losses of all search rows (history: scaled, as an estimate)
            res.history = [(h[0], h[1], h[2], h[3], h[4] * n_all / r, h[5]) for h in res.history]
            res.loss = mse_of(res.order_in, res.order_out) * nvals
            if res.stopped == "exact" and res.loss > stop:
                res.stopped = "local_optimum"
        return res

    def exact():
        return state["best"] is not None and state["best"].stopped == "exact"

    def search_stage(tok):
        """Portfolio: search from the best seed; at a local optimum, restart from the next distinct one. On a
        tame network whose seeds are not already close (``race``) the stage first descends (no kicks) from the
        better-fitting fingerprint seed (``fingerprint_seeds``) and from the best seed by MSE, and the walk
        goes on from the lower of the two local optima: the fingerprint seed fits worse than the insertion
        seed yet lies nearer the answer (NOTES.md "Tame nets: the fingerprint race")."""
        tried = set()

        def run(name, o_in, o_out, **over):  # True when the stage is over (exact, or stopped)
            res = local(o_in, o_out, tok, **over)
            consider(res, name)
            return res.stopped in ("exact", TIME_LIMIT, INTERRUPTED)

        def from_seed(name, **over):  # each distinct seed order once
            o_in = cands[name]
            if tuple(o_in) in tried:
                return False
            tried.add(tuple(o_in))
            log.info("search %s from %s", "descent" if over.get("kicks") == 0 else "start", name)
            return run(name, o_in, [out_of[a] for a in o_in], **over)

        names = sorted(seed_mse, key=lambda k: (seed_mse[k], k))[: max(1, starts)]
        if race:
            for name_, o_ in fingerprint_seeds(X, weights, out_of).items():
                cands[name_] = o_
                seed_mse[name_] = mse_of(o_, [out_of[a] for a in o_])
            fp = min(("fingerprint", "fingerprint_rev"), key=lambda k: (seed_mse[k], k))
            if any(from_seed(name, kicks=0) for name in (fp, names[0])):  # fingerprint first; any() stops early
                return
            best = state["best"]  # (with no kicks the walk would stop where the descent did)
            if kicks > 0 and run(f"{state['start']}#walk", list(best.order_in), list(best.order_out)):
                return
        for name in names:
            if from_seed(name):
                return

    def fit_repairing(o_in, o_out):
        """order_out re-paired at once by the first-order fit around the order (``pairing.first_order_scores``,
        Hungarian on the core's assignment: scipy's takes ~0.3 s to import)."""
        from .native import linear_sum_assignment
        from .pairing import first_order_scores

        _, cols = linear_sum_assignment(first_order_scores(puzzle, o_in, o_out), maximize=True)
        return [int(cols[a]) for a in o_in]

    def ils_stage(tok):
        """Iterated local search from the best order so far: perturb it, descend with no kicks, keep the result
        only if it is better. The perturbation is k random insertions, k growing by one after every two
        failures (1 to max(3, N/6), then back to 1: small kicks first, larger ones when those keep falling back
        into the same optimum); every 4th time instead, the first-order re-pairing around the best order when
        it changes at most N/4 pairs (plain-SGD/brief nets, where the pairing is what is wrong; on Adam/wd nets
        the fit re-pairs most blocks wrongly and is skipped). Unlike the search's own kicks (a walk that goes
        on from wherever the last descent stopped) every perturbation starts from the best order. The stage
        ends after 4 x max(3, N/6) kicks in a row without a gain (each kick size tried twice since the last).
        Each descent runs on ``ILS_ROWS`` search rows. On the tame reach nets (wd N=32, true pairing) the walk
        left seed 9003 at Kendall 110 after 40 s where this solved it in 24 s (NOTES.md "Tame nets"). The descents
        keep the search's schedule (adjacent swaps first): best improvement over every kind at once returns to the
        answer more often from a few random insertions, but as the ILS's descent it solved 5 of 18 wd N=32 nets
        in 60 s where this solved 10 (NOTES.md "Warm start, and the ILS's schedule")."""
        if state["best"] is None:
            return
        rng = np.random.default_rng(seed + 104729)
        lineage = _family(state["start"])
        n, it, fails = len(out_of), 0, 0
        kmax = max(3, n // 6)
        while tok.reason() is None and not exact() and n >= 3 and fails < 4 * kmax:
            best = state["best"]
            o_in, o_out = list(best.order_in), list(best.order_out)
            kind = "kick"
            if it % 4 == 3:  # re-pair every block by the fit around the best order
                new_out = fit_repairing(o_in, o_out)
                changed = sum(a != b for a, b in zip(new_out, o_out))
                if 0 < changed <= max(2, n // 4):
                    o_out, kind = new_out, "refit"
            if kind == "kick":
                for _ in range(1 + (fails // 2) % kmax):
                    i, j = (int(v) for v in rng.choice(n, 2, replace=False))
                    o_in.insert(j, o_in.pop(i))
                    o_out.insert(j, o_out.pop(i))
            it += 1
            res = local(o_in, o_out, tok, kicks=0, rows=ILS_ROWS)
            log.info("ils %d (%s): %.4g (best %.4g)", it, kind, res.loss / nvals, best.loss / nvals)
            if res.loss < best.loss * (1 - 1e-9) or res.stopped in ("exact", INTERRUPTED):
                consider(res, f"{lineage}#ils{it}")
                fails = 0
            else:  # count the work, keep the run list short (only improvements are runs)
                tally(res)
                fails += kind == "kick"
            if res.stopped == INTERRUPTED:
                break
        log.info("ils: %d perturbations, best %.4g", it, state["best"].loss / nvals)

    def refit_stage(tok):
        """Alternate the output-loss search with a re-pairing by the first-order fit around the current order
        (``pairing.first_order_scores``). From the best order so far, then from the seeds and seeded random
        orders in turn, until exact or out of time: a chain goes on through up to 4 re-pairings without
        improvement (the fit re-pairs well only once enough positions are right)."""
        starts_ = [] if state["best"] is None else [(list(state["best"].order_in), list(state["best"].order_out))]
        starts_ += [(list(cands[k]), [out_of[a] for a in cands[k]]) for k in sorted(seed_mse, key=seed_mse.get)]
        rng = np.random.default_rng(seed)
        it = 0
        for chain in range(len(starts_) + 8):  # each start's chain, then 8 random ones (or the time share ends it)
            if tok.reason() is not None:
                return
            if chain < len(starts_):
                o_in, o_out = starts_[chain]
            else:
                o_in = [int(v) for v in rng.permutation(len(out_of))]
                o_out = [out_of[a] for a in o_in]
            best, stale = float("inf"), 0
            while stale < 4 and tok.reason() is None:
                new_out = fit_repairing(o_in, o_out)
                if new_out == o_out and best < float("inf"):
                    break
                left = tok.remaining()
                res = local(o_in, new_out, tok if left is None else tok.limited(max(2.0, left / 4)),
                            kicks=min(kicks, 1))
                consider(res, f"refit{chain}#{it}")
                it += 1
                if res.stopped in ("exact", INTERRUPTED) or exact():
                    return
                stale = 0 if res.loss < best else stale + 1
                best = min(best, res.loss)
                o_in, o_out = list(res.order_in), list(res.order_out)

    def probe_data():
        """The probe rows (``probe_rows`` of them, drawn with seed + 1) and the block weights, for the beams."""
        a = puzzle.arrays
        pidx = np.arange(puzzle.n_rows) if puzzle.n_rows <= probe_rows else _native.search_rows(
            puzzle.n_rows, probe_rows, seed + 1)
        return a.X[pidx], a.pred[pidx], (a.W_in, a.b_in, a.W_out, a.b_out)

    def screened_beam(PX, PT, pw, allowed, width, tok, prefix=None):
        """One probe beam as every stage runs it: screened on ``beam_screen`` rows (default a quarter of the probe
        rows), the 16 x ``width`` best probed on all; its candidates counted."""
        from . import beam as bm

        screen = len(PX) // 4 if beam_screen is None else beam_screen
        beam = bm.probe_beam(PX, PT, pw, allowed, width=width, prefix=prefix, token=tok, screen_rows=screen,
                             screen_keep=16 * width)
        stats["probe_candidates"] = stats.get("probe_candidates", 0) + beam.candidates
        return beam

    def pair_beam_stage(tok):
        """The pairing beam (``PAIR_BEAM_WIDTHS``): the probe beam with every out piece allowed for every in piece
        (the beam keeps the unused pieces pairable), so each block's out piece is chosen in the context of the
        prefix before it; each beam's best order is polished by the output-loss search, re-pairings included,
        and the next, wider beam runs only if that was not exact. The stages after it go on from the best order
        so far as usual."""
        from . import beam as bm

        if not _native.available():
            return
        PX, PT, pw = probe_data()
        n = len(out_of)
        allowed = bm.allowed_table(out_of, np.zeros((n, n)), extra=n - 1)  # the pairing's own out piece first
        for width in PAIR_BEAM_WIDTHS:
            if tok.reason() is not None or exact():
                return
            log.info("pairing beam, width %d, %d rows", width, len(PX))
            if progress is not None:
                progress(-1, f"pairing beam (width {width})", 0.0)
            beam = screened_beam(PX, PT, pw, allowed, width, tok)
            if not beam.orders:  # stopped midway
                return
            res = local(*beam.orders[0], tok, schedule=((mv.ADJACENT, mv.SWAP, mv.INSERT), (mv.REPAIR,)),
                        kicks=min(kicks, 2), max_rounds=min(max_rounds, PAIR_BEAM_POLISH_ROUNDS))
            consider(res, f"pairbeam{width}")
            if res.stopped in ("exact", TIME_LIMIT, INTERRUPTED):
                return

    def probe_stage(tok, width, joint, path=True):
        """Probe beam -> output-loss polish -> (``path``) path search over a growing suffix -> polish
        (docs/ORDERING.md); on a deep tame net (``deep_tame``) the path search runs over the whole order, on
        one draw of ``PATH_ROWS`` probe rows after another, from the best beam order only (a path search there
        takes minutes on 2 cores; the time left goes to the search stages)."""
        from . import beam as bm

        if not _native.available():
            return
        PX, PT, pw = probe_data()
        # joint: each in piece may take one of its 3 best out pieces by the trace score (the beam keeps every
        # piece pairable); the first probe stage trusts the pairing (3x cheaper), the path search re-pairs
        allowed = bm.allowed_table(out_of, getattr(pairing, "neg_trace", None), extra=2 if joint else 0)
        # the path search's moves; on a deep tame net blocks only (no re-pairing), on the linear probe, with the
        # candidate list
        path_kw = (dict(kinds=(mv.ADJACENT, mv.SWAP, mv.INSERT), features=PATH_FEATURES, list_keep=PATH_LIST_KEEP)
                   if deep_tame else
                   dict(kinds=(mv.ADJACENT, mv.SWAP, mv.INSERT, mv.REPAIR)))
        # ... and, with an unconfident pairing, re-pairing turns among its least confident pieces
        pair_turns = PATH_PAIR_TURNS if deep_tame and not getattr(pairing, "confident", False) else 0
        pair_flags = least_confident(pairing, PATH_PAIR_SHARE) if pair_turns else None
        log.info("probe beam, width %d, %d rows%s", width, len(PX), ", joint pairing" if joint else "")
        if progress is not None:
            progress(-1, f"probe beam (width {width})", 0.0)
        beam = screened_beam(PX, PT, pw, allowed, width, tok)
        if not beam.orders:
            return
        cp = beam.common_prefix()
        # a short polish: a beam or path order is either within a few moves of the answer or far off, and the
        # output loss only guides the search near the answer
        # Without the path search (the widening beams of a chaotic net) only the best beam order, for at most 10
        # rounds: every exact beam solve on the reach grid came from the best order in 0-8 rounds, and a far
        # order's polish (a full swap+insert round costs seconds at N=48) would eat the next, wider beam's time.
        polish = dict(schedule=((mv.ADJACENT, mv.SWAP, mv.INSERT), (mv.REPAIR,)), kicks=min(kicks, 2),
                      max_rounds=min(max_rounds, 60 if path else 10), rows=None if path else WIDEN_POLISH_ROWS)
        for rank, (o_in, o_out) in enumerate(beam.orders[:2 if path and not deep_tame else 1]):
            res = local(o_in, o_out, tok, **polish)
            consider(res, f"beam{width}#{rank}")
            if res.stopped in ("exact", TIME_LIMIT, INTERRUPTED):
                return
            if deep_tame:  # over the whole order, once per draw of PATH_ROWS probe rows (the probe rows are a
                # random draw: so is each slice), each from where the last one ended (a local optimum of J on
                # one draw need not be one on the next), starting from the polished beam order (wd N=48 seed
                # 7001: Kendall 178 from the answer, where the raw beam order is at 270)
                path_runs = [(0, k) for k in range(max(1, len(PX) // PATH_ROWS))]
                o_in, o_out = list(res.order_in), list(res.order_out)
            else:  # over a growing suffix, on all the probe rows
                path_runs = [(f, None) for f in sorted({max(0, cp - 8), max(0, cp - 16), 0}, reverse=True)]
            for first, draw in path_runs if path else ():
                if tok.reason() is not None:
                    return
                rows_ = slice(None) if draw is None else slice(draw * PATH_ROWS, (draw + 1) * PATH_ROWS)

                def path(p_in, p_out, **kw):  # one path search on this draw's rows, its probes counted
                    out = bm.path_search(PX[rows_], PT[rows_], pw, p_in, p_out, token=tok, first=first, **kw)
                    stats["probes"] = stats.get("probes", 0) + out.probes
                    return out

                log.info("path search from depth %d%s", first, "" if draw is None else f" on row draw {draw}")
                ps = path(o_in, o_out, **path_kw)
                # an unconfident pairing on a deep tame net: re-pair where the blocks' path search stopped (out
                # pieces only), then move blocks again, until the re-pairing changes nothing (near the answer the
                # path loss picks the true out pieces; with wrong pairs the block moves drift: NOTES.md "Re-pairing
                # on the path")
                for _ in range(pair_turns):
                    if tok.reason() is not None:
                        break
                    rp = path(ps.order_in, ps.order_out, kinds=(mv.REPAIR,), features=PATH_FEATURES,
                              repairable=pair_flags)
                    if rp.order_out == ps.order_out:
                        break
                    log.info("path search re-paired %d blocks", sum(u != v for u, v in zip(rp.order_out, ps.order_out)))
                    ps = path(rp.order_in, rp.order_out, **path_kw)
                if (ps.order_in, ps.order_out) == (list(o_in), list(o_out)):
                    continue
                res = local(ps.order_in, ps.order_out, tok, **polish)
                consider(res, f"beam{width}#{rank}+path{first}" + ("" if draw is None else f"/{draw}"))
                if res.stopped in ("exact", TIME_LIMIT, INTERRUPTED):
                    return
                o_in, o_out = ps.order_in, ps.order_out
        if path:
            return
        # The widening beams of a chaotic net: a beam that took a wrong block usually has the order right up to
        # a few depths before its probe loss stalls and the rest scrambled; re-run the beam from a prefix
        # ``back`` depths before the stall, wider (a tail costs a fraction of a whole beam), each time from the
        # best beam order so far (by the final probe loss). Not when the loss hardly fell along that order: then
        # no prefix of it is to be trusted (the probe has no signal on that net).
        o_in, o_out = beam.orders[0]
        final, tried = beam.losses[0], set()
        for back, factor in TAIL_STEPS:
            if tok.reason() is not None or exact():
                return
            curve = bm.probe_curve(PX, PT, pw, o_in, o_out, token=tok)
            if not curve[0] - np.nanmin(curve) >= TAIL_MIN_FALL * curve[0]:
                return
            k = max(0, bm.stall_depth(curve) - back)
            n = len(o_in)
            if factor * (n - k) ** 2 > 2 * n * n:  # costs more than the next stage's whole beam (2x width)
                return
            if (tuple(o_in[:k]), tuple(o_out[:k]), factor) in tried:  # the same beam again (deterministic)
                continue
            tried.add((tuple(o_in[:k]), tuple(o_out[:k]), factor))
            log.info("tail beam from depth %d, width %d", k, factor * width)
            if progress is not None:
                progress(-1, f"tail beam (width {factor * width}, from depth {k})", 0.0)
            tb = screened_beam(PX, PT, pw, allowed, factor * width, tok, prefix=list(zip(o_in[:k], o_out[:k])))
            if not tb.orders:
                return
            res = local(*tb.orders[0], tok, **polish)
            consider(res, f"beam{width}#tail{k}w{factor * width}")
            if res.stopped in ("exact", TIME_LIMIT, INTERRUPTED):
                return
            if tb.losses[0] < final:
                (o_in, o_out), final = tb.orders[0], tb.losses[0]

    median_seed = float(np.median(list(seed_mse.values())))
    explosive = median_seed > explosive_ratio(len(out_of)) * var
    easy = min(seed_mse.values()) <= insertion_trigger * var
    race = strategy == "auto" and not easy and not explosive  # search_stage: the fingerprint race first
    deep_tame = race and len(out_of) >= DEEP_TAME_BLOCKS  # the plan starts with the beam and the path search
    kind = "easy" if easy else "explosive" if explosive else "deep tame" if len(out_of) >= DEEP_TAME_BLOCKS else "tame"
    probe_ok = _native.available()
    if strategy not in ("auto", "search", "probe", "seeds"):
        raise ValueError(f"unknown strategy {strategy!r} (auto, search, probe or seeds)")
    if stages is not None:
        plan = list(stages)
    elif strategy == "seeds":  # the seeds only (solve() compares pairings by them)
        plan = []
    elif strategy == "search" or not probe_ok:
        plan = ["search"]
    elif strategy == "probe":
        plan = ["probe", "probe2", "probe4", "probe+", "probe++"]
    elif deep_tame:  # the output loss guides the search only close to the answer: the probe beam and the path
        # search over the whole order first (all the time they need), then the tame plan
        plan = ["probe", "search", "ils", "refit", "probe+", "probe++"]
    elif easy or not explosive:  # the output loss guides the search: the search (a kick walk), iterated local
        # search from its best order, the re-pairing fit, then probes
        plan = ["search", "ils", "refit", "probe", "probe+", "probe++"]
    else:  # the output loss explodes away from the answer: probe beams first, widening (each ends on its own),
        # then the joint-pairing beams with the path search, the search as a last resort
        plan = ["probe", "probe2", "probe4", "probe+", "search", "probe++"]
    if (stages is None and strategy == "auto" and probe_ok and not easy and not explosive
            and getattr(pairing, "method", None) == "data_fo"):
        # the weights carry no pairing signal (the data pairing won): build pairing and order together first
        plan = ["pairbeam"] + plan
    widths = {"probe": beam_width, "probe2": 2 * beam_width, "probe4": 4 * beam_width, "probe+": 4 * beam_width,
              "probe++": 16 * beam_width}
    if start is not None:
        consider(local(*start, token, max_rounds=0), "start")
        if strategy == "auto" and stages is None:  # from a warm start: the stage near the answer first
            plan = ["ils"] + [s_ for s_ in plan if s_ != "ils"]
    if plan:
        log.info("%s network (median seed MSE %.3g x var(pred)): plan %s", kind,
                 median_seed / var if var > 0 else float("inf"), ", ".join(plan))
    stage_times: Dict[str, float] = {}
    for i, stage in enumerate(plan):
        if exact() or token.reason() is not None:
            break
        left = token.remaining()
        # an equal share of what is left for each remaining stage (no limit: each stage runs to its own end);
        # the output-loss search (a kick walk), first on a tame network, gets 30% of what is left, the iterated
        # local search all that is left (it ends on its own when it stagnates) and the re-pairing fit 40% of
        # the rest (the probe stages rarely help a tame network; the walk and the ILS each solved wd N=32 nets
        # the other missed: NOTES.md "Tame nets"); on an exploding network the trusted-pairing
        # beams (beam + short polish, no path search: they end on their own) may use all that is left, since a
        # beam cut off returns nothing and the wider beam is the better bet than the path search (every exact
        # chaotic solve on the reach grid came from a beam order; NOTES.md). Shares set on the dev puzzles; the
        # widening was chosen after diagnosing two grid failures (fast/paper N=32 seed 9001).
        opening = set(plan[:i]) <= {"pairbeam"}  # the plan's first stage after the pairing beam, if that runs
        share = None if left is None else (left * 0.3 if stage == "search" and opening else
                                           left * 0.6 if stage == "pairbeam" else
                                           left if stage in ("probe", "probe2", "probe4") and explosive else
                                           left if stage == "probe" and deep_tame and opening else
                                           left if stage == "ils" else
                                           left * 0.4 if stage == "refit" else
                                           left / (len(plan) - i))
        tok = token if share is None else token.limited(share)
        t0 = time.perf_counter()
        if stage == "pairbeam":
            pair_beam_stage(tok)
        elif stage == "search":
            search_stage(tok)
        elif stage == "ils":
            ils_stage(tok)
        elif stage == "refit":
            refit_stage(tok)
        else:
            probe_stage(tok, widths[stage], joint=stage in ("probe+", "probe++"),
                        path=stage in ("probe+", "probe++") or not explosive)
        stage_times[stage] = stage_times.get(stage, 0.0) + time.perf_counter() - t0
        if state["stopped_by"] == TIME_LIMIT and token.reason() is None:
            state["stopped_by"] = None  # a stage's own share ran out: the next stage goes on
    res, start, stopped_by = state["best"], state["start"], state["stopped_by"]
    if res is None:  # stopped before any search ran: the best seed stands
        b = min(seed_mse, key=seed_mse.get)
        o_in = cands[b]
        res = local(o_in, [out_of[a] for a in o_in], token, max_rounds=0)
        start = b
    if token.reason() is not None and res.stopped != "exact":
        stopped_by = token.reason()
    stopped = res.stopped if res.stopped == "exact" or stopped_by is None else stopped_by
    if stopped == TIME_LIMIT and res.stopped != TIME_LIMIT and token.reason() is None:
        stopped = res.stopped
    rounds, scored, block_rows = stats["rounds"], stats["scored"], stats["block_rows"]
    est, runner_up = (None, None) if stopped == "exact" else estimate_wrong(results, start, res)
    timings["search"] = time.perf_counter() - t
    timings.update({f"stage.{k}": v for k, v in stage_times.items()})
    return OrderResult(
        order=res.order_in,
        order_out=res.order_out,
        mse=res.loss / nvals,
        seed_mse=seed_mse,
        start=start,
        history=[(r, k, i, j, l / nvals, c) for (r, k, i, j, l, c) in res.history],
        rounds=rounds,
        candidates_scored=scored,
        block_rows=block_rows,
        stopped=stopped,
        backend=scorer.name,
        search_rows=int(X.shape[0]),
        repaired=[out_of[a] for a in res.order_in] != list(res.order_out),
        timings=timings,
        seed_orders={k: list(v) for k, v in cands.items()},
        runs=runs,
        estimated_wrong=est,
        runner_up=runner_up,
        kind=kind,
        plan=list(plan),
    )


def _check_start(start, n: int) -> Tuple[List[int], List[int]]:
    """``order(start=...)`` validated: two permutations of range(n) as lists."""
    try:
        o_in, o_out = ([int(v) for v in part] for part in start)
    except (TypeError, ValueError):
        raise ValueError("start must be (order_in, order_out): two lists of stack indices") from None
    for name, part in (("order_in", o_in), ("order_out", o_out)):
        if sorted(part) != list(range(n)):
            raise ValueError(f"start {name} must be a permutation of 0..{n - 1} (N={n} blocks), got {part}")
    return o_in, o_out


def _family(name: str) -> str:
    # runs polished from one beam share a lineage: 'beam16#0', 'beam16#1+path30' are one family
    return name.split("#")[0]


def estimate_wrong(results, best_name: str, best) -> tuple:
    """(positions where ``best`` differs from the best run of another family, that run's name), or
    (None, None) when there is no other family. Why this estimates how many positions are wrong: a search stopped
    short of the answer stops at a local optimum whose neighbourhood only it knows, so two independent searches
    that both missed agree on few positions (the local optima of the chaotic networks are random-like), while
    two that both came close agree on most of them. It is an estimate, not a bound: two runs stuck in one
    wrong basin agree too (docs/ORDERING.md)."""
    fam = _family(best_name)
    others = [r for r in results if _family(r[1]) != fam]
    if not others:
        return None, None
    loss, name, o_in, o_out = min(others, key=lambda r: r[0])
    diff = sum(1 for p in range(len(o_in)) if (o_in[p], o_out[p]) != (best.order_in[p], best.order_out[p]))
    return diff, name

