"""The C++ fused scorer (unshuffle._core) against the pure-torch reference, on fresh random inputs."""
import numpy as np
import pytest
import torch

from unshuffle import reference
from unshuffle.testing import random_candidates, random_net

core = pytest.importorskip(
    "unshuffle._core", reason="C++ extension unshuffle._core not built (CI builds it with UNSHUFFLE_REQUIRE_EXT=1)"
)

F32 = np.float32
EPS32 = 2.0 ** -24  # float32 unit roundoff


def make_net(rng, Ni, No, d, h, k, R):
    """Random residual-net pieces scaled so activations stay O(1) over a handful of blocks, random targets
    (``unshuffle.testing.random_net``, seeded from rng)."""
    net = random_net(int(rng.integers(1 << 31)), n=Ni, n_out=No, d=d, h=h, k=k, rows=R, w_in=1.0, w_out=0.3,
                     b_last=1.0, target="random")
    return net.as_dict()


def prefix_of(net, order_in, order_out):
    t = {k: torch.from_numpy(v) for k, v in net.items()}
    return reference.forward_prefixes(
        t["X"], order_in, order_out, t["W_in"], t["b_in"], t["W_out"], t["b_out"]
    ).numpy()


def ref_losses(net, prefix, starts, seq_in, seq_out):
    T = torch.from_numpy
    return reference.score_candidates(
        T(prefix), T(starts), T(seq_in), T(seq_out), T(net["W_in"]), T(net["b_in"]), T(net["W_out"]),
        T(net["b_out"]), T(net["W_last"]), T(net["b_last"]), T(net["target"]),
    ).numpy()


def cpp_losses(net, prefix, starts, seq_in, seq_out, **kw):
    return core.score_candidates(
        prefix, starts, seq_in, seq_out, net["W_in"], net["b_in"], net["W_out"], net["b_out"], net["W_last"],
        net["b_last"], net["target"], **kw,
    )


def tolerance(d, h, L, R, k):
    """rtol, atol for loss comparisons.

    Both sides do block math in float32 but sum dot products in different orders (and the C++ adds the bias
    before the products). Each output element of a block then differs by at most ~(d + h) * eps32 relative to
    the magnitudes involved; errors add over at most L + 1 layers (blocks + head), and a squared error doubles
    the relative error. With a 4x safety factor: rtol = 8 * (L + 1) * (d + h) * eps32 (about 4e-4 for d=48,
    h=96, L=8). Near-zero losses have no useful relative bound, so add an absolute term: R * k outputs, each
    off by ~1e-4 at most, squared.
    """
    return 8 * (L + 1) * (d + h) * EPS32, R * k * 1e-8


SHAPES = [  # (Ni, No, d, h, k, R, N, K): d, h not multiples of the SIMD width, R not a multiple of the tile
    (5, 5, 13, 21, 2, 50, 5, 40),
    (6, 7, 48, 96, 1, 100, 6, 30),
    (4, 4, 17, 33, 3, 24, 4, 25),
    (3, 3, 1, 1, 1, 7, 3, 10),
    (8, 8, 40, 100, 1, 97, 8, 20),
    (6, 6, 16, 16, 1, 1, 3, 12),
]


@pytest.mark.parametrize("Ni,No,d,h,k,R,N,K", SHAPES)
def test_losses_match_reference(Ni, No, d, h, k, R, N, K):
    rng = np.random.default_rng(1000 + d * 7 + h)
    net = make_net(rng, Ni, No, d, h, k, R)
    order_in = rng.permutation(Ni)[:N]
    order_out = rng.permutation(No)[:N]
    prefix = prefix_of(net, order_in, order_out)
    L = N + 2  # longer than any start needs: candidates may run past the order's length
    starts, seq_in, seq_out = random_candidates(rng, K, L, N + 1, Ni, No)
    got = cpp_losses(net, prefix, starts, seq_in, seq_out)
    want = ref_losses(net, prefix, starts, seq_in, seq_out)
    assert got.dtype == np.float64 and got.shape == (K,)
    rtol, atol = tolerance(d, h, L, R, k)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    # Same winner unless the reference's top two are within the tolerance of each other.
    top2 = np.sort(want)[:2]
    if top2[1] - top2[0] > rtol * top2[1] + atol:
        assert int(np.argmin(got)) == int(np.argmin(want))


