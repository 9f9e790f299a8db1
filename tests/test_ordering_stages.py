"""order()'s stages on generated nets: the iterated local search of tame nets (docs/ORDERING.md section 3) and
the reduced-rows polish of the widening beams on chaotic ones."""
import sys
from pathlib import Path

import numpy as np
import pytest

from unshuffle import load_puzzle
from unshuffle import moves as mv
from unshuffle import native as _native
from unshuffle.generate import make_puzzle
from unshuffle.ordering import order
from unshuffle.pairing import PairResult, pair

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_reach  # noqa: E402  (distances to the answer, as the reach benchmark measures them)


def true_pairing(pz, answer) -> PairResult:
    pr = pair(pz, "trace")
    ii = {v: k for k, v in enumerate(pz.inp_ids)}
    oi = {v: k for k, v in enumerate(pz.out_ids)}
    out_of = [0] * pz.n_blocks
    for j in range(pz.n_blocks):
        out_of[ii[answer[2 * j]]] = oi[answer[2 * j + 1]]
    pr.out_of = out_of
    pr.pairs = [(pz.inp_ids[a], pz.out_ids[b]) for a, b in enumerate(out_of)]
    return pr


def search_rows_mse(pz, r, search_rows=256, seed=0):
    """The MSE of ``r``'s order on order()'s search rows, from the C++ forward."""
    a = pz.arrays
    idx = _native.search_rows(pz.n_rows, search_rows, seed)
    w = (a.W_in, a.b_in, a.W_out, a.b_out, a.W_last, a.b_last)
    sse = _native.order_losses(a.X[idx], a.pred[idx], w, [(list(r.order), list(r.order_out))])[0]
    return float(sse) / (len(idx) * pz.k)


@pytest.fixture(scope="module")
def wd24(tmp_path_factory):
    """A weight-decay net (tame: the output loss guides the search) whose descent from the best seed stops at
    a local optimum (MSE ~0.016 with the true pairing; found by scanning seeds 1-8 at this shape: 4 of 8 do)."""
    folder = tmp_path_factory.mktemp("wd24")
    g = make_puzzle(folder, blocks=24, dim=32, hidden=64, rows=1000, seed=4, regime="wd")
    return g, load_puzzle(folder)


@pytest.fixture(scope="module")
def wd24_stalled(wd24):
    """(start, seed): where the search stage's descents stop short of the answer on the fixture, for the first
    order seed where they do. Whether a plain descent already solves the fixture depends on the machine that
    trained it (float rounding in training changes the net; on one CI-like machine seed 0's second descent was
    exact), so the ILS tests start from such an order instead of assuming seed 0 stalls."""
    g, pz = wd24
    pr = true_pairing(pz, g.answer)
    for s in range(12):
        r = order(pz, pr, seed=s, time_limit=120, kicks=0, starts=1, stages=["search"])
        if r.stopped != "exact":
            return (list(r.order), list(r.order_out)), s
    raise AssertionError("every seed's descents solved the fixture: the ILS tests need a net where they stall")


def test_ils_escapes_the_first_descent_and_keeps_only_gains(wd24, wd24_stalled):
    g, pz = wd24
    pr = true_pairing(pz, g.answer)
    start, s = wd24_stalled  # a local optimum of the search stage, not the answer
    r = order(pz, pr, seed=s, time_limit=300, kicks=0, starts=1, start=start, stages=["ils"])
    assert r.stopped == "exact", r.runs
    assert r.runs[0][0] == "start" and r.runs[0][2] != "exact", r.runs
    names = [run[0] for run in r.runs]
    assert names[0] == r.runs[0][0] and "#ils" not in names[0]  # the plain descent first
    ils = [run for run in r.runs if "#ils" in run[0]]
    assert ils, r.runs  # the descent alone did not finish: the ILS did
    assert r.start == ils[-1][0]
    # only gains are recorded, each below the one before (and below the descent's local optimum)
    losses = [r.runs[0][1]] + [run[1] for run in ils]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    # a run is named after the lineage it improves (the estimate of wrong positions compares lineages)
    assert all(run[0].split("#")[0] == names[0] for run in ils)
    assert r.mse == pytest.approx(search_rows_mse(pz, r, seed=s), rel=1e-6, abs=1e-12)


