"""The device-resident search (unshuffle.gpu_search) against the Python reference loop (the oracle).

Without a GPU the kernel runs under triton's interpreter on CPU tensors (slow: the cases are small). What
is compared exactly: the sequence of moves (round, kind, i, j, candidates) in the history, rounds,
candidates scored, block rows, the stop reason and the final order. Losses are compared with a tolerance:
the device computes them with its own kernel (tiled fp32 products, float64 sums over tiles) where the
reference sums in another order; both are float32 forwards of the same blocks, ~1e-7 relative apart for
these depths, and losses near 0 (a right order) have an absolute floor instead. Those tiny differences
could only change a trajectory at a near-tie (two candidates within ~1e-7 relative of each other) or at a
loss within that of a threshold; these random cases have none (checked: the trajectories agree).
"""
import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from unshuffle import moves as mv  # noqa: E402
from unshuffle.backends import get_scorer  # noqa: E402
from unshuffle.gpu_search import CALLS, device_local_search, device_multi_search, prepare_problem  # noqa: E402
from unshuffle.reference import final_sse, forward_prefixes  # noqa: E402
from unshuffle.search import local_search  # noqa: E402

from conftest import make_random_net  # noqa: E402

LOSS_RTOL, LOSS_ATOL = 2e-5, 1e-9


pytestmark = pytest.mark.usefixtures("few_threads")  # (conftest)


def net(seed=5, n=6, **kw):
    pz, pi, po = make_random_net(n=n, d=kw.get("d", 5), h=kw.get("h", 9), k=kw.get("k", 1), rows=kw.get("rows", 40), seed=seed)
    return pz, pi, po, (pz.W_in, pz.b_in, pz.W_out, pz.b_out, pz.W_last, pz.b_last)


def assert_same_trajectory(ref, dev):
    assert [h[:4] + h[5:] for h in dev.history] == [h[:4] + h[5:] for h in ref.history]
    np.testing.assert_allclose([h[4] for h in dev.history], [h[4] for h in ref.history], rtol=LOSS_RTOL, atol=LOSS_ATOL)
    assert (dev.rounds, dev.candidates_scored, dev.block_rows, dev.stopped) == (
        ref.rounds, ref.candidates_scored, ref.block_rows, ref.stopped)
    assert (dev.order_in, dev.order_out) == (ref.order_in, ref.order_out)
    assert dev.loss == pytest.approx(ref.loss, rel=LOSS_RTOL, abs=LOSS_ATOL)


def scrambled(pi, po, positions):
    oi, oo = list(pi), list(po)
    for i in positions:
        oi, oo = mv.apply_move(oi, oo, mv.ADJACENT, i, i + 1)
    return oi, oo


