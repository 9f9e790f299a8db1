"""Study: what training makes the inp/out pairing signal of a residual MLP.

For each training regime (variations of learning rate, length, weight decay, init scale, data size, task
difficulty) this trains the generator's network (unshuffle.generate, no files written) and measures how many
blocks each pairing signal pairs right: a score matrix S[a, b] over inp piece a and out piece b, Hungarian
assignment (scipy linear_sum_assignment, maximising) on it, accuracy = correct pairs / N.

Signals (none uses the order; the data ones use only X, the recorded inputs):
  park      Park's ratio: for M = W_out[b] @ W_in[a] (d x d), mean |diag M| / mean |offdiag M|
  negtrace  -tr(W_out[b] @ W_in[a])
  unitnorm  corr over hidden units j of (||W_in[a][j, :]||, ||W_out[b][:, j]||)  (weights only)
  data_norm data: +mean_x ||u_ab(x)||^2, u_ab(x) = W_out[b] relu(W_in[a] x + b_in[a]) + b_out[b]
            (a correct pair's update is LARGER than a wrong pair's; the opposite sign - "trained together,
            so small" - scored 0/12 in nearly every regime of a first pass: an anti-signal)
  data_dot  data: -mean_x <u_ab(x), x>  (the block pulls x back; data analogue of negtrace)
  data_act  data: corr over j of (rms_x relu(W_in[a] x + b_in[a])_j, ||W_out[b][:, j]||): units that are
            active on the data had their out column trained; dead / rarely active units kept the init size.

Usage: python benchmarks/study_pairing_signal.py [--seeds 2] [--only NAME,...] [--json FILE]
Runs single-threaded (torch.set_num_threads(1)); the whole default grid takes a few minutes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from unshuffle.generate import REGIMES, TrainConfig, init_network, make_task, train_network, weight_stats  # noqa: E402

SIGNALS = ["park", "negtrace", "unitnorm", "data_norm", "data_dot", "data_act"]


def _corr_rows(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of every row of A (Na, h) with every row of B (Nb, h): (Na, Nb)."""
    A = A - A.mean(1, keepdim=True)
    B = B - B.mean(1, keepdim=True)
    A = A / (A.norm(dim=1, keepdim=True) + 1e-30)
    B = B / (B.norm(dim=1, keepdim=True) + 1e-30)
    return A @ B.T


def score_matrices(W_in, b_in, W_out, b_out, X) -> dict:
    """Score matrices S[a, b] (higher = more likely a pair) for every signal. float64."""
    W_in, b_in, W_out, b_out, X = (t.double() for t in (W_in, b_in, W_out, b_out, X))
    N, d = W_in.shape[0], W_in.shape[2]
    M = torch.einsum("bdh,ahe->abde", W_out, W_in)  # (Na, Nb, d, d)
    diag = M.diagonal(dim1=2, dim2=3)
    dsum = diag.abs().sum(-1)
    off = (M.abs().sum((-1, -2)) - dsum) / (d * d - d)
    S = {"park": (dsum / d) / off, "negtrace": -diag.sum(-1)}
    S["unitnorm"] = _corr_rows(W_in.norm(dim=2), W_out.norm(dim=1))
    H = torch.relu(torch.einsum("rd,ahd->ahr", X, W_in) + b_in[:, :, None])  # (N, h, R)
    R = X.shape[0]
    G = H @ H.transpose(1, 2) / R  # (N, h, h)
    s = H.mean(2)  # (N, h)
    C = H @ X / R  # (N, h, d): E[h x^T]
    # E||W h + c||^2 = tr(W G W^T) + 2 c^T W s + |c|^2
    quad = torch.einsum("bdh,ahk,bdk->ab", W_out, G, W_out)
    lin = 2 * torch.einsum("bd,bdh,ah->ab", b_out, W_out, s)
    S["data_norm"] = (quad + lin + (b_out ** 2).sum(1)[None, :])
    # E<W h + c, x> = sum W * E[x h^T] + c . E[x]
    S["data_dot"] = -(torch.einsum("bdh,ahd->ab", W_out, C) + (b_out @ X.mean(0))[None, :])
    S["data_act"] = _corr_rows(G.diagonal(dim1=1, dim2=2).sqrt(), W_out.norm(dim=1))
    return S


def pairing_accuracy(S: torch.Tensor, rng: np.random.Generator) -> float:
    """Fraction of inp pieces a matched to out piece a by the Hungarian assignment on S (maximising).
    The columns are shuffled first so that ties cannot favour the identity."""
    N = S.shape[0]
    perm = rng.permutation(N)
    Sp = S.numpy()[:, perm]
    r, c = linear_sum_assignment(Sp, maximize=True)
    return float(np.mean(perm[c] == r))


