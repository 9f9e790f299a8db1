"""Scoring backends behind one contract (see ``unshuffle.reference``), chosen by cached probes.

``get_scorer("auto", work=...)`` picks by a crossover, not by the mere presence of CUDA (``auto_choice``):
Triton on the GPU only when CUDA and triton work here *and* the search is big enough for the GPU to win
(``work``: GFLOP of one adjacent-swap round, ``round_gflop``) against the threshold measured on this GPU
(``calibration``), else a conservative default; otherwise the C++ fused scorer, else batched torch.
Without ``work`` (size unknown) auto stays on the CPU. ``UNSHUFFLE_BACKEND`` overrides the choice. An
auto-selected backend that is missing falls back quietly (logged at debug level, once); an explicitly
requested one that is unavailable raises ``BackendUnavailable`` saying why.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path
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
    """The fused Triton kernel; tensors are moved to the CUDA device (or stay on CPU under the interpreter).

    The search on this backend runs on the device (``unshuffle.gpu_search.device_local_search``); this
    ``score`` serves one-off calls (seeds, Bradley-Terry). The six piece tensors, which never change
    between calls, are uploaded once and kept (keyed by identity and version)."""

    name = "triton"

    def __init__(self):
        from .kernels.scoring import score_candidates_triton

        self._fn = score_candidates_triton
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        self._resident: Dict[int, Tuple[torch.Tensor, int, torch.Tensor]] = {}

    def _to_device(self, t: torch.Tensor, keep: bool) -> torch.Tensor:
        if t.device == self.device:
            return t
        if not keep:
            return t.to(self.device)
        hit = self._resident.get(id(t))
        # the entry holds the host tensor itself, so its id cannot be reused while cached; the version
        # counter catches in-place changes
        if hit is not None and hit[0] is t and hit[1] == t._version:
            return hit[2]
        moved = t.to(self.device)
        self._resident[id(t)] = (t, t._version, moved)
        return moved

    def score(self, *args):
        # args 4..9 are the pieces (W_in .. b_last): resident on the device after the first call
        moved = [self._to_device(a, 4 <= i <= 9) for i, a in enumerate(args)]
        return self._fn(*moved).double().cpu()


_CLASSES = {"reference": ReferenceScorer, "torch": TorchScorer, "cpp": CppScorer, "triton": TritonScorer}


# ------------------------------------------------------------------------------------------------------
# auto: crossover by measurement (issue 10)
# ------------------------------------------------------------------------------------------------------
# Until a GPU measurement replaces it (NOTES.md "GPU path"), auto sends a search to the GPU only when one
# adjacent-swap round costs at least this many GFLOP: ~0.25 s of the C++ scorer on the 2-core development
# machine (~220 GFLOP/s). The public puzzle (N=48, d=48, h=96, 256 search rows: 5.5 GFLOP) stays on the CPU.
DEFAULT_TRITON_MIN_GFLOP = 50.0
# Batched torch on the CPU was measured 6-8x slower than the C++ scorer (NOTES.md): with no C++ extension
# the GPU pays off that much sooner.
TORCH_VS_CPP_SLOWDOWN = 8.0
CALIBRATION_ENV = "UNSHUFFLE_CALIBRATION"  # path of the calibration JSON (default ~/.cache/unshuffle/...)
THRESHOLD_ENV = "UNSHUFFLE_TRITON_MIN_GFLOP"  # a number overrides every other source


def round_gflop(n_blocks: int, d: int, h: int, rows: int) -> float:
    """GFLOP of one adjacent-swap round of the search: candidate i runs the n - i blocks from position i
    over ``rows`` rows, 4*d*h FLOPs per block and row. The size measure the crossover is stated in."""
    n = int(n_blocks)
    return 4.0 * d * h * rows * sum(n - i for i in range(max(n - 1, 0))) / 1e9


def calibration_path() -> Path:
    """Where the measured crossover is cached (``UNSHUFFLE_CALIBRATION`` or ~/.cache/unshuffle/calibration.json)."""
    env = os.environ.get(CALIBRATION_ENV, "").strip()
    return Path(env) if env else Path.home() / ".cache" / "unshuffle" / "calibration.json"


def _device_key() -> str:
    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = "none"
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return f"{name} | torch {torch.__version__} | triton {tv}"


def triton_threshold() -> Tuple[float, str]:
    """(GFLOP per adjacent round from which auto takes the GPU, where that number comes from)."""
    env = os.environ.get(THRESHOLD_ENV, "").strip()
    if env:
        try:
            return float(env), f"{THRESHOLD_ENV}={env}"
        except ValueError:
            log.debug("ignoring %s=%r (not a number)", THRESHOLD_ENV, env)
    path = calibration_path()
    try:
        entry = json.loads(path.read_text()).get(_device_key())
        if entry and entry.get("min_round_gflop") is not None:
            return float(entry["min_round_gflop"]), f"measured on this GPU ({path})"
    except (OSError, ValueError, AttributeError):
        pass
    return DEFAULT_TRITON_MIN_GFLOP, "conservative default, not yet measured on a GPU"


def save_calibration(min_round_gflop: Optional[float], details: Optional[dict] = None) -> Path:
    """Record the measured crossover for this GPU/torch/triton (``None``: the GPU never won; auto then
    keeps every search on the CPU). Written atomically; other devices' entries are kept."""
    from .safeio import atomic_write_text

    path = calibration_path()
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict):
            doc = {}
    except (OSError, ValueError):
        doc = {}
    value = float("inf") if min_round_gflop is None else float(min_round_gflop)
    doc[_device_key()] = {"min_round_gflop": value if value != float("inf") else 1e30, **(details or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path


def auto_choice(work: Optional[float] = None) -> Tuple[str, str]:
    """(backend, reason) for ``auto``: ``work`` is the search's size in GFLOP per adjacent round
    (``round_gflop``), or None when unknown. The GPU is taken only where it was measured (or, until
    measured, conservatively assumed) to win; otherwise the C++ scorer, else batched torch."""
    has_cpp = _probe_cpp()[0]
    cpu = "cpp" if has_cpp else "torch"
    on_cpu = "C++ fused scorer" if has_cpp else "C++ extension missing, batched torch"
    if not _cuda_available():  # checked first: it costs no torch or triton import on a machine without a GPU
        return cpu, f"no CUDA device; {on_cpu} on the CPU"
    tri_ok, tri_why = _probe_triton()
    if not tri_ok:
        return cpu, f"triton unusable: {tri_why}; {on_cpu} on the CPU"
    limit, source = triton_threshold()
    if not has_cpp:
        limit /= TORCH_VS_CPP_SLOWDOWN
    if work is None:
        return cpu, (f"CUDA present, but the search size is unknown here; auto takes the GPU for searches of "
                     f">= {limit:.3g} GFLOP per adjacent round ({source})")
    if work >= limit:
        return "triton", f"search of {work:.3g} GFLOP per adjacent round >= crossover {limit:.3g} ({source})"
    return cpu, f"search of {work:.3g} GFLOP per adjacent round < crossover {limit:.3g} ({source}): the CPU is faster"


def explain_auto(work: Optional[float] = None) -> str:
    """Why ``auto`` resolves as it does here (for ``unshuffle info`` and logs)."""
    env = os.environ.get("UNSHUFFLE_BACKEND", "").strip().lower()
    if env and env != "auto":
        return f"set by UNSHUFFLE_BACKEND={env}"
    return auto_choice(work)[1]


def resolve_backend(name: Optional[str] = "auto", work: Optional[float] = None) -> str:
    """The backend name that ``get_scorer(name, work)`` would use."""
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
    return auto_choice(work)[0]


def get_scorer(name: Optional[str] = "auto", work: Optional[float] = None) -> Scorer:
    """A scorer instance for ``name`` (auto, reference, torch, cpp, triton); ``work`` (GFLOP per adjacent
    round, ``round_gflop``) lets auto choose by the measured crossover."""
    return _CLASSES[resolve_backend(name, work)]()
