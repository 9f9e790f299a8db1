"""C++ search core (unshuffle._core): move generation, moves, hashing and the local-search loop of
docs/SEARCH.md, checked against small pure-Python versions written here straight from the spec."""
import threading
import time

import numpy as np
import pytest
import torch

from unshuffle import backends, reference
from unshuffle import search as pysearch

core = pytest.importorskip(
    "unshuffle._core", reason="C++ extension unshuffle._core not built (CI builds it with UNSHUFFLE_REQUIRE_EXT=1)"
)

F32 = np.float32
ADJACENT, SWAP, INSERT, REPAIR, KICK = range(5)
M64 = (1 << 64) - 1


# ------------------------------------------------------------------------------ the spec, in plain Python
def spec_moves(n, kind):
    if kind == ADJACENT:
        return [(i, i + 1, i) for i in range(n - 1)]
    if kind == SWAP:
        return [(i, j, i) for i in range(n - 1) for j in range(i + 2, n)]
    if kind == INSERT:
        return [(i, j, min(i, j)) for i in range(n) for j in range(n) if abs(i - j) >= 2]
    if kind == REPAIR:
        return [(i, j, i) for i in range(n - 1) for j in range(i + 1, n)]
    raise AssertionError(kind)


def spec_apply(oi, oo, kind, i, j):
    oi, oo = list(oi), list(oo)
    if kind in (ADJACENT, SWAP):
        oi[i], oi[j] = oi[j], oi[i]
        oo[i], oo[j] = oo[j], oo[i]
    elif kind in (INSERT, KICK):
        oi.insert(j, oi.pop(i))
        oo.insert(j, oo.pop(i))
    elif kind == REPAIR:
        oo[i], oo[j] = oo[j], oo[i]
    return oi, oo


def spec_candidates(oi, oo, kinds):
    n = len(oi)
    rows = [(k, i, j, s) for k in kinds for (i, j, s) in spec_moves(n, k)]
    L = n - min(r[3] for r in rows) if rows else 0
    seq_in = np.full((len(rows), L), -1, np.int64)
    seq_out = np.full((len(rows), L), -1, np.int64)
    for c, (k, i, j, s) in enumerate(rows):
        ni, no = spec_apply(oi, oo, k, i, j)
        seq_in[c, : n - s], seq_out[c, : n - s] = ni[s:], no[s:]
    starts = np.array([r[3] for r in rows], np.int64)
    moves = np.array([r[:3] for r in rows], np.int64).reshape(-1, 3)
    return starts, seq_in, seq_out, moves


def spec_hash(oi, oo):
    h = 0xCBF29CE484222325
    for a, b in zip(oi, oo):
        for v in (a, b):
            for byte in (int(v) & M64).to_bytes(8, "little"):
                h = ((h ^ byte) * 0x100000001B3) & M64
    return h


def splitmix(state):
    state = (state + 0x9E3779B97F4A7C15) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return state, z ^ (z >> 31)


# ----------------------------------------------------------------------------------------- move generation
@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 7])
@pytest.mark.parametrize(
    "kinds", [[ADJACENT], [SWAP], [INSERT], [REPAIR], [SWAP, INSERT], [REPAIR, ADJACENT, INSERT], [], [SWAP, SWAP]]
)
def test_generate_candidates_matches_spec(n, kinds):
    rng = np.random.default_rng(n * 31 + len(kinds))
    oi, oo = rng.permutation(n + 3)[:n].astype(np.int64), rng.permutation(n + 5)[:n].astype(np.int64)
    got = core.generate_candidates(oi, oo, kinds)
    want = spec_candidates(list(oi), list(oo), kinds)
    for g, w, name in zip(got, want, ("starts", "seq_in", "seq_out", "moves")):
        assert g.dtype == np.int64, name
        assert g.shape == w.shape, name
        assert np.array_equal(g, w), name


