"""Triton kernel: score many candidate orderings in one launch.

Same contract as :func:`unshuffle.reference.score_candidates` (read its module docstring): candidate ``c``
starts from ``prefix[starts[c]]``, applies the blocks ``(seq_in[c, t], seq_out[c, t])`` up to the first
negative ``seq_in``, then the last layer, and its loss is the float64 sum of squared errors against
``target``.

Layout of the launch: grid ``(K, cdiv(R, BLOCK_R))``. Program ``(c, r)`` loads its tile of ``BLOCK_R``
rows of ``prefix[starts[c]]`` once, keeps it on chip through all of the candidate's blocks (weights are
streamed from global memory / L2, where all programs share them), applies the last layer and writes one
float64 partial sum of squared errors to ``partials[c, r]``. The partials are summed on the host side in
float64 (torch), not with atomics, so a loss never depends on scheduling: same inputs, same bits.

Padding: ``d``, ``h`` and ``k`` are padded up to powers of two >= 16 (``tl.arange`` needs powers of two;
triton 3.9's NVIDIA backend asks fp32 ``tl.dot`` for K >= 8, older releases for every dim >= 16, so 16
is safe across versions). Padded lanes are loaded as zeros (masked loads), and
stay zero through every block: their weights and biases are zero and relu(0) = 0. Rows past ``R`` are
computed on zeros and masked out of the loss and the outputs.

Precision: ``tl.dot`` runs with ``input_precision="ieee"`` by default (true float32 products), because
the solver compares losses near 0 and TF32's 10-bit mantissa would blur them. ``allow_tf32=True`` opts in
to ``"tf32"`` on GPUs that have it. Under the interpreter, dots are numpy float32 matmuls either way.

Where it runs: CUDA tensors run the compiled kernel (unless ``TRITON_INTERPRET=1`` is set, in which case
triton's interpreter runs it, on host copies); CPU tensors always run under triton's interpreter (slow:
for tests only, never a speed figure).

When triton 3.9 reads ``TRITON_INTERPRET``: through ``triton.knobs.runtime.interpret``, which reads
``os.environ`` on every access, consulted by ``@triton.jit`` *when it decorates a function*. So user
kernels take the mode current at their definition, and triton's own @jit standard-library functions
(``tl.zeros``, ``tl.sum``, ``tl.max``, ``tl.cdiv``, ...) take the mode current at the first
``import triton``; a kernel that calls them only works in that same mode. To be immune to both, this
module never decorates at import time (the body is wrapped per call mode by :func:`_get_kernel`) and the
kernel uses only builtins plus ``tl.reduce`` with its own combine function. Result: a CPU-tensor call
works whether the variable was set before triton's import, after it, or not at all (tested in fresh
processes). The compiled path is checked here only by lowering it to an sm_90 cubin (no GPU on the
development machine); the GPU-marked test runs it for real where CUDA exists.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple, Union

import torch

Tensor = torch.Tensor

try:  # triton is an optional dependency (extra "triton")
    import triton
    import triton.language as tl

    _TRITON_IMPORT_ERROR: Optional[BaseException] = None
except Exception as _exc:  # noqa: BLE001 - ImportError, or a broken install raising something else
    triton = None
    tl = None
    _TRITON_IMPORT_ERROR = _exc

__all__ = ["score_candidates_triton", "triton_available", "interpreter_requested"]

DEFAULT_BLOCK_R = 64
_MIN_DOT = 16  # pad every tl.dot dim to at least this


def interpreter_requested() -> bool:
    """True when ``TRITON_INTERPRET`` is set to a true value now (read through triton's own knob)."""
    if triton is not None:
        try:
            return bool(triton.knobs.runtime.interpret)
        except AttributeError:  # pragma: no cover - triton without knobs (< 3.4)
            pass
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on")


def triton_available() -> Tuple[bool, str]:
    """Can the kernel run *for real* (compiled, on a CUDA device) here?

    Returns ``(ok, reason)``. ``ok`` is False when triton cannot be imported, when no CUDA device is
    visible, or when ``TRITON_INTERPRET=1`` forces the interpreter; the reason says which. With triton
    importable, CPU tensors still work through the interpreter (correctness only, not speed).
    """
    if triton is None:
        return False, f"triton is not importable ({_TRITON_IMPORT_ERROR!r})"
    if not torch.cuda.is_available():
        return False, (
            f"triton {triton.__version__} is importable but no CUDA device is available "
            "(only the interpreter can run the kernel here, on CPU tensors)"
        )
    if interpreter_requested():
        return False, "TRITON_INTERPRET=1 is set: kernels run under the interpreter, not compiled"
    return True, f"triton {triton.__version__} on {torch.cuda.get_device_name()}"


def _next_pow2_at_least(n: int, floor: int = _MIN_DOT) -> int:
    p = floor
    while p < n:
        p *= 2
    return p


# --------------------------------------------------------------------------------------------------
# The kernel body. Deliberately *not* decorated here: see the module docstring and _get_kernel.
# It calls only triton *builtins* (patched per call by the interpreter) and never the @jit functions of
# triton's standard library (tl.zeros, tl.sum, ...), which are wrapped once, in whatever mode triton was
# first imported: calling them from the other mode fails. The one reduction uses tl.reduce with our own
# combine function, a JITFunction: the compiler inlines it, the interpreter calls its ``.fn``.
# --------------------------------------------------------------------------------------------------
def _add(a, b):
    return a + b


if triton is not None:
    from triton.runtime.jit import JITFunction as _JITFunction

    _add_combine = _JITFunction(_add)
else:  # pragma: no cover
    _add_combine = None

# The kernels' sum combine function is the global name ``_SUM``. Compiled, it is ``_add_combine`` (ours: a
# JITFunction whatever the import order). Interpreted, it is triton's own ``_sum_combine``: the interpreter
# recognises that one by identity and reduces with one numpy sum, where any other combine function makes it
# loop in Python element by element (~100x slower); as the interpreter never calls it, the mode it was
# wrapped in does not matter.
_SUM = _add_combine


def _interpreter_body(body):
    """A copy of a kernel body whose ``_SUM`` is the interpreter's fast-path sum (see above)."""
    import types

    fast = getattr(getattr(tl, "standard", None), "_sum_combine", None) or _add_combine
    g = dict(body.__globals__)
    g["_SUM"] = fast
    copy = types.FunctionType(body.__code__, g, body.__name__, body.__defaults__, body.__closure__)
    copy.__qualname__, copy.__module__, copy.__doc__ = body.__qualname__, body.__module__, body.__doc__
    return copy


def _score_kernel_body(
    prefix_ptr,  # (P, R, d) f32, contiguous
    starts_ptr,  # (K,) i64
    lengths_ptr,  # (K,) i64: number of blocks of each candidate
    seq_in_ptr,  # (K, L) i64, contiguous
    seq_out_ptr,  # (K, L) i64, contiguous
    w_in_ptr,  # (Ni, h, d) f32
    b_in_ptr,  # (Ni, h) f32
    w_out_ptr,  # (No, d, h) f32
    b_out_ptr,  # (No, d) f32
    w_last_ptr,  # (k, d) f32
    b_last_ptr,  # (k,) f32
    target_ptr,  # (R, k) f32
    partials_ptr,  # (K, n_tiles) f64, written
    outputs_ptr,  # (K, R, k) f32, written if RETURN_OUTPUTS
    R,
    d,
    h,
    k,
    L,
    n_tiles,
    BLOCK_R: tl.constexpr,
    D_PAD: tl.constexpr,
    BLOCK_H: tl.constexpr,
    H_PAD: tl.constexpr,
    K_PAD: tl.constexpr,
    RETURN_OUTPUTS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    c = tl.program_id(0)
    tile = tl.program_id(1)

    rows = tile * BLOCK_R + tl.arange(0, BLOCK_R)  # (BLOCK_R,)
    row_ok = rows < R
    cd = tl.arange(0, D_PAD)
    d_ok = cd < d
    ch = tl.arange(0, BLOCK_H)
    ck = tl.arange(0, K_PAD)
    k_ok = ck < k

    # This program's tile of the starting activations; padded rows/cols are zeros.
    start = tl.load(starts_ptr + c)
    x_ptrs = prefix_ptr + start * R * d + rows[:, None] * d + cd[None, :]
    x = tl.load(x_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_R, D_PAD) f32

    n_blocks = tl.load(lengths_ptr + c)
    for t in range(0, n_blocks):
        a = tl.load(seq_in_ptr + c * L + t)
        b = tl.load(seq_out_ptr + c * L + t)
        acc = tl.full((BLOCK_R, D_PAD), 0.0, tl.float32)
        # Hidden units in chunks of BLOCK_H: relu acts per unit, so chunking is exact, and it bounds the
        # on-chip footprint to (BLOCK_R, BLOCK_H) of hidden activations and two weight chunks.
        for h0 in range(0, H_PAD, BLOCK_H):
            hh = h0 + ch
            h_ok = hh < h
            # W_in[a]^T chunk: (D_PAD, BLOCK_H), element [i, j] = W_in[a, h0 + j, i]
            w1 = tl.load(
                w_in_ptr + a * h * d + hh[None, :] * d + cd[:, None],
                mask=d_ok[:, None] & h_ok[None, :],
                other=0.0,
            )
            b1 = tl.load(b_in_ptr + a * h + hh, mask=h_ok, other=0.0)
            hid = tl.dot(x, w1, input_precision=PRECISION) + b1[None, :]
            hid = tl.maximum(hid, 0.0)
            # W_out[b]^T chunk: (BLOCK_H, D_PAD), element [j, i] = W_out[b, i, h0 + j]
            w2 = tl.load(
                w_out_ptr + b * d * h + cd[None, :] * h + hh[:, None],
                mask=h_ok[:, None] & d_ok[None, :],
                other=0.0,
            )
            acc = tl.dot(hid, w2, acc, input_precision=PRECISION)
        b2 = tl.load(b_out_ptr + b * d + cd, mask=d_ok, other=0.0)
        x = x + (acc + b2[None, :])

    # Last layer: y = x W_last^T + b_last, (BLOCK_R, K_PAD).
    w3 = tl.load(w_last_ptr + ck[None, :] * d + cd[:, None], mask=d_ok[:, None] & k_ok[None, :], other=0.0)
    b3 = tl.load(b_last_ptr + ck, mask=k_ok, other=0.0)
    y = tl.dot(x, w3, input_precision=PRECISION) + b3[None, :]

    out_mask = row_ok[:, None] & k_ok[None, :]
    tgt = tl.load(target_ptr + rows[:, None] * k + ck[None, :], mask=out_mask, other=0.0)
    # The contract: difference in float32, squared and summed in float64.
    diff = tl.where(out_mask, y - tgt, 0.0).to(tl.float64)
    sq = tl.reduce(diff * diff, 1, _SUM)  # (BLOCK_R,) f64
    tl.store(partials_ptr + c * n_tiles + tile, tl.reduce(sq, 0, _SUM))
    if RETURN_OUTPUTS:
        tl.store(outputs_ptr + c * R * k + rows[:, None] * k + ck[None, :], y, mask=out_mask)


_KERNELS: Dict[bool, object] = {}


def _get_kernel(interpret: bool):
    """The kernel wrapped for the interpreter (``interpret=True``) or for compilation, built once each.

    Built from the undecorated body so the choice is made per call (by tensor device and the current
    ``TRITON_INTERPRET``), not frozen at import time.
    """
    kern = _KERNELS.get(interpret)
    if kern is None:
        try:
            if interpret:
                from triton.runtime.interpreter import InterpretedFunction

                kern = InterpretedFunction(_interpreter_body(_score_kernel_body))
            else:
                from triton.runtime.jit import JITFunction

                kern = JITFunction(_score_kernel_body)
        except ImportError:  # pragma: no cover - layout of a future triton; fall back to the decorator
            kern = triton.jit(_score_kernel_body)
        _KERNELS[interpret] = kern
    return kern


# --------------------------------------------------------------------------------------------------
# Validation and launch
# --------------------------------------------------------------------------------------------------
def _check_tensor(name: str, t, dtype: torch.dtype, ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")


def _validate(prefix, starts, seq_in, seq_out, W_in, b_in, W_out, b_out, W_last, b_last, target):
    f32, i64 = torch.float32, torch.int64
    for name, t, dt, nd in (
        ("prefix", prefix, f32, 3),
        ("starts", starts, i64, 1),
        ("seq_in", seq_in, i64, 2),
        ("seq_out", seq_out, i64, 2),
        ("W_in", W_in, f32, 3),
        ("b_in", b_in, f32, 2),
        ("W_out", W_out, f32, 3),
        ("b_out", b_out, f32, 2),
        ("W_last", W_last, f32, 2),
        ("b_last", b_last, f32, 1),
        ("target", target, f32, 2),
    ):
        _check_tensor(name, t, dt, nd)
    dev = prefix.device
    for name, t in (
        ("starts", starts), ("seq_in", seq_in), ("seq_out", seq_out), ("W_in", W_in), ("b_in", b_in),
        ("W_out", W_out), ("b_out", b_out), ("W_last", W_last), ("b_last", b_last), ("target", target),
    ):
        if t.device != dev:
            raise ValueError(f"{name} is on {t.device} but prefix is on {dev}: all inputs must share a device")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {dev}: use CUDA tensors, or CPU tensors under the interpreter")

    P, R, d = prefix.shape
    K = starts.shape[0]
    Ni, h, d_in = W_in.shape
    No, d_out, h_out = W_out.shape
    k = W_last.shape[0]
    if d_in != d:
        raise ValueError(f"W_in is (Ni, h, d) = {tuple(W_in.shape)} but prefix has d = {d}")
    if tuple(b_in.shape) != (Ni, h):
        raise ValueError(f"b_in must be {(Ni, h)} to match W_in, got {tuple(b_in.shape)}")
    if (d_out, h_out) != (d, h):
        raise ValueError(f"W_out must be (No, d, h) = (No, {d}, {h}), got {tuple(W_out.shape)}")
    if tuple(b_out.shape) != (No, d):
        raise ValueError(f"b_out must be {(No, d)} to match W_out, got {tuple(b_out.shape)}")
    if W_last.shape[1] != d:
        raise ValueError(f"W_last must be (k, d) with d = {d}, got {tuple(W_last.shape)}")
    if tuple(b_last.shape) != (k,):
        raise ValueError(f"b_last must be ({k},) to match W_last, got {tuple(b_last.shape)}")
    if tuple(target.shape) != (R, k):
        raise ValueError(f"target must be (R, k) = {(R, k)}, got {tuple(target.shape)}")
    if seq_in.shape != seq_out.shape:
        raise ValueError(f"seq_in {tuple(seq_in.shape)} and seq_out {tuple(seq_out.shape)} differ in shape")
    if seq_in.shape[0] != K:
        raise ValueError(f"seq_in has {seq_in.shape[0]} rows but starts has K = {K}")
    if P == 0 and K > 0:
        raise ValueError("prefix is empty (P = 0) but there are candidates to score")
    return P, R, d, K, Ni, h, No, k


def _check_indices(starts, seq_in, seq_out, P, Ni, No):
    """Value checks (one small device->host sync): every index the kernel will read is in range.

    Out-of-range indices would read arbitrary memory in the kernel, so they are refused up front.
    Returns the per-candidate block counts (the position of the first negative seq_in, else L).
    """
    K, L = seq_in.shape
    valid = seq_in >= 0
    # Blocks run up to, not including, the first negative seq_in (the contract); later entries are ignored.
    lengths = valid.to(torch.int64).cumprod(dim=1).sum(dim=1) if L > 0 else seq_in.new_zeros(K)
    if K == 0:
        return lengths
    used = torch.arange(L, device=seq_in.device)[None, :] < lengths[:, None]
    bad_start = ((starts < 0) | (starts >= P)).any()
    bad_in = (used & (seq_in >= Ni)).any()
    bad_out = (used & ((seq_out < 0) | (seq_out >= No))).any()
    flags = torch.stack([bad_start, bad_in, bad_out]).tolist()
    if flags[0]:
        raise ValueError(f"starts must lie in [0, P) = [0, {P}); got values {starts.min().item()}..{starts.max().item()}")
    if flags[1]:
        raise ValueError(f"seq_in indices must lie in [0, Ni) = [0, {Ni}) before the first -1")
    if flags[2]:
        raise ValueError(f"seq_out indices must lie in [0, No) = [0, {No}) wherever seq_in is in use")
    return lengths


def score_candidates_triton(
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
    BLOCK_R: int = DEFAULT_BLOCK_R,
    *,
    BLOCK_H: Optional[int] = None,
    allow_tf32: bool = False,
    num_warps: Optional[int] = None,
    check_indices: bool = True,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Score K candidates in one Triton launch (contract of :func:`unshuffle.reference.score_candidates`).

    Arguments are those of the reference, in the same order, plus tuning knobs:

    BLOCK_R: rows per program (power of two >= 16). BLOCK_H: hidden units per inner chunk (power of two
    >= 16; default min(padded h, 32) compiled, 64 interpreted). allow_tf32: let tl.dot use TF32 on the GPU (faster, but ~1e-3
    relative error per product: off by default because the solver needs float32-exact losses near 0).
    num_warps: launch option for the compiled kernel. check_indices: refuse out-of-range indices
    (costs one device->host sync; leave on unless the caller has already validated them).

    Returns ``losses`` (K,) float64 on the inputs' device and, if ``return_outputs``, also the
    last-layer outputs (K, R, k) float32. Raises ValueError on bad dtypes, shapes, devices or indices,
    and RuntimeError when triton is missing or a CUDA tensor is given with no way to run it.
    """
    if triton is None:
        raise RuntimeError(f"triton is not importable: {_TRITON_IMPORT_ERROR!r}")
    P, R, d, K, Ni, h, No, k = _validate(
        prefix, starts, seq_in, seq_out, W_in, b_in, W_out, b_out, W_last, b_last, target
    )
    if not (isinstance(BLOCK_R, int) and BLOCK_R >= _MIN_DOT and BLOCK_R & (BLOCK_R - 1) == 0):
        raise ValueError(f"BLOCK_R must be a power of two >= {_MIN_DOT}, got {BLOCK_R!r}")
    H_PAD = _next_pow2_at_least(h)
    if BLOCK_H is None:
        # compiled: 32, not 64: ptxas (Triton 3.6, sm_90, d=48, h=96, 64 rows) spills 1.4 KB per thread with
        # 64-wide chunks and 4 warps, ~40 bytes with 32-wide chunks and 8 warps. Interpreted: 64 (fewer ops).
        compiled = prefix.device.type == "cuda" and not interpreter_requested()
        BLOCK_H = min(H_PAD, 32 if compiled else 64)
    if not (isinstance(BLOCK_H, int) and BLOCK_H >= _MIN_DOT and BLOCK_H & (BLOCK_H - 1) == 0):
        raise ValueError(f"BLOCK_H must be a power of two >= {_MIN_DOT}, got {BLOCK_H!r}")
    BLOCK_H = min(BLOCK_H, H_PAD)
    D_PAD = _next_pow2_at_least(d)
    K_PAD = _next_pow2_at_least(k)
    dev = prefix.device

    lengths = _check_indices(starts, seq_in, seq_out, P, Ni, No) if check_indices else None
    if lengths is None:
        L = seq_in.shape[1]
        lengths = (seq_in >= 0).to(torch.int64).cumprod(dim=1).sum(dim=1) if L > 0 else seq_in.new_zeros(K)

    n_tiles = triton.cdiv(R, BLOCK_R) if R > 0 else 0
    if K == 0 or n_tiles == 0 or k == 0:
        # Nothing to launch: the loss of a candidate over zero rows/outputs is an empty sum, 0.
        losses = torch.zeros(K, dtype=torch.float64, device=dev)
        if return_outputs:
            return losses, torch.empty(K, R, k, dtype=torch.float32, device=dev)
        return losses

    interpret = dev.type == "cpu" or interpreter_requested()
    if dev.type == "cuda" and not interpret and not torch.cuda.is_available():  # pragma: no cover
        raise RuntimeError("CUDA tensors given but CUDA is not available")

    seq_in_c, seq_out_c, L = seq_in.contiguous(), seq_out.contiguous(), seq_in.shape[1]
    if L == 0:  # no blocks at all; pass a 1-element dummy so no pointer argument is empty
        seq_in_c = seq_out_c = torch.full((K, 1), -1, dtype=torch.int64, device=dev)
        L = 1
    partials = torch.empty(K, n_tiles, dtype=torch.float64, device=dev)
    outputs = torch.empty(K, R, k, dtype=torch.float32, device=dev) if return_outputs else partials

    precision = "tf32" if (allow_tf32 and not interpret) else "ieee"
    kern = _get_kernel(interpret)
    launch_opts = {} if interpret else {"num_warps": num_warps or (8 if BLOCK_R >= 64 else 4)}
    kern[(K, n_tiles)](
        prefix.contiguous(), starts.contiguous(), lengths.contiguous(), seq_in_c, seq_out_c,
        W_in.contiguous(), b_in.contiguous(), W_out.contiguous(), b_out.contiguous(),
        W_last.contiguous(), b_last.contiguous(), target.contiguous(),
        partials, outputs,
        R, d, h, k, L, n_tiles,
        BLOCK_R=BLOCK_R, D_PAD=D_PAD, BLOCK_H=BLOCK_H, H_PAD=H_PAD, K_PAD=K_PAD,
        RETURN_OUTPUTS=bool(return_outputs), PRECISION=precision,
        **launch_opts,
    )
    # Deterministic reduction: a fixed-order float64 sum over each candidate's tiles.
    losses = partials.sum(dim=1)
    if return_outputs:
        return losses, outputs
    return losses
