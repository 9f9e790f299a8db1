"""Synthetic puzzle generator: train a residual MLP on a synthetic regression task, shuffle its layers.

``make_puzzle(out_dir, blocks=N, dim=d, hidden=h, outputs=k, rows=R, seed=S, regime=...)`` writes

* ``out_dir/pieces/piece_<id>.pth`` - the 2N+1 layers under random ids (dict weight/bias, float32);
* ``out_dir/historical_data.csv`` - ``measurement_0..d-1``, ``pred`` (or ``pred_0..pred_{k-1}``),
  ``true`` (or ``true_i``); floats in shortest float32 form, so they round-trip exactly;
* ``out_dir/answer.json`` - ``{"answer": [ids in execution order], "sha256": ...}`` (written last; the
  loader ignores it). The sha256 is of ``",".join(str(i) for i in answer)``, as in the public puzzle.

``pred`` is the trained network's output computed in plain float32 (``x @ W.T + b``, block by block), so the
answer reproduces it to float32 rounding. Everything is a function of the seed: data, init, batches and the
piece ids come from seeded generators and training runs single-threaded (bitwise reproducible on one
machine).

Regimes (what the training looks like; see docs/pairing_study.md for the measured pairing signals):

* ``"fast"`` (default): 20 epochs of Adam at lr 1e-2 from PyTorch's default init. Seconds for N<=16,
  d=32, h=64, 2,000 rows; the large learning rate makes the blocks contract the residual stream
  (tr(W_out W_in) < 0), so the static pairing signals are clear.
* ``"paper"``: 60 epochs of Adam at lr 1e-2 with cosine decay; blocks further from init, closer to the
  public network (negative trace, more negative eigenvalues).
* ``"brief"``: 20 epochs of Adam at lr 1e-3 from PyTorch's default init - the weights stay near init and
  the static pairing signals are at chance (the hard case for the solver's robustness).
* ``"wd"``: 30 epochs of AdamW at lr 3e-3 with weight decay 0.1 and cosine decay.
* ``"sgd"``: 40 epochs of plain SGD (no momentum) at lr 3e-3 with cosine decay; weights stay near init.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from .puzzle import answer_sha256  # re-exported (see __all__)
from .safeio import atomic_open, atomic_write_bytes

__all__ = ["TrainConfig", "REGIMES", "GeneratedPuzzle", "make_puzzle", "make_task", "init_network",
           "train_network", "network_forward", "answer_sha256"]


@dataclass(frozen=True)
class TrainConfig:
    """How the network is trained. ``init_scale`` multiplies PyTorch's default Linear init of the blocks."""

    epochs: int = 30
    lr: float = 3e-3
    batch: int = 128
    weight_decay: float = 0.0  # decoupled (AdamW) weight decay on all weights and biases
    init_scale: float = 1.0
    cosine: bool = True  # cosine learning-rate decay to 0 over the run
    noise: float = 0.3  # target noise std relative to the (unit) signal std
    complexity: int = 8  # number of nonlinear components of the target function
    optimizer: str = "adamw"  # "adamw" (Adam with decoupled weight decay) or "sgd" (plain SGD, no momentum)


REGIMES: Dict[str, TrainConfig] = {
    # Adam at lr 1e-2 is what makes the static pairing signals (docs/pairing_study.md): the blocks learn to
    # pull the residual stream back (tr(W_out W_in) < 0), which Park's ratio and -trace detect.
    "fast": TrainConfig(epochs=20, lr=1e-2, batch=128, cosine=False),
    "paper": TrainConfig(epochs=60, lr=1e-2, batch=128, cosine=True),
    "brief": TrainConfig(epochs=20, lr=1e-3, batch=128, cosine=False),
    # decoupled weight decay: weights pulled toward 0, no diagonal pairing signal (docs/pairing_study.md)
    "wd": TrainConfig(epochs=30, lr=3e-3, batch=128, weight_decay=0.1, cosine=True),
    # plain SGD (no momentum): lr 1e-2 diverges for 32+ blocks from the default init; 3e-3 trains
    "sgd": TrainConfig(epochs=40, lr=3e-3, batch=128, cosine=True, optimizer="sgd"),
}