def test_generate_candidates_kind_names_and_errors():
    oi = np.arange(5)
    a = core.generate_candidates(oi, oi, ["swap", "insert"])
    b = core.generate_candidates(oi, oi, [SWAP, INSERT])
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="kinds has unknown move kind 'rotate'"):
        core.generate_candidates(oi, oi, ["rotate"])
    with pytest.raises(ValueError, match="kinds has move kind 4, expected 0-3"):
        core.generate_candidates(oi, oi, [4])
    with pytest.raises(ValueError, match="order_out has shape"):
        core.generate_candidates(oi, np.arange(4), [SWAP])
    with pytest.raises(ValueError, match="order_in must be a int64 array"):
        core.generate_candidates(oi.astype(np.int32), oi, [SWAP])


@pytest.mark.parametrize("kind", [ADJACENT, SWAP, INSERT, REPAIR, KICK])
def test_apply_move_and_hash_match_spec(kind):
    rng = np.random.default_rng(kind)
    oi, oo = rng.permutation(9), rng.permutation(9) + 100
    for i, j in [(0, 1), (0, 8), (8, 0), (3, 6), (6, 3), (4, 4)]:
        gi, go = core.apply_move(oi, oo, kind, i, j)
        wi, wo = spec_apply(oi, oo, kind, i, j)
        assert list(gi) == wi and list(go) == wo
        assert core.ordering_hash(gi, go) == spec_hash(wi, wo)
    assert core.ordering_hash(np.zeros(0, np.int64), np.zeros(0, np.int64)) == 0xCBF29CE484222325
    assert core.ordering_hash(np.array([-1]), np.array([2**40])) == spec_hash([-1], [2**40])
    with pytest.raises(ValueError, match=r"apply_move: j = 9 is out of range \[0, 9\)"):
        core.apply_move(oi, oo, kind, 0, 9)
    with pytest.raises(ValueError, match="kind must be 0-4"):
        core.apply_move(oi, oo, 5, 0, 1)


# ------------------------------------------------------------------------------------------- local search
def make_puzzle(seed, N=6, d=8, h=16, R=64, k=1):
    """Random residual net whose targets come from a known order (the reference's forward pass)."""
    rng = np.random.default_rng(seed)
    W_in = (rng.standard_normal((N, h, d)) / np.sqrt(d)).astype(F32)
    b_in = (0.2 * rng.standard_normal((N, h))).astype(F32)
    W_out = (0.5 * rng.standard_normal((N, d, h)) / np.sqrt(h)).astype(F32)
    b_out = (0.2 * rng.standard_normal((N, d))).astype(F32)
    W_last = (rng.standard_normal((k, d)) / np.sqrt(d)).astype(F32)
    b_last = rng.standard_normal(k).astype(F32)
    X = rng.standard_normal((R, d)).astype(F32)
    true_in, true_out = rng.permutation(N), rng.permutation(N)
    T = torch.from_numpy
    pre = reference.forward_prefixes(T(X), true_in, true_out, T(W_in), T(b_in), T(W_out), T(b_out))
    target = (pre[-1] @ T(W_last).T + T(b_last)).numpy()
    w = dict(X=X, target=target, W_in=W_in, b_in=b_in, W_out=W_out, b_out=b_out, W_last=W_last, b_last=b_last)
    return w, true_in.astype(np.int64), true_out.astype(np.int64)


def improves(new, cur):
    return new < cur * (1 - 1e-9) - 1e-30


