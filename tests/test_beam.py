"""The probe beam and the path search in the C++ core against their numpy references (unshuffle.beam)."""
import numpy as np
import pytest

from unshuffle import _core
from unshuffle import beam as bm
from unshuffle import moves as mv
from unshuffle.cancel import CancelToken

F32 = np.float32


def net(seed, N=6, d=8, h=12, R=160, k=1, scale=0.6):
    """A random residual net and a target made by a known order (so the true order has probe loss ~0 at the
    end), float32 arrays."""
    rng = np.random.default_rng(seed)
    W_in = (scale * rng.standard_normal((N, h, d)) / np.sqrt(d)).astype(F32)
    b_in = (0.2 * rng.standard_normal((N, h))).astype(F32)
    W_out = (scale * rng.standard_normal((N, d, h)) / np.sqrt(h)).astype(F32)
    b_out = (0.2 * rng.standard_normal((N, d))).astype(F32)
    X = rng.standard_normal((R, d)).astype(F32)
    ti, to = rng.permutation(N), rng.permutation(N)
    x = X
    for a, b in zip(ti, to):
        x = bm._block(x, W_in, b_in, W_out, b_out, a, b)
    W_last = rng.standard_normal((k, d)).astype(F32)
    target = (x @ W_last.T).astype(F32)
    return X, target, (W_in, b_in, W_out, b_out), list(ti), list(to)


@pytest.mark.parametrize("features", ["quadratic", "linear"])
@pytest.mark.parametrize("R,d,k", [(1, 3, 1), (63, 5, 1), (64, 8, 2), (65, 16, 3), (300, 24, 1)])
def test_probe_sse_matches_lstsq(features, R, d, k):
    """Row counts around the core's 64-row tile; widths around the SIMD padding. The core solves the normal
    equations in double after per-tile float32 Gram sums and measures the residual in a second pass (SSE is
    stationary in the coefficients), so it agrees with lstsq to ~1e-6 relative; 1e-5 leaves margin."""
    rng = np.random.default_rng(R * 100 + d)
    x = (3 * rng.standard_normal((R, d))).astype(F32)
    t = rng.standard_normal((R, k)).astype(F32)
    got = _core.probe_sse(x, t, features)
    ref = bm.probe_sse_reference(x, t, features)
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-9 * float((t.astype(np.float64) ** 2).sum()) + 1e-12)


def test_probe_sse_dependent_features_are_dropped_not_nan():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 6)).astype(F32)
    x[:, 2] = 1.0  # constant column: x, x*x and the intercept coincide
    x[:, 4] = x[:, 3]  # duplicate column
    t = (x[:, :1] * 2 - x[:, 3:4]).astype(F32)
    got = _core.probe_sse(x, t, "quadratic")
    assert np.isfinite(got) and got == pytest.approx(bm.probe_sse_reference(x, t, "quadratic"), abs=1e-6)
    assert got < 1e-6  # t is linear in x: exactly in the span


