"""The device-search kernel (kernels/search.py) against the pure-torch reference.

Here (no GPU) it runs under triton's interpreter on CPU tensors; with a CUDA device the same cases run on
the compiled kernel. Move rows are checked against ``unshuffle.moves.generate_candidates`` +
``unshuffle.reference.score_candidates`` (the contract), prefixes against ``reference.forward_prefixes``.

Tolerances (fp32): kernel and reference do the block math in float32 in different orders (tiled tl.dot,
padded lanes, fused bias adds): a few ulps per value, compounded over <= 7 blocks, ~1e-6 relative; a
loss (float64 sum of squares of float32 differences) keeps that relative size, so rtol 2e-5 leaves a 10x
margin, with an absolute term for losses near 0 that scales with the number of summed terms. Reduced
precisions are bounded by their rounding unit: tf32 keeps 10 mantissa bits (unit 2^-11 ~ 5e-4 per
operand), bf16 keeps 7 (2^-8 ~ 4e-3); relative loss errors stay within ~10 units for these depths, and
are asserted to be clearly above fp32's (so the mode really changed something) where it is emulated.
"""
import pytest
import torch

pytest.importorskip("triton")

from unshuffle import moves as mv  # noqa: E402
from unshuffle import reference  # noqa: E402
from unshuffle.kernels import search as ks  # noqa: E402
from unshuffle.kernels.scoring import triton_available  # noqa: E402
from unshuffle.testing import deep_scales, random_net  # noqa: E402

from conftest import compile_for_sm90  # noqa: E402

COMPILED, _WHY = triton_available()
DEVICE = "cuda" if COMPILED else "cpu"
RTOL = 2e-5
ALL_KINDS = (mv.ADJACENT, mv.SWAP, mv.INSERT, mv.REPAIR)


pytestmark = pytest.mark.usefixtures("few_threads")  # (conftest)


def make_net(N, d, h, k, R, seed):
    """Random pieces scaled to keep activations O(1), rows and target (CPU tensors)."""
    g = torch.Generator().manual_seed(seed)
    net = random_net(n=N, d=d, h=h, k=k, rows=R, **deep_scales(N), target="random", generator=g)
    t = net.tensors()
    return t["X"], t["target"], tuple(t[n] for n in ("W_in", "b_in", "W_out", "b_out", "W_last", "b_last")), g


def setup_searches(net, orders, block_h=None):
    """Prepared problem, prefix buffer filled by forward_rows from position 0, device order tensors."""
    X, target, w, _ = net
    prob = ks.prepare(X, target, *w, device=DEVICE, block_h=block_h)
    S, n = len(orders), len(orders[0][0])
    oin = torch.zeros((S, max(n, 1)), dtype=torch.int32)  # at least one column: the kernel's pointers
    oout = torch.zeros((S, max(n, 1)), dtype=torch.int32)
    for s, (oi, oo) in enumerate(orders):
        oin[s, :n], oout[s, :n] = torch.tensor(oi, dtype=torch.int32), torch.tensor(oo, dtype=torch.int32)
    oin, oout = oin.to(DEVICE), oout.to(DEVICE)
    prefix = ks.new_prefix(prob, S, n)
    rows = torch.tensor([[s, ks.FORWARD, 0, 0] for s in range(S)], dtype=torch.int32, device=DEVICE)
    losses = ks.forward_rows(prob, prefix, oin, oout, rows, check=True)
    return prob, prefix, oin, oout, losses


def reference_move_losses(net, oi, oo, kinds):
    X, target, w, _ = net
    starts, si, so, moves = mv.generate_candidates(oi, oo, kinds)
    pre = reference.forward_prefixes(X, oi, oo, *w[:4])
    T = torch.from_numpy
    return reference.score_candidates(pre, T(starts), T(si), T(so), *w, target), moves


def test_kind_codes_match_moves():
    assert (ks.ADJACENT, ks.SWAP, ks.INSERT, ks.REPAIR, ks.KICK) == (mv.ADJACENT, mv.SWAP, mv.INSERT, mv.REPAIR, mv.KICK)
    assert ks.FORWARD not in mv.KIND_NAMES