def spec_search(w, oi, oo, schedule, stop_loss, max_rounds, kicks, seed, multi=False):
    """docs/SEARCH.md's round loop in plain Python, on the C++ scorer (so losses are bit-identical)."""
    W = [w[k] for k in ("W_in", "b_in", "W_out", "b_out")]
    head = [w["W_last"], w["b_last"], w["target"]]
    n = len(oi)
    e = np.zeros((1, 0), np.int64)

    def prefix_and_loss(oi, oo):
        p = core.forward_prefixes(w["X"], np.array(oi, np.int64), np.array(oo, np.int64), *W)
        return p, float(core.score_candidates(p, np.array([n]), e, e, *W, *head)[0])

    oi, oo = list(oi), list(oo)
    prefix, cur = prefix_and_loss(oi, oo)
    visited, best, hist = {spec_hash(oi, oo)}, (list(oi), list(oo), cur), []
    rounds, level, kicks_left, state = 0, 0, kicks, seed
    while True:
        if cur <= stop_loss:
            reason = "exact"
            break
        if rounds >= max_rounds:
            reason = "max_rounds"
            break
        if level >= len(schedule):
            if kicks_left <= 0 or n < 3:
                reason = "local_optimum"
                break
            kicks_left -= 1
            while True:
                state, z1 = splitmix(state)
                state, z2 = splitmix(state)
                i, j = z1 % n, z2 % n
                if abs(i - j) < 2:
                    continue
                ki, ko = spec_apply(oi, oo, KICK, i, j)
                if spec_hash(ki, ko) not in visited:
                    break
            oi, oo = ki, ko
            visited.add(spec_hash(oi, oo))
            prefix, cur = prefix_and_loss(oi, oo)
            hist.append((rounds, KICK, i, j, cur, 0))
            if cur < best[2]:
                best = (list(oi), list(oo), cur)
            level = 0
            continue
        starts, si, so, moves = spec_candidates(oi, oo, schedule[level])
        rounds += 1
        if len(starts) == 0:
            level += 1
            continue
        losses = core.score_candidates(prefix, starts, si, so, *W, *head)
        b = int(np.argmin(losses))  # first minimum
        if improves(losses[b], cur):
            applied = [tuple(int(v) for v in moves[b])]
            if multi and list(schedule[level]) == [ADJACENT]:  # SEARCH.md "Multi-accept"
                ok = sorted((float(losses[c]), c) for c in range(len(starts)) if improves(losses[c], cur))
                taken, used = [], set()
                for _, c in ok:
                    k, i, j = (int(v) for v in moves[c])
                    if not {i, j} & used:
                        used |= {i, j}
                        taken.append((k, i, j))
                if len(taken) > 1:
                    ci, co = oi, oo
                    for k, i, j in taken:
                        ci, co = spec_apply(ci, co, k, i, j)
                    if improves(prefix_and_loss(ci, co)[1], losses[b]):
                        applied = taken
            for k, i, j in applied:
                oi, oo = spec_apply(oi, oo, k, i, j)
            visited.add(spec_hash(oi, oo))
            prefix, cur = prefix_and_loss(oi, oo)
            if len(applied) == 1:
                assert cur == losses[b]  # the rescored order is bit-identical to its candidate
            for k, i, j in applied:
                hist.append((rounds, k, i, j, cur, len(starts)))
            if cur < best[2]:
                best = (list(oi), list(oo), cur)
            level = 0
        else:
            level += 1
    return best, np.array(hist, dtype=np.float64).reshape(-1, 6), rounds, reason


def run(w, oi, oo, **kw):
    return core.local_search(w["X"], w["target"], w["W_in"], w["b_in"], w["W_out"], w["b_out"], w["W_last"],
                             w["b_last"], np.asarray(oi, np.int64), np.asarray(oo, np.int64), **kw)


def test_finds_known_order_from_near_correct_start():
    w, ti, to = make_puzzle(1)
    oi, oo = spec_apply(ti, to, ADJACENT, 1, 2)
    oi, oo = spec_apply(oi, oo, INSERT, 5, 0)
    start_loss = run(w, oi, oo, max_rounds=0)["loss"]
    # greedy best-improvement can stall two moves away from the truth; kicks get it out
    res = run(w, oi, oo, schedule=[[ADJACENT], [SWAP, INSERT], [REPAIR]], stop_loss=1e-8, kicks=10, seed=1)
    assert start_loss > 1.0
    assert res["stopped_reason"] == "exact"
    assert res["loss"] <= 1e-8
    assert list(res["order_in"]) == list(ti) and list(res["order_out"]) == list(to)
    h = res["history"]
    improving = h[h[:, 1] != KICK]
    assert h.shape[1] == 6 and len(improving) >= 1 and improving[-1, 4] == res["loss"]
    assert res["rounds"] >= len(improving) and res["candidates_scored"] > 0 and res["block_rows"] > 0
    # single-move start: plain descent (no kicks) reaches it directly
    oi, oo = spec_apply(ti, to, SWAP, 0, 4)
    res = run(w, oi, oo, stop_loss=1e-8)
    assert res["stopped_reason"] == "exact" and list(res["order_in"]) == list(ti)
    assert np.all(np.diff(res["history"][:, 4]) < 0)