RNG = np.random.default_rng(1)
RANDOM_STARTS = [(RNG.permutation(6).tolist(), RNG.permutation(6).tolist()) for _ in range(3)]
CASES = {
    # name: (start, kwargs) - random starts never reach the answer here: kicks, levels and local optima run
    "random_adjacent_then_swap_insert_kicks": (RANDOM_STARTS[0], dict(schedule=((0,), (1, 2)), kicks=2, seed=3, stop_loss=-1.0)),
    "random_full_schedule": (RANDOM_STARTS[1], dict(kicks=1, seed=4, stop_loss=1e-10)),
    "multi_accept_disjoint_errors": ("scramble", dict(multi=True, stop_loss=1e-10, kicks=1, seed=2)),
    "repair_wrong_pairing": ("repair", dict(stop_loss=1e-10)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_matches_reference_loop(case):
    pz, pi, po, w = net()
    start, kw = CASES[case]
    if start == "scramble":
        start = scrambled(pi, po, (0, 2, 4))
    elif start == "repair":
        oo = list(po)
        oo[1], oo[4] = oo[4], oo[1]
        start = (list(pi), oo)
    ref = local_search(get_scorer("reference"), pz.X, pz.pred, *w, *start, **kw)
    dev = device_local_search(get_scorer("reference"), pz.X, pz.pred, *w, *start, device="cpu", **kw)
    assert_same_trajectory(ref, dev)
    if case == "multi_accept_disjoint_errors":  # one round took all three swaps, and it is the answer
        assert dev.stopped == "exact" and dev.rounds == 1 and len(dev.history) == 3
        assert (dev.order_in, dev.order_out) == (pi, po)
    if case == "repair_wrong_pairing":
        assert any(h[1] == mv.REPAIR for h in dev.history) and dev.stopped == "exact"
    if case.startswith("random"):
        assert any(h[1] == mv.KICK for h in dev.history)


def test_round_costs_one_scoring_launch_and_one_copy_back():
    """No kicks, no multi: a round is one scoring launch + one copy back, plus one forward launch (no copy)
    when it moves; the start adds one forward and one copy."""
    pz, pi, po, w = net()
    oi, oo = scrambled(pi, po, (1, 3))
    stats = {}
    res = device_local_search(None, pz.X, pz.pred, *w, oi, oo, stop_loss=1e-10, device="cpu", stats=stats)
    moved = len(res.history)
    assert res.stopped == "exact" and moved >= 1
    assert stats["lockstep_rounds"] == res.rounds
    assert stats["syncs"] == 1 + res.rounds
    assert stats["launches"] == 1 + res.rounds + moved


def test_matches_native_cpp_loop():
    core = pytest.importorskip("unshuffle._core", reason="C++ extension not built")  # noqa: F841
    from unshuffle.search import local_search_native

    pz, pi, po, w = net(seed=9)
    oi, oo = RANDOM_STARTS[2]
    kw = dict(schedule=((0,), (1, 2), (3,)), stop_loss=1e-10, kicks=1, seed=5, multi=True)
    ref = local_search_native(pz.X, pz.pred, *w, oi, oo, **kw)
    dev = device_local_search(None, pz.X, pz.pred, *w, oi, oo, device="cpu", **kw)
    assert_same_trajectory(ref, dev)


def test_multi_start_equals_separate_searches():
    """Searches sharing launches do not influence each other: each equals its own single run (bit for bit,
    since every candidate's loss comes from the same kernel arithmetic either way)."""
    pz, pi, po, w = net()
    starts = [RANDOM_STARTS[0], scrambled(pi, po, (0, 3)), RANDOM_STARTS[1]]
    kw = dict(schedule=((0,), (1, 2)), kicks=1, stop_loss=1e-10)
    together = device_multi_search(None, pz.X, pz.pred, *w, starts, seeds=[7, 8, 9], device="cpu", **kw)
    prob = prepare_problem(pz.X, pz.pred, *w, device="cpu")
    for start, seed, got in zip(starts, [7, 8, 9], together):
        alone = device_local_search(None, pz.X, pz.pred, *w, *start, seed=seed, problem=prob, **kw)
        assert got.history == alone.history
        assert (got.order_in, got.order_out, got.loss, got.rounds, got.stopped) == (
            alone.order_in, alone.order_out, alone.loss, alone.rounds, alone.stopped)
    assert together[1].stopped == "exact"


def test_stop_when_exact_supersedes_the_others():
    pz, pi, po, w = net()
    starts = [RANDOM_STARTS[0], scrambled(pi, po, (2,))]
    res = device_multi_search(None, pz.X, pz.pred, *w, starts, stop_loss=1e-10, kicks=5, stop_when_exact=True, device="cpu")
    assert res[1].stopped == "exact" and (res[1].order_in, res[1].order_out) == (pi, po)
    assert res[0].stopped == "superseded"
    assert res[0].loss <= final_sse(forward_prefixes(pz.X, *starts[0], *w[:4])[-1], w[4], w[5], pz.pred) * (1 + 1e-6)


def test_should_stop_time_limit_and_progress():
    pz, pi, po, w = net()
    oi, oo = RANDOM_STARTS[1]
    calls = []
    res = device_local_search(None, pz.X, pz.pred, *w, oi, oo, stop_loss=1e-10, device="cpu",
                              should_stop=lambda: len(calls) >= 2, progress=lambda *a: calls.append(a))
    assert res.stopped == "interrupted" and len(calls) == 2
    assert [(r, mv.KIND_CODES[k]) for r, k, _ in calls] == [(h[0], h[1]) for h in res.history]
    assert res.loss == calls[-1][2] and res.loss < final_sse(forward_prefixes(pz.X, oi, oo, *w[:4])[-1], w[4], w[5], pz.pred)
    res = device_local_search(None, pz.X, pz.pred, *w, oi, oo, time_limit=0.0, device="cpu")
    assert res.stopped == "time_limit" and res.rounds == 0 and (res.order_in, res.order_out) == (oi, oo)
    res = device_local_search(None, pz.X, pz.pred, *w, oi, oo, should_stop=lambda: True, device="cpu")
    assert res.stopped == "interrupted" and res.rounds == 0


def test_tie_goes_to_lowest_candidate_index():
    # Pieces 1 and 2 identical: from [0, 1, 2, 3], swap(0, 2) and insert(0, 2) both give the target's
    # function with bit-identical losses; the earlier kind in the level must win (docs/SEARCH.md).
    pz, _, _, _ = net(seed=6, n=4)
    for t in (pz.W_in, pz.b_in, pz.W_out, pz.b_out):
        t[2] = t[1]
    w = (pz.W_in, pz.b_in, pz.W_out, pz.b_out, pz.W_last, pz.b_last)
    x = forward_prefixes(pz.X, [1, 2, 0, 3], [1, 2, 0, 3], *w[:4])[-1]
    target = x @ pz.W_last.T + pz.b_last
    for sched, first in ((((mv.SWAP, mv.INSERT),), mv.SWAP), (((mv.INSERT, mv.SWAP),), mv.INSERT)):
        res = device_local_search(None, pz.X, target, *w, [0, 1, 2, 3], [0, 1, 2, 3], schedule=sched, stop_loss=1e-10, device="cpu")
        assert res.history[0][1:4] == (first, 0, 2)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_reduced_precision_search_rescored_in_fp32(precision):
    """Scored in tf32/bf16 (emulated here), every accepted loss is the fp32 loss of the accepted order, and
    the search still ends exact at the answer."""
    pz, pi, po, w = net()
    oi, oo = scrambled(pi, po, (0, 3))
    res = device_local_search(None, pz.X, pz.pred, *w, oi, oo, stop_loss=1e-10, precision=precision, device="cpu")
    assert res.stopped == "exact" and (res.order_in, res.order_out) == (pi, po)
    ci, co = oi, oo
    for (_, k, i, j, loss, _) in res.history:
        ci, co = mv.apply_move(ci, co, k, i, j)
        want = final_sse(forward_prefixes(pz.X, ci, co, *w[:4])[-1], w[4], w[5], pz.pred)
        assert loss == pytest.approx(want, rel=LOSS_RTOL, abs=LOSS_ATOL)


def test_validation_and_call_counter():
    pz, pi, po, w = net()
    before = CALLS["device_local_search"]
    with pytest.raises(ValueError, match="outside"):
        device_local_search(None, pz.X, pz.pred, *w, [0, 1, 2, 3, 4, 9], po, device="cpu")
    with pytest.raises(ValueError, match="must both have"):
        device_local_search(None, pz.X, pz.pred, *w, pi[:-1], po, device="cpu")
    with pytest.raises(ValueError, match="precision"):
        device_local_search(None, pz.X, pz.pred, *w, pi, po, precision="fp16", device="cpu")
    with pytest.raises(ValueError, match="seeds"):
        device_multi_search(None, pz.X, pz.pred, *w, [(pi, po)], seeds=[1, 2], device="cpu")
    with pytest.raises(ValueError, match="no starting orders"):
        device_multi_search(None, pz.X, pz.pred, *w, [], device="cpu")
    assert CALLS["device_local_search"] == before + 3
    res = device_local_search(None, pz.X, pz.pred, *w, pi, po, stop_loss=1e-10, device="cpu")
    assert res.stopped == "exact" and res.rounds == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_reference_loop_and_multi_start():
    """Compiled on the GPU: a 16-block search with kicks and multi-accept vs the reference loop, and 8
    kicked searches in one launch vs each alone."""
    pz, pi, po, w = net(seed=11, n=16, d=24, h=40, rows=256)
    rng = np.random.default_rng(0)
    oi, oo = rng.permutation(16).tolist(), list(po)
    kw = dict(stop_loss=1e-10, kicks=3, seed=1, multi=True)
    ref = local_search(get_scorer("reference"), pz.X, pz.pred, *w, oi, oo, **kw)
    dev = device_local_search(None, pz.X, pz.pred, *w, oi, oo, **kw)
    assert_same_trajectory(ref, dev)
    starts = [(rng.permutation(16).tolist(), list(po)) for _ in range(8)]
    many = device_multi_search(None, pz.X, pz.pred, *w, starts, seeds=list(range(8)), kicks=2, stop_loss=1e-10, max_rounds=60)
    for s, got in zip(starts, many[:3]):
        alone = device_local_search(None, pz.X, pz.pred, *w, *s, seed=starts.index(s), kicks=2, stop_loss=1e-10, max_rounds=60)
        assert got.history == alone.history