@dataclass
class GeneratedPuzzle:
    """What ``make_puzzle`` wrote, the answer and the training stats."""

    out_dir: Path
    pieces_dir: Path
    data_path: Path
    answer_path: Path
    answer: List[int]
    sha256: str
    blocks: int
    dim: int
    hidden: int
    outputs: int
    rows: int
    seed: int
    regime: str
    config: TrainConfig
    stats: Dict[str, float] = field(default_factory=dict)




# ---------------------------------------------------------------------------------------------- task
def make_task(rows: int, dim: int, outputs: int, seed: int, *, noise: float = 0.3, complexity: int = 8
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic regression data: (X (R, d), y_clean (R, k), y_noisy (R, k)), float32.

    Inputs are bimodal per feature (modes near -0.8 and +0.7, feature-specific mixing weights, a shared
    low-rank factor for correlation), like the public puzzle's. The target is a smooth nonlinear function:
    per output, ``complexity`` tanh ridge functions of random projections plus a quadratic interaction,
    standardised to unit std, plus Gaussian noise of std ``noise``.
    """
    g = np.random.default_rng(np.random.SeedSequence([seed, 0xDA7A]))
    p = g.uniform(0.3, 0.7, size=dim)
    mode = np.where(g.random((rows, dim)) < p, -0.8, 0.7)
    factor = g.standard_normal((rows, 2)) @ (0.15 * g.standard_normal((2, dim)))
    X = mode + 0.25 * g.standard_normal((rows, dim)) + factor
    Y = np.empty((rows, outputs))
    m = max(1, int(complexity))
    for j in range(outputs):
        V = g.standard_normal((dim, m)) / math.sqrt(dim) * 1.5
        c = g.uniform(-0.5, 0.5, size=m)
        a = g.standard_normal(m)
        u, w = g.standard_normal(dim) / math.sqrt(dim), g.standard_normal(dim) / math.sqrt(dim)
        y = np.tanh(X @ V + c) @ a + 0.5 * (X @ u) * (X @ w)
        Y[:, j] = (y - y.mean()) / (y.std() + 1e-12)
    Yn = Y + noise * g.standard_normal(Y.shape)
    f = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return f(X), f(Y), f(Yn)


# ------------------------------------------------------------------------------------------- network
def init_network(blocks: int, dim: int, hidden: int, outputs: int, seed: int, init_scale: float = 1.0
                 ) -> List[torch.nn.Linear]:
    """Layers in execution order inp_1, out_1, ..., inp_N, out_N, last (PyTorch default init, the
    blocks' weights and biases scaled by ``init_scale``)."""
    torch.manual_seed(seed)
    layers = []
    for _ in range(blocks):
        layers += [torch.nn.Linear(dim, hidden), torch.nn.Linear(hidden, dim)]
    layers.append(torch.nn.Linear(dim, outputs))
    if init_scale != 1.0:
        with torch.no_grad():
            for lin in layers[:-1]:
                lin.weight.mul_(init_scale)
                lin.bias.mul_(init_scale)
    return layers


def network_forward(x: torch.Tensor, layers) -> torch.Tensor:
    """Forward pass of the residual MLP (layers in execution order; nn.Linear or (W, b) pairs)."""
    wb = [(l.weight, l.bias) if isinstance(l, torch.nn.Linear) else l for l in layers]
    n = (len(wb) - 1) // 2
    for i in range(n):
        (wi, bi), (wo, bo) = wb[2 * i], wb[2 * i + 1]
        x = x + torch.relu(x @ wi.T + bi) @ wo.T + bo
    w, b = wb[-1]
    return x @ w.T + b


def train_network(layers: List[torch.nn.Linear], X: torch.Tensor, Y: torch.Tensor, cfg: TrainConfig,
                  seed: int) -> Dict[str, float]:
    """Train in place with (decoupled-weight-decay) Adam on MSE, minibatches from a seeded generator."""
    params = [p for l in layers for p in l.parameters()]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adamw":
        # fused: ~2x faster steps on CPU than foreach for these many small tensors
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r} (adamw or sgd)")
    R = X.shape[0]
    steps_per_epoch = max(1, math.ceil(R / cfg.batch))
    total = cfg.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(seed ^ 0x5EED)
    step = 0
    last = float("nan")
    for _ in range(cfg.epochs):
        perm = torch.randperm(R, generator=gen)
        ep_loss = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.batch:(s + 1) * cfg.batch]
            if cfg.cosine:
                for gr in opt.param_groups:
                    gr["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = torch.nn.functional.mse_loss(network_forward(X[idx], layers), Y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ep_loss += float(loss.detach()) * len(idx)
            step += 1
        last = ep_loss / R
    return {"train_loss_last_epoch": last, "steps": step}


def _float32_forward(X: torch.Tensor, wb: List[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """pred in plain float32 matmuls, block by block (what a solver re-computes)."""
    with torch.no_grad():
        return network_forward(X.float(), [(w.float(), b.float()) for w, b in wb])


def weight_stats(wb: List[Tuple[torch.Tensor, torch.Tensor]]) -> Dict[str, float]:
    """Per-network summaries of the blocks (mean ||W_out||_F, tr(W_out W_in)/d, share of negative
    eigenvalue real parts of W_out W_in)."""
    n = (len(wb) - 1) // 2
    norms, tr, neg = [], [], []
    for i in range(n):
        wi, wo = wb[2 * i][0].double(), wb[2 * i + 1][0].double()
        M = wo @ wi
        norms.append(float(torch.linalg.norm(wo)))
        tr.append(float(torch.trace(M)) / M.shape[0])
        neg.append(float((torch.linalg.eigvals(M).real < 0).double().mean()))
    return {"w_out_fro_first": norms[0], "w_out_fro_last": norms[-1], "w_out_fro_mean": float(np.mean(norms)),
            "trace_over_d": float(np.mean(tr)), "neg_eig_frac": float(np.mean(neg))}


# ---------------------------------------------------------------------------------------------- files
def _fmt(a: np.ndarray) -> np.ndarray:
    """Shortest float32 repr of each value (round-trips exactly through a float64 CSV parser)."""
    return np.array([np.format_float_positional(v, unique=True, trim="-") if 1e-4 <= abs(v) < 1e7 or v == 0
                     else np.format_float_scientific(v, unique=True, trim="-")
                     for v in a.astype(np.float32).ravel()], dtype=object).reshape(a.shape)


def _csv_text(X: np.ndarray, pred: np.ndarray, true: np.ndarray) -> bytes:
    d, k = X.shape[1], pred.shape[1]
    cols = [f"measurement_{i}" for i in range(d)]
    cols += ["pred"] if k == 1 else [f"pred_{j}" for j in range(k)]
    cols += ["true"] if k == 1 else [f"true_{j}" for j in range(k)]
    body = np.concatenate([_fmt(X), _fmt(pred), _fmt(true)], axis=1)
    lines = [",".join(cols)] + [",".join(r) for r in body.tolist()]
    return ("\n".join(lines) + "\n").encode()


# ----------------------------------------------------------------------------------------------- main
def make_puzzle(
    out_dir: Union[str, Path],
    *,
    blocks: int = 12,
    dim: int = 32,
    hidden: int = 64,
    outputs: int = 1,
    rows: int = 2000,
    seed: int = 0,
    regime: str = "fast",
    epochs: Optional[int] = None,
    lr: Optional[float] = None,
    weight_decay: Optional[float] = None,
    init_scale: Optional[float] = None,
    noise: Optional[float] = None,
) -> GeneratedPuzzle:
    """Generate a puzzle into ``out_dir`` (created if needed) and return what was written.

    ``regime`` names a training recipe in ``REGIMES`` ("fast", "paper", "brief"); ``epochs``, ``lr``,
    ``weight_decay``, ``init_scale`` and ``noise`` override single fields of it. Deterministic for a seed.
    Existing ``piece_*.pth`` files in ``out_dir/pieces`` that are not part of the new puzzle are removed.
    """
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; choose one of {sorted(REGIMES)}")
    if min(blocks, dim, hidden, outputs, rows) < 1:
        raise ValueError("blocks, dim, hidden, outputs and rows must be >= 1")
    if hidden == dim or outputs == dim or outputs == hidden:
        # the loader tells the roles apart by shape
        raise ValueError("dim, hidden and outputs must be pairwise different so pieces are identifiable by shape")
    cfg = REGIMES[regime]
    over = {k: v for k, v in dict(epochs=epochs, lr=lr, weight_decay=weight_decay, init_scale=init_scale,
                                  noise=noise).items() if v is not None}
    cfg = replace(cfg, **over)

    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-reproducible training, and gentle on a shared machine
    try:
        X, _, Y = make_task(rows, dim, outputs, seed, noise=cfg.noise, complexity=cfg.complexity)
        layers = init_network(blocks, dim, hidden, outputs, seed, cfg.init_scale)
        tstats = train_network(layers, X, Y, cfg, seed)
        wb = [(l.weight.detach().float().contiguous().clone(), l.bias.detach().float().contiguous().clone())
              for l in layers]
        pred = _float32_forward(X, wb)
        if not all(bool(torch.isfinite(t).all()) for pair in wb for t in pair) or not bool(torch.isfinite(pred).all()):
            raise ValueError(f"training diverged (non-finite weights or outputs) with {cfg}; lower the learning rate")
        ws = weight_stats(wb)
    finally:
        torch.set_num_threads(threads)
    t_train = time.perf_counter() - t0

    # random piece ids: ids[pos] is the id of the layer at execution position pos
    ids = np.random.default_rng(np.random.SeedSequence([seed, 0x1D5])).permutation(2 * blocks + 1).tolist()
    answer = [int(i) for i in ids]

    out = Path(out_dir)
    pieces = out / "pieces"
    pieces.mkdir(parents=True, exist_ok=True)
    answer_path = out / "answer.json"
    if answer_path.exists():  # answer.json marks a complete puzzle: drop it until the new one is written
        answer_path.unlink()
    for pos, pid in enumerate(answer):
        w, b = wb[pos]
        with atomic_open(pieces / f"piece_{pid}.pth", "wb") as fh:  # never a half-written file
            torch.save({"weight": w, "bias": b}, fh)
    keep = {f"piece_{pid}.pth" for pid in answer}
    for f in pieces.glob("piece_*.pth"):
        if f.name not in keep:
            f.unlink()
    data_path = out / "historical_data.csv"
    text = _csv_text(X.numpy(), pred.numpy(), Y.numpy())
    atomic_write_bytes(data_path, text)
    sha = answer_sha256(answer)
    atomic_write_bytes(answer_path, json.dumps({"answer": answer, "sha256": sha}).encode())

    mse_true = float(((pred - Y) ** 2).mean())
    stats = {"seconds_total": time.perf_counter() - t0, "seconds_train": t_train, "mse_pred_true": mse_true,
             **tstats, **ws}
    return GeneratedPuzzle(out_dir=out, pieces_dir=pieces, data_path=data_path, answer_path=answer_path,
                           answer=answer, sha256=sha, blocks=blocks, dim=dim, hidden=hidden, outputs=outputs,
                           rows=rows, seed=seed, regime=regime, config=cfg, stats=stats)
