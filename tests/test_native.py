"""The torch-free CPU path (unshuffle.native over the C++ core) against its references: torch.randperm,
scipy's linear_sum_assignment, pairing.score_matrices, ordering.seeds/greedy_seed, solver.forward and
verify_reference - on fresh random inputs and on the public puzzle; plus the CLI solve importing no torch.

Tolerances: permutations and assignments must be identical. float64 results (the trace, the float64
forward) agree to ~1e-12 relative; results that go through float32 arithmetic in a different summation
order (the C++ kernel vs torch's GEMM) agree to a few float32 ulps of the values they accumulate.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

from conftest import PUBLIC_SHA256, make_random_net
from unshuffle import native, ordering, solver
from unshuffle.pairing import pair, score_matrices
from unshuffle.puzzle import Puzzle

pytestmark = pytest.mark.skipif(not native.available(), reason="C++ extension unshuffle._core not built")
EPS32 = float(np.finfo(np.float32).eps)


# ------------------------------------------------------------------------------------------ row sampling


@pytest.mark.parametrize("n, seed", [(10000, 0), (1, 0), (2, 5), (257, 12345), (1000, 2**32 + 7), (50, 2**63 + 11),
                                     (300, -1), (300, -123456789)])
def test_randperm_matches_torch(n, seed):
    ref = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    assert native.search_rows(n, n, seed).tolist() == ref.sort().values.tolist()
    assert native.search_rows(n, max(1, n // 3), seed).tolist() == ref[: max(1, n // 3)].sort().values.tolist()
    assert native.core().torch_randperm(n, seed & 0xFFFF_FFFF_FFFF_FFFF).tolist() == ref.tolist()


# ------------------------------------------------------------------------------------------- assignment


def _random_cost(rng, kind, nr, nc):
    if kind == "ties":
        return rng.integers(0, 3, size=(nr, nc)).astype(float)
    if kind == "const":
        return np.full((nr, nc), 2.5)
    if kind == "inf":
        m = rng.standard_normal((nr, nc))
        m[rng.random((nr, nc)) < 0.3] = np.inf
        return m
    return rng.standard_normal((nr, nc)) * 10 ** rng.uniform(-3, 3)


@pytest.mark.parametrize("kind", ["real", "ties", "const", "inf"])
def test_assignment_matches_scipy(kind):
    rng = np.random.default_rng({"real": 0, "ties": 1, "const": 2, "inf": 3}[kind])
    for _ in range(400):
        nr, nc = int(rng.integers(0, 10)), int(rng.integers(0, 10))
        m = _random_cost(rng, kind, nr, nc)
        for maximize in (False, True):
            if maximize and kind == "inf":
                continue  # scipy refuses +inf when maximizing
            try:
                want = scipy_lsa(m, maximize=maximize)
            except ValueError:  # infeasible: both must say so
                with pytest.raises(ValueError, match="infeasible"):
                    native.linear_sum_assignment(m, maximize=maximize)
                continue
            got = native.linear_sum_assignment(m, maximize=maximize)
            assert [g.tolist() for g in got] == [w.tolist() for w in want], (m, maximize)


def test_assignment_refuses_nan():
    m = np.eye(3)
    m[1, 2] = np.nan
    with pytest.raises(ValueError, match="invalid numeric entries"):
        native.linear_sum_assignment(m)


# ------------------------------------------------------------------------------------------ pair scores


@pytest.mark.parametrize("N, d, h, seed", [(6, 8, 12, 0), (13, 5, 7, 1), (24, 32, 64, 2), (3, 1, 2, 3)])
def test_pair_scores_match_torch(N, d, h, seed):
    pz, _, _ = make_random_net(n=N, d=d, h=h, seed=seed)
    ratio, ntr = native.pair_scores(pz.arrays.W_in, pz.arrays.W_out)
    r_ref, t_ref = score_matrices(pz.W_in, pz.W_out)
    np.testing.assert_allclose(ntr, t_ref, rtol=1e-12, atol=1e-15)  # float64 both
    # |offdiag M| from a float32 product (h terms per entry): relative error a few float32 ulps
    np.testing.assert_allclose(ratio, r_ref, rtol=1e-5, atol=1e-12)
    for S, R in ((ntr, t_ref), (ratio, r_ref)):
        assert native.linear_sum_assignment(S, maximize=True)[1].tolist() == scipy_lsa(R, maximize=True)[1].tolist()


# ------------------------------------------------------------------------------------------------ seeds


@pytest.mark.parametrize("N, d, h, R, seed", [(6, 8, 12, 64, 0), (12, 16, 24, 100, 1), (20, 24, 40, 256, 2),
                                              (5, 3, 4, 7, 3), (9, 48, 96, 50, 4)])
def test_seeds_match_torch(N, d, h, R, seed):
    pz, _, _ = make_random_net(n=N, d=d, h=h, rows=R, seed=seed)
    out_of = np.random.default_rng(seed).permutation(N).tolist()
    weights = (pz.W_in, pz.b_in, pz.W_out, pz.b_out, pz.W_last, pz.b_last)
    ref = ordering.seeds(pz.X, pz.pred, weights, out_of, scorer=None)
    a = pz.arrays
    got, first = native.seed_orders(a.X, (a.W_in, a.b_in, a.W_out, a.b_out), out_of)
    assert got == ref
    dn = ordering._delta(pz.X, pz.W_in, pz.b_in, pz.W_out, pz.b_out, torch.arange(N), torch.as_tensor(out_of))
    np.testing.assert_allclose(first, dn.norm(dim=2).mean(dim=1).double().numpy(), rtol=1e-5)


@pytest.mark.parametrize("N, d, h, R, seed", [(6, 8, 12, 64, 0), (11, 16, 24, 100, 1), (3, 4, 6, 10, 2)])
def test_insertion_seed_matches_the_torch_driven_one(N, d, h, R, seed):
    from unshuffle.backends import get_scorer

    pz, _, _ = make_random_net(n=N, d=d, h=h, rows=R, seed=seed)
    out_of = np.random.default_rng(seed).permutation(N).tolist()
    weights = (pz.W_in, pz.b_in, pz.W_out, pz.b_out, pz.W_last, pz.b_last)
    prio = ordering.update_priority(pz.X, weights, out_of)
    a = pz.arrays
    first = native.seed_orders(a.X, (a.W_in, a.b_in, a.W_out, a.b_out), out_of)[1]
    assert native.update_priority(first) == prio
    want = ordering.insertion_seed(get_scorer("cpp"), pz.X, pz.pred, weights, out_of, prio)
    w = (a.W_in, a.b_in, a.W_out, a.b_out, a.W_last, a.b_last)
    assert native.insertion_seed(a.X, a.pred, w, out_of, prio) == want
    ref = ordering.insertion_seed(get_scorer("reference"), pz.X, pz.pred, weights, out_of, prio)
    assert want == ref  # and the C++ scorer agrees with the torch reference here


def test_seed_losses_are_the_contract_loss():
    pz, oi, oo = make_random_net(n=7, d=8, h=12, rows=40, seed=5)
    a = pz.arrays
    w = (a.W_in, a.b_in, a.W_out, a.b_out, a.W_last, a.b_last)
    orders = [(oi, oo), (oi[::-1], oo[::-1]), (list(range(7)), list(range(7)))]
    got = native.order_losses(a.X, a.pred, w, orders)
    from unshuffle import reference

    for loss, (i, o) in zip(got, orders):
        x = reference.forward_prefixes(pz.X, i, o, pz.W_in, pz.b_in, pz.W_out, pz.b_out)[-1]
        want = reference.final_sse(x, pz.W_last, pz.b_last, pz.pred)
        assert loss == pytest.approx(want, rel=1e-4, abs=1e-9)


# ---------------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("N, d, h, k, R, seed", [(6, 8, 12, 1, 100, 0), (10, 20, 33, 3, 257, 1), (4, 48, 96, 2, 49, 2)])
def test_forwards_match_torch(N, d, h, k, R, seed):
    pz, oi, oo = make_random_net(n=N, d=d, h=h, k=k, rows=R, seed=seed)
    y32 = native.forward_f32(pz.arrays, oi, oo)
    y64 = native.forward_f64(pz.arrays, oi, oo)
    r32 = solver.forward(pz, oi, oo).numpy()
    r64 = solver.forward(pz, oi, oo, dtype=torch.float64).numpy()
    np.testing.assert_allclose(y64, r64, rtol=1e-12, atol=1e-12)
    scale = np.abs(r64).max() + 1
    assert np.abs(y32 - r64).max() <= 64 * EPS32 * scale  # both float32 forwards are near the float64 one
    assert np.abs(r32 - r64).max() <= 64 * EPS32 * scale
    rows = np.array([R - 1, 0, R // 2])  # each row's float64 value depends on that row alone
    assert np.array_equal(native.forward_f64(pz.arrays, oi, oo, X=pz.arrays.X[rows]), y64[rows])


# ----------------------------------------------------------------------------------------------- verify


@pytest.mark.parametrize("seed", range(6))
def test_verify_matches_reference(seed):
    pz, oi, oo = make_random_net(n=8, d=8, h=12, rows=600, seed=seed)
    cases = [(oi, oo, True)]
    for i in (0, 3, 6):  # an adjacent swap anywhere
        si, so = list(oi), list(oo)
        si[i], si[i + 1], so[i], so[i + 1] = si[i + 1], si[i], so[i + 1], so[i]
        cases.append((si, so, False))
    for ci, co, right in cases:
        fast, ref = solver.verify(pz, ci, co), solver.verify_reference(pz, ci, co)
        assert fast.exact == ref.exact == right
        # both float32 forwards: equal up to a few rounding noises
        assert fast.max_abs_err == pytest.approx(ref.max_abs_err, rel=1e-3, abs=4 * ref.tolerance)
        if not fast.exact:  # a rejection is always decided on every row
            assert fast.noise_rows == pz.n_rows


def test_verify_sampled_noise_falls_back_to_all_rows(monkeypatch):
    """When the sampled tolerance would reject, the float64 pass runs on every row: ``exact`` is the
    all-rows decision. Built so that the row with the most rounding noise is outside the sample."""
    g = torch.Generator().manual_seed(2)
    N, d, h, R = 24, 16, 32, 400
    # A deep net: its rounding noise (8x) is ~1.9x the tolerance's absolute floor at these settings.
    W_in, b_in = torch.randn(N, h, d, generator=g) * 0.8 / d**0.5, torch.randn(N, h, generator=g)
    W_out, b_out = torch.randn(N, d, h, generator=g) * 0.8 / h**0.5, torch.randn(N, d, generator=g)
    W_last, b_last = torch.randn(1, d, generator=g), torch.zeros(1)
    X = torch.randn(R, d, generator=g)
    order = list(range(N))
    base = Puzzle(list(range(N)), list(range(N, 2 * N)), 2 * N, W_in, b_in, W_out, b_out, W_last, b_last, X,
                  torch.zeros(R, 1))
    a = base.arrays
    y32 = native.forward_f32(a, order, order).astype(np.float64)
    noise = np.abs(y32 - native.forward_f64(a, order, order))[:, 0]
    floor = 32 * EPS32 * max(1.0, float(np.abs(y32).max()) * 1.01)
    worst = int(np.argmax(noise))
    monkeypatch.setattr(solver, "NOISE_TOP_ROWS", 1)
    monkeypatch.setattr(solver, "NOISE_SPREAD_ROWS", 2)
    spread = set(np.linspace(0, R - 1, 2).astype(int).tolist())
    quiet = [r for r in np.argsort(noise) if r != worst and r not in spread][0]  # error goes on a quiet row
    sample_tol = max(8 * max(noise[quiet], *(noise[r] for r in spread)), floor)
    assert worst not in spread and sample_tol < 0.8 * 8 * noise[worst], "test setup: no gap to test"
    pred = y32.copy()
    pred[quiet, 0] += (sample_tol + 8 * noise[worst]) / 2  # between the sampled and the all-rows tolerance
    mae = abs(float(np.float32(pred[quiet, 0])) - y32[quiet, 0])
    assert sample_tol < mae < 8 * noise[worst]
    pz = Puzzle(base.inp_ids, base.out_ids, base.last_id, W_in, b_in, W_out, b_out, W_last, b_last, X,
                pred.astype(np.float32))
    v = solver.verify(pz, order, order)
    assert v.exact and v.noise_rows == R and v.fp_noise == pytest.approx(noise[worst])
    pred[quiet, 0] += 8 * noise[worst]  # beyond the all-rows tolerance too
    pz.pred = pred.astype(np.float32)
    v = solver.verify(pz, order, order)
    assert not v.exact and v.noise_rows == R


# ------------------------------------------------------------------------------------------ public puzzle


@pytest.mark.shared
def test_public_fast_paths_match_references(public_puzzle):
    pz = public_puzzle
    ratio, ntr = native.pair_scores(pz.arrays.W_in, pz.arrays.W_out)
    r_ref, t_ref = score_matrices(pz.W_in, pz.W_out)
    np.testing.assert_allclose(ntr, t_ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ratio, r_ref, rtol=1e-5, atol=1e-12)
    pr = pair(pz)
    assert pr.out_of == scipy_lsa(t_ref, maximize=True)[1].tolist() and pr.agree
    idx = native.search_rows(pz.n_rows, 256, 0)
    weights = (pz.W_in, pz.b_in, pz.W_out, pz.b_out, pz.W_last, pz.b_last)
    ref = ordering.seeds(pz.X[torch.from_numpy(idx)], None, weights, pr.out_of, scorer=None)
    a = pz.arrays
    assert native.seed_orders(a.X[idx], (a.W_in, a.b_in, a.W_out, a.b_out), pr.out_of)[0] == ref
    sol = solver.solve(pz)
    assert sol.sha256 == PUBLIC_SHA256 and sol.exact
    ref_v = solver.verify_reference(pz, sol.order_result.order, sol.order_result.order_out)
    # each float32 forward (C++ kernel, torch GEMM) is within about one rounding noise of the exact outputs
    assert ref_v.exact and abs(sol.max_abs_err - ref_v.max_abs_err) <= 2 * ref_v.fp_noise


# ------------------------------------------------------------------------------------------ no torch


def test_cli_solve_imports_no_torch(tmp_path):
    """`unshuffle solve --json` on the CPU path loads neither torch nor pandas nor scipy (the point of it)."""
    from unshuffle.generate import make_puzzle

    root = tmp_path / "p"
    make_puzzle(root, blocks=4, dim=8, hidden=12, rows=200, seed=1)
    ids = json.loads((root / "answer.json").read_text())["answer"]
    code = textwrap.dedent(f"""
        import json, sys
        from unshuffle.cli import main
        rc = main(["solve", {str(root)!r}, "--json", "--quiet", "--out", {str(tmp_path / "out.json")!r}])
        heavy = sorted(m for m in ("torch", "pandas", "scipy", "matplotlib", "tqdm") if m in sys.modules)
        print(json.dumps({{"rc": rc, "heavy": heavy}}), file=sys.stderr)
    """)
    env = {k: v for k, v in __import__("os").environ.items() if k != "UNSHUFFLE_BACKEND"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    status = json.loads(p.stderr.strip().splitlines()[-1])
    assert status == {"rc": 0, "heavy": []}, p.stderr
    assert json.loads(p.stdout)["permutation"] == ids


def test_lazy_module_imports_on_first_use_and_caches():
    from unshuffle._lazy import LazyModule, loaded

    lazy = LazyModule("json")  # any module; json is cheap
    assert "decoder" not in vars(lazy)
    assert lazy.dumps([1]) == "[1]" and loaded("json")
    assert "dumps" in vars(lazy) and lazy.dumps is sys.modules["json"].dumps  # cached on the stand-in
    with pytest.raises(AttributeError):
        lazy.__wrapped__  # introspection probes do not import anything
    with pytest.raises(AttributeError):
        lazy.no_such_name


def test_solver_forward_is_the_addmm_loop_bit_for_bit():
    """solver.forward runs reference.block_forward (F.linear); that is nn.Linear's addmm, so its results are
    those of the explicit addmm loop it replaced, in float32 and float64."""
    pz, oi, oo = make_random_net(n=6, d=10, h=18, k=2, rows=80, seed=9)
    for dt in (torch.float32, torch.float64):
        x = pz.X.to(dt)
        for a, b in zip(oi, oo):
            hid = torch.relu(torch.addmm(pz.b_in[a].to(dt), x, pz.W_in[a].to(dt).T))
            x = x + torch.addmm(pz.b_out[b].to(dt), hid, pz.W_out[b].to(dt).T)
        y = torch.addmm(pz.b_last.to(dt), x, pz.W_last.to(dt).T)
        assert torch.equal(solver.forward(pz, oi, oo, dtype=dt), y)
