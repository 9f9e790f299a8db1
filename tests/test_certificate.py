"""The uniqueness certificate (unshuffle.certificate) and its scorer (_core.branch_errors): the scorer against
the torch reference and against the core's own forward, its per-row invariance (what makes the certificate's
row bounds sound), and the certificate against brute force (every neighbour on every row)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import make_random_net
from unshuffle import moves as mv
from unshuffle import reference
from unshuffle.cancel import CancelToken
from unshuffle.certificate import Certificate, certify, neighbours, reference_scorer
from unshuffle.solver import solve, verify
from unshuffle.testing import random_candidates, random_net

core = pytest.importorskip(
    "unshuffle._core", reason="C++ extension unshuffle._core not built (CI builds it with UNSHUFFLE_REQUIRE_EXT=1)"
)

EPS32 = 2.0 ** -24


def branch(net, oi, oo, starts, si, so, X=None, target=None, **kw):
    X = net.X if X is None else X
    target = net.target if target is None else target
    return core.branch_errors(X, np.asarray(oi, np.int64), np.asarray(oo, np.int64), starts, si, so, *net.weights,
                              target, **kw)


def reference_errors(net, oi, oo, starts, si, so):
    """(max_abs (K,), sse (K,), per-row (K, R)) from the torch reference: prefixes of the order, then the
    contract's candidates with outputs."""
    t = net.tensors()
    prefix = reference.forward_prefixes(t["X"], oi, oo, t["W_in"], t["b_in"], t["W_out"], t["b_out"])
    T = torch.from_numpy
    _, out = reference.score_candidates(prefix, T(starts), T(si), T(so), t["W_in"], t["b_in"], t["W_out"], t["b_out"],
                                        t["W_last"], t["b_last"], t["target"], return_outputs=True)
    diff = (out.double() - t["target"].double()).numpy()
    return np.abs(diff).max(axis=(1, 2)), (diff**2).sum(axis=(1, 2)), np.abs(diff).max(axis=2)


SHAPES = [  # (Ni, No, d, h, k, R, N, K, L): d, h off the SIMD widths; R across the 256-row job chunks
    (5, 5, 13, 21, 2, 50, 5, 40, 7),
    (6, 7, 48, 96, 1, 300, 6, 30, 8),
    (4, 4, 17, 33, 3, 1, 4, 25, 5),
    (8, 8, 40, 100, 1, 97, 8, 300, 10),
    (3, 3, 1, 1, 1, 7, 3, 10, 4),
]


@pytest.mark.parametrize("Ni,No,d,h,k,R,N,K,L", SHAPES)
def test_branch_errors_match_reference(Ni, No, d, h, k, R, N, K, L):
    rng = np.random.default_rng(d * 31 + h)
    net = random_net(int(rng.integers(1 << 30)), n=Ni, n_out=No, d=d, h=h, k=k, rows=R, w_in=1.0, w_out=0.3,
                     b_last=1.0, target="random")
    oi, oo = rng.permutation(Ni)[:N], rng.permutation(No)[:N]
    starts, si, so = random_candidates(rng, K, L, N + 1, Ni, No)
    mx, sse, rows = branch(net, oi, oo, starts, si, so, per_row=True)
    assert mx.dtype == np.float64 and mx.shape == (K,) and sse.shape == (K,) and rows.shape == (K, R)
    want_mx, want_sse, want_rows = reference_errors(net, oi, oo, starts, si, so)
    # float32 block math in two summation orders: per output ~(d + h) eps32 relative per layer, over at most
    # N + L blocks and the head, with a 4x margin; outputs are O(1) (scaled weights), so absolute.
    atol = 4 * (N + L + 1) * (d + h) * EPS32 * max(1.0, float(np.abs(want_rows).max()))
    np.testing.assert_allclose(mx, want_mx, rtol=0, atol=atol)
    np.testing.assert_allclose(rows, want_rows, rtol=0, atol=atol)
    np.testing.assert_allclose(sse, want_sse, rtol=4 * atol, atol=R * k * atol)
    # the per-row maxima make up the max, and the per-row errors the sums (float64 of the same numbers)
    assert np.array_equal(rows.max(axis=1), mx)


def test_each_rows_value_is_independent_of_the_call():
    """What the certificate's bounds rest on: a row's error is the same bits whichever rows, candidates and
    threads share the call, so a max over some rows never exceeds the max over all rows."""
    rng = np.random.default_rng(5)
    N, R = 7, 600  # > 2 row chunks of 256
    net = random_net(5, n=N, d=20, h=36, k=2, rows=R)
    oi, oo = net.order_in, net.order_out
    starts, si, so = random_candidates(rng, 90, 9, N + 1, N, N)
    mx, sse, rows = branch(net, oi, oo, starts, si, so, per_row=True)
    for nt in (1, 2, 3):
        m2, s2, r2 = branch(net, oi, oo, starts, si, so, per_row=True, n_threads=nt)
        assert np.array_equal(m2, mx) and np.array_equal(s2, sse) and np.array_equal(r2, rows)
    for part in (np.arange(1), rng.choice(R, 37, replace=False), np.arange(300, 600)):
        m3, _, r3 = branch(net, oi, oo, starts, si, so, X=net.X[part], target=net.target[part], per_row=True)
        assert np.array_equal(r3, rows[:, part]) and np.all(m3 <= mx)
    sub = rng.choice(90, 11, replace=False)  # other candidates in the call: the same rows
    m4, _, r4 = branch(net, oi, oo, starts[sub], si[sub], so[sub], per_row=True)
    assert np.array_equal(r4, rows[sub]) and np.array_equal(m4, mx[sub])