def test_ils_is_deterministic_for_a_seed(wd24):
    g, pz = wd24
    pr = true_pairing(pz, g.answer)
    a, b = (order(pz, pr, seed=3, time_limit=300, kicks=0, starts=1) for _ in range(2))
    assert a.runs == b.runs and a.order == b.order and a.order_out == b.order_out


def test_ils_stops_on_the_time_limit_with_the_best_order(wd24):
    g, pz = wd24
    pr = true_pairing(pz, g.answer)
    r = order(pz, pr, seed=0, time_limit=0.5, kicks=0, starts=1)
    assert r.stopped in ("exact", "time_limit")
    assert sorted(r.order) == list(range(pz.n_blocks))
    assert r.mse == pytest.approx(search_rows_mse(pz, r), rel=1e-6, abs=1e-12)


@pytest.fixture(scope="module")
def fast24(tmp_path_factory):
    """A chaotic net: its seeds explode (median seed MSE far above 10 x var(pred)), so order() plans the beams."""
    folder = tmp_path_factory.mktemp("fast24")
    g = make_puzzle(folder, blocks=24, dim=48, hidden=96, rows=1000, seed=7, regime="fast")
    return g, load_puzzle(folder)


def test_widening_polish_reports_the_loss_of_all_search_rows(fast24, monkeypatch):
    """The polish after a widening beam runs on 64 of the search rows; the loss order() reports must still be
    the all-search-rows one (a 64-row loss divided by 256 rows' values would be ~4x too small)."""
    import unshuffle.ordering as od

    g, pz = fast24
    seen = []
    real = od.local_search_native

    def spy(X, *args, **kw):
        seen.append(int(X.shape[0]))
        return real(X, *args, **kw)

    monkeypatch.setattr(od, "local_search_native", spy)
    r = order(pz, true_pairing(pz, g.answer), seed=0, strategy="probe", time_limit=300)
    assert od.WIDEN_POLISH_ROWS in seen and od.WIDEN_POLISH_ROWS < 256, seen  # the beam's polish ran on fewer rows
    assert any(run[0].startswith("beam") for run in r.runs), r.runs
    assert r.mse == pytest.approx(search_rows_mse(pz, r), rel=1e-6, abs=1e-12)
    for name, mse, stopped, rounds in r.runs:
        assert np.isfinite(mse) and mse >= 0


def test_ils_stops_on_a_cancel_with_the_best_order_so_far(wd24, wd24_stalled):
    """A cancel (Ctrl-C) while the ILS runs: order() returns at once, 'interrupted', with the best order so
    far. The cancel comes from the progress callback at the ILS's first gain, so the test does not depend on
    timing: every later perturbation must see it."""
    from unshuffle.cancel import CancelToken
    from unshuffle.ordering import BEST

    g, pz = wd24
    pr = true_pairing(pz, g.answer)
    token = CancelToken()
    seen = []

    def progress(step, name, value):
        if step == BEST:
            seen.append(name)
            if "#ils" in name:
                token.cancel()

    start, s = wd24_stalled
    r = order(pz, pr, seed=s, kicks=0, starts=1, token=token, progress=progress, start=start, stages=["ils"])
    ils = [n for n in seen if "#ils" in n]
    assert ils, seen  # the ILS ran and found a gain (as in the test above)
    assert r.stopped in ("interrupted", "exact"), r.stopped  # "exact" only if that first gain was the answer
    assert r.start == ils[0] and len([run for run in r.runs if "#ils" in run[0]]) == 1, r.runs
    assert sorted(r.order) == list(range(pz.n_blocks))
    assert r.mse == pytest.approx(search_rows_mse(pz, r, seed=s), rel=1e-6, abs=1e-12)