@pytest.mark.parametrize("seed,kicks", [(2, 0), (3, 4), (4, 6)])
def test_trajectory_matches_python_spec_loop(seed, kicks):
    w, ti, to = make_puzzle(seed, N=7)
    rng = np.random.default_rng(seed)
    oi, oo = rng.permutation(7), rng.permutation(7)
    schedule = [[ADJACENT], [SWAP, INSERT], [REPAIR]]
    res = run(w, oi, oo, schedule=schedule, stop_loss=1e-8, max_rounds=200, kicks=kicks, seed=seed * 7 + 1)
    (bi, bo, bl), hist, rounds, reason = spec_search(w, oi, oo, schedule, 1e-8, 200, kicks, seed * 7 + 1)
    assert np.array_equal(res["history"], hist)
    assert res["rounds"] == rounds and res["stopped_reason"] == reason
    assert list(res["order_in"]) == bi and list(res["order_out"]) == bo and res["loss"] == bl
    if kicks:
        assert (hist[:, 1] == KICK).any() or reason == "exact"


def test_deterministic_and_thread_independent():
    w, ti, to = make_puzzle(5, N=8, d=16, h=32, R=240)  # big enough that n_threads=3 really uses 3 threads
    rng = np.random.default_rng(5)
    oi, oo = rng.permutation(8), rng.permutation(8)
    kw = dict(schedule=[["adjacent"], ["swap", "insert"], ["repair"]], stop_loss=1e-8, max_rounds=300, kicks=5, seed=99)
    a = run(w, oi, oo, n_threads=1, **kw)
    b = run(w, oi, oo, n_threads=1, **kw)
    c = run(w, oi, oo, n_threads=3, **kw)
    for r in (b, c):
        assert np.array_equal(a["history"], r["history"])
        assert np.array_equal(a["order_in"], r["order_in"]) and a["loss"] == r["loss"]
    d = run(w, oi, oo, n_threads=1, **{**kw, "seed": 100})
    if (a["history"][:, 1] == KICK).any():  # another seed kicks elsewhere
        assert not np.array_equal(a["history"], d["history"])


def test_tie_goes_to_lowest_candidate_index():
    # Pieces 1 and 2 are identical blocks: from [0, 1, 2, 3], swap(0, 2) and insert(0, 2) both give the target's
    # function with bit-identical losses; swap comes first in [swap, insert], so it must win.
    w, _, _ = make_puzzle(6, N=4)
    for k in ("W_in", "b_in", "W_out", "b_out"):
        w[k][2] = w[k][1]
    T = torch.from_numpy
    pre = reference.forward_prefixes(T(w["X"]), [1, 2, 0, 3], [1, 2, 0, 3], T(w["W_in"]), T(w["b_in"]),
                                     T(w["W_out"]), T(w["b_out"]))
    w["target"] = (pre[-1] @ T(w["W_last"]).T + T(w["b_last"])).numpy()
    res = run(w, range(4), range(4), schedule=[[SWAP, INSERT]], stop_loss=1e-8)
    assert res["history"][0, 1:4].tolist() == [SWAP, 0, 2]
    res = run(w, range(4), range(4), schedule=[[INSERT, SWAP]], stop_loss=1e-8)
    assert res["history"][0, 1:4].tolist() == [INSERT, 0, 2]


def test_stop_conditions():
    w, ti, to = make_puzzle(7)
    assert run(w, ti, to, stop_loss=1e-8)["stopped_reason"] == "exact"
    r = run(w, ti[::-1].copy(), to[::-1].copy(), max_rounds=2, stop_loss=1e-8)
    assert r["stopped_reason"] == "max_rounds" and r["rounds"] == 2
    r = run(w, ti[::-1].copy(), to[::-1].copy(), schedule=[], stop_loss=1e-8)
    assert r["stopped_reason"] == "local_optimum" and r["rounds"] == 0 and r["history"].shape == (0, 6)