def test_single_candidate_and_empty_sequences():
    rng = np.random.default_rng(7)
    net = make_net(rng, 4, 4, 10, 20, 1, 30)
    prefix = prefix_of(net, [0, 1, 2, 3], [3, 2, 1, 0])
    rtol, atol = tolerance(10, 20, 4, 30, 1)
    # K = 1
    s, si, so = np.array([1]), np.array([[2, 0, 1, -1]]), np.array([[1, 1, 0, -1]])
    np.testing.assert_allclose(cpp_losses(net, prefix, s, si, so), ref_losses(net, prefix, s, si, so), rtol=rtol, atol=atol)
    # L = 0: the loss of each prefix position as is
    s = np.arange(5, dtype=np.int64)
    e = np.zeros((5, 0), np.int64)
    np.testing.assert_allclose(cpp_losses(net, prefix, s, e, e), ref_losses(net, prefix, s, e, e), rtol=rtol, atol=atol)
    # K = 0
    z = np.zeros(0, np.int64)
    assert cpp_losses(net, prefix, z, np.zeros((0, 3), np.int64), np.zeros((0, 3), np.int64)).shape == (0,)


def test_entries_after_padding_are_ignored():
    rng = np.random.default_rng(8)
    net = make_net(rng, 3, 3, 8, 12, 1, 20)
    prefix = prefix_of(net, [0, 1, 2], [0, 1, 2])
    a = cpp_losses(net, prefix, np.array([0]), np.array([[1, -1, -1]]), np.array([[2, -1, -1]]))
    b = cpp_losses(net, prefix, np.array([0]), np.array([[1, -1, 0]]), np.array([[2, -1, 2]]))
    assert a[0] == b[0]


def test_forward_prefixes_matches_reference():
    rng = np.random.default_rng(9)
    d, h, R = 19, 37, 61
    net = make_net(rng, 6, 6, d, h, 1, R)
    oi, oo = rng.permutation(6), rng.permutation(6)
    got = core.forward_prefixes(net["X"], oi, oo, net["W_in"], net["b_in"], net["W_out"], net["b_out"])
    want = prefix_of(net, oi, oo)
    assert got.shape == (7, R, d) and got.dtype == np.float32
    assert np.array_equal(got[0], net["X"])
    # per element: (d + h) terms per block, errors adding over up to 6 blocks, values O(1)
    np.testing.assert_allclose(got, want, rtol=0, atol=8 * 7 * (d + h) * EPS32 * np.abs(want).max())
    empty = core.forward_prefixes(net["X"], np.zeros(0, np.int64), np.zeros(0, np.int64), net["W_in"],
                                  net["b_in"], net["W_out"], net["b_out"])
    assert empty.shape == (1, R, d)


def test_duplicate_candidates_tie_to_lowest_index():
    rng = np.random.default_rng(10)
    net = make_net(rng, 5, 5, 12, 24, 1, 40)
    prefix = prefix_of(net, range(5), range(5))
    starts, seq_in, seq_out = random_candidates(rng, 6, 6, 6, 5, 5)
    losses = cpp_losses(net, prefix, starts, seq_in, seq_out)
    best = int(np.argmin(losses))
    order = [best] + [c for c in range(6) if c != best]
    # the best candidate appears three times, at indices 2, 4 and 7: identical work gives identical bits
    idx = np.array(order[1:3] + [best] + order[3:4] + [best] + order[4:] + [best])
    dup = cpp_losses(net, prefix, starts[idx], seq_in[idx], seq_out[idx])
    assert dup[2] == dup[4] == dup[7] == losses[best]
    assert int(np.argmin(dup)) == 2


def test_losses_do_not_depend_on_thread_count():
    rng = np.random.default_rng(11)
    net = make_net(rng, 8, 8, 24, 40, 1, 150)
    prefix = prefix_of(net, range(8), range(8))
    starts, seq_in, seq_out = random_candidates(rng, 60, 9, 9, 8, 8)
    base = cpp_losses(net, prefix, starts, seq_in, seq_out, n_threads=1)
    for nt in (2, 3, 5):
        assert np.array_equal(cpp_losses(net, prefix, starts, seq_in, seq_out, n_threads=nt), base)


# --------------------------------------------------------------------------------------------- validation
def _valid_args():
    rng = np.random.default_rng(12)
    net = make_net(rng, 4, 4, 6, 10, 2, 9)
    prefix = prefix_of(net, range(4), range(4))
    starts, seq_in, seq_out = random_candidates(rng, 5, 4, 5, 4, 4)
    seq_in[:, 0] = 1  # every candidate has at least one block
    seq_out[:, 0] = 2
    return dict(prefix=prefix, starts=starts, seq_in=seq_in, seq_out=seq_out, W_in=net["W_in"], b_in=net["b_in"],
                W_out=net["W_out"], b_out=net["b_out"], W_last=net["W_last"], b_last=net["b_last"],
                target=net["target"])


def _noncontig(a):
    big = np.repeat(a[..., None], 2, axis=-1)  # same shape, strided view
    return big[..., 0]