@pytest.fixture(scope="module")
def scrambled24(tmp_path_factory):
    """An explosive net (a real width-16 beam solves it outright), its true order (t_in, t_out) as stack indices
    and that order with its last 12 blocks reversed (s_in, s_out): what a beam that took a wrong block returns."""
    from types import SimpleNamespace

    folder = tmp_path_factory.mktemp("fast24")
    g = make_puzzle(folder, blocks=24, dim=48, hidden=96, rows=1000, seed=7, regime="fast")
    pz = load_puzzle(folder)
    pr = true_pairing(pz, g.answer)
    ii = {v: k for k, v in enumerate(pz.inp_ids)}
    t_in = [ii[g.answer[2 * j]] for j in range(pz.n_blocks)]
    t_out = [pr.out_of[a] for a in t_in]
    return SimpleNamespace(pz=pz, pr=pr, t_in=t_in, t_out=t_out, s_in=t_in[:12] + t_in[12:][::-1],
                           s_out=t_out[:12] + t_out[12:][::-1])


def fake_first_beam(monkeypatch, s_in, s_out):
    """Make the first probe beam return (s_in, s_out) and later ones run for real; returns the list of calls
    (width, prefix, outcome) as they happen."""
    import unshuffle.beam as bm

    real, calls = bm.probe_beam, []

    def fake_then_real(X, target, weights, allowed, width=16, prefix=None, **kw):
        if not calls:
            out = bm.BeamOutcome([(list(s_in), list(s_out))], [1.0], [], 0, "done")
        else:
            out = real(X, target, weights, allowed, width=width, prefix=prefix, **kw)
        calls.append((width, [] if prefix is None else [tuple(p) for p in prefix], out))
        return out

    monkeypatch.setattr(bm, "probe_beam", fake_then_real)
    return calls


@pytest.mark.parametrize("case", ["tail", "no_fall", "too_costly"])
def test_tail_beam_rebuilds_a_scrambled_tail(scrambled24, monkeypatch, case):
    """A widening beam whose order is right up to some depth and scrambled after it (the chaotic N=48 failures):
    the tail beam re-runs from ``back`` depths before the stall of that order's probe loss, wider, from that
    order's own prefix, and finishes the answer. The first beam is replaced by one returning the true order with
    its last 12 blocks reversed (a real beam solves this small net outright). No tail when the probe loss hardly
    fell along the order (no prefix to trust), nor when the tail would cost more than the next stage's whole
    beam (here: 4x wide from depth < 7.03 of 24)."""
    import unshuffle.beam as bm
    import unshuffle.ordering as od

    z = scrambled24
    pz, pr, t_in, t_out, s_in, s_out = z.pz, z.pr, z.t_in, z.t_out, z.s_in, z.s_out
    calls = fake_first_beam(monkeypatch, s_in, s_out)
    a = pz.arrays
    curve = bm.probe_curve(a.X, a.pred, (a.W_in, a.b_in, a.W_out, a.b_out), s_in, s_out)
    back = 8
    k = bm.stall_depth(curve) - back
    assert 0 < k <= 12  # the stall comes after the first wrong block
    if case == "tail":
        monkeypatch.setattr(od, "TAIL_STEPS", ((back, 2),))
    elif case == "no_fall":  # a fall of 100% is never reached by a wrong order: no prefix is trusted
        monkeypatch.setattr(od, "TAIL_MIN_FALL", 1.0)
    else:
        monkeypatch.setattr(od, "TAIL_STEPS", ((back, 4),))
        assert 4 * (24 - k) ** 2 > 2 * 24 ** 2
    r = order(pz, pr, seed=0, stages=["probe"], time_limit=300)
    if case != "tail":
        assert len(calls) == 1 and [run[0] for run in r.runs] == ["beam16#0"] and r.stopped != "exact", r.runs
        return
    assert r.stopped == "exact", r.runs
    assert r.order == t_in and r.order_out == t_out
    assert calls[1][:2] == (32, list(zip(s_in[:k], s_out[:k])))  # 2x wide, from the scrambled order's own prefix
    assert [run[0] for run in r.runs] == ["beam16#0", f"beam16#tail{k}w32"], r.runs
    assert r.mse == pytest.approx(search_rows_mse(pz, r), rel=1e-6, abs=1e-12)