def test_local_search_validation():
    w, ti, to = make_puzzle(8)
    with pytest.raises(ValueError, match=r"local_search: order_in\[0\] = 6 is out of range \[0, 6\)"):
        run(w, np.array([6, 1, 2, 3, 4, 5]), to)
    with pytest.raises(ValueError, match="schedule has unknown move kind 'shuffle'"):
        run(w, ti, to, schedule=[["shuffle"]])
    with pytest.raises(ValueError, match=r"target has shape .*expected \(64, 1\)"):
        run({**w, "target": np.ascontiguousarray(w["target"][:-1])}, ti, to)
    with pytest.raises(ValueError, match="time_limit_s must be > 0 or None"):
        run(w, ti, to, time_limit_s=0.0)
    with pytest.raises(ValueError, match="kicks must be >= 0"):
        run(w, ti, to, kicks=-1)


# ------------------------------------------------------------------------------------------- multi-accept
def adjacent_errors(seed, N=8, positions=(0, 3, 6)):
    """A puzzle and a start that is the known order with disjoint adjacent swaps applied (multi-accept's case)."""
    w, ti, to = make_puzzle(seed, N=N)
    oi, oo = list(ti), list(to)
    for i in positions:
        oi, oo = spec_apply(oi, oo, ADJACENT, i, i + 1)
    return w, oi, oo


def py_search(w, oi, oo, **kw):
    """unshuffle.search.local_search (the Python loop) on the C++ scorer."""
    T = torch.from_numpy
    weights = [T(w[k]) for k in ("W_in", "b_in", "W_out", "b_out", "W_last", "b_last")]
    return pysearch.local_search(backends.get_scorer("cpp"), T(w["X"]), T(w["target"]), *weights, list(oi), list(oo),
                                 **kw)


# (puzzle seed, N, positions of disjoint adjacent errors from the known order or None for a random start, kicks).
# The random starts also meet combinations that do not beat the best single move (rejected, counted below).
MULTI_CASES = [(100, 10, (0, 2, 5, 8), 0), (102, 8, (0, 3, 6), 0), (101, 9, (1, 4, 7), 3),
               (109, 10, (0, 2, 5, 8), 3), (108, 9, None, 2), (130, 9, None, 2), (110, 7, None, 2)]


@pytest.mark.parametrize("seed,N,positions,kicks", MULTI_CASES)
def test_multi_trajectory_matches_python(seed, N, positions, kicks, monkeypatch):
    if positions is None:
        w, _, _ = make_puzzle(seed, N=N)
        rng = np.random.default_rng(seed)
        oi, oo = list(rng.permutation(N)), list(rng.permutation(N))
    else:
        w, oi, oo = adjacent_errors(seed, N, positions)
    schedule = [[ADJACENT], [SWAP, INSERT], [REPAIR]]
    kw = dict(schedule=schedule, stop_loss=1e-8, max_rounds=200, kicks=kicks, seed=seed)
    res = run(w, oi, oo, multi=True, **kw)
    h = res["history"]
    move_rounds = h[h[:, 1] != KICK, 0]
    combined_rounds = [r for r in np.unique(move_rounds) if (move_rounds == r).sum() > 1]
    assert combined_rounds  # some round really applied several moves
    # the spec loop of this file (losses from the C++ scorer): bit-identical
    (bi, bo, bl), hist, rounds, reason = spec_search(w, oi, oo, schedule, 1e-8, 200, kicks, seed, multi=True)
    assert np.array_equal(h, hist)
    assert res["rounds"] == rounds and res["stopped_reason"] == reason
    assert list(res["order_in"]) == bi and list(res["order_out"]) == bo and res["loss"] == bl
    # unshuffle.search.local_search on the C++ scorer: same moves, rounds, counts and candidate losses; its own
    # start/kick/combined losses are a torch matmul, equal to the C++ head only to float32 rounding
    tried = []
    combine = pysearch._combine_adjacent
    monkeypatch.setattr(pysearch, "_combine_adjacent", lambda *a: tried.append(combine(*a)) or tried[-1])
    p = py_search(w, oi, oo, multi=True, **kw)
    if positions is None:  # a combination was formed and lost to the best single move
        assert sum(len(t) > 1 for t in tried) > len(combined_rounds)
    ph = np.array(p.history, np.float64).reshape(-1, 6)
    assert ph.shape == h.shape
    assert np.array_equal(ph[:, [0, 1, 2, 3, 5]], h[:, [0, 1, 2, 3, 5]])
    single = np.ones(len(h), bool)
    for r in np.unique(h[:, 0]):
        rows = (h[:, 0] == r) & (h[:, 1] != KICK)
        if rows.sum() > 1:
            single[rows] = False
    single &= h[:, 1] != KICK
    assert np.array_equal(ph[single, 4], h[single, 4])  # a single accepted move's loss is the scorer's
    np.testing.assert_allclose(ph[:, 4], h[:, 4], rtol=1e-5, atol=1e-8)
    assert (p.rounds, p.candidates_scored, p.block_rows, p.stopped) == (
        res["rounds"], res["candidates_scored"], res["block_rows"], res["stopped_reason"])
    assert p.order_in == list(res["order_in"]) and p.order_out == list(res["order_out"])
    # and without multi each round applies one move
    one = run(w, oi, oo, **kw)["history"]
    one = one[one[:, 1] != KICK, 0]
    assert len(np.unique(one)) == len(one)


