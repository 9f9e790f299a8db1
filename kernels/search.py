"""Triton kernel for the device-resident search: score move candidates, and advance prefixes, in one launch.

The search loop of :mod:`unshuffle.gpu_search` keeps everything on the device: the pieces (uploaded once,
transposed and zero-padded by :func:`prepare`), the current order of every search (``orders_in`` /
``orders_out``, (S, n) int32) and every search's prefix activations (``prefix``, (S, n + 1, R_PAD, D_PAD)
float32, ``prefix[s, p]`` = rows after the first p blocks of search s's order). A candidate is a *move*
row ``(sid, kind, i, j)`` (int32): the kernel decodes the moved order of search ``sid`` position by
position from ``(kind, i, j)`` (docs/SEARCH.md: adjacent/swap, insert/kick, repair), so no
(K, L) block-sequence arrays are built or copied. Candidate c starts from ``prefix[sid, min(i, j)]``.

One kernel body, two modes (a constexpr):

* ``STORE=False`` (scoring): the loss of every candidate (the contract of
  :func:`unshuffle.reference.score_candidates`: float32 block math, float64 sum of squared errors).
* ``STORE=True`` (forward): rows of kind ``FORWARD`` (the order unchanged, ``i = j = start``) run the blocks
  from ``start`` to the end and store every activation into ``prefix[sid, start + 1 ..]``; the same launch
  also writes the order's loss. This is how a search's prefixes follow an accepted move or a kick.

Launch layout as in ``kernels/scoring.py``: grid (rows, R_PAD / BLOCK_R); program (c, r) keeps a
BLOCK_R x D_PAD tile of activations on chip through all of its blocks and writes one float64 partial sum of
squared errors to ``partials[c, r]``; partials are summed by torch in a fixed order (deterministic, no
atomics).

Layout prepared once (:func:`prepare`): ``W_inT`` (Ni, D_PAD, H_CEIL) = W_in transposed, ``W_outT`` (No,
H_CEIL, D_PAD), biases, ``W_lastT`` (D_PAD, K_PAD), ``target`` (R_PAD, K_PAD) and the input rows, all
zero-padded. D_PAD and K_PAD are powers of two >= 16 (``tl.arange`` and ``tl.dot``); H_CEIL is h rounded up
to a multiple of BLOCK_H; R_PAD is R rounded up to a multiple of 128 (so every BLOCK_R <= 128 tiles it).
Zero weights keep padded lanes at zero (relu(0) = 0), so no load needs a mask. Padded rows compute
garbage-free but meaningless values and are masked out of the loss only.

Precision (``PREC``): 0 fp32 (``input_precision="ieee"``, the default: losses near 0 must be float32-exact),
1 tf32, 2 tf32x3, 3 bf16 inputs with fp32 accumulation. Only the block matmuls change; the last layer is
always fp32. Under the interpreter (``EMULATE``) tl.dot is a numpy fp32 matmul whatever the precision, so
tf32 is emulated by rounding both operands to 10 mantissa bits, bf16 by a round trip through bfloat16 (the
interpreter's dot mis-reads bf16 operands), and tf32x3 is plain fp32: tests of the reduced precisions
under the interpreter check the plumbing and the error's order of magnitude, not the hardware's bits.

Interpreter/compiler mode is chosen per call, never at import (see ``kernels/scoring.py``'s docstring);
the body uses only triton builtins plus ``tl.reduce`` with the combine function ``_SUM`` (ours when
compiled, triton's own under the interpreter, where it is ~100x faster: see ``kernels/scoring.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch

from .scoring import _SUM, _interpreter_body, _next_pow2_at_least, interpreter_requested, triton, tl

Tensor = torch.Tensor

__all__ = [
    "DeviceProblem", "prepare", "new_prefix", "forward_rows", "score_moves", "PRECISIONS", "FORWARD",
    "pick_block_r", "default_num_warps",
]

# Move kinds, as in unshuffle.moves (tests check they agree); FORWARD = the order unchanged.
ADJACENT, SWAP, INSERT, REPAIR, KICK, FORWARD = 0, 1, 2, 3, 4, 5
PRECISIONS = {"fp32": 0, "tf32": 1, "tf32x3": 2, "bf16": 3}
_PREC_STR = {0: "ieee", 1: "tf32", 2: "tf32x3", 3: "ieee"}
R_ALIGN = 128  # R_PAD is a multiple of this: any power-of-two BLOCK_R <= 128 tiles it exactly
_MIN_DOT = 16


def _search_kernel_body(
    prefix_ptr,  # (S, P, R_PAD, D_PAD) f32; read, and written when STORE
    order_in_ptr,  # (S, n_cols) i32
    order_out_ptr,  # (S, n_cols) i32
    rows_ptr,  # (M, 4) i32: sid, kind, i, j
    w_in_ptr,  # (Ni, D_PAD, H_CEIL) f32
    b_in_ptr,  # (Ni, H_CEIL) f32
    w_out_ptr,  # (No, H_CEIL, D_PAD) f32
    b_out_ptr,  # (No, D_PAD) f32
    w_last_ptr,  # (D_PAD, K_PAD) f32
    b_last_ptr,  # (K_PAD,) f32
    target_ptr,  # (R_PAD, K_PAD) f32
    partials_ptr,  # (M, n_tiles) f64, written
    R,
    n,
    n_cols,
    R_PAD,
    n_tiles,
    BLOCK_R: tl.constexpr,
    D_PAD: tl.constexpr,
    BLOCK_H: tl.constexpr,
    H_CEIL: tl.constexpr,
    K_PAD: tl.constexpr,
    PREC: tl.constexpr,
    PREC_STR: tl.constexpr,
    EMULATE: tl.constexpr,
    STORE: tl.constexpr,
):
    c = tl.program_id(0)
    tile = tl.program_id(1)
    sid = tl.load(rows_ptr + c * 4).to(tl.int64)
    kind = tl.load(rows_ptr + c * 4 + 1)
    i = tl.load(rows_ptr + c * 4 + 2)
    j = tl.load(rows_ptr + c * 4 + 3)
    start = tl.minimum(i, j)

    rows = tile * BLOCK_R + tl.arange(0, BLOCK_R)
    cd = tl.arange(0, D_PAD)
    ch = tl.arange(0, BLOCK_H)
    ck = tl.arange(0, K_PAD)
    tile_off = rows[:, None] * D_PAD + cd[None, :]  # (BLOCK_R, D_PAD) offsets inside one prefix slot
    slot = R_PAD * D_PAD
    base = prefix_ptr + (sid * (n + 1)) * slot
    x = tl.load(base + start.to(tl.int64) * slot + tile_off)  # padded layout: no mask needed

    # Decoding of the moved order (docs/SEARCH.md): position p of the candidate takes its in-piece from
    # position src_in of the current order and its out-piece from src_out.
    is_swap = kind <= 1  # adjacent, swap
    is_ins = (kind == 2) | (kind == 4)  # insert, kick: list.pop(i); list.insert(j, blk)
    is_rep = kind == 3  # repair: out pieces of positions i and j exchanged
    fwd = i < j
    bwd = j < i
    o_in = order_in_ptr + sid * n_cols
    o_out = order_out_ptr + sid * n_cols
    # Offsets hoisted out of the loops (the interpreter pays per tensor op; the compiler hoists them anyway).
    w1_off = cd[:, None] * H_CEIL + ch[None, :]  # W_inT[a] chunk (D_PAD, BLOCK_H)
    w2_off = ch[:, None] * D_PAD + cd[None, :]  # W_outT[b] chunk (BLOCK_H, D_PAD)
    for p in range(start, n):
        sw = tl.where(p == i, j, tl.where(p == j, i, p))
        ins = tl.where(
            p == j, i,
            tl.where(fwd & (p >= i) & (p < j), p + 1, tl.where(bwd & (p > j) & (p <= i), p - 1, p)),
        )
        src_in = tl.where(is_swap, sw, tl.where(is_ins, ins, p))
        src_out = tl.where(is_rep, sw, src_in)
        a = tl.load(o_in + src_in).to(tl.int64)
        b = tl.load(o_out + src_out).to(tl.int64)
        wa = w_in_ptr + a * (D_PAD * H_CEIL)
        ba = b_in_ptr + a * H_CEIL
        wb = w_out_ptr + b * (H_CEIL * D_PAD)
        acc = tl.full((BLOCK_R, D_PAD), 0.0, tl.float32)
        # Hidden units in chunks of BLOCK_H: relu acts per unit, so chunking is exact.
        for h0 in range(0, H_CEIL, BLOCK_H):
            w1 = tl.load(wa + h0 + w1_off)
            b1 = tl.load(ba + h0 + ch)
            w2 = tl.load(wb + h0 * D_PAD + w2_off)
            if PREC == 3:
                if EMULATE:
                    hid = tl.dot(x.to(tl.bfloat16).to(tl.float32), w1.to(tl.bfloat16).to(tl.float32),
                                 input_precision="ieee")
                else:
                    hid = tl.dot(x.to(tl.bfloat16), w1.to(tl.bfloat16), out_dtype=tl.float32)
            elif PREC == 1 and EMULATE:
                # round-to-nearest onto TF32's 10 mantissa bits (13 low bits of 23 dropped)
                xr = ((x.to(tl.int32, bitcast=True) + 0x1000) & -8192).to(tl.float32, bitcast=True)
                wr = ((w1.to(tl.int32, bitcast=True) + 0x1000) & -8192).to(tl.float32, bitcast=True)
                hid = tl.dot(xr, wr, input_precision="ieee")
            else:
                hid = tl.dot(x, w1, input_precision=PREC_STR)
            hid = tl.maximum(hid + b1[None, :], 0.0)
            if PREC == 3:
                if EMULATE:
                    acc = tl.dot(hid.to(tl.bfloat16).to(tl.float32), w2.to(tl.bfloat16).to(tl.float32), acc,
                                 input_precision="ieee")
                else:
                    acc = tl.dot(hid.to(tl.bfloat16), w2.to(tl.bfloat16), acc, out_dtype=tl.float32)
            elif PREC == 1 and EMULATE:
                hr = ((hid.to(tl.int32, bitcast=True) + 0x1000) & -8192).to(tl.float32, bitcast=True)
                wr2 = ((w2.to(tl.int32, bitcast=True) + 0x1000) & -8192).to(tl.float32, bitcast=True)
                acc = tl.dot(hr, wr2, acc, input_precision="ieee")
            else:
                acc = tl.dot(hid, w2, acc, input_precision=PREC_STR)
        b2 = tl.load(b_out_ptr + b * D_PAD + cd)
        x = x + (acc + b2[None, :])
        if STORE:
            tl.store(base + (p + 1) * slot + tile_off, x)  # (n+1) * slot < 2**31 (checked in _launch)

    # Last layer, always fp32: y = x W_last^T + b_last. Padded output columns are 0 - 0; padded rows masked.
    w3 = tl.load(w_last_ptr + cd[:, None] * K_PAD + ck[None, :])
    b3 = tl.load(b_last_ptr + ck)
    y = tl.dot(x, w3, input_precision="ieee") + b3[None, :]
    tgt = tl.load(target_ptr + rows[:, None] * K_PAD + ck[None, :])
    row_ok = rows < R
    diff = tl.where(row_ok[:, None], y - tgt, 0.0).to(tl.float64)  # difference in f32, squares summed in f64
    sq = tl.reduce(diff * diff, 1, _SUM)
    tl.store(partials_ptr + c * n_tiles + tile, tl.reduce(sq, 0, _SUM))


_KERNELS: Dict[bool, object] = {}


def _get_kernel(interpret: bool):
    """The body wrapped for the interpreter or for compilation, built once each (chosen per call)."""
    kern = _KERNELS.get(interpret)
    if kern is None:
        if interpret:
            from triton.runtime.interpreter import InterpretedFunction

            kern = InterpretedFunction(_interpreter_body(_search_kernel_body))  # fast sums (scoring.py)
        else:
            from triton.runtime.jit import JITFunction

            kern = JITFunction(_search_kernel_body)
        _KERNELS[interpret] = kern
    return kern


@dataclass
class DeviceProblem:
    """The pieces, search rows and target, uploaded once in the kernel's padded layout (see module doc)."""

    X: Tensor  # (R_PAD, D_PAD)
    W_inT: Tensor
    b_in: Tensor
    W_outT: Tensor
    b_out: Tensor
    W_lastT: Tensor
    b_last: Tensor
    target: Tensor
    R: int
    d: int
    h: int
    k: int
    Ni: int
    No: int
    D_PAD: int
    H_CEIL: int
    K_PAD: int
    R_PAD: int
    BLOCK_H: int
    device: torch.device

    @property
    def interpret(self) -> bool:
        return self.device.type == "cpu" or interpreter_requested()