def test_stages_run_as_given_and_unknown_ones_are_refused(tmp_path):
    g = make_puzzle(tmp_path, blocks=6, dim=16, hidden=32, rows=300, seed=1, regime="wd")
    pz = load_puzzle(tmp_path)
    with pytest.raises(ValueError, match="unknown stage.*'beam'.*known: search, ils"):
        order(pz, stages=["search", "beam"])
    r = order(pz, true_pairing(pz, g.answer), stages=["search"], kicks=0, starts=1, time_limit=60)
    assert r.runs and all("#" not in run[0] and not run[0].startswith("beam") for run in r.runs), r.runs
    assert set(k.split(".")[1] for k in r.timings if k.startswith("stage.")) == {"search"}
    assert order(pz, stages=[]).runs == []  # no stage: the best seed, as strategy="seeds"


def test_probe_stages_without_the_core_are_refused(tmp_path, monkeypatch):
    import unshuffle.ordering as od

    make_puzzle(tmp_path, blocks=4, dim=8, hidden=12, rows=100, seed=1, regime="wd")
    pz = load_puzzle(tmp_path)
    monkeypatch.setattr(od._native, "available", lambda: False)
    with pytest.raises(ValueError, match="probe stages need the C\\+\\+ core"):
        order(pz, stages=["search", "probe"])


def test_a_cancel_during_a_tail_beam_returns_the_best_order_so_far(scrambled24, monkeypatch):
    """Ctrl-C while a tail beam runs: the beam sees the cancel (it returns no order) and order() returns at once,
    'interrupted', with the first beam's polished order. The cancel comes from the progress callback as the tail
    starts, so the test does not depend on timing."""
    import unshuffle.ordering as od
    from unshuffle.cancel import CancelToken

    z = scrambled24
    pz, pr = z.pz, z.pr
    calls = fake_first_beam(monkeypatch, z.s_in, z.s_out)
    monkeypatch.setattr(od, "TAIL_STEPS", ((8, 2),))
    token = CancelToken()

    def progress(step, label, value):
        if step == -1 and str(label).startswith("tail beam"):
            token.cancel()

    r = order(pz, pr, seed=0, stages=["probe", "probe2"], token=token, progress=progress)
    tail = calls[1][2]
    assert len(calls) == 2 and tail.orders == [] and tail.stopped == "interrupted", calls[1:]
    assert r.stopped == "interrupted" and [run[0] for run in r.runs] == ["beam16#0"], r.runs
    assert sorted(r.order) == list(range(pz.n_blocks))
    assert r.mse == pytest.approx(search_rows_mse(pz, r), rel=1e-6, abs=1e-12)


def test_fingerprint_seeds_match_a_torch_reference():
    """``fingerprint_seeds`` (numpy float64) against the definition written with ordering's torch block update:
    blocks sorted by rank(mean update norm, largest first) + rank(-E<u(x), x>, largest first), ties by index;
    the second seed is the first reversed; numpy and torch inputs give the same orders."""
    import torch

    from unshuffle.ordering import _delta, fingerprint_seeds

    rng = np.random.default_rng(11)
    for N, d, h, R in ((7, 5, 9, 40), (16, 12, 20, 64)):
        X = rng.standard_normal((R, d)).astype(np.float32)
        w = (rng.standard_normal((N, h, d)).astype(np.float32) / np.sqrt(d), rng.standard_normal((N, h)).astype(np.float32) * 0.1,
             rng.standard_normal((N, d, h)).astype(np.float32) / np.sqrt(h), rng.standard_normal((N, d)).astype(np.float32) * 0.1)
        out_of = [int(v) for v in rng.permutation(N)]
        got = fingerprint_seeds(X, w, out_of)
        tX, tw = torch.from_numpy(X).double(), [torch.from_numpy(v).double() for v in w]
        U = _delta(tX, *tw, torch.arange(N), torch.as_tensor(out_of))  # (N, R, d)
        norm, dot = U.norm(dim=2).mean(dim=1), (U * tX).sum(dim=2).mean(dim=1)

        def rank(v):
            r = torch.empty(N, dtype=torch.long)
            r[torch.argsort(v, stable=True)] = torch.arange(N)
            return r

        key = (rank(-norm) + rank(dot)).tolist()
        expected = sorted(range(N), key=lambda a: (key[a], a))
        assert got == {"fingerprint": expected, "fingerprint_rev": expected[::-1]}
        assert fingerprint_seeds(torch.from_numpy(X), [torch.from_numpy(v) for v in w], out_of) == got