def test_multi_only_on_adjacent_level_and_block_rows():
    w, oi, oo = adjacent_errors(101)
    # adjacent is not alone in its level: plain best-improvement
    a = run(w, oi, oo, schedule=[[ADJACENT, SWAP]], stop_loss=1e-8, multi=True)
    b = run(w, oi, oo, schedule=[[ADJACENT, SWAP]], stop_loss=1e-8)
    assert np.array_equal(a["history"], b["history"]) and a["block_rows"] == b["block_rows"]
    # with multi: the combined forward adds N*R block rows per combination tried
    s = run(w, oi, oo, schedule=[[ADJACENT]], stop_loss=1e-8)
    m = run(w, oi, oo, schedule=[[ADJACENT]], stop_loss=1e-8, multi=True)
    assert m["stopped_reason"] == s["stopped_reason"] == "exact"
    assert m["rounds"] == 1 and len(m["history"]) == 3 and set(m["history"][:, 0]) == {1}
    # one round: the adjacent candidates, then one combined forward of N*R block rows; without multi, one
    # adjacent round per error and no extra forwards
    adjacent_rows = sum(8 - i for i in range(7)) * 64
    assert m["block_rows"] == adjacent_rows + 8 * 64
    assert s["rounds"] == 3 and s["block_rows"] == 3 * adjacent_rows
    assert m["loss"] == s["loss"] and list(m["order_in"]) == list(s["order_in"])


# ------------------------------------------------------------------------------ kicks, best-so-far, cancel
@pytest.mark.parametrize("seed", [7, 14, 22])
def test_kick_that_lands_lower_is_best_so_far(seed):
    # schedule [adjacent] with one kick: these seeds end with a kick that lands below every loss before it and
    # no adjacent move improves from there, so only the kick itself can have put the result there
    w, _, _ = make_puzzle(200 + seed, N=7)
    rng = np.random.default_rng(seed)
    oi, oo = rng.permutation(7), rng.permutation(7)
    res = run(w, oi, oo, schedule=[[ADJACENT]], stop_loss=1e-8, kicks=1, seed=seed)
    h = res["history"]
    start = run(w, oi, oo, max_rounds=0)["loss"]
    assert res["stopped_reason"] == "local_optimum" and h[-1, 1] == KICK
    assert h[-1, 4] < min([start, *h[:-1, 4]])
    ci, co = oi, oo
    for _, k, i, j, _, _ in h:
        ci, co = core.apply_move(np.asarray(ci, np.int64), np.asarray(co, np.int64), int(k), int(i), int(j))
    assert res["loss"] == h[-1, 4]
    assert np.array_equal(res["order_in"], ci) and np.array_equal(res["order_out"], co)
    p = py_search(w, oi, oo, schedule=[[ADJACENT]], stop_loss=1e-8, kicks=1, seed=seed)
    assert p.order_in == list(ci) and p.order_out == list(co)


