"""Move generation for the local search (pure Python/numpy reference of docs/SEARCH.md).

A move turns the current order into a candidate, expressed in the scoring contract as a start position and
the block sequence from there to the end. The C++ core (``unshuffle._core.generate_candidates``) mirrors
this enumeration exactly; tests compare the two.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

ADJACENT, SWAP, INSERT, REPAIR, KICK = 0, 1, 2, 3, 4
KIND_NAMES = {ADJACENT: "adjacent", SWAP: "swap", INSERT: "insert", REPAIR: "repair", KICK: "kick"}
KIND_CODES = {v: k for k, v in KIND_NAMES.items()}  # name -> code (benchmarks, GPU search tests)

MASK64 = (1 << 64) - 1


def enumerate_moves(n: int, kind: int) -> List[Tuple[int, int]]:
    """The (i, j) of every move of ``kind`` on an order of n blocks, in canonical order."""
    if kind == ADJACENT:
        return [(i, i + 1) for i in range(n - 1)]
    if kind == SWAP:
        return [(i, j) for i in range(n - 1) for j in range(i + 2, n)]
    if kind == INSERT:
        return [(i, j) for i in range(n) for j in range(n) if abs(i - j) >= 2]
    if kind == REPAIR:
        return [(i, j) for i in range(n - 1) for j in range(i + 1, n)]
    raise ValueError(f"unknown move kind {kind}")


def apply_move(order_in: Sequence[int], order_out: Sequence[int], kind: int, i: int, j: int):
    """The order after a move (new lists; the inputs are not modified)."""
    oi, oo = list(order_in), list(order_out)
    if kind in (ADJACENT, SWAP):
        oi[i], oi[j] = oi[j], oi[i]
        oo[i], oo[j] = oo[j], oo[i]
    elif kind in (INSERT, KICK):
        a, b = oi.pop(i), oo.pop(i)
        oi.insert(j, a)
        oo.insert(j, b)
    elif kind == REPAIR:
        oo[i], oo[j] = oo[j], oo[i]
    else:
        raise ValueError(f"unknown move kind {kind}")
    return oi, oo


def generate_candidates(order_in: Sequence[int], order_out: Sequence[int], kinds: Sequence[int]):
    """Candidate arrays for every move of ``kinds`` (in that order): starts (K,), seq_in/seq_out (K, L)
    padded with -1, and moves (K, 3) [kind, i, j]; all int64 numpy arrays."""
    n = len(order_in)
    oi = np.asarray(order_in, dtype=np.int64)
    oo = np.asarray(order_out, dtype=np.int64)
    moves = [(k, i, j) for k in kinds for (i, j) in enumerate_moves(n, k)]
    K = len(moves)
    mv = np.asarray(moves, dtype=np.int64).reshape(K, 3)
    starts = np.minimum(mv[:, 1], mv[:, 2]) if K else np.zeros(0, dtype=np.int64)
    L = int(n - starts.min()) if K else 0
    seq_in = np.full((K, L), -1, dtype=np.int64)
    seq_out = np.full((K, L), -1, dtype=np.int64)
    for c, (k, i, j) in enumerate(moves):
        ni, no = apply_move(oi.tolist(), oo.tolist(), k, i, j)
        s = int(starts[c])
        seq_in[c, : n - s] = ni[s:]
        seq_out[c, : n - s] = no[s:]
    return starts, seq_in, seq_out, mv


def ordering_hash(order_in: Sequence[int], order_out: Sequence[int]) -> int:
    """64-bit FNV-1a over the int64 pairs (little-endian bytes), as in docs/SEARCH.md."""
    h = 0xCBF29CE484222325
    for a, b in zip(order_in, order_out):
        for v in (int(a), int(b)):
            for byte in (v & MASK64).to_bytes(8, "little"):
                h ^= byte
                h = (h * 0x100000001B3) & MASK64
    return h


class SplitMix64:
    """The search's random source (same sequence in Python and C++)."""

    def __init__(self, seed: int):
        self.state = int(seed) & MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)