def test_tame_search_races_the_fingerprint_seed_first(wd24):
    """On a tame net whose seeds are not close, the search stage descends from the better-fitting fingerprint
    seed first, then from the best seed by MSE, and the solve ends exact. The fingerprint seed carries the
    depth: it is well under a random order's expected distance from the answer (half the N(N-1)/2 pairs; here
    95 of 276, where the insertion seed is nearer still: 54)."""
    g, pz = wd24
    pr = true_pairing(pz, g.answer)
    r = order(pz, pr, seed=0, time_limit=300)
    assert r.stopped == "exact", r.runs
    assert {"fingerprint", "fingerprint_rev"} <= set(r.seed_mse)
    fp = min(("fingerprint", "fingerprint_rev"), key=lambda k: (r.seed_mse[k], k))
    assert r.runs[0][0] == fp
    classic = {k: v for k, v in r.seed_mse.items() if not k.startswith("fingerprint")}
    if len(r.runs) > 1:
        assert r.runs[1][0] == min(classic, key=lambda k: (classic[k], k))
    ti, to = bench_reach.true_order(pz, g.answer)
    dist = {k: bench_reach.distances(o, [pr.out_of[a] for a in o], ti, to)["kendall"] for k, o in r.seed_orders.items()}
    n_pairs = pz.n_blocks * (pz.n_blocks - 1) // 2
    assert dist[fp] < 0.4 * n_pairs, dist


def test_no_fingerprint_race_on_an_explosive_net(fast24):
    """The race is for tame nets whose seeds are poor: on a net whose seeds explode the search stage (asked for
    explicitly here) starts from the best seed by MSE and never computes the fingerprint seeds. (The public
    puzzle, whose seeds are close, is checked in test_solve_public.py.)"""
    g, pz = fast24
    r = order(pz, true_pairing(pz, g.answer), seed=0, stages=["search"], kicks=0, starts=1)
    assert not any(k.startswith("fingerprint") for k in r.seed_mse), r.seed_mse
    assert [run[0] for run in r.runs] == [min(r.seed_mse, key=lambda k: (r.seed_mse[k], k))]


