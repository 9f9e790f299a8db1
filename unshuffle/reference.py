"""Pure-PyTorch reference of the scoring contract. Plain and obviously right; every fast path
(C++ fused scorer, Triton kernel, batched torch) is tested against it. Never edit it to match a fast path.

The scoring contract
--------------------
Blocks are formed from two stacks of pieces: ``W_in`` (Ni, h, d), ``b_in`` (Ni, h) and ``W_out`` (No, d, h),
``b_out`` (No, d) (torch ``nn.Linear`` layout: weight is (out_features, in_features)). A block is a pair
(a, b) of indices into those stacks: ``x -> x + W_out[b] @ relu(W_in[a] @ x + b_in[a]) + b_out[b]``.

Given
  prefix   (P, R, d) float32: cached activations; prefix[p] is the rows after the first p blocks of the
           current order (prefix[0] is the input X). P is usually N + 1.
  starts   (K,) int64: candidate c starts from prefix[starts[c]].
  seq_in   (K, L) int64, seq_out (K, L) int64: candidate c applies blocks (seq_in[c, t], seq_out[c, t])
           for t = 0, 1, ... up to (not including) the first t where seq_in[c, t] < 0 (padding is -1, and
           seq_out is -1 at the same places). L may be 0.
  W_last   (k, d), b_last (k,): the last layer.
  target   (R, k) float32: the network's recorded outputs (``pred``).
return   losses (K,) float64: sum over rows and outputs of (x_final @ W_last.T + b_last - target)**2,
         and, if asked, outputs (K, R, k) float32.

Arithmetic: block math in float32; the squared errors are summed in float64. Swaps, insertions, rotations
and re-pairings of the current order are all candidates of this form: a start position and the block
sequence from there to the end.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple, Union

from ._lazy import torch

if TYPE_CHECKING:  # annotations only: importing this module must not load torch
    from torch import Tensor


def block_forward(x: Tensor, w_in: Tensor, b_in: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
    """One residual block, x + out(relu(inp(x))), with torch.nn.Linear's arithmetic (F.linear: addmm on 2-D
    rows), in the dtype of its inputs. ``solver.forward`` (verification's reference) runs blocks with it."""
    F = torch.nn.functional
    return x + F.linear(torch.relu(F.linear(x, w_in, b_in)), w_out, b_out)


def final_sse(x: Tensor, W_last: Tensor, b_last: Tensor, target: Tensor) -> float:
    """Sum of squared errors of the last layer on activations x against target (summed in float64)."""
    return float(((x @ W_last.T + b_last - target).double() ** 2).sum())


def forward_prefixes(x: Tensor, order_in, order_out, W_in, b_in, W_out, b_out) -> Tensor:
    """Activations after each position of an order: (len(order)+1, R, d), [0] is x itself."""
    out = [x]
    for a, b in zip(order_in, order_out):
        x = block_forward(x, W_in[a], b_in[a], W_out[b], b_out[b])
        out.append(x)
    return torch.stack(out)


def score_candidates(
    prefix: Tensor,
    starts: Tensor,
    seq_in: Tensor,
    seq_out: Tensor,
    W_in: Tensor,
    b_in: Tensor,
    W_out: Tensor,
    b_out: Tensor,
    W_last: Tensor,
    b_last: Tensor,
    target: Tensor,
    return_outputs: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Score K candidates one by one (see the module docstring for the contract)."""
    K = int(starts.shape[0])
    losses = torch.empty(K, dtype=torch.float64)
    outs = [] if return_outputs else None
    for c in range(K):
        x = prefix[int(starts[c])]
        for t in range(seq_in.shape[1]):
            a, b = int(seq_in[c, t]), int(seq_out[c, t])
            if a < 0:
                break
            x = block_forward(x, W_in[a], b_in[a], W_out[b], b_out[b])
        y = x @ W_last.T + b_last
        losses[c] = ((y - target).double() ** 2).sum()
        if outs is not None:
            outs.append(y)
    if return_outputs:
        return losses, torch.stack(outs) if outs else torch.empty(0, *target.shape)
    return losses
