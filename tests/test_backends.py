"""Backend dispatch, and the batched torch scorer against the reference."""
import pytest
import torch

from unshuffle import backends, reference
from unshuffle.errors import BackendUnavailable


def random_case(K, R, d, h, n, k, L=None, seed=0, mixed=True):
    g = torch.Generator().manual_seed(seed)
    L = n if L is None else L
    prefix = torch.randn(n + 1, R, d, generator=g)
    starts = torch.randint(0, n + 1, (K,), generator=g)
    si = torch.randint(0, n, (K, L), generator=g)
    so = torch.randint(0, n, (K, L), generator=g)
    if mixed:  # candidates of different lengths, padded with -1
        lens = torch.randint(0, L + 1, (K,), generator=g)
        pad = torch.arange(L)[None, :] >= lens[:, None]
        si[pad] = -1
        so[pad] = -1
    W = (
        torch.randn(n, h, d, generator=g) / d**0.5, torch.randn(n, h, generator=g) * 0.1,
        torch.randn(n, d, h, generator=g) / h**0.5 * 0.5, torch.randn(n, d, generator=g) * 0.1,
        torch.randn(k, d, generator=g) / d**0.5, torch.randn(k, generator=g),
    )
    target = torch.randn(R, k, generator=g)
    return (prefix, starts, si, so, *W, target)


# float32 block math vs float32 block math in another summation order: per-value relative differences are a
# few ulp times sqrt(#terms) per block, growing mildly over <= 12 blocks; summed squared errors of O(1)
# residuals keep that relative size. 1e-4 relative is ~800 ulp: loose enough for any summation order,
# tight enough that a wrong block, row or padding step (O(1) change) fails.
RTOL, ATOL = 1e-4, 1e-6


@pytest.mark.parametrize("K,R,d,h,n,k", [(1, 1, 3, 5, 1, 1), (7, 33, 17, 31, 6, 1), (20, 64, 48, 96, 12, 3), (5, 9, 16, 16, 4, 2)])
def test_torch_scorer_matches_reference(K, R, d, h, n, k):
    case = random_case(K, R, d, h, n, k, seed=K + R)
    ref = reference.score_candidates(*case)
    got = backends.get_scorer("torch").score(*case)
    assert got.dtype == torch.float64 and got.shape == (K,)
    torch.testing.assert_close(got, ref, rtol=RTOL, atol=ATOL)
    assert int(got.argmin()) == int(ref.argmin())


def test_torch_scorer_zero_length_and_chunking():
    case = random_case(9, 10, 6, 8, 3, 1, L=0, seed=1)
    torch.testing.assert_close(backends.get_scorer("torch").score(*case), reference.score_candidates(*case))
    case = random_case(50, 20, 6, 8, 5, 1, seed=2)
    small = backends.TorchScorer(max_chunk_bytes=1)  # one candidate per chunk
    torch.testing.assert_close(small.score(*case), reference.score_candidates(*case), rtol=RTOL, atol=ATOL)


def test_unknown_backend_raises():
    with pytest.raises(BackendUnavailable, match="unknown backend 'nope'"):
        backends.get_scorer("nope")


def test_explicit_unavailable_backend_raises_with_reason(monkeypatch):
    monkeypatch.setitem(backends._CLASSES, "cpp", backends.CppScorer)
    monkeypatch.setattr(backends, "_probe_cpp", lambda: (False, "not built (test)"))
    with pytest.raises(BackendUnavailable, match="'cpp' was requested but is unavailable: not built"):
        backends.get_scorer("cpp")
    # auto falls back quietly
    monkeypatch.setattr(backends, "_probe_triton", lambda: (False, "no CUDA"))
    assert backends.resolve_backend("auto") == "torch"


def test_env_override(monkeypatch):
    monkeypatch.setenv("UNSHUFFLE_BACKEND", "reference")
    assert backends.get_scorer("auto").name == "reference"
    assert backends.get_scorer("torch").name == "torch"  # an explicit argument wins over the environment
    monkeypatch.setenv("UNSHUFFLE_BACKEND", "bogus")
    with pytest.raises(BackendUnavailable):
        backends.get_scorer()


def test_available_backends_lists_all():
    av = backends.available_backends()
    assert set(av) == set(backends.NAMES)
    assert av["reference"][0] and av["torch"][0]
    for ok, why in av.values():
        assert isinstance(why, str) and why
