"""Compact correctness check of one build of the C++ core against the references, for builds other than the
installed one (run by test_simd_variants.py in a subprocess):

    python tests/simd_check.py PATH/TO/_core*.so EXPECTED_SIMD_FLOATS

loads that file as ``unshuffle._core`` (before anything imports the installed one), then checks its scorer,
forwards, probe (``probe_sse``), local search and certificate scorer against the torch/numpy references on
fresh random inputs. Prints ``OK <simd floats>`` and exits 0, or fails with an assertion.
"""
import importlib.util
import sys
from pathlib import Path

import numpy as np

spec = importlib.util.spec_from_file_location("unshuffle._core", sys.argv[1])
core = importlib.util.module_from_spec(spec)
sys.modules["unshuffle._core"] = core
spec.loader.exec_module(core)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest-free helpers of the tests
import torch  # noqa: E402

from unshuffle import moves as mv  # noqa: E402
from unshuffle import native, reference  # noqa: E402
from unshuffle.solver import forward  # noqa: E402
from unshuffle.testing import random_net, random_puzzle  # noqa: E402

assert native.core() is core, "the installed core was imported instead of the build under test"
EPS32 = 2.0 ** -24
vw = core.simd_floats()
assert vw == int(sys.argv[2]), f"this build uses {vw} floats per vector, expected {sys.argv[2]}"
torch.set_num_threads(1)

# d, h off every SIMD width, so padding paths run too
N, d, h, k, R = 7, 19, 37, 2, 61
net = random_net(1, n=N, d=d, h=h, k=k, rows=R, w_in=1.0, w_out=0.3, b_last=1.0, target="random")
t = net.tensors()
oi, oo = np.array(net.order_in), np.array(net.order_out)
# float32 block math in two summation orders: ~(d + h) eps32 per layer over <= 2N + 1 layers, 4x margin, O(1)
ATOL = 4 * (2 * N + 1) * (d + h) * EPS32

# 1. scorer: score_candidates over cached prefixes vs the reference contract
prefix = reference.forward_prefixes(t["X"], oi, oo, t["W_in"], t["b_in"], t["W_out"], t["b_out"])
assert np.allclose(core.forward_prefixes(net.X, oi, oo, *net.weights[:4]), prefix.numpy(), rtol=0,
                   atol=ATOL * float(prefix.abs().max()))
starts, si, so, moves = core.generate_candidates(oi, oo, [0, 1, 2, 3])
got = core.score_candidates(prefix.numpy(), starts, si, so, *net.weights, net.target)
T = torch.from_numpy
want = reference.score_candidates(prefix, T(starts), T(si), T(so), t["W_in"], t["b_in"], t["W_out"], t["b_out"],
                                  t["W_last"], t["b_last"], t["target"]).numpy()
np.testing.assert_allclose(got, want, rtol=8 * ATOL, atol=R * k * 1e-8)

# 2. forwards: float32 and float64 vs solver.forward (torch, nn.Linear arithmetic)
pz, ti, to = random_puzzle(2, n=N, d=d, h=h, k=k, rows=R)
a = pz.arrays
y32 = native.forward_f32(a, ti, to)
y64 = native.forward_f64(a, ti, to)
np.testing.assert_allclose(y32, forward(pz, ti, to).numpy(), rtol=0, atol=ATOL)
np.testing.assert_allclose(y64, forward(pz, ti, to, dtype=torch.float64).numpy(), rtol=0, atol=1e-12)

# 3. probe: least-squares readout SSE of target from the whitened features vs numpy lstsq (unshuffle.beam)
from unshuffle.beam import probe_sse_reference  # noqa: E402

x = net.X[:, :5].astype(np.float32)
for features in ("quadratic", "linear"):
    ref = probe_sse_reference(x, net.target, features)
    # whitening and the residual in double, the Gram in float32 tiles with one refinement step: ~1e-6 relative
    assert abs(core.probe_sse(x, net.target, features) - ref) <= 1e-4 * ref, (features, ref)

# 4. local search: the first round's move is the reference's best candidate, and the search reaches the order
w = pz.arrays
ws = (w.W_in, w.b_in, w.W_out, w.b_out, w.W_last, w.b_last)
si0, so0 = mv.apply_move(ti, to, mv.SWAP, 1, 4)
si0, so0 = mv.apply_move(si0, so0, mv.ADJACENT, 5, 6)
res = core.local_search(w.X, w.pred, *ws, np.array(si0), np.array(so0), schedule=[[0], [1, 2], [3]], stop_loss=1e-10)
assert res["stopped_reason"] == "exact" and list(res["order_in"]) == list(ti) and list(res["order_out"]) == list(to)
p0 = reference.forward_prefixes(pz.X, si0, so0, pz.W_in, pz.b_in, pz.W_out, pz.b_out)
st, sq_in, sq_out, mvs = core.generate_candidates(np.array(si0), np.array(so0), [0])
ref = reference.score_candidates(p0, T(st), T(sq_in), T(sq_out), pz.W_in, pz.b_in, pz.W_out, pz.b_out, pz.W_last,
                                 pz.b_last, pz.pred).numpy()
first = res["history"][0]
srt = np.sort(ref)
assert srt[1] - srt[0] > 1e-3 * srt[1]  # a clear winner, so both must pick it
assert (int(first[1]), int(first[2]), int(first[3])) == tuple(int(v) for v in mvs[np.argmin(ref)])

# 5. certificate scorer: branch_errors vs the reference's outputs of every neighbour
st, sq_in, sq_out, mvs = core.generate_candidates(np.array(ti), np.array(to), [0, 1, 2, 3])
mx, sse = core.branch_errors(w.X, np.array(ti), np.array(to), st, sq_in, sq_out, *ws, w.pred)
p1 = reference.forward_prefixes(pz.X, ti, to, pz.W_in, pz.b_in, pz.W_out, pz.b_out)
_, out = reference.score_candidates(p1, T(st), T(sq_in), T(sq_out), pz.W_in, pz.b_in, pz.W_out, pz.b_out, pz.W_last,
                                    pz.b_last, pz.pred, return_outputs=True)
np.testing.assert_allclose(mx, (out.double() - pz.pred.double()).abs().amax(dim=(1, 2)).numpy(), rtol=0, atol=ATOL)
print("OK", vw)