def test_probe_sse_stays_accurate_on_a_collapsed_exploding_stream():
    """A stream that has collapsed onto a few directions and grown to |x| ~ 1e4 (what a badly ordered chaotic
    net produces): the raw features' condition number is ~1e6, which a float32 Gram cannot solve; after the
    whitening the core agrees with lstsq."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal((2000, 3))
    x = base @ rng.standard_normal((3, 24)) * 300 + 1e-3 * rng.standard_normal((2000, 24))
    x[:5] *= 40  # a few exploding rows
    t = np.tanh(base[:, :1]) + 0.1 * rng.standard_normal((2000, 1))
    x, t = x.astype(F32), t.astype(F32)
    for features in ("quadratic", "linear"):
        got, ref = _core.probe_sse(x, t, features), bm.probe_sse_reference(x, t, features)
        assert got == pytest.approx(ref, rel=1e-4)
        assert got <= float(((t - t.mean()) ** 2).sum()) * (1 + 1e-9)


@pytest.mark.parametrize("seed,width", [(0, 1), (1, 3), (2, 4), (3, 2)])
def test_probe_beam_matches_reference(seed, width):
    X, target, w, ti, to = net(seed)
    allowed = bm.allowed_table([int(b) for _, b in sorted(zip(ti, to))])
    out = bm.probe_beam(X, target, w, allowed, width=width)
    ri, ro, rl = bm.probe_beam_reference(X, target, *w, allowed, width=width)
    assert out.stopped == "done"
    assert [o[0] for o in out.orders] == ri and [o[1] for o in out.orders] == ro
    np.testing.assert_allclose(out.losses, rl, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("seed,width,screen_rows,screen_keep", [
    (0, 2, 40, 3),    # screened: M = 3 of up to 2 x 8 candidates per depth
    (1, 1, 24, 0),    # M = width = 1; 24 rows (just above the 17 quadratic features)
    (2, 3, 80, 12),   # M >= every depth's candidate count after the first few: the same as no screening
    (3, 2, 159, 2),   # one row short of all
    (4, 2, 160, 2),   # screen_rows = R: off
])
def test_probe_beam_screening_matches_reference(seed, width, screen_rows, screen_keep):
    X, target, w, ti, to = net(seed, N=8)
    allowed = bm.allowed_table([int(b) for _, b in sorted(zip(ti, to))])
    out = bm.probe_beam(X, target, w, allowed, width=width, screen_rows=screen_rows, screen_keep=screen_keep)
    ri, ro, rl = bm.probe_beam_reference(X, target, *w, allowed, width=width, screen_rows=screen_rows,
                                         screen_keep=screen_keep)
    assert out.stopped == "done"
    assert [o[0] for o in out.orders] == ri and [o[1] for o in out.orders] == ro
    # the kept states' losses are all-rows losses, whatever screened them
    np.testing.assert_allclose(out.losses, rl, rtol=1e-5, atol=1e-9)
    for (oi, oo), l in zip(out.orders, out.losses):
        x = X
        for a, b in zip(oi, oo):
            x = bm._block(x, *w, a, b)
        assert l == pytest.approx(bm.probe_sse_reference(x, target) / target.size, rel=1e-4, abs=1e-9)


def test_probe_beam_screening_changes_the_search_and_counts_rescored():
    X, target, w, ti, to = net(5, N=8)
    allowed = bm.allowed_table([int(b) for _, b in sorted(zip(ti, to))])
    r = _core.probe_beam(X, target, *w, allowed, width=2, screen_rows=30, screen_keep=4)
    full = _core.probe_beam(X, target, *w, allowed, width=2)
    assert r["candidates"] == full["candidates"]  # every candidate is screened
    # depths with more than M = 4 candidates re-score 4 on all rows; the last depths (<= 4 candidates) none
    per_depth = [2 * (8 - p) if p else 8 for p in range(8)]
    assert r["rescored"] == sum(4 for K in per_depth if K > 4)
    assert full["rescored"] == 0


def test_probe_beam_joint_pairing_and_prefix():
    X, target, w, ti, to = net(7, N=5)
    rng = np.random.default_rng(0)
    allowed = np.full((5, 2), -1, np.int64)
    true_out = dict(zip(ti, to))
    for a in range(5):  # the true out piece and one other, in a random column
        other = int(rng.choice([b for b in range(5) if b != true_out[a]]))
        allowed[a] = rng.permutation([true_out[a], other])
    prefix = [(ti[0], to[0])]
    out = bm.probe_beam(X, target, w, allowed, width=3, prefix=prefix)
    ri, ro, rl = bm.probe_beam_reference(X, target, *w, allowed, width=3, prefix=prefix)
    assert [o[0] for o in out.orders] == ri and [o[1] for o in out.orders] == ro
    assert all(o[0][0] == ti[0] and o[1][0] == to[0] for o in out.orders)
    for oi, oo in out.orders:  # every final state pairs each in piece with an allowed, unused out piece
        assert sorted(oo) == sorted(set(oo)) and all(b in allowed[a] for a, b in zip(oi, oo))


@pytest.mark.parametrize("seed,width,screen_rows", [(8, 1, 0), (9, 4, 0), (10, 4, 40), (11, 2, 100)])
def test_probe_beam_with_every_out_piece_allowed_matches_reference(seed, width, screen_rows):
    """The pairing beam's table (ordering.PAIR_BEAM_WIDTHS): every out piece allowed for every in piece, the
    pairing's own first, with and without screening; the beam builds the pairing with the order."""
    N = 6
    X, target, w, ti, to = net(seed, N=N)
    allowed = bm.allowed_table(list(range(N)), np.zeros((N, N)), extra=N - 1)
    assert all(sorted(row) == list(range(N)) and row[0] == a for a, row in enumerate(allowed.tolist()))
    out = bm.probe_beam(X, target, w, allowed, width=width, screen_rows=screen_rows, screen_keep=4 * width)
    ri, ro, rl = bm.probe_beam_reference(X, target, *w, allowed, width=width, screen_rows=screen_rows,
                                         screen_keep=4 * width)
    assert [o[0] for o in out.orders] == ri and [o[1] for o in out.orders] == ro
    np.testing.assert_allclose(out.losses, rl, rtol=1e-5, atol=1e-9)
    assert all(sorted(oo) == list(range(N)) for _, oo in out.orders)  # each a pairing: no out piece twice


