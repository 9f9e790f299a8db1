"""Random residual networks for tests and benchmarks: the one builder they share (the solver never uses it).

``random_net`` draws the pieces, the inputs and a random block order from one seeded torch generator, in a
fixed order (so a seed gives the same network everywhere), with weights scaled so activations stay O(1)
through the blocks; the targets are that order's outputs (the reference's block forward) or random.
``random_puzzle`` wraps it as a ``Puzzle`` with random piece ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from ._lazy import torch


@dataclass
class RandomNet:
    """float32 numpy arrays of a random residual net (layouts as ``Puzzle``) and its true block order."""

    W_in: np.ndarray  # (n, h, d)
    b_in: np.ndarray  # (n, h)
    W_out: np.ndarray  # (n_out, d, h)
    b_out: np.ndarray  # (n_out, d)
    W_last: np.ndarray  # (k, d)
    b_last: np.ndarray  # (k,)
    X: np.ndarray  # (rows, d)
    target: np.ndarray  # (rows, k): the true order's outputs, or random
    order_in: List[int]
    order_out: List[int]

    @property
    def weights(self) -> Tuple[np.ndarray, ...]:
        """(W_in, b_in, W_out, b_out, W_last, b_last)."""
        return self.W_in, self.b_in, self.W_out, self.b_out, self.W_last, self.b_last

    def as_dict(self) -> Dict[str, np.ndarray]:
        """The arrays by name (weights, X, target)."""
        return {k: getattr(self, k) for k in ("W_in", "b_in", "W_out", "b_out", "W_last", "b_last", "X", "target")}

    def tensors(self) -> Dict[str, "torch.Tensor"]:
        """``as_dict`` as torch tensors (sharing memory)."""
        return {k: torch.from_numpy(v) for k, v in self.as_dict().items()}


def _draw(g, n, d, h, k, rows, n_out, w_in, b_in, w_out, b_out, w_last, b_last, target):
    W_in = torch.randn(n, h, d, generator=g) * w_in / d**0.5
    B_in = torch.randn(n, h, generator=g) * b_in
    W_out = torch.randn(n_out, d, h, generator=g) * w_out / h**0.5
    B_out = torch.randn(n_out, d, generator=g) * b_out
    W_last = torch.randn(k, d, generator=g) * w_last / d**0.5
    B_last = torch.randn(k, generator=g) * b_last
    X = torch.randn(rows, d, generator=g)
    order_in = torch.randperm(n, generator=g).tolist()
    order_out = torch.randperm(n_out, generator=g)[:n].tolist()
    if target == "forward":
        from .reference import block_forward

        x = X
        for a, b in zip(order_in, order_out):
            x = block_forward(x, W_in[a], B_in[a], W_out[b], B_out[b])
        T = x @ W_last.T + B_last
    elif target == "random":
        T = torch.randn(rows, k, generator=g)
    else:
        raise ValueError(f"target must be 'forward' or 'random', got {target!r}")
    arrays = [t.contiguous().numpy() for t in (W_in, B_in, W_out, B_out, W_last, B_last, X, T)]
    return RandomNet(*arrays, order_in=order_in, order_out=order_out)


def deep_scales(n: int) -> Dict[str, float]:
    """``random_net`` scales for deep nets (the kernel tests and benchmarks): W_out shrinks as 1/sqrt(n), so
    activations stay O(1) through n blocks and float32 error stays comparable across depths."""
    return dict(w_in=1.0, b_in=0.1, w_out=0.5 / max(n, 1) ** 0.5, b_out=0.05, w_last=1.0, b_last=0.1)


def random_net(seed: int = 0, n: int = 6, d: int = 8, h: int = 12, k: int = 1, rows: int = 64, *,
               n_out: int = None, w_in: float = 0.4, b_in: float = 0.1, w_out: float = 0.4, b_out: float = 0.1,
               w_last: float = 1.0, b_last: float = 0.1, target: str = "forward",
               generator: "torch.Generator" = None) -> RandomNet:
    """A random residual net: n inp pieces, ``n_out`` (default n) out pieces, a random order of n blocks.

    W_in ~ w_in N(0,1)/sqrt(d), W_out ~ w_out N(0,1)/sqrt(h), W_last ~ w_last N(0,1)/sqrt(d), biases b_* N(0,1),
    X ~ N(0,1). ``target``: 'forward' (the order's float32 outputs) or 'random' (N(0,1)). ``generator``: draw
    from it instead of a fresh one seeded with ``seed`` (the caller goes on drawing from it afterwards)."""
    g = torch.Generator().manual_seed(seed) if generator is None else generator
    return _draw(g, n, d, h, k, rows, n if n_out is None else n_out, w_in, b_in, w_out, b_out, w_last, b_last,
                 target)


def random_puzzle(seed: int = 0, n: int = 6, d: int = 8, h: int = 12, k: int = 1, rows: int = 64, **scales):
    """``random_net`` as a ``Puzzle`` (pred = the true order's outputs) with random piece ids: returns
    (Puzzle, order_in, order_out), the true order as stack indices (stack order != run order)."""
    from .puzzle import Puzzle

    g = torch.Generator().manual_seed(seed)
    net = _draw(g, n, d, h, k, rows, n, **{**dict(w_in=0.4, b_in=0.1, w_out=0.4, b_out=0.1, w_last=1.0,
                                                    b_last=0.1), **scales}, target="forward")
    ids = torch.randperm(2 * n + 1, generator=g).tolist()
    ids = sorted(ids[:n]) + sorted(ids[n: 2 * n]) + [ids[2 * n]]
    pz = Puzzle(inp_ids=ids[:n], out_ids=ids[n: 2 * n], last_id=ids[2 * n], W_in=net.W_in, b_in=net.b_in,
                W_out=net.W_out, b_out=net.b_out, W_last=net.W_last, b_last=net.b_last, X=net.X, pred=net.target)
    return pz, net.order_in, net.order_out


def random_candidates(rng: np.random.Generator, K: int, L: int, P: int, Ni: int, No: int):
    """K scoring candidates (the core's contract): starts uniform in [0, P), block sequences of random length
    0..L with random (in, out) pieces (repeats allowed), padded with -1. Returns (starts, seq_in, seq_out) int64."""
    starts = rng.integers(0, P, size=K).astype(np.int64)
    seq_in = np.full((K, L), -1, np.int64)
    seq_out = np.full((K, L), -1, np.int64)
    for c in range(K):
        n = int(rng.integers(0, L + 1))
        seq_in[c, :n] = rng.integers(0, Ni, size=n)
        seq_out[c, :n] = rng.integers(0, No, size=n)
    return starts, seq_in, seq_out