ARGS = ["prefix", "starts", "seq_in", "seq_out", "W_in", "b_in", "W_out", "b_out", "W_last", "b_last", "target"]


@pytest.mark.parametrize("name", ARGS)
def test_wrong_dtype_raises(name):
    kw = _valid_args()
    kw[name] = kw[name].astype(np.int32 if kw[name].dtype == np.float32 else np.float64)
    with pytest.raises(ValueError, match=rf"{name} must be a (float32|int64) array"):
        core.score_candidates(**kw)


@pytest.mark.parametrize("name", ARGS)
def test_noncontiguous_raises(name):
    kw = _valid_args()
    kw[name] = _noncontig(kw[name])
    with pytest.raises(ValueError, match=rf"{name} must be C-contiguous"):
        core.score_candidates(**kw)


@pytest.mark.parametrize("name", ARGS)
def test_wrong_ndim_raises(name):
    kw = _valid_args()
    kw[name] = kw[name][None]
    with pytest.raises(ValueError, match=rf"{name} must be \d-D"):
        core.score_candidates(**kw)


@pytest.mark.parametrize("name", [a for a in ARGS if a != "prefix"])
def test_shape_mismatch_raises(name):
    kw = _valid_args()
    a = kw[name]
    if name == "W_in":  # its first two dims define Ni, h; only d can mismatch
        kw[name] = np.ascontiguousarray(a[:, :, :-1])
    elif name == "seq_in":  # its K must match starts
        kw[name] = np.ascontiguousarray(a[:-1])
    elif a.ndim == 1 and name == "starts":  # K from starts: seq_in no longer matches
        kw[name] = np.ascontiguousarray(a[:-1])
        name = "seq_in"
    elif name == "W_last":
        kw[name] = np.ascontiguousarray(a[:, :-1])
    else:
        kw[name] = np.ascontiguousarray(a[..., :-1]) if a.shape[-1] > 1 else np.concatenate([a, a], axis=-1)
    with pytest.raises(ValueError, match=rf"{name} has shape .*expected"):
        core.score_candidates(**kw)


@pytest.mark.parametrize(
    "name,where,value,msg",
    [
        ("starts", (2,), 5, r"starts\[2\] = 5 is out of range \[0, 5\)"),
        ("starts", (0,), -1, r"starts\[0\] = -1 is out of range"),
        ("seq_in", (1, 0), 4, r"seq_in\[1, 0\] = 4 is out of range \[-1, 4\)"),
        ("seq_in", (1, 0), -2, r"seq_in\[1, 0\] = -2 is out of range"),
        ("seq_out", (3, 0), 7, r"seq_out\[3, 0\] = 7 is out of range \[-1, 4\)"),
        ("seq_out", (3, 0), -1, r"seq_out\[3, 0\] = -1 is -1 \(padding\) where seq_in is not"),
    ],
)
def test_index_out_of_range_raises(name, where, value, msg):
    kw = _valid_args()
    kw[name] = kw[name].copy()
    kw[name][where] = value
    with pytest.raises(ValueError, match=msg):
        core.score_candidates(**kw)


def test_padding_mismatch_and_bad_threads_raise():
    kw = _valid_args()
    kw["seq_in"], kw["seq_out"] = kw["seq_in"].copy(), kw["seq_out"].copy()
    kw["seq_in"][0, 1], kw["seq_out"][0, 1] = -1, 3
    with pytest.raises(ValueError, match=r"seq_out\[0, 1\] = 3 is not -1 where seq_in is padding"):
        core.score_candidates(**kw)
    with pytest.raises(ValueError, match="n_threads must be >= 0"):
        core.score_candidates(**_valid_args(), n_threads=-1)


def test_forward_prefixes_validation():
    kw = _valid_args()
    args = dict(X=kw["prefix"][0], order_in=np.arange(4), order_out=np.arange(4), W_in=kw["W_in"], b_in=kw["b_in"],
                W_out=kw["W_out"], b_out=kw["b_out"])
    with pytest.raises(ValueError, match=r"forward_prefixes: order_in\[2\] = 9 is out of range \[0, 4\)"):
        core.forward_prefixes(**{**args, "order_in": np.array([0, 1, 9, 3])})
    with pytest.raises(ValueError, match=r"order_out has shape \(3,\), expected \(4,\)"):
        core.forward_prefixes(**{**args, "order_out": np.arange(3)})
    with pytest.raises(ValueError, match="X must be a float32 array"):
        core.forward_prefixes(**{**args, "X": args["X"].astype(np.float64)})
    with pytest.raises(ValueError, match=r"W_in has shape .*expected .*d from X"):
        core.forward_prefixes(**{**args, "X": np.ascontiguousarray(args["X"][:, :-1])})