ALL_KINDS = (mv.ADJACENT, mv.SWAP, mv.INSERT, mv.REPAIR)


# linear: the deep tame plan's path search; (REPAIR,): its re-pairing turns, from a wrongly paired order
@pytest.mark.parametrize("features,kinds", [("quadratic", ALL_KINDS), ("linear", ALL_KINDS), ("linear", (mv.REPAIR,))])
@pytest.mark.parametrize("seed", [0, 4, 5])
def test_path_search_matches_reference(seed, features, kinds):
    X, target, w, ti, to = net(seed, N=6)
    rng = np.random.default_rng(seed + 50)
    p = rng.permutation(6)
    oi, oo = [ti[i] for i in p], [to[i] for i in p]
    if kinds == (mv.REPAIR,):  # the true order, three out pieces rotated: only re-pairing moves can mend it
        oi, oo = list(ti), list(to)
        oo[1], oo[3], oo[4] = oo[3], oo[4], oo[1]
    got = bm.path_search(X, target, w, oi, oo, kinds=kinds, max_rounds=50, features=features)
    ri, ro, rJ, rh = bm.path_search_reference(X, target, *w, oi, oo, kinds=kinds, max_rounds=50,
                                              features=features)
    assert [h[1:4] for h in got.history] == [h[1:4] for h in rh]  # same moves (kind, i, j), round by round
    assert got.order_in == ri and got.order_out == ro
    assert got.J == pytest.approx(rJ, rel=1e-5)
    assert got.stopped in ("local_optimum", "max_rounds")
    if kinds == (mv.REPAIR,):  # it re-paired, and moved no block
        assert got.history and got.order_in == oi, got.history
    # atol: a depth where the target is exactly readable has probe loss ~0 (1e-13 in lstsq, ~1e-11 through
    # the normal equations in double): both are zero at the target's scale (mean square ~1)
    np.testing.assert_allclose(got.path, bm.path_losses_reference(X, target, *w, ri, ro, features), rtol=1e-5,
                               atol=1e-9 * float((target.astype(np.float64) ** 2).mean()))


@pytest.mark.parametrize("list_keep", [1, 4, 200])
@pytest.mark.parametrize("seed", [0, 3])
def test_candidate_list_path_search_matches_reference(seed, list_keep):
    """With a candidate list (after a full round only the ``list_keep`` moves that improved most are re-scored,
    until none of them improves) the core makes the reference's moves round by round and stops only where a
    full round finds no improving move. 200 > the ~60 moves at N=8: the whole list each time."""
    X, target, w, ti, to = net(seed, N=8, R=200)
    p = np.random.default_rng(seed + 60).permutation(8)
    oi, oo = [ti[i] for i in p], [to[i] for i in p]
    kinds = (mv.ADJACENT, mv.SWAP, mv.INSERT)
    kw = dict(kinds=kinds, max_rounds=50, features="linear", list_keep=list_keep)
    if list_keep == 4:  # with re-pairing moves limited to flagged pieces (a listed one may stop being allowed)
        flags = [True] * 8
        flags[ti[0]] = flags[ti[5]] = False
        kw.update(kinds=ALL_KINDS, repairable=flags)
    got = bm.path_search(X, target, w, oi, oo, **kw)
    ri, ro, rJ, rh = bm.path_search_reference(X, target, *w, oi, oo, **kw)
    assert [h[1:4] for h in got.history] == [h[1:4] for h in rh]
    assert got.order_in == ri and got.order_out == ro
    assert got.J == pytest.approx(rJ, rel=1e-5)
    assert got.stopped == "local_optimum" and got.history
    assert 1 <= got.full_rounds < got.rounds  # some moves came from the list alone
    again = bm.path_search(X, target, w, got.order_in, got.order_out, **dict(kw, list_keep=0))
    assert again.history == [] and again.order_in == got.order_in


def test_path_search_rejects_a_negative_list_keep():
    X, target, w, ti, to = net(0, N=4)
    with pytest.raises(ValueError, match="list_keep must be >= 0"):
        bm.path_search(X, target, w, ti, to, list_keep=-1)