# Shapes crossing the padding and tile boundaries: d below/at/above 16 (D_PAD 16/32/64), h not a multiple of
# block_h (masked-off zero chunk) or several chunks, R below, at and above 128 (R_PAD 128/256), k > 1.
SHAPES = [
    # N, d, h, k, R, block_h
    (5, 5, 33, 1, 7, 16),
    (4, 17, 40, 3, 129, None),
    (5, 16, 16, 2, 128, 16),
    (4, 48, 96, 1, 33, 32),
]


@pytest.mark.parametrize("N,d,h,k,R,block_h", SHAPES)
def test_moves_match_reference_two_searches(N, d, h, k, R, block_h):
    net = make_net(N, d, h, k, R, seed=100 + N + d + h + R)
    g = net[3]
    orders = [(torch.randperm(N, generator=g).tolist(), torch.randperm(N, generator=g).tolist()) for _ in range(2)]
    prob, prefix, oin, oout, _ = setup_searches(net, orders, block_h=block_h)
    rows, want = [], []
    for s, (oi, oo) in enumerate(orders):
        ref, moves = reference_move_losses(net, oi, oo, ALL_KINDS)
        rows += [[s, *m] for m in moves.tolist()]
        want.append(ref)
    rows = torch.tensor(rows, dtype=torch.int32, device=DEVICE)
    got = ks.score_moves(prob, prefix, oin, oout, rows, check=True).cpu()
    want = torch.cat(want)
    assert got.dtype == torch.float64 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=RTOL, atol=1e-9 * R * k)
    # another row tiling (16 rows per program; a spread of rows, the interpreter pays per program)
    sub = torch.arange(0, rows.shape[0], 9)
    got16 = ks.score_moves(prob, prefix, oin, oout, rows[sub.to(rows.device)].contiguous(), block_r=16).cpu()
    torch.testing.assert_close(got16, want[sub], rtol=RTOL, atol=1e-9 * R * k)


def test_kick_rows_are_inserts():
    net = make_net(6, 5, 16, 1, 9, seed=3)
    oi, oo = [3, 0, 5, 1, 4, 2], [1, 2, 0, 5, 3, 4]
    prob, prefix, oin, oout, _ = setup_searches(net, [(oi, oo)])
    ins = [(i, j) for i, j in mv.enumerate_moves(6, mv.INSERT)][::3]
    rows = torch.tensor([[0, k, i, j] for k in (mv.INSERT, mv.KICK) for i, j in ins], dtype=torch.int32, device=DEVICE)
    got = ks.score_moves(prob, prefix, oin, oout, rows).cpu()
    assert torch.equal(got[: len(ins)], got[len(ins):])


def test_forward_rows_match_reference_prefixes_and_loss():
    N, d, h, k, R = 6, 17, 33, 2, 40
    net = make_net(N, d, h, k, R, seed=4)
    X, target, w, g = net
    oi, oo = torch.randperm(N, generator=g).tolist(), torch.randperm(N, generator=g).tolist()
    prob, prefix, oin, oout, losses = setup_searches(net, [(oi, oo)])
    ref = reference.forward_prefixes(X, oi, oo, *w[:4])
    torch.testing.assert_close(prefix[0, :, :R, :d].cpu(), ref, rtol=1e-5, atol=1e-5)
    assert float(losses[0]) == pytest.approx(reference.final_sse(ref[-1], w[4], w[5], target), rel=RTOL)
    # a move at positions 2..4, then a forward from 2: the slots before 2 are untouched, the rest follow
    before = prefix.clone()
    ni, no = mv.apply_move(oi, oo, mv.INSERT, 4, 2)
    oin[0, :N] = torch.tensor(ni, dtype=torch.int32)
    oout[0, :N] = torch.tensor(no, dtype=torch.int32)
    l2 = ks.forward_rows(prob, prefix, oin, oout, torch.tensor([[0, ks.FORWARD, 2, 2]], dtype=torch.int32, device=DEVICE), check=True)
    assert torch.equal(prefix[0, :3], before[0, :3])
    ref2 = reference.forward_prefixes(X, ni, no, *w[:4])
    torch.testing.assert_close(prefix[0, :, :R, :d].cpu(), ref2, rtol=1e-5, atol=1e-5)
    assert float(l2[0]) == pytest.approx(reference.final_sse(ref2[-1], w[4], w[5], target), rel=RTOL)
    # the move's score from the old prefixes equals the new order's forward loss (same arithmetic path)
    prob2, prefix2, oin2, oout2, _ = setup_searches(net, [(oi, oo)])
    mv_loss = ks.score_moves(prob2, prefix2, oin2, oout2, torch.tensor([[0, mv.INSERT, 4, 2]], dtype=torch.int32, device=DEVICE))
    assert float(mv_loss[0]) == pytest.approx(float(l2[0]), rel=1e-6)