def test_deep_tame_plan_starts_with_the_beam_and_a_whole_order_path_search(wd24, monkeypatch):
    """From ``DEEP_TAME_BLOCKS`` blocks on (lowered here so the 24-block fixture counts as deep), a tame net
    whose seeds are poor starts with the probe beam, and its path search runs over the whole order (from depth
    0 only) on draws of ``PATH_ROWS`` probe rows, at most one per draw; the solve still ends exact. Below the
    threshold the race comes first (test_tame_search_races_the_fingerprint_seed_first)."""
    import unshuffle.beam as bm
    import unshuffle.ordering as od

    monkeypatch.setattr(od, "DEEP_TAME_BLOCKS", 24)
    monkeypatch.setattr(od, "PATH_ROWS", 300)
    calls, starts, beams = [], [], []
    real, real_beam = bm.path_search, bm.probe_beam

    def spy(X, target, weights, o_in, o_out, **kw):
        if kw.get("max_rounds", 1) > 0:  # (probe_curve calls it with max_rounds=0 for the curve alone)
            calls.append((int(X.shape[0]), kw.get("first"), kw.get("features"), tuple(kw.get("kinds")),
                          kw.get("list_keep", 0)))
            starts.append((list(o_in), list(o_out)))
        return real(X, target, weights, o_in, o_out, **kw)

    def spy_beam(*a, **kw):
        out = real_beam(*a, **kw)
        beams.append(out.orders[0] if out.orders else None)
        return out

    monkeypatch.setattr(bm, "path_search", spy)
    monkeypatch.setattr(bm, "probe_beam", spy_beam)
    g, pz = wd24
    pr = true_pairing(pz, g.answer)
    r = order(pz, pr, seed=0, time_limit=300)
    assert r.stopped == "exact", r.runs
    assert r.runs[0][0] == "beam16#0", r.runs
    assert calls, r.runs
    # (fixture: 1,000 rows = 3 draws of 300) linear probe features, block moves only, with the candidate list;
    # with a pairing that is not confident each is followed by a re-pairing turn (every move each round: it is
    # cheap), which finds nothing to change in a right pairing (so the blocks do not go again)
    blocks = (300, 0, od.PATH_FEATURES, (mv.ADJACENT, mv.SWAP, mv.INSERT), od.PATH_LIST_KEEP)
    turn = (300, 0, od.PATH_FEATURES, (mv.REPAIR,), 0)
    assert od.PATH_LIST_KEEP > 0
    assert set(calls) <= ({blocks} if pr.confident else {blocks, turn}), calls
    assert calls[0] == blocks and calls.count(blocks) <= 3, calls
    assert all(b == blocks for b in calls[::2]) and all(t == turn for t in calls[1::2]) or pr.confident, calls
    # the first path search starts from the polished beam order, not the beam's own (the polish made moves)
    assert r.runs[0][3] > 0 and starts[0] != (list(beams[0][0]), list(beams[0][1])), (r.runs, starts[0], beams[0])


@pytest.mark.parametrize("above", [False, True])
def test_the_deep_explosive_ratio_decides_between_the_chaotic_and_the_deep_tame_plan(fast24, monkeypatch, above):
    """From ``DEEP_TAME_BLOCKS`` blocks on, a net counts as explosive only when its median seed MSE exceeds
    ``DEEP_EXPLOSIVE_RATIO`` x var(pred) (below that block count, ``EXPLOSIVE_RATIO``). Here the fixture counts
    as deep (the block count lowered to 24) and the deep threshold is put just below or just above its own
    ratio: the plan must follow. The order is cancelled at the first stage (only the choice is under test)."""
    import unshuffle.ordering as od
    from unshuffle.cancel import CancelToken

    g, pz = fast24
    pr = true_pairing(pz, g.answer)
    seeds = order(pz, pr, seed=0, strategy="seeds")
    ratio = float(np.median(list(seeds.seed_mse.values()))) / float(pz.arrays.pred.astype(np.float64).var())
    assert ratio > od.EXPLOSIVE_RATIO  # (the fixture is explosive by the shallow rule)
    monkeypatch.setattr(od, "DEEP_TAME_BLOCKS", 24)
    monkeypatch.setattr(od, "DEEP_EXPLOSIVE_RATIO", ratio * (0.5 if above else 2.0))
    assert od.explosive_ratio(24) == od.DEEP_EXPLOSIVE_RATIO and od.explosive_ratio(23) == od.EXPLOSIVE_RATIO
    token = CancelToken()

    def progress(rnd, msg, best):  # the first stage's first report: the plan is chosen by then
        token.cancel()

    r = order(pz, pr, seed=0, token=token, progress=progress)
    assert r.stopped == "interrupted"
    if above:
        assert (r.kind, r.plan[:2]) == ("explosive", ["probe", "probe2"]), (r.kind, r.plan)
    else:
        assert (r.kind, r.plan[:2]) == ("deep tame", ["probe", "search"]), (r.kind, r.plan)