@pytest.mark.parametrize("seed", [0, 4, 5])
def test_path_search_re_pairs_only_repairable_pieces(seed):
    """``repairable`` limits re-pairing moves to pairs of flagged in pieces, in the core as in the reference:
    with two rightly paired pieces unflagged, every move the core makes stays among the flagged pieces (the
    trusted pairs never change) and matches the reference move by move."""
    X, target, w, ti, to = net(seed, N=6)
    oi, oo = list(ti), list(to)
    oo[1], oo[3], oo[4] = oo[3], oo[4], oo[1]
    flags = [True] * 6
    flags[ti[0]] = flags[ti[2]] = False  # pieces whose pairs are right: trusted
    kinds = (mv.REPAIR,)
    got = bm.path_search(X, target, w, oi, oo, kinds=kinds, max_rounds=50, features="linear", repairable=flags)
    ri, ro, rJ, rh = bm.path_search_reference(X, target, *w, oi, oo, kinds=kinds, max_rounds=50, features="linear",
                                              repairable=flags)
    assert [h[1:4] for h in got.history] == [h[1:4] for h in rh]
    assert got.order_in == ri and got.order_out == ro
    assert got.order_out[0] == to[0] and got.order_out[2] == to[2]  # the trusted pairs never moved
    assert all(flags[oi[h[2]]] and flags[oi[h[3]]] for h in got.history), got.history


@pytest.mark.parametrize("seed,N,R", [(0, 6, 160), (1, 9, 63), (2, 12, 300)])
def test_probe_curve_matches_reference(seed, N, R):
    """The probe loss of an order at depths 0..N (the tail beams' stall test) against numpy, on a random order
    and on the true one (whose loss falls to ~0 at depth N)."""
    X, target, w, ti, to = net(seed, N=N, R=R)
    p = np.random.default_rng(seed + 7).permutation(N)
    atol = 1e-9 * float((target.astype(np.float64) ** 2).mean())  # as above: ~0 at the end of the true order
    for oi, oo in (([ti[i] for i in p], [to[i] for i in p]), (ti, to)):
        got = bm.probe_curve(X, target, w, oi, oo)
        ref = np.concatenate([[bm.probe_sse_reference(X, target) / target.size],
                              bm.path_losses_reference(X, target, *w, oi, oo)])
        assert got.shape == (N + 1,)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=atol)
    assert got[-1] < 1e-6 * got[0]  # the true order reads the target exactly at the end


@pytest.mark.parametrize("curve,tol,want", [
    ([10, 8, 6, 4, 2, 0], 0.02, 5),          # falls to the end: the stall is the end
    ([10, 5, 3.2, 3.1, 3.05, 3.0], 0.02, 3),  # flat from depth 3 (3.1 <= 3 + 0.02 * 7 < 3.2)
    ([10, 5, 3.2, 3.1, 3.05, 3.0], 0.0, 5),   # tol 0: the minimum itself
    ([10, 5, 3, 2.0, 2.5, 2.1], 0.02, 3),    # a minimum before the end
    ([4, 4, 4], 0.02, 0),                    # no fall at all
    ([5, 7, 9], 0.02, 0),                    # rises: depth 0 is the minimum
])
def test_stall_depth(curve, tol, want):
    assert bm.stall_depth(curve, tol) == want


def test_joint_pairing_keeps_every_piece_pairable():
    """Two allowed out pieces per in piece, arranged so that greedy choices can strand a piece: every final
    order still pairs all pieces, and the core agrees with the reference."""
    X, target, w, ti, to = net(11, N=6)
    true_out = dict(zip(ti, to))
    allowed = np.asarray([[true_out[a], true_out[(a + 1) % 6]] for a in range(6)], np.int64)  # a cycle
    out = bm.probe_beam(X, target, w, allowed, width=4)
    ri, ro, rl = bm.probe_beam_reference(X, target, *w, allowed, width=4)
    assert len(out.orders) == 4 and [o[0] for o in out.orders] == ri and [o[1] for o in out.orders] == ro
    for oi, oo in out.orders:
        assert sorted(oo) == list(range(6))


def test_beam_stopped_midway_returns_nothing_and_stays_sound():
    """Regression: a beam stopped after some depths returned the kept losses with no orders, and the binding
    copied them into an empty array (heap corruption). Limits spread so that some land mid-run; every outcome
    is valid, and later calls still work."""
    X, target, w, ti, to = net(12, N=12, R=600)
    allowed = bm.allowed_table([int(b) for _, b in sorted(zip(ti, to))])
    for limit in (1e-4, 1e-3, 3e-3, 1e-2, 3e-2):
        out = bm.probe_beam(X, target, w, allowed, width=8, token=CancelToken(limit))
        assert (out.stopped == "done" and len(out.orders) == 8) or (out.orders == [] and out.losses == [])
    assert bm.probe_beam(X, target, w, allowed, width=8).stopped == "done"


