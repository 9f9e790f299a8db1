"""pytest-benchmark versions of bench_scoring.py's calls on small shapes (run: pytest benchmarks/).
Timings only; correctness is in tests/. Each benchmark also checks its scorer agrees with the reference,
so a fast-but-wrong path cannot pass unnoticed."""
import numpy as np
import pytest
import torch

from unshuffle import reference

pytest.importorskip("pytest_benchmark")

try:
    from unshuffle import _core
except ImportError:
    _core = None

import bench_scoring as bs  # noqa: E402  (benchmarks/ is on sys.path when pytest collects from it)

SHAPE = dict(N=12, d=48, h=96, k=1, R=128, kinds=[0, 1])
needs_core = pytest.mark.skipif(_core is None, reason="C++ extension unshuffle._core not built")


@pytest.fixture(scope="module")
def problem():
    torch.set_num_threads(1)
    return bs.make_problem(SHAPE["N"], SHAPE["d"], SHAPE["h"], SHAPE["k"], SHAPE["R"], SHAPE["kinds"])


@pytest.fixture(scope="module")
def ref_losses(problem):
    return reference.score_candidates(*[torch.from_numpy(problem[k]) for k in bs.ARG_ORDER]).numpy()


def _check(out, ref):
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-6 * SHAPE["R"])


@pytest.mark.parametrize("name", ["reference", "torch", "cpp", "triton"])
def test_score(benchmark, problem, ref_losses, name):
    fns = bs.scorers(problem, threads=1, include_reference=True, ref_limit=10**9)
    if name not in fns:
        pytest.skip(f"{name} scorer unavailable here")
    fn, _ = fns[name]
    _check(benchmark(fn), ref_losses)


@needs_core
def test_forward_prefixes_cpp(benchmark, problem):
    X = np.ascontiguousarray(problem["prefix"][0])
    order = np.arange(SHAPE["N"])
    args = [problem[k] for k in ("W_in", "b_in", "W_out", "b_out")]
    out = benchmark(lambda: _core.forward_prefixes(X, order, order, *args, n_threads=1))
    assert out.shape == (SHAPE["N"] + 1, SHAPE["R"], SHAPE["d"])


@needs_core
def test_local_search_cpp(benchmark, problem):
    X = np.ascontiguousarray(problem["prefix"][0])
    w = [problem[k] for k in ("W_in", "b_in", "W_out", "b_out", "W_last", "b_last")]
    order = np.arange(SHAPE["N"])
    res = benchmark(lambda: _core.local_search(X, problem["target"], *w, order, order, max_rounds=5, n_threads=1))
    assert res["rounds"] <= 5
