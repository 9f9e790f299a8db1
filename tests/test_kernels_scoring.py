"""The Triton scoring kernel against the pure-torch reference (unshuffle.reference.score_candidates).

Here (no GPU) the kernel runs under triton's interpreter on CPU tensors. It does so whether or not
TRITON_INTERPRET is set, and whatever the import order (see kernels/scoring.py's docstring for when
triton 3.9 reads the variable); test_interpreter_independent_of_env_and_import_order checks that in
fresh processes. With a CUDA device the same correctness cases run on the compiled kernel instead.

Tolerances: kernel and reference both do the block math in float32 but in different orders (tiled
tl.dot, hidden units in chunks, fused adds), so each output differs by a few float32 ulps, compounded
over the blocks: ~1e-6 relative for these depths and scales. A loss is a float64 sum of squares of
float32 differences, so it inherits that relative error: rtol 2e-5 leaves a 10x margin. The absolute
term covers losses near 0 (a candidate that reproduces the target), where relative error means
nothing; it scales with the number of summed terms and the outputs' size.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

from unshuffle.kernels.scoring import score_candidates_triton, triton_available  # noqa: E402
from unshuffle.reference import forward_prefixes, score_candidates  # noqa: E402
from unshuffle.testing import deep_scales, random_net  # noqa: E402

from conftest import compile_for_sm90  # noqa: E402

COMPILED, _WHY = triton_available()
DEVICE = "cuda" if COMPILED else "cpu"  # CPU: interpreter
RTOL = 2e-5


pytestmark = pytest.mark.usefixtures("few_threads")  # (conftest)


def make_problem(N, d, h, k, R, K, seed, lengths=None, device=DEVICE):
    """Random pieces, prefix of a random current order, and K candidates of mixed lengths.

    Weights are scaled so activations stay O(1) through N blocks (keeps float32 error comparable
    across depths). Candidate c starts at starts[c] and runs N - starts[c] blocks (or lengths[c]),
    with random (in, out) pairs: repeats allowed, the contract does not forbid them.
    """
    g = torch.Generator().manual_seed(seed)
    net = random_net(n=N, d=d, h=h, k=k, rows=R, **deep_scales(N), target="random", generator=g)
    W_in, b_in, W_out, b_out, W_last, b_last, X, target = net.tensors().values()
    prefix = forward_prefixes(X, net.order_in, net.order_out, W_in, b_in, W_out, b_out)
    starts = torch.randint(0, N + 1, (K,), generator=g)
    if lengths is None:
        lengths = (N - starts).tolist()
    L = max(lengths) if lengths else 0
    seq_in = torch.full((K, L), -1, dtype=torch.int64)
    seq_out = torch.full((K, L), -1, dtype=torch.int64)
    for c, n in enumerate(lengths):
        seq_in[c, :n] = torch.randint(0, N, (n,), generator=g)
        seq_out[c, :n] = torch.randint(0, N, (n,), generator=g)
    args = [prefix, starts, seq_in, seq_out, W_in, b_in, W_out, b_out, W_last, b_last, target]
    return [a.to(device) for a in args]


def reference(args, return_outputs=False):
    return score_candidates(*[a.cpu() for a in args], return_outputs=return_outputs)


def assert_losses_close(got, ref, R, k):
    got = got.cpu()
    assert got.dtype == torch.float64 and got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=RTOL, atol=1e-9 * R * k)


# Shapes crossing the padding (d, h not powers of two, below/at/above 16) and tile (R vs BLOCK_R=16)
# boundaries, without the full product (the interpreter is slow): each d, h, R, k value appears.
SHAPES = [
    # N, d, h, k, R, K
    (3, 5, 16, 1, 1, 3),
    (3, 16, 33, 3, 7, 3),
    (3, 17, 96, 1, 32, 2),
    (2, 48, 33, 3, 33, 2),
    (4, 5, 96, 3, 33, 2),
    (3, 17, 16, 3, 16, 3),
    (2, 48, 96, 1, 7, 2),
    (3, 16, 16, 1, 17, 3),
]


@pytest.mark.parametrize("N,d,h,k,R,K", SHAPES)
def test_matches_reference(N, d, h, k, R, K):
    args = make_problem(N, d, h, k, R, K, seed=1000 + 7 * d + h + R + k)
    got = score_candidates_triton(*args, BLOCK_R=16)
    assert_losses_close(got, reference(args), R, k)


@pytest.mark.parametrize("N,d,h,k,R,K", [(3, 17, 33, 3, 33, 3), (2, 5, 16, 1, 7, 2)])
def test_outputs_match_reference(N, d, h, k, R, K):
    args = make_problem(N, d, h, k, R, K, seed=5)
    losses, outs = score_candidates_triton(*args, return_outputs=True, BLOCK_R=16)
    ref_losses, ref_outs = reference(args, return_outputs=True)
    assert outs.shape == (K, R, k) and outs.dtype == torch.float32
    torch.testing.assert_close(outs.cpu(), ref_outs, rtol=1e-5, atol=1e-5)
    assert_losses_close(losses, ref_losses, R, k)
    # The losses are exactly what the returned outputs give (same float32 y, float64 sum).
    target = args[-1].cpu()
    from_outs = ((outs.cpu() - target).double() ** 2).sum(dim=(1, 2))
    torch.testing.assert_close(losses.cpu(), from_outs, rtol=1e-12, atol=0)


def test_default_block_r_and_single_candidate():
    args = make_problem(3, 17, 33, 1, 70, 1, seed=11)  # K = 1; R = 70 crosses the default BLOCK_R of 64
    got = score_candidates_triton(*args)
    assert got.shape == (1,)
    assert_losses_close(got, reference(args), 70, 1)


def test_no_blocks_L0():
    # L = 0: every candidate is just the last layer applied to its prefix.
    args = make_problem(3, 17, 33, 3, 9, 4, seed=12, lengths=[0, 0, 0, 0])
    assert args[2].shape == (4, 0)
    got, outs = score_candidates_triton(*args, return_outputs=True, BLOCK_R=16)
    ref, ref_outs = reference(args, return_outputs=True)
    assert_losses_close(got, ref, 9, 3)
    torch.testing.assert_close(outs.cpu(), ref_outs, rtol=1e-5, atol=1e-5)


def test_mixed_lengths_and_padding_after_first_negative_is_ignored():
    args = make_problem(5, 16, 33, 1, 7, 4, seed=13, lengths=[5, 0, 2, 3])
    seq_in, seq_out = args[2].clone(), args[3].clone()
    # Garbage after the first -1 must not be read: the contract stops at the first negative seq_in.
    seq_in[2, 3], seq_out[2, 3] = 1, 1
    args[2], args[3] = seq_in, seq_out
    got = score_candidates_triton(*args, BLOCK_R=16)
    assert_losses_close(got, reference(args), 7, 1)
    seq_in[2, 3:] = -1
    seq_out[2, 3:] = -1
    assert torch.equal(got, score_candidates_triton(*args, BLOCK_R=16))


def test_long_sequence():
    N = 64
    args = make_problem(N, 5, 16, 1, 7, 2, seed=14, lengths=[64, 40])
    args[1] = torch.tensor([0, 24], device=args[0].device)
    got = score_candidates_triton(*args, BLOCK_R=16)
    assert_losses_close(got, reference(args), 7, 1)


def test_near_zero_loss_and_same_argmin():
    # Plant a candidate whose outputs *are* the target: the reference loss is exactly 0, the kernel's
    # must be float32-rounding small, and both must pick it as the argmin.
    N, d, h, k, R, K = 4, 17, 33, 1, 33, 5
    # Distinct candidates (no two empty ones, which would tie): explicit starts and lengths.
    args = make_problem(N, d, h, k, R, K, seed=15, lengths=[4, 3, 2, 4, 3])
    args[1] = torch.tensor([0, 1, 2, 0, 1], device=args[0].device)
    _, ref_outs = reference(args, return_outputs=True)
    args[-1] = ref_outs[3].contiguous().to(args[0].device)
    ref = reference(args)
    assert ref[3] == 0.0
    got = score_candidates_triton(*args, BLOCK_R=16).cpu()
    assert 0.0 <= got[3] < 1e-8 * R * k
    assert int(got.argmin()) == int(ref.argmin()) == 3
    others = torch.cat([got[:3], got[4:]])
    assert bool((others > 1e3 * got[3] + 1e-6).all())


def test_deterministic():
    args = make_problem(3, 17, 33, 3, 33, 3, seed=16)
    a = score_candidates_triton(*args, BLOCK_R=16)
    b = score_candidates_triton(*args, BLOCK_R=16)
    assert torch.equal(a, b)


def test_block_h_chunking_matches():
    # h = 96 pads to 128: BLOCK_H = 16 runs 8 chunks, the last two fully masked.
    args = make_problem(2, 16, 96, 1, 16, 2, seed=17)
    got = score_candidates_triton(*args, BLOCK_R=16, BLOCK_H=16)
    assert_losses_close(got, reference(args), 16, 1)


def test_empty_candidate_list():
    args = make_problem(2, 5, 16, 1, 7, 0, seed=18)
    got, outs = score_candidates_triton(*args, return_outputs=True)
    assert got.shape == (0,) and got.dtype == torch.float64
    assert outs.shape == (0, 7, 1)


# ------------------------------------------------------------------------------------------------
# Input validation
# ------------------------------------------------------------------------------------------------
ARG_INDEX = {n: i for i, n in enumerate(
    ["prefix", "starts", "seq_in", "seq_out", "W_in", "b_in", "W_out", "b_out", "W_last", "b_last", "target"]
)}


def _bad(name, fn):
    def make():
        args = make_problem(3, 5, 16, 1, 7, 2, seed=19, lengths=[3, 2], device="cpu")
        args[ARG_INDEX[name]] = fn(args[ARG_INDEX[name]])
        return args
    return make


@pytest.mark.parametrize(
    "make,match",
    [
        (_bad("prefix", lambda t: t.double()), "prefix must be torch.float32"),
        (_bad("starts", lambda t: t.int()), "starts must be torch.int64"),
        (_bad("seq_out", lambda t: t.float()), "seq_out must be torch.int64"),
        (_bad("target", lambda t: t[0]), "target must have 2 dims"),
        (_bad("target", lambda t: t[:-1]), r"target must be \(R, k\)"),
        (_bad("W_in", lambda t: t[:, :, :-1]), "W_in is"),
        (_bad("b_in", lambda t: t[:, :-1]), "b_in must be"),
        (_bad("W_out", lambda t: t[:, :, :-1]), "W_out must be"),
        (_bad("b_out", lambda t: t[:-1]), "b_out must be"),
        (_bad("W_last", lambda t: t[:, :-1]), "W_last must be"),
        (_bad("b_last", lambda t: torch.zeros(2)), "b_last must be"),
        (_bad("seq_out", lambda t: t[:, :-1]), "differ in shape"),
        (_bad("starts", lambda t: t[:1]), "starts has K"),
        (_bad("starts", lambda t: torch.full_like(t, 4)), "starts must lie in"),
        (_bad("starts", lambda t: torch.full_like(t, -1)), "starts must lie in"),
        (_bad("seq_in", lambda t: torch.where(t >= 0, torch.full_like(t, 3), t)), "seq_in indices"),
        (_bad("seq_out", lambda t: torch.where(t >= 0, torch.full_like(t, -1), t)), "seq_out indices"),
        (_bad("W_last", lambda t: t.to("meta")), "all inputs must share a device"),
        (_bad("prefix", lambda t: t.numpy()), "must be a torch.Tensor"),
    ],
)
def test_validation_errors(make, match):
    args = make()
    with pytest.raises(ValueError, match=match):
        score_candidates_triton(*args)


@pytest.mark.parametrize("block", [8, 24, 0, 16.0])
def test_bad_block_sizes(block):
    args = make_problem(2, 5, 16, 1, 7, 1, seed=20, device="cpu")
    with pytest.raises(ValueError, match="BLOCK_R"):
        score_candidates_triton(*args, BLOCK_R=block)
    with pytest.raises(ValueError, match="BLOCK_H"):
        score_candidates_triton(*args, BLOCK_H=block)


def test_triton_available_reports_a_reason():
    ok, why = triton_available()
    assert isinstance(ok, bool) and isinstance(why, str) and why
    if not torch.cuda.is_available():
        assert not ok and "CUDA" in why


# ------------------------------------------------------------------------------------------------
# Environment robustness and the compiled path (without a GPU: compile only)
# ------------------------------------------------------------------------------------------------
_SUBPROC = textwrap.dedent(
    """
    import os, sys, torch
    if sys.argv[1] == "triton-first":  # triton imported before the variable is set
        import triton
        os.environ["TRITON_INTERPRET"] = "1"
    from unshuffle.kernels.scoring import score_candidates_triton
    from unshuffle.reference import score_candidates
    g = torch.Generator().manual_seed(0)
    N, d, h, k, R = 2, 5, 16, 1, 3
    p = torch.randn(N + 1, R, d, generator=g)
    args = (p, torch.tensor([0, 1]), torch.tensor([[0, 1], [1, -1]]), torch.tensor([[1, 0], [0, -1]]),
            torch.randn(N, h, d, generator=g), torch.randn(N, h, generator=g),
            torch.randn(N, d, h, generator=g), torch.randn(N, d, generator=g),
            torch.randn(k, d, generator=g), torch.randn(k, generator=g), torch.randn(R, k, generator=g))
    a, b = score_candidates_triton(*args), score_candidates(*args)
    assert torch.allclose(a, b, rtol=1e-5), (a, b)
    print("OK")
    """
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU interpreter path")
# "unset" is this process's own case when pytest runs without the variable; the fresh processes cover
# the other two: set before the first `import triton`, and set only after it (triton's standard library
# then wrapped for compilation while the kernel runs interpreted).
@pytest.mark.parametrize("mode", ["set", "triton-first"])
def test_interpreter_independent_of_env_and_import_order(mode):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if mode == "set":
        env["TRITON_INTERPRET"] = "1"
    r = subprocess.run([sys.executable, "-c", _SUBPROC, mode], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]


def test_compiles_for_sm90_without_a_gpu():
    """Lower the compiled (non-interpreter) kernel to a cubin for an H100 target, no device needed:
    catches type/shape errors that only the real compiler sees (the interpreter is lenient)."""
    from unshuffle.kernels.scoring import _get_kernel

    fn = _get_kernel(interpret=False)
    types = ["*fp32", "*i64", "*i64", "*i64", "*i64"] + ["*fp32"] * 7 + ["*fp64", "*fp32"] + ["i32"] * 6
    consts = dict(BLOCK_R=64, D_PAD=64, BLOCK_H=64, H_PAD=128, K_PAD=16, RETURN_OUTPUTS=True, PRECISION="ieee")
    k = compile_for_sm90(fn, types, consts)
    assert "cubin" in k.asm and len(k.asm["cubin"]) > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("allow_tf32", [False, True])
def test_gpu_default_shape(allow_tf32):
    # The solver's shape: d=48, h=96, N=48 deep suffixes; compiled kernel vs the reference on CPU.
    args = make_problem(48, 48, 96, 1, 1024, 16, seed=21, device="cuda")
    got, outs = score_candidates_triton(*args, return_outputs=True, allow_tf32=allow_tf32)
    ref, ref_outs = reference(args, return_outputs=True)
    if allow_tf32:  # TF32: ~1e-3 relative per product; only check it is in the right ballpark
        torch.testing.assert_close(got.cpu(), ref, rtol=5e-2, atol=1e-3)
    else:
        assert_losses_close(got, ref, 1024, 1)
        torch.testing.assert_close(outs.cpu(), ref_outs, rtol=1e-4, atol=1e-4)