def test_deep_tame_path_search_re_pairs_an_unconfident_pairing(wd24, monkeypatch):
    """With a pairing that is not confident, each path search over the blocks of a deep tame net is followed by
    one over re-pairing moves alone among the least confident pieces (then the blocks again): given two swapped
    out pieces, such a turn must mend them, and the solve end exact. (A confident pairing gets no such turn: the test above.)"""
    import unshuffle.beam as bm
    import unshuffle.ordering as od

    monkeypatch.setattr(od, "DEEP_TAME_BLOCKS", 24)
    monkeypatch.setattr(od, "PATH_ROWS", 300)
    g, pz = wd24
    pr = true_pairing(pz, g.answer)
    truth = list(pr.out_of)
    a, b = 0, 1
    pr.out_of[a], pr.out_of[b] = truth[b], truth[a]
    pr.confident = False
    pr.margin_row = np.asarray(pr.margin_row, np.float64).copy()
    pr.margin_row[[a, b]] = -1.0  # (as a wrong pair's would be: the least confident pieces may re-pair)
    calls = []
    real = bm.path_search

    def spy(X, target, weights, o_in, o_out, **kw):
        out = real(X, target, weights, o_in, o_out, **kw)
        if kw.get("max_rounds", 1) > 0:
            wrong_before = sum(o != truth[i] for i, o in zip(o_in, o_out))
            wrong_after = sum(o != truth[i] for i, o in zip(out.order_in, out.order_out))
            calls.append((tuple(kw.get("kinds")), wrong_before, wrong_after))
            if kw.get("kinds") == (mv.REPAIR,):  # only the least confident quarter may re-pair, 0 and 1 among them
                flags = kw.get("repairable")
                assert sum(flags) == round(od.PATH_PAIR_SHARE * pz.n_blocks) and flags[a] and flags[b], flags
        return out

    monkeypatch.setattr(bm, "path_search", spy)
    r = order(pz, pr, seed=0, time_limit=300)
    assert r.stopped == "exact", (r.runs, calls)
    assert [o != truth[i] for i, o in zip(r.order, r.order_out)] == [False] * pz.n_blocks
    blocks = (mv.ADJACENT, mv.SWAP, mv.INSERT)
    assert calls and calls[0][0] == blocks and calls[0][1] == 2, calls  # the blocks first, with both pairs wrong
    turns = [c for c in calls if c[0] == (mv.REPAIR,)]
    # a re-pairing turn mends both (the first turns, far from the answer, may only trade one wrong pair for
    # another: seen on this fixture)
    assert any(before == 2 and after == 0 for _, before, after in turns), calls
    assert set(c[0] for c in calls) <= {blocks, (mv.REPAIR,)}, calls


def test_least_confident_flags_the_lowest_margins():
    """The pieces that may re-pair: the share with the lowest of their row and column margins (at least 2, ties
    by stack index); None when the pairing carries no margins."""
    from types import SimpleNamespace

    from unshuffle.ordering import least_confident

    p = SimpleNamespace(margin_row=np.array([0.5, -0.1, 2.0, 0.3, 1.0, 0.2, 0.9, 0.0]),
                        margin_col=np.array([0.4, 1.0, -0.5, 0.3, 1.0, 0.9, 0.9, 0.0]))
    # the lower margins: 0.4, -0.1, -0.5, 0.3, 1.0, 0.2, 0.9, 0.0
    assert least_confident(p, 0.25) == [False, True, True, False, False, False, False, False]  # -0.5, -0.1
    assert least_confident(p, 0.5) == [False, True, True, False, False, True, False, True]  # then 0.0, 0.2
    assert sum(least_confident(p, 0.01)) == 2
    assert least_confident(SimpleNamespace(), 0.25) is None