def run_one(name: str, cfg: TrainConfig, *, blocks=12, dim=32, hidden=64, rows=2000, seed=0, data_rows=1000) -> dict:
    """Train one network and measure every signal."""
    t0 = time.perf_counter()
    X, _, Y = make_task(rows, dim, 1, seed, noise=cfg.noise, complexity=cfg.complexity)
    layers = init_network(blocks, dim, hidden, 1, seed, cfg.init_scale)
    init_wb = [(l.weight.detach().clone(), l.bias.detach().clone()) for l in layers]
    tr = train_network(layers, X, Y, cfg, seed)
    t_train = time.perf_counter() - t0
    wb = [(l.weight.detach().clone(), l.bias.detach().clone()) for l in layers]
    st = lambda k, j: torch.stack([wb[2 * i + k][j] for i in range(blocks)])
    S = score_matrices(st(0, 0), st(0, 1), st(1, 0), st(1, 1), X[:data_rows])
    rng = np.random.default_rng(seed)
    acc = {k: pairing_accuracy(v, rng) for k, v in S.items()}
    # how far the blocks moved: ||W - W_init||_F / ||W_init||_F, averaged over block layers
    moved = float(np.mean([float((w - w0).norm() / w0.norm()) for (w, _), (w0, _) in zip(wb[:-1], init_wb[:-1])]))
    with torch.no_grad():
        from unshuffle.generate import network_forward
        mse = float(((network_forward(X, layers) - Y) ** 2).mean())
    return {"name": name, "blocks": blocks, "dim": dim, "hidden": hidden, "rows": rows, "seed": seed,
            "config": asdict(cfg), "acc": acc, "moved": moved, "mse_train": mse, "seconds_train": t_train,
            **weight_stats(wb)}


BRIEF = REGIMES["brief"]


def grid() -> list:
    """(name, cfg, shape kwargs) of the study."""
    g = []
    add = lambda name, cfg, **kw: g.append((name, cfg, kw))
    add("brief (20 ep Adam 1e-3, default init)", BRIEF)
    # length
    add("brief, 60 epochs", replace(BRIEF, epochs=60))
    add("brief, 150 epochs", replace(BRIEF, epochs=150))
    # learning rate (20 epochs)
    add("brief, lr 3e-4", replace(BRIEF, lr=3e-4))
    add("brief, lr 3e-3", replace(BRIEF, lr=3e-3))
    add("brief, lr 1e-2 (= regime fast)", replace(BRIEF, lr=1e-2))
    # weight decay (AdamW, decoupled)
    add("brief, wd 0.1", replace(BRIEF, weight_decay=0.1))
    add("brief, wd 1.0", replace(BRIEF, weight_decay=1.0))
    add("brief, wd 3.0", replace(BRIEF, weight_decay=3.0))
    # init scale
    add("brief, init x0.3", replace(BRIEF, init_scale=0.3))
    add("brief, init x0.1", replace(BRIEF, init_scale=0.1))
    # data size
    add("brief, 500 rows", BRIEF, rows=500)
    add("brief, 8000 rows", BRIEF, rows=8000)
    # task difficulty
    add("brief, noise 0", replace(BRIEF, noise=0.0))
    add("brief, noise 1.0", replace(BRIEF, noise=1.0))
    add("brief, complexity 2", replace(BRIEF, complexity=2))
    add("brief, complexity 32", replace(BRIEF, complexity=32))
    # large learning rate: variations
    add("brief, lr 1e-2, cosine", replace(BRIEF, lr=1e-2, cosine=True))
    add("brief, lr 1e-2, 60 epochs", replace(BRIEF, lr=1e-2, epochs=60))
    add("brief, lr 1e-2, noise 0", replace(BRIEF, lr=1e-2, noise=0.0))
    add("brief, lr 1e-2, wd 1.0", replace(BRIEF, lr=1e-2, weight_decay=1.0))
    add("brief, lr 3e-2", replace(BRIEF, lr=3e-2))
    add("brief, lr 1e-2, batch 512", replace(BRIEF, lr=1e-2, batch=512))
    # combinations / the named regimes
    add("lr 3e-3 + wd 1.0, 20 ep", replace(BRIEF, lr=3e-3, weight_decay=1.0))
    add("regime fast, N=24", REGIMES["fast"], blocks=24)
    add("regime fast, d48 h96", REGIMES["fast"], dim=48, hidden=96)
    add("regime paper", REGIMES["paper"])
    add("regime brief, d48 h96", BRIEF, dim=48, hidden=96)
    add("regime paper, d48 h96", REGIMES["paper"], dim=48, hidden=96)
    return g


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2, help="seeds per regime (accuracy is averaged)")
    ap.add_argument("--only", default="", help="comma-separated substrings of regime names to run")
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--json", default=None, help="write all results to this file")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    sel = [s for s in a.only.split(",") if s]
    results, rows = [], []
    hdr = f"{'regime':40s} " + " ".join(f"{s:>8s}" for s in SIGNALS) + f" {'moved':>6s} {'|Wout|':>6s} {'tr/d':>6s} {'neg%':>5s} {'mse':>6s} {'sec':>5s}"
    print(f"N={a.blocks} unless named, d=32, h=64, 2000 rows; accuracy = correct pairs / N (mean over {a.seeds} seeds)")
    print(hdr)
    for name, cfg, kw in grid():
        if sel and not any(s in name for s in sel):
            continue
        rs = [run_one(name, cfg, seed=s, **{"blocks": a.blocks, **kw}) for s in range(a.seeds)]
        results += rs
        m = lambda f: float(np.mean([f(r) for r in rs]))
        acc = {s: m(lambda r: r["acc"][s]) for s in SIGNALS}
        line = (f"{name:40s} " + " ".join(f"{acc[s]:8.2f}" for s in SIGNALS)
                + f" {m(lambda r: r['moved']):6.2f} {m(lambda r: r['w_out_fro_mean']):6.2f}"
                + f" {m(lambda r: r['trace_over_d']):6.3f} {100 * m(lambda r: r['neg_eig_frac']):5.0f}"
                + f" {m(lambda r: r['mse_train']):6.3f} {m(lambda r: r['seconds_train']):5.1f}")
        print(line, flush=True)
        rows.append({"name": name, "acc": acc, "moved": m(lambda r: r["moved"])})
    if a.json:
        Path(a.json).write_text(json.dumps({"summary": rows, "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
