"""Issue 8's acceptance puzzles: networks whose blocks do not give their depth away, solved exactly.

The chaotic cases (CASES) are `fast`-regime networks (Adam at lr 1e-2): a random order's output error is
1e5-1e7 times the variance of pred and the output loss's local optima are random-like, so the output-loss
search alone ends at MSE 0.2-1.7 on them (0.1's result); the probe beam and path search (docs/ORDERING.md)
find the answer. The seeds are fixed so that a failure is reproducible; benchmarks/bench_reach.py measures
other seeds. A tame `wd` net and a `brief` one (no pairing signal in the weights) follow."""
import pytest

from unshuffle import load_puzzle
from unshuffle.generate import make_puzzle
from unshuffle.solver import solve

pytestmark = pytest.mark.slow

CASES = [  # (blocks, regime, seed): the 32-block net of issue 8's first report, and a 48-block one
    (32, "fast", 4242),
    (48, "fast", 101),
]


@pytest.mark.parametrize("blocks,regime,seed", CASES, ids=lambda v: str(v))
def test_deep_chaotic_network_ends_exact(tmp_path, blocks, regime, seed):
    g = make_puzzle(tmp_path, blocks=blocks, dim=48, hidden=96, rows=2000, seed=seed, regime=regime)
    pz = load_puzzle(tmp_path)
    s = solve(pz, seed=0, time_limit=900, certificate=False)
    assert s.exact, (s.stopped, s.mse, s.order_result.runs)
    assert s.permutation == g.answer and s.sha256 == g.sha256
    # the answer came from the probe stages (the output-loss search alone stalls on these networks)
    assert s.order_result.start.startswith("beam"), s.order_result.runs


def test_weight_decay_network_ends_exact(tmp_path):
    """A 32-block `wd` net (tame: the output loss guides the search, every pair right by the weights). Before
    the iterated local search stage (10a3f3e) this seed ended at MSE 0.03 in 60 s, its search 2-6 insertions
    from the answer (as on 8 of 13 reach nets; NOTES.md "Tame nets"); it is exact now. The seed is fixed so
    that a failure is reproducible; benchmarks/bench_reach.py measures other seeds."""
    g = make_puzzle(tmp_path, blocks=32, dim=48, hidden=96, rows=2000, seed=4245, regime="wd")
    pz = load_puzzle(tmp_path)
    s = solve(pz, seed=0, time_limit=900, certificate=False)
    assert s.exact, (s.stopped, s.mse, s.order_result.runs)
    assert s.permutation == g.answer and s.sha256 == g.sha256


def test_brief_network_ends_exact_through_the_pairing_beam(tmp_path):
    """A 32-block `brief` net (Adam at lr 1e-3 for 20 epochs: weights near init, no pairing signal in them). Before
    the pairing beam every such net measured ended inexact (the first-order data pairing gets 5-9 of 32 pairs
    right and the search cannot mend that many); the pairing beam builds pairing and order together and the
    answer follows (NOTES.md "Tame nets: the pairing beam"). The seed is fixed so that a failure is
    reproducible; benchmarks/bench_reach.py measures other seeds."""
    g = make_puzzle(tmp_path, blocks=32, dim=48, hidden=96, rows=2000, seed=7101, regime="brief")
    pz = load_puzzle(tmp_path)
    s = solve(pz, seed=0, time_limit=900, certificate=False)
    assert s.exact, (s.stopped, s.mse, s.order_result.runs)
    assert s.permutation == g.answer and s.sha256 == g.sha256
    assert s.pair_result.method == "data_fo" and s.order_result.plan[0] == "pairbeam"
    assert s.order_result.start.startswith("pairbeam"), s.order_result.runs