def test_empty_order_and_no_rows():
    net = make_net(3, 5, 16, 1, 7, seed=5)
    X, target, w, _ = net
    prob, prefix, oin, oout, losses = setup_searches(net, [([], [])])
    assert prefix.shape[1] == 1
    assert float(losses[0]) == pytest.approx(reference.final_sse(X, w[4], w[5], target), rel=RTOL)
    none = ks.score_moves(prob, prefix, oin, oout, torch.zeros((0, 4), dtype=torch.int32, device=DEVICE))
    assert none.shape == (0,) and none.dtype == torch.float64


def test_deterministic_and_near_zero_loss():
    # plant the target as the outputs of one candidate: its loss must be float32-rounding small and the argmin
    N, d, h, k, R = 5, 16, 33, 1, 33
    net = make_net(N, d, h, k, R, seed=6)
    X, _, w, g = net
    oi, oo = list(range(N)), list(range(N))
    ni, no = mv.apply_move(oi, oo, mv.SWAP, 0, 3)
    x = reference.forward_prefixes(X, ni, no, *w[:4])[-1]
    target = x @ w[4].T + w[5]
    net = (X, target, w, g)
    prob, prefix, oin, oout, _ = setup_searches(net, [(oi, oo)])
    _, moves = reference_move_losses(net, oi, oo, (mv.ADJACENT, mv.SWAP))
    rows = torch.tensor([[0, *m] for m in moves.tolist()], dtype=torch.int32, device=DEVICE)
    a = ks.score_moves(prob, prefix, oin, oout, rows).cpu()
    b = ks.score_moves(prob, prefix, oin, oout, rows).cpu()
    assert torch.equal(a, b)
    c = int(a.argmin())
    assert moves[c].tolist() == [mv.SWAP, 0, 3]
    assert float(a[c]) < 1e-9 * R * k
    assert bool((torch.cat([a[:c], a[c + 1:]]) > 1e3 * float(a[c]) + 1e-6).all())


@pytest.mark.parametrize("precision,bound", [("tf32", 5e-3), ("tf32x3", RTOL), ("bf16", 5e-2)])
def test_reduced_precision_error_bounds(precision, bound):
    N, d, h, k, R = 5, 17, 40, 1, 40
    net = make_net(N, d, h, k, R, seed=7)
    g = net[3]
    oi, oo = torch.randperm(N, generator=g).tolist(), torch.randperm(N, generator=g).tolist()
    prob, prefix, oin, oout, _ = setup_searches(net, [(oi, oo)])
    ref, moves = reference_move_losses(net, oi, oo, ALL_KINDS)
    rows = torch.tensor([[0, *m] for m in moves.tolist()], dtype=torch.int32, device=DEVICE)
    got = ks.score_moves(prob, prefix, oin, oout, rows, precision=precision).cpu()
    rel = ((got - ref).abs() / ref.abs()).max().item()
    assert rel < bound
    if precision != "tf32x3" and not COMPILED:  # emulated: the rounding really happened
        assert rel > 10 * 1e-7