def _pad(t: Tensor, shape, device) -> Tensor:
    out = torch.zeros(shape, dtype=torch.float32, device=device)
    out[tuple(slice(0, s) for s in t.shape)] = t.to(device=device, dtype=torch.float32)
    return out


def prepare(X, target, W_in, b_in, W_out, b_out, W_last, b_last, device=None, block_h: Optional[int] = None) -> DeviceProblem:
    """Validate shapes once and upload everything in the kernel's layout. ``device`` defaults to CUDA when
    available (else CPU: the interpreter). ``block_h``: hidden units per inner chunk (power of two >= 16;
    default 32 on the GPU, which tiles h = 96 exactly; one chunk under the interpreter)."""
    if triton is None:
        raise RuntimeError("triton is not importable")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and device.index is None:  # tensors report cuda:N: compare like with like
        device = torch.device("cuda", torch.cuda.current_device())
    if X.dim() != 2 or target.dim() != 2 or W_in.dim() != 3 or W_out.dim() != 3 or W_last.dim() != 2:
        raise ValueError("expected X (R, d), target (R, k), W_in (Ni, h, d), W_out (No, d, h), W_last (k, d)")
    R, d = X.shape
    Ni, h, d1 = W_in.shape
    No, d2, h2 = W_out.shape
    k = W_last.shape[0]
    if d1 != d or (d2, h2) != (d, h) or W_last.shape[1] != d:
        raise ValueError(f"inconsistent widths: X d={d}, W_in {tuple(W_in.shape)}, W_out {tuple(W_out.shape)}, W_last {tuple(W_last.shape)}")
    if tuple(b_in.shape) != (Ni, h) or tuple(b_out.shape) != (No, d) or tuple(b_last.shape) != (k,):
        raise ValueError("bias shapes do not match their weights")
    if tuple(target.shape) != (R, k):
        raise ValueError(f"target must be (R, k) = {(R, k)}, got {tuple(target.shape)}")
    if block_h is None:  # the interpreter pays per op, not per flop: one chunk there
        block_h = _next_pow2_at_least(h) if (device.type == "cpu" or interpreter_requested()) else 32
    BLOCK_H = int(block_h)
    if BLOCK_H < _MIN_DOT or BLOCK_H & (BLOCK_H - 1):
        raise ValueError(f"block_h must be a power of two >= {_MIN_DOT}, got {block_h!r}")
    D_PAD, K_PAD = _next_pow2_at_least(d), _next_pow2_at_least(k)
    H_CEIL = max(BLOCK_H, -(-h // BLOCK_H) * BLOCK_H)
    R_PAD = max(R_ALIGN, -(-R // R_ALIGN) * R_ALIGN)
    with torch.no_grad():
        return DeviceProblem(
            X=_pad(X, (R_PAD, D_PAD), device),
            W_inT=_pad(W_in.transpose(1, 2), (Ni, D_PAD, H_CEIL), device),
            b_in=_pad(b_in, (Ni, H_CEIL), device),
            W_outT=_pad(W_out.transpose(1, 2), (No, H_CEIL, D_PAD), device),
            b_out=_pad(b_out, (No, D_PAD), device),
            W_lastT=_pad(W_last.T, (D_PAD, K_PAD), device),
            b_last=_pad(b_last, (K_PAD,), device),
            target=_pad(target, (R_PAD, K_PAD), device),
            R=R, d=d, h=h, k=k, Ni=Ni, No=No, D_PAD=D_PAD, H_CEIL=H_CEIL, K_PAD=K_PAD, R_PAD=R_PAD,
            BLOCK_H=BLOCK_H, device=device,
        )


def new_prefix(prob: DeviceProblem, S: int, n: int) -> Tensor:
    """A prefix buffer for S searches over orders of n blocks, slot 0 of each holding the input rows (the
    other slots are filled by :func:`forward_rows`)."""
    buf = torch.empty((S, n + 1, prob.R_PAD, prob.D_PAD), dtype=torch.float32, device=prob.device)
    buf[:, 0] = prob.X
    return buf


def pick_block_r(n_rows: int, R_PAD: int, min_programs: int = 512) -> int:
    """Rows per program: the largest power of two <= 64 that still gives ``min_programs`` programs
    (small candidate sets need more, smaller tiles to fill the GPU), at least 16."""
    br = 64
    while br > _MIN_DOT and n_rows * (R_PAD // br) < min_programs:
        br //= 2
    return br


def default_num_warps(block_r: int) -> int:
    """Warps per program for a row tile: ptxas (Triton 3.6, sm_90, fp32, d=48 -> 64, h=96) allocates
    120 / 159 / 126 / 100 registers without spills at 16/4, 32/4, 64/8, 128/16 (rows/warps), but spills at
    64 rows with 4 warps (255 registers + 0.5 KB) and 128 with 8."""
    return 4 if block_r <= 32 else block_r // 8


def _launch(prob, prefix, orders_in, orders_out, rows, store, precision, block_r, num_warps):
    M = int(rows.shape[0])
    if M == 0:
        return torch.zeros(0, dtype=torch.float64, device=prob.device)
    S, P = prefix.shape[0], prefix.shape[1]
    n = P - 1
    if P * prob.R_PAD * prob.D_PAD >= 2**31:  # the kernel's per-search slot offsets are 32-bit
        raise ValueError(f"order too long for the kernel: (n + 1) * rows * width = {P * prob.R_PAD * prob.D_PAD} >= 2**31")
    prec = PRECISIONS[precision] if isinstance(precision, str) else int(precision)
    if block_r is None:  # the interpreter pays per program: one big tile there
        block_r = R_ALIGN if prob.interpret else pick_block_r(M, prob.R_PAD)
    BLOCK_R = int(block_r)
    if BLOCK_R < _MIN_DOT or BLOCK_R > R_ALIGN or BLOCK_R & (BLOCK_R - 1):
        raise ValueError(f"block_r must be a power of two in [{_MIN_DOT}, {R_ALIGN}], got {block_r!r}")
    n_tiles = prob.R_PAD // BLOCK_R
    partials = torch.empty((M, n_tiles), dtype=torch.float64, device=prob.device)
    interpret = prob.interpret
    opts = {} if interpret else {"num_warps": num_warps or default_num_warps(BLOCK_R)}
    _get_kernel(interpret)[(M, n_tiles)](
        prefix, orders_in, orders_out, rows,
        prob.W_inT, prob.b_in, prob.W_outT, prob.b_out, prob.W_lastT, prob.b_last, prob.target,
        partials, prob.R, n, orders_in.shape[1], prob.R_PAD, n_tiles,
        BLOCK_R=BLOCK_R, D_PAD=prob.D_PAD, BLOCK_H=prob.BLOCK_H, H_CEIL=prob.H_CEIL, K_PAD=prob.K_PAD,
        PREC=prec, PREC_STR=_PREC_STR[prec], EMULATE=bool(interpret), STORE=bool(store), **opts,
    )
    return partials.sum(dim=1)  # fixed-order float64 sum over tiles: deterministic


def check_rows(prob: DeviceProblem, prefix: Tensor, orders_in: Tensor, orders_out: Tensor, rows: Tensor) -> None:
    """Value checks of a launch's inputs (one device->host sync): sids, kinds, positions and the orders'
    piece indices all in range. The search calls it never per round: its orders are validated once and
    its move tables are in range by construction."""
    S, P = prefix.shape[:2]
    n = P - 1
    if prefix.dtype != torch.float32 or tuple(prefix.shape[2:]) != (prob.R_PAD, prob.D_PAD):
        raise ValueError(f"prefix must be float32 (S, n+1, {prob.R_PAD}, {prob.D_PAD}), got {prefix.dtype} {tuple(prefix.shape)}")
    for name, o, hi in (("orders_in", orders_in, prob.Ni), ("orders_out", orders_out, prob.No)):
        if o.dtype != torch.int32 or o.dim() != 2 or o.shape[0] != S or o.shape[1] < max(n, 1):
            raise ValueError(f"{name} must be int32 (S={S}, >= {max(n, 1)}), got {o.dtype} {tuple(o.shape)}")
        if n and bool(((o[:, :n] < 0) | (o[:, :n] >= hi)).any()):
            raise ValueError(f"{name} has piece indices outside [0, {hi})")
    if rows.dtype != torch.int32 or rows.dim() != 2 or rows.shape[1] != 4:
        raise ValueError(f"rows must be int32 (M, 4), got {rows.dtype} {tuple(rows.shape)}")
    if rows.shape[0]:
        sid, kind, i, j = rows.long().unbind(1)
        bad = (sid < 0) | (sid >= S) | (kind < 0) | (kind > FORWARD) | (i < 0) | (j < 0) | (i > n) | (j > n)
        bad |= (kind != FORWARD) & ((i >= n) | (j >= n) | (i == j))
        if bool(bad.any()):
            raise ValueError(f"rows out of range for S={S}, n={n}: {rows[bad][:3].tolist()}")
    for t in (prefix, orders_in, orders_out, rows):
        if t.device != prob.device or not t.is_contiguous():
            raise ValueError(f"all tensors must be contiguous and on {prob.device}")


def score_moves(prob: DeviceProblem, prefix: Tensor, orders_in: Tensor, orders_out: Tensor, rows: Tensor,
                precision: str = "fp32", block_r: Optional[int] = None, num_warps: Optional[int] = None,
                check: bool = False) -> Tensor:
    """Losses (M,) float64 on the device of the move candidates ``rows`` (M, 4) int32 = (sid, kind, i, j):
    the order of search ``sid`` with move (kind, i, j) applied, scored from its cached prefix at min(i, j).
    Same numbers as scoring that candidate's block sequence with :func:`unshuffle.reference.score_candidates`
    (to float32 rounding). ``check`` validates every index first (one sync)."""
    if check:
        check_rows(prob, prefix, orders_in, orders_out, rows)
    return _launch(prob, prefix, orders_in, orders_out, rows, False, precision, block_r, num_warps)


def forward_rows(prob: DeviceProblem, prefix: Tensor, orders_in: Tensor, orders_out: Tensor, rows: Tensor,
                 block_r: Optional[int] = None, num_warps: Optional[int] = None, check: bool = False) -> Tensor:
    """Advance prefixes: for each row (sid, FORWARD, start, start), recompute ``prefix[sid, start+1 ..]`` of
    search sid's current order from ``prefix[sid, start]`` (always fp32), and return its loss (M,) float64.
    At most one row per sid per call (rows write their search's slots)."""
    if check:
        check_rows(prob, prefix, orders_in, orders_out, rows)
        if rows.shape[0] and (bool((rows[:, 1] != FORWARD).any()) or len(set(rows[:, 0].tolist())) != rows.shape[0]):
            raise ValueError("forward rows must all be FORWARD and name distinct searches")
    return _launch(prob, prefix, orders_in, orders_out, rows, True, "fp32", block_r, num_warps)