def test_a_warm_start_is_the_first_run_and_the_ils_goes_on_from_it(wd24):
    """order(start=): the start order is scored first (run "start"); under "auto" the plan begins with the ILS.
    From the answer moved by 3 random insertions the solve ends exact; from the answer itself nothing else runs;
    a start that is not two permutations of the blocks is refused before any work."""
    g, pz = wd24
    pr = true_pairing(pz, g.answer)
    ti, to = pz.blocks_of(g.answer)
    rng = np.random.default_rng(5)
    si, so = list(ti), list(to)
    for _ in range(3):
        i, j = (int(v) for v in rng.choice(pz.n_blocks, 2, replace=False))
        si, so = mv.apply_move(si, so, mv.INSERT, i, j)
    assert (si, so) != (ti, to)
    r = order(pz, pr, seed=0, time_limit=300, start=(si, so))
    assert r.runs[0][0] == "start" and r.runs[0][1] > 0
    assert r.plan[0] == "ils"
    assert r.stopped == "exact" and (list(r.order), list(r.order_out)) == (ti, to)
    r = order(pz, pr, seed=0, time_limit=300, start=(ti, to))
    assert [run[0] for run in r.runs] == ["start"] and r.stopped == "exact"
    for bad in ((ti[:-1], to), (ti, [0] * len(to)), ("abc", to), (ti,)):
        with pytest.raises(ValueError, match="start"):
            order(pz, pr, start=bad)


@pytest.fixture(scope="module")
def brief24(tmp_path_factory):
    """A `brief` net (weights near init: no pairing signal in them) that the first-order data pairing pairs only
    half right (12 of 24 when written; tests that need wrong pairs check it)."""
    folder = tmp_path_factory.mktemp("brief24")
    g = make_puzzle(folder, blocks=24, dim=32, hidden=64, rows=2000, seed=3, regime="brief")
    return g, load_puzzle(folder)


@pytest.mark.slow
def test_pairing_beam_builds_the_pairing_with_the_order(brief24):
    """The pairing beam alone, choosing each block's out piece in the context of the prefix before it, ends exact
    with every pair right where the data pairing has wrong pairs."""
    g, pz = brief24
    true_pairs = {(g.answer[2 * j], g.answer[2 * j + 1]) for j in range(24)}
    pr = pair(pz, "data_fo")
    assert len(true_pairs & set(pr.pairs)) <= 20
    r = order(pz, pr, stages=["pairbeam"], time_limit=600)
    assert r.stopped == "exact" and r.start.startswith("pairbeam"), r.runs
    assert {(pz.inp_ids[a], pz.out_ids[b]) for a, b in zip(r.order, r.order_out)} == true_pairs
    assert [v for a, b in zip(r.order, r.order_out) for v in (pz.inp_ids[a], pz.out_ids[b])] == g.answer[:-1]


@pytest.mark.slow
def test_pairing_beam_widens_until_exact(brief24, monkeypatch):
    """Widths in turn, each polished: a wider beam runs only after the last one's polish was not exact."""
    import unshuffle.ordering as od

    g, pz = brief24
    monkeypatch.setattr(od, "PAIR_BEAM_WIDTHS", (1, 2, 4, 8))
    r = order(pz, pair(pz, "data_fo"), stages=["pairbeam"], time_limit=600)
    beams = [run for run in r.runs if run[0].startswith("pairbeam")]
    assert [run[0] for run in beams] == [f"pairbeam{w}" for w in (1, 2, 4, 8)[:len(beams)]]
    assert all(run[2] != "exact" for run in beams[:-1]) and beams[-1][2] == "exact", beams


def test_pairing_beam_leads_the_plan_only_for_a_data_pairing(wd24, monkeypatch):
    """The auto plan puts the pairing beam first only when the pairing came from the data (``data_fo``) on a net
    that is neither easy nor explosive; a weight pairing (wd24's trace) keeps the tame plan as it was."""
    import unshuffle.ordering as od

    class Planned(Exception):
        pass

    def spy(msg, *args):  # the plan is logged once, before any stage runs: stop there
        if msg.startswith("%s network"):
            raise Planned(args[0], args[2].split(", "))

    g, pz = wd24
    monkeypatch.setattr(od.log, "info", spy)
    plans = {}
    for method in ("trace", "data_fo"):
        pr = true_pairing(pz, g.answer)
        pr.method = method
        with pytest.raises(Planned) as e:
            order(pz, pr)
        plans[method] = e.value.args
    assert plans["trace"][0] == "tame" and "pairbeam" not in plans["trace"][1], plans
    assert plans["data_fo"][1] == ["pairbeam"] + plans["trace"][1], plans
