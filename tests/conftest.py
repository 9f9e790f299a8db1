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
    """
    from unshuffle.puzzle import Puzzle

    g = torch.Generator().manual_seed(seed)
    W_in = torch.randn(n, h, d, generator=g) * scale / d**0.5
    b_in = torch.randn(n, h, generator=g) * 0.1
    W_out = torch.randn(n, d, h, generator=g) * scale / h**0.5
    b_out = torch.randn(n, d, generator=g) * 0.1
    W_last = torch.randn(k, d, generator=g) / d**0.5
    b_last = torch.randn(k, generator=g) * 0.1
    X = torch.randn(rows, d, generator=g)
    perm_in = torch.randperm(n, generator=g).tolist()
    perm_out = torch.randperm(n, generator=g).tolist()
    x = X
    for a, b in zip(perm_in, perm_out):
        x = x + torch.relu(x @ W_in[a].T + b_in[a]) @ W_out[b].T + b_out[b]
    pred = x @ W_last.T + b_last
    ids = torch.randperm(2 * n + 1, generator=g).tolist()
    ids = sorted(ids[:n]) + sorted(ids[n : 2 * n]) + [ids[2 * n]]
    pz = Puzzle(
        inp_ids=ids[:n], out_ids=ids[n : 2 * n], last_id=ids[2 * n],
        W_in=W_in, b_in=b_in, W_out=W_out, b_out=b_out, W_last=W_last, b_last=b_last, X=X, pred=pred,
    )
    return pz, perm_in, perm_out


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
