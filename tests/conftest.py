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