def test_check_rows_rejects_bad_inputs():
    net = make_net(4, 5, 16, 1, 7, seed=8)
    prob, prefix, oin, oout, _ = setup_searches(net, [([0, 1, 2, 3], [3, 2, 1, 0])])
    ok = torch.tensor([[0, mv.SWAP, 0, 2]], dtype=torch.int32, device=DEVICE)
    ks.score_moves(prob, prefix, oin, oout, ok, check=True)
    bad_rows = [[1, 0, 0, 1], [0, 7, 0, 1], [0, mv.SWAP, 0, 4], [0, mv.SWAP, 2, 2], [0, mv.SWAP, -1, 2]]
    for r in bad_rows:
        with pytest.raises(ValueError, match="rows out of range"):
            ks.score_moves(prob, prefix, oin, oout, torch.tensor([r], dtype=torch.int32, device=DEVICE), check=True)
    with pytest.raises(ValueError, match="rows must be int32"):
        ks.score_moves(prob, prefix, oin, oout, ok.long(), check=True)
    bad = oin.clone()
    bad[0, 1] = 9
    with pytest.raises(ValueError, match="orders_in has piece indices outside"):
        ks.score_moves(prob, prefix, bad, oout, ok, check=True)
    with pytest.raises(ValueError, match="forward rows must all be FORWARD"):
        ks.forward_rows(prob, prefix, oin, oout, ok, check=True)
    with pytest.raises(ValueError, match="block_r must be"):
        ks.score_moves(prob, prefix, oin, oout, ok, block_r=24)
    with pytest.raises(ValueError, match="block_h must be"):
        ks.prepare(*net[:2], *net[2], device=DEVICE, block_h=24)
    with pytest.raises(ValueError, match="target must be"):
        ks.prepare(net[0], net[1][:-1], *net[2], device=DEVICE)


def test_pick_block_r():
    assert ks.pick_block_r(4000, 256) == 64
    assert ks.pick_block_r(47, 256) == 16
    assert ks.pick_block_r(100, 256) == 32


@pytest.mark.parametrize("prec,store", [(0, False), (0, True), (1, False), (2, False), (3, False)])
def test_compiles_for_sm90_without_a_gpu(prec, store):
    """Lower the compiled kernel to an sm_90 cubin (no device needed): catches what only the real compiler
    sees, for every precision and both modes."""
    fn = ks._get_kernel(interpret=False)
    types = ["*fp32", "*i32", "*i32", "*i32"] + ["*fp32"] * 7 + ["*fp64"] + ["i32"] * 5
    consts = dict(BLOCK_R=64, D_PAD=64, BLOCK_H=32, H_CEIL=96, K_PAD=16, PREC=prec, PREC_STR=ks._PREC_STR[prec],
                  EMULATE=False, STORE=store)
    k = compile_for_sm90(fn, types, consts)
    assert "cubin" in k.asm and len(k.asm["cubin"]) > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "tf32x3", "bf16"])
@pytest.mark.parametrize("R", [256, 1024])
def test_gpu_default_shape(precision, R):
    """The solver's shape (N=48, d=48, h=96) compiled on the GPU, every move kind, vs the reference."""
    N = 48
    net = make_net(N, 48, 96, 1, R, seed=21)
    g = net[3]
    oi, oo = torch.randperm(N, generator=g).tolist(), torch.randperm(N, generator=g).tolist()
    prob, prefix, oin, oout, _ = setup_searches(net, [(oi, oo)])
    X, target, w, _ = net
    starts, si, so, moves = mv.generate_candidates(oi, oo, (mv.ADJACENT, mv.SWAP, mv.INSERT))
    sub = torch.arange(0, len(moves), 7)  # a spread of candidates of every length (the reference is slow)
    T = torch.from_numpy
    pre = reference.forward_prefixes(X, oi, oo, *w[:4])
    ref = reference.score_candidates(pre, T(starts)[sub], T(si)[sub], T(so)[sub], *w, target)
    rows = torch.tensor([[0, *moves[c]] for c in sub.tolist()], dtype=torch.int32, device="cuda")
    got = ks.score_moves(prob, prefix, oin, oout, rows, precision=precision, check=True).cpu()
    bound = {"fp32": 1e-4, "tf32x3": 1e-4, "tf32": 2e-2, "bf16": 1e-1}[precision]  # 48 blocks deep
    torch.testing.assert_close(got, ref, rtol=bound, atol=1e-6)