def test_branch_errors_equal_forward_of_each_neighbour():
    """A neighbour scored by branching equals the core's whole-network forward (verification's arithmetic) of
    that neighbour's order, bit for bit; the order itself (start N, no blocks) gets verify's max abs error."""
    pz, oi, oo = make_random_net(n=7, d=12, h=20, rows=150, seed=3)
    starts, si, so, moves = neighbours(oi, oo)
    a = pz.arrays
    w = (a.W_in, a.b_in, a.W_out, a.b_out, a.W_last, a.b_last)
    X, pred = a.X, a.pred
    mx, sse = core.branch_errors(X, np.array(oi), np.array(oo), starts, si, so, *w, pred)
    for c in range(len(starts)):
        ni, no = mv.apply_move(oi, oo, *(int(x) for x in moves[c]))
        y = core.forward_f32(X, np.array(ni), np.array(no), *w).astype(np.float64)
        assert mx[c] == np.abs(y - pred).max()
    z = np.zeros((1, 0), np.int64)
    m0, _ = core.branch_errors(X, np.array(oi), np.array(oo), np.array([len(oi)]), z, z, *w, pred)
    assert m0[0] == verify(pz, oi, oo).max_abs_err


def test_branch_errors_edge_cases_and_validation():
    net = random_net(1, n=4, d=6, h=10, rows=9)
    oi, oo = np.array(net.order_in), np.array(net.order_out)
    z = np.zeros((0, 3), np.int64)
    mx, sse = branch(net, oi, oo, np.zeros(0, np.int64), z, z)
    assert mx.shape == (0,) and sse.shape == (0,)
    with pytest.raises(ValueError, match=r"branch_errors: starts\[0\] = 5 is out of range \[0, 5\)"):
        branch(net, oi, oo, np.array([5]), np.array([[0]]), np.array([[0]]))
    with pytest.raises(ValueError, match=r"seq_in\[0, 1\] = 4 is out of range"):
        branch(net, oi, oo, np.array([0]), np.array([[0, 4]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match=r"order_in\[0\] = 9 is out of range"):
        branch(net, np.array([9, 1, 2, 3]), oo, np.array([0]), np.array([[0]]), np.array([[0]]))
    with pytest.raises(ValueError, match="X must be a float32 array"):
        branch(net, oi, oo, np.array([0]), np.array([[0]]), np.array([[0]]), X=net.X.astype(np.float64))
    flag = core.StopFlag()
    flag.set()
    with pytest.raises(core.Stopped, match="interrupted"):
        branch(net, oi, oo, np.array([0]), np.array([[0]]), np.array([[0]]), stop=flag)
    with pytest.raises(core.Stopped, match="time_limit"):
        branch(net, oi, oo, np.array([0]), np.array([[0]]), np.array([[0]]), time_limit_s=1e-9)


# ------------------------------------------------------------------------------------------ certificate


def brute_force(pz, oi, oo):
    """Every neighbour on every row with the core: (max abs errors (K,), moves (K, 3))."""
    starts, si, so, moves = neighbours(oi, oo)
    a = pz.arrays
    mx, _ = core.branch_errors(a.X, np.array(oi), np.array(oo), starts, si, so, a.W_in, a.b_in, a.W_out, a.b_out,
                               a.W_last, a.b_last, a.pred)
    return mx, moves


def neighbour_count(N):
    return (N - 1) + (N - 1) * (N - 2) // 2 + (N * N - N - 2 * (N - 1)) + N * (N - 1) // 2


@pytest.mark.parametrize("seed,n,rows", [(0, 6, 200), (1, 9, 700), (2, 12, 1500), (3, 2, 50)])
def test_certificate_equals_brute_force(seed, n, rows):
    pz, oi, oo = make_random_net(n=n, d=16, h=24, rows=rows, seed=seed)
    v = verify(pz, oi, oo)
    assert v.exact
    mx, moves = brute_force(pz, oi, oo)
    c = certify(pz, oi, oo, v.tolerance, row_errors=v.row_err)
    assert c.complete and c.stopped is None
    assert c.neighbours == c.neighbours_checked == len(mx) == neighbour_count(n)
    assert c.min_neighbour_max_abs_err == mx.min()  # exact: the same numbers, not an estimate
    assert c.min_neighbour_error_ratio == mx.min() / v.tolerance
    best = int(np.flatnonzero(mx == mx.min())[0])
    k, i, j = (int(x) for x in moves[best])
    assert (c.move["kind"], c.move["i"], c.move["j"]) == (mv.KIND_NAMES[k], i, j)
    assert c.move["pieces"] == [[pz.inp_ids[oi[p]], pz.out_ids[oo[p]]] for p in (i, j)]
    assert c.neighbour_rows < c.neighbours * rows  # it did not need brute force
    # The row ranking only decides the cost: any other ranking certifies the same minimum and move.
    rng = np.random.default_rng(seed)
    for ranking in (rng.random(rows), -v.row_err, np.zeros(rows)):
        c2 = certify(pz, oi, oo, v.tolerance, row_errors=ranking)
        assert c2.complete and c2.min_neighbour_max_abs_err == mx.min() and c2.move == c.move


def test_certificate_with_the_reference_scorer():
    pz, oi, oo = make_random_net(n=5, d=10, h=14, rows=120, seed=4)
    v = verify(pz, oi, oo)
    cand = neighbours(oi, oo)[:3]
    ref = certify(pz, oi, oo, v.tolerance, scorer=reference_scorer(pz, oi, oo, cand))
    fast = certify(pz, oi, oo, v.tolerance)
    assert ref.complete and ref.move == fast.move
    # torch and the core round differently: per output ~(d + h) eps32 per layer over N + 1 layers
    assert ref.min_neighbour_max_abs_err == pytest.approx(fast.min_neighbour_max_abs_err, abs=4 * 6 * 24 * EPS32 * 10)


def test_certificate_stops_on_the_token():
    pz, oi, oo = make_random_net(n=8, d=16, h=24, rows=300, seed=6)
    v = verify(pz, oi, oo)
    tok = CancelToken()
    tok.cancel()
    c = certify(pz, oi, oo, v.tolerance, token=tok)
    assert not c.complete and c.stopped == "interrupted" and c.neighbours == neighbour_count(8)
    assert c.neighbours_checked == 0 and c.move is None and c.min_neighbour_error_ratio is None
    c = certify(pz, oi, oo, v.tolerance, token=CancelToken(1e-9))
    assert not c.complete and c.stopped == "time_limit"

    calls = []

    def cancel_later(idx, rows, per_row=False):  # cancel once the first champion was scored on every row
        if any(calls):
            tok2.cancel()
        calls.append(rows is None)
        return inner(idx, rows, per_row)

    from unshuffle.certificate import _native_scorer

    tok2 = CancelToken()
    inner = _native_scorer(pz, oi, oo, neighbours(oi, oo)[:3], tok2)
    c = certify(pz, oi, oo, v.tolerance, token=tok2, scorer=cancel_later)
    assert not c.complete and c.stopped == "interrupted"
    assert c.move is not None and 1 <= c.neighbours_checked < c.neighbours  # what it had: an upper bound
    mx, _ = brute_force(pz, oi, oo)
    assert c.min_neighbour_max_abs_err >= mx.min()


def test_certificate_single_block_has_no_neighbours():
    pz, oi, oo = make_random_net(n=1, d=8, h=12, rows=30, seed=7)
    c = certify(pz, oi, oo, 1e-6)
    assert c.complete and c.neighbours == 0 and c.min_neighbour_error_ratio is None and c.move is None
    assert "no single-move neighbours" in c.summary()


def test_solve_carries_the_certificate(small_puzzle):
    s = solve(small_puzzle)
    assert s.exact and isinstance(s.certificate, Certificate)
    c = s.certificate
    assert c.complete and c.neighbours == neighbour_count(small_puzzle.n_blocks) and c.min_neighbour_error_ratio > 1
    assert c.tolerance == s.tolerance and "certificate" in s.timings and "certificate" in s.budget["phases"]
    d = json.loads(json.dumps(s.to_dict()))
    assert d["certificate"]["neighbours_checked"] == c.neighbours and d["certificate"]["move"] == c.move
    assert solve(small_puzzle, certificate=False).certificate is None
    # a stop during the certificate: the exact answer stands, the certificate says it is incomplete
    stopped = solve(small_puzzle, on_phase=lambda p: p == "certificate" and tok.cancel(), token=(tok := CancelToken()))
    assert stopped.exact and not stopped.certificate.complete and stopped.certificate.stopped == "interrupted"
    assert stopped.stopped == "interrupted" and stopped.budget["stopped_in"] == "certificate"


def test_cli_prints_the_certificate(tmp_path):
    from unshuffle.generate import make_puzzle

    make_puzzle(tmp_path, blocks=5, dim=12, hidden=20, rows=300, seed=2)
    run = lambda *a: subprocess.run([sys.executable, "-m", "unshuffle", "solve", str(tmp_path), "--quiet", *a],
                                    capture_output=True, text=True, timeout=300)
    r = run("--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["exact"] and d["certificate"]["complete"] and d["certificate"]["neighbours"] == neighbour_count(5)
    assert d["certificate"]["min_neighbour_error_ratio"] > 1
    assert json.loads(run("--json", "--no-certificate").stdout)["certificate"] is None
    text = run().stdout
    K = neighbour_count(5)
    assert f"certificate: {K}/{K} single-move neighbours checked on all 300 rows; nearest:" in text
    assert "certificate: not computed (--no-certificate)" in run("--no-certificate").stdout