def test_path_search_first_keeps_the_prefix():
    X, target, w, ti, to = net(9, N=7)
    oi, oo = list(reversed(ti)), list(reversed(to))
    got = bm.path_search(X, target, w, oi, oo, first=3)
    assert got.order_in[:3] == oi[:3] and got.order_out[:3] == oo[:3]
    ri, ro, rJ, _ = bm.path_search_reference(X, target, *w, oi, oo, first=3)
    assert got.order_in == ri and got.J == pytest.approx(rJ, rel=1e-5)


def test_beam_and_path_search_stop_on_the_token():
    X, target, w, ti, to = net(3, N=8)
    tok = CancelToken()
    tok.cancel()
    out = bm.probe_beam(X, target, w, bm.allowed_table(list(range(8))), token=tok)
    assert out.stopped == "interrupted" and out.orders == []
    p = bm.path_search(X, target, w, ti[::-1], to[::-1], token=tok)
    assert p.stopped == "interrupted" and p.rounds == 0
    p = bm.path_search(X, target, w, ti[::-1], to[::-1], token=CancelToken(1e-9))
    assert p.stopped == "time_limit"


def test_validation_errors_name_the_argument():
    X, target, w, ti, to = net(0, N=4)
    with pytest.raises(ValueError, match=r"allowed\[1, 0\] = 9 is out of range"):
        _core.probe_beam(X, target, *w, np.asarray([[0], [9], [2], [3]], np.int64))
    with pytest.raises(ValueError, match="width must be >= 1"):
        _core.probe_beam(X, target, *w, np.arange(4, dtype=np.int64).reshape(4, 1), width=0)
    with pytest.raises(ValueError, match="prefix_in repeats piece 1"):
        _core.probe_beam(X, target, *w, np.arange(4, dtype=np.int64).reshape(4, 1),
                         prefix_in=np.asarray([1, 1], np.int64), prefix_out=np.asarray([0, 2], np.int64))
    with pytest.raises(ValueError, match="screen_rows must be >= 0"):
        _core.probe_beam(X, target, *w, np.arange(4, dtype=np.int64).reshape(4, 1), screen_rows=-1)
    with pytest.raises(ValueError, match="screen_keep must be >= 0"):
        _core.probe_beam(X, target, *w, np.arange(4, dtype=np.int64).reshape(4, 1), screen_keep=-2)
    with pytest.raises(ValueError, match="features must be 'linear' or 'quadratic'"):
        _core.probe_sse(X, target, "cubic")
    with pytest.raises(ValueError, match="first must be >= 0"):
        _core.path_search(X, target, *w, np.arange(4, dtype=np.int64), np.arange(4, dtype=np.int64), first=-1)
    with pytest.raises(ValueError, match=r"repairable must hold one flag per in piece \(4\), got 3"):
        _core.path_search(X, target, *w, np.arange(4, dtype=np.int64), np.arange(4, dtype=np.int64),
                          repairable=[True, False, True])


def test_estimate_wrong_compares_with_another_family():
    """The anytime diagnosis counts positions where the best order differs from the best run of another
    lineage; runs polished from the same beam do not count as independent."""
    from types import SimpleNamespace

    from unshuffle.ordering import estimate_wrong

    best = SimpleNamespace(order_in=[0, 1, 2, 3], order_out=[0, 1, 2, 3])
    results = [
        (1.0, "beam16#0", [0, 1, 2, 3], [0, 1, 2, 3]),
        (1.5, "beam16#1+path0", [0, 1, 2, 3], [0, 1, 2, 3]),  # same family: ignored
        (3.0, "greedy", [1, 0, 2, 3], [1, 0, 2, 3]),  # 2 positions differ
        (2.0, "norm", [0, 1, 2, 3], [0, 1, 3, 2]),  # re-paired last two: 2 positions differ, lower loss wins
    ]
    assert estimate_wrong(results, "beam16#0", best) == (2, "norm")
    assert estimate_wrong(results[:2], "beam16#0", best) == (None, None)
    assert estimate_wrong(results[:3], "beam16#0", best) == (2, "greedy")