def _wait_until(cond, timeout=60.0):
    t = time.monotonic()
    while not cond():
        assert time.monotonic() - t < timeout, "condition not reached"
        time.sleep(0.005)


def test_stop_flag_interrupts_a_running_search_and_only_its_own():
    w, ti, to = make_puzzle(9, N=24, d=8, h=16, R=64)
    rng = np.random.default_rng(9)
    oi, oo = rng.permutation(24), rng.permutation(24)
    start_loss = run(w, oi, oo, max_rounds=0)["loss"]
    kw = dict(schedule=[[SWAP, INSERT], [REPAIR]], stop_loss=-1.0, max_rounds=10**9, kicks=10**9, seed=3,
              n_threads=1)
    flags = [core.StopFlag(), core.StopFlag()]
    outs = [{}, {}]
    ths = [threading.Thread(target=lambda i=i: outs[i].update(run(w, oi, oo, stop=flags[i], **kw)), daemon=True)
           for i in range(2)]
    for th in ths:
        th.start()
    # both running (the GIL is released, so this thread runs meanwhile); no sleep: wait for a visible state
    assert ths[0].is_alive() and ths[1].is_alive()
    flags[0].set()
    ths[0].join(timeout=60)
    assert not ths[0].is_alive()
    res = outs[0]
    assert res["stopped_reason"] == "interrupted"
    assert res["loss"] <= start_loss  # best so far
    if len(res["history"]):
        assert res["loss"] == min(start_loss, res["history"][:, 4].min())
    assert ths[1].is_alive() and not flags[1].is_set()  # the other search is not disturbed
    flags[1].set()
    ths[1].join(timeout=60)
    assert outs[1]["stopped_reason"] == "interrupted"
    # a set flag stops a new search before its first round; a fresh flag does not
    r = run(w, oi, oo, stop=flags[0], **kw)
    assert r["stopped_reason"] == "interrupted" and r["rounds"] == 0 and r["loss"] == start_loss
    assert list(r["order_in"]) == list(oi)
    assert run(w, oi, oo, max_rounds=3, stop=core.StopFlag(), **{k: v for k, v in kw.items() if k != "max_rounds"}
               )["stopped_reason"] == "max_rounds"


def test_deadline_cuts_a_long_round_short():
    """A round of ~3,000 candidates at R=4,096 takes seconds; the deadline (50 ms) is polled inside the scorer,
    so the search ends with no round completed (candidates_scored counts only completed rounds)."""
    w, ti, to = make_puzzle(4, N=40, d=16, h=32, R=4096)
    rng = np.random.default_rng(4)
    oi, oo = rng.permutation(40), rng.permutation(40)
    res = run(w, oi, oo, schedule=[[SWAP, INSERT, REPAIR]], stop_loss=-1.0, max_rounds=1, n_threads=1,
              time_limit_s=0.05)
    assert res["stopped_reason"] == "time_limit"
    assert res["candidates_scored"] == 0 and res["rounds"] <= 1
    assert list(res["order_in"]) == list(oi)


def test_score_candidates_raises_stopped():
    w, ti, to = make_puzzle(5, N=6, d=8, h=16, R=48)
    prefix = np.ascontiguousarray(w["X"][None])
    starts, si, so, _ = core.generate_candidates(np.asarray(ti, np.int64), np.asarray(to, np.int64), ["swap"])
    flag = core.StopFlag()
    args = (prefix, np.zeros_like(starts), si, so, *(w[k] for k in ("W_in", "b_in", "W_out", "b_out", "W_last", "b_last")),
            w["target"])
    assert np.all(np.isfinite(core.score_candidates(*args, stop=flag)))
    flag.set()
    with pytest.raises(core.Stopped, match="interrupted"):
        core.score_candidates(*args, stop=flag)
    with pytest.raises(ValueError, match="time_limit_s must be > 0"):
        core.score_candidates(*args, time_limit_s=0.0)
