"""Scoring backends behind one contract (see ``unshuffle.reference``), chosen by cached probes.

``get_scorer("auto")`` picks Triton when a CUDA device is present, else the C++ fused scorer, else batched
torch. ``UNSHUFFLE_BACKEND`` overrides the choice. An auto-selected backend that is missing falls back
quietly (logged at debug level, once); an explicitly requested one that is unavailable raises
``BackendUnavailable`` saying why.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Dict, Optional, Tuple

import numpy as np

from . import reference
from ._lazy import loaded, torch
from .errors import BackendUnavailable

log = logging.getLogger("unshuffle")

NAMES = ("reference", "torch", "cpp", "triton")


def _cuda_available() -> bool:
    """torch.cuda.is_available(), without importing torch (~1 s) where no GPU can be present: on Linux a CUDA
    (or ROCm) device needs its device node, so with none of them there is nothing for torch to find."""
    if not loaded("torch") and sys.platform.startswith("linux"):
        if not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")):
            return False
    return bool(torch.cuda.is_available())


@functools.lru_cache(maxsize=None)
def _probe_cpp() -> Tuple[bool, str]:
    try:
        from . import _core  # noqa: F401
    except ImportError as exc:
        log.debug("unshuffle C++ extension not available (%s); using torch paths", exc)
        return False, f"C++ extension unshuffle._core not built or not importable ({exc})"
    return True, "C++ extension unshuffle._core loaded"


@functools.lru_cache(maxsize=None)
def _probe_triton() -> Tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return False, f"triton is not installed ({exc})"
    interp = os.environ.get("TRITON_INTERPRET", "") == "1"
    if not torch.cuda.is_available() and not interp:
        return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernel in the CPU interpreter, for testing)"
    try:
        from .kernels import scoring  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken kernel module must not break the package
        return False, f"unshuffle.kernels.scoring failed to import ({type(exc).__name__}: {exc})"
    return True, ("CUDA device " + torch.cuda.get_device_name(0)) if torch.cuda.is_available() else "TRITON_INTERPRET=1 (CPU interpreter, slow)"


# One probe per backend, so that resolving one name probes (and imports) only what that backend needs.
_PROBES = {
    "reference": lambda: (True, "pure PyTorch loop (the reference)"),
    "torch": lambda: (True, f"batched torch {torch.__version__}, {torch.get_num_threads()} threads"),
    "cpp": lambda: _probe_cpp(),
    "triton": lambda: _probe_triton(),
}


def available_backends() -> Dict[str, Tuple[bool, str]]:
    """Every backend name -> (usable here, why)."""
    return {name: probe() for name, probe in _PROBES.items()}


class Scorer:
    """Scores candidates (``score``) and computes prefix activations (``forward_prefixes``)."""

    name = "base"

    def score(self, prefix, starts, seq_in, seq_out, W_in, b_in, W_out, b_out, W_last, b_last, target) -> torch.Tensor:
        raise NotImplementedError

    def forward_prefixes(self, X, order_in, order_out, W_in, b_in, W_out, b_out) -> torch.Tensor:
        return reference.forward_prefixes(X, order_in, order_out, W_in, b_in, W_out, b_out)

    def __repr__(self) -> str:
        return f"<Scorer {self.name}>"


class ReferenceScorer(Scorer):
    name = "reference"

    def score(self, *args):
        return reference.score_candidates(*args)


class TorchScorer(Scorer):
    """Batched torch: all candidates of a chunk advance together, one bmm per block position."""

    name = "torch"

    def __init__(self, max_chunk_bytes: int = 64 << 20):
        self.max_chunk_bytes = max_chunk_bytes

    def score(self, prefix, starts, seq_in, seq_out, W_in, b_in, W_out, b_out, W_last, b_last, target):
        K = int(starts.shape[0])
        R, d = prefix.shape[1], prefix.shape[2]
        h = W_in.shape[1]
        losses = torch.empty(K, dtype=torch.float64)
        chunk = max(1, self.max_chunk_bytes // (4 * R * (d + h)))
        for c0 in range(0, K, chunk):
            sl = slice(c0, min(K, c0 + chunk))
            x = prefix[starts[sl]]  # (k, R, d), a copy
            si, so = seq_in[sl], seq_out[sl]
            for t in range(si.shape[1]):
                active = si[:, t] >= 0
                if not bool(active.any()):
                    break
                a, b = si[:, t].clamp(min=0), so[:, t].clamp(min=0)
                hid = torch.relu(torch.baddbmm(b_in[a].unsqueeze(1), x, W_in[a].transpose(1, 2)))
                upd = torch.baddbmm(b_out[b].unsqueeze(1), hid, W_out[b].transpose(1, 2))
                if bool(active.all()):
                    x = x + upd
                else:
                    x = x + upd * active.view(-1, 1, 1).to(x.dtype)
            y = x @ W_last.T + b_last
            losses[sl] = ((y - target).double() ** 2).sum(dim=(1, 2))
        return losses


class CppScorer(Scorer):
    """The fused C++ scorer (unshuffle._core), on numpy views of CPU tensors."""

    name = "cpp"

    def __init__(self):
        from . import _core

        self._core = _core

    @staticmethod
    def _np(t, dtype):
        return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=dtype)

    def score(self, prefix, starts, seq_in, seq_out, W_in, b_in, W_out, b_out, W_last, b_last, target):
        f, i = np.float32, np.int64
        out = self._core.score_candidates(
            self._np(prefix, f), self._np(starts, i), self._np(seq_in, i), self._np(seq_out, i),
            self._np(W_in, f), self._np(b_in, f), self._np(W_out, f), self._np(b_out, f),
            self._np(W_last, f), self._np(b_last, f), self._np(target, f),
        )
        return torch.from_numpy(np.asarray(out, dtype=np.float64))

    def forward_prefixes(self, X, order_in, order_out, W_in, b_in, W_out, b_out):
        f, i = np.float32, np.int64
        out = self._core.forward_prefixes(
            self._np(X, f), np.asarray(order_in, dtype=i), np.asarray(order_out, dtype=i),
            self._np(W_in, f), self._np(b_in, f), self._np(W_out, f), self._np(b_out, f),
        )
        return torch.from_numpy(np.asarray(out))


class TritonScorer(Scorer):
    """The fused Triton kernel; tensors are moved to the CUDA device (or stay on CPU under the interpreter)."""

    name = "triton"

    def __init__(self):
        from .kernels.scoring import score_candidates_triton

        self._fn = score_candidates_triton
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")

    def score(self, *args):
        moved = [a.to(self.device) for a in args]
        return self._fn(*moved).double().cpu()


_CLASSES = {"reference": ReferenceScorer, "torch": TorchScorer, "cpp": CppScorer, "triton": TritonScorer}


def resolve_backend(name: Optional[str] = "auto") -> str:
    """The backend name that ``get_scorer(name)`` would use."""
    name = (name or "auto").lower()
    explicit = name != "auto"
    if not explicit:
        env = os.environ.get("UNSHUFFLE_BACKEND", "").strip().lower()
        if env and env != "auto":
            name, explicit = env, True
    if explicit:
        if name not in _CLASSES:
            raise BackendUnavailable(f"unknown backend {name!r}; choose one of auto, {', '.join(NAMES)}")
        ok, why = _PROBES[name]()
        if not ok:
            raise BackendUnavailable(f"backend {name!r} was requested but is unavailable: {why}")
        return name
    if _cuda_available() and _probe_triton()[0]:
        return "triton"
    if _probe_cpp()[0]:
        return "cpp"
    return "torch"


def get_scorer(name: Optional[str] = "auto") -> Scorer:
    """A scorer instance for ``name`` (auto, reference, torch, cpp, triton)."""
    return _CLASSES[resolve_backend(name)]()
