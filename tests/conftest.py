"""Shared fixtures. The public puzzle is read from ../shared (never copied); tests needing it skip,
saying why, when it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PUBLIC = Path(os.environ.get("UNSHUFFLE_PUBLIC_PUZZLE", REPO.parent / "shared" / "puzzles" / "droppedaneuralnet"))
# sha256 of the public answer, as published in the puzzle's README (the answer itself is nowhere here).
PUBLIC_SHA256 = "093be1cf2d24094db903cbc3e8d33d306ebca49c6accaa264e44b0b675e7d9c4"


@pytest.fixture(scope="session")
def public_dir() -> Path:
    if not (PUBLIC / "historical_data.csv").is_file():
        pytest.skip(f"public puzzle not found at {PUBLIC} (../shared is absent on this machine)")
    return PUBLIC


@pytest.fixture(scope="session")
def public_puzzle(public_dir):
    from unshuffle import load_puzzle

    return load_puzzle(public_dir)


@pytest.fixture
def few_threads():
    """torch on one thread for the test (modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``): the
    machine is shared, and Triton's interpreter is numpy-bound and gains little from threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make_random_net(n=6, d=8, h=12, k=1, rows=64, seed=0, scale=0.4):
    """A random (untrained) residual net with a known order: returns (Puzzle, order_in, order_out).

    Block b of the true network uses W_in[perm_in[b]] and W_out[perm_out[b]], so stack order != run order.
    (``unshuffle.testing.random_puzzle``, the builder tests and benchmarks share.)
    """
    from unshuffle.testing import random_puzzle

    return random_puzzle(seed, n, d, h, k, rows, w_in=scale, w_out=scale)


@pytest.fixture
def random_net():
    return make_random_net


@pytest.fixture(scope="session")
def small_puzzle(tmp_path_factory):
    """A small generated puzzle (N=6, d=16, h=32, 500 rows) that every backend solves exactly in well under a
    second: for tests about the machinery around the solve rather than the search."""
    from unshuffle.generate import make_puzzle
    from unshuffle.puzzle import load_puzzle

    folder = tmp_path_factory.mktemp("small")
    make_puzzle(folder, blocks=6, dim=16, hidden=32, rows=500, seed=4)
    return load_puzzle(folder)


def compile_for_sm90(fn, types, consts):
    """Lower a Triton kernel (its non-interpreter JIT function) to an sm_90 cubin without a GPU: catches what
    only the real compiler sees. ``types``: the runtime arguments' signature types in order; ``consts``: the
    constexprs by name. Skips when the compiler API or ptxas is missing; a compile error fails."""
    triton = pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as exc:  # pragma: no cover
        pytest.skip(f"triton compiler API not available: {exc}")
    sig = dict(zip(fn.arg_names, list(types) + ["constexpr"] * len(consts)))
    constexprs = {(fn.arg_names.index(n),): v for n, v in consts.items()}
    try:
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs),
                           target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    except Exception as exc:  # only a missing toolchain is a skip; a compile error is a failure
        if "ptxas" in str(exc).lower() and "not found" in str(exc).lower():
            pytest.skip(f"no ptxas: {exc}")
        raise
    return k
