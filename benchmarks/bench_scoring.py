"""Scoring throughput of every available scorer on the same candidates, in one run.

Scorers: the reference loop (unshuffle.reference), batched torch (``unshuffle.backends.get_scorer('torch')``,
one baddbmm per block position over a chunk of candidates), the fused C++ scorer (unshuffle._core) and Triton
when a CUDA device exists. The ceiling is the machine's fp32 GEMM rate, measured here with a large torch
matmul on the same threads. A block-row is one residual block applied to one row: 4*d*h FLOPs.

    python benchmarks/bench_scoring.py                  # default shape + variants
    python benchmarks/bench_scoring.py --quick          # < 1 minute
    python benchmarks/bench_scoring.py --json out.json  # machine-readable results of the default shape

Default shape: N=48 blocks, d=48, h=96, k=1, 1,024 rows, K=1,128 candidates (all pair swaps, start=i).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from unshuffle import reference
from unshuffle.testing import random_net

try:
    from unshuffle import _core
except ImportError:  # the table then says cpp is unavailable
    _core = None

try:
    from unshuffle.backends import get_scorer

    TORCH_SCORER = get_scorer("torch")
    TORCH_SOURCE = "unshuffle.backends.get_scorer('torch')"
except ImportError:  # pragma: no cover - older checkouts without unshuffle.backends
    TORCH_SCORER, TORCH_SOURCE = None, "batched bmm scorer defined in this benchmark"


def _torch_bmm_score(prefix, starts, seq_in, seq_out, W_in, b_in, W_out, b_out, W_last, b_last, target):
    """Fallback batched scorer (used only when unshuffle.backends is missing)."""
    x = prefix[starts]
    for t in range(seq_in.shape[1]):
        act = seq_in[:, t] >= 0
        if not bool(act.any()):
            break
        a, b = seq_in[:, t].clamp(min=0), seq_out[:, t].clamp(min=0)
        hid = torch.relu(torch.baddbmm(b_in[a].unsqueeze(1), x, W_in[a].transpose(1, 2)))
        x = x + torch.baddbmm(b_out[b].unsqueeze(1), hid, W_out[b].transpose(1, 2)) * act.view(-1, 1, 1)
    y = x @ W_last.T + b_last
    return ((y - target).double() ** 2).sum(dim=(1, 2))


def make_problem(N, d, h, k, R, kinds, seed=0):
    net = random_net(seed, n=N, d=d, h=h, k=k, rows=R, w_in=1.0, w_out=0.3, b_last=1.0, target="random")
    w = {k_: v for k_, v in net.as_dict().items() if k_ not in ("X", "target")}
    X, target = net.X, net.target
    order = np.asarray(net.order_in, dtype=np.int64)
    T = torch.from_numpy
    prefix = reference.forward_prefixes(T(X), order, order, T(w["W_in"]), T(w["b_in"]), T(w["W_out"]), T(w["b_out"]))
    starts, seq_in, seq_out = _candidates(order, kinds)
    return dict(prefix=prefix.numpy(), starts=starts, seq_in=seq_in, seq_out=seq_out, target=target, **w)


def _candidates(order, kinds):
    if _core is not None:
        return _core.generate_candidates(order, order, kinds)[:3]
    n = len(order)  # only adjacent + swap needed without the extension
    rows = [(i, i + 1) for i in range(n - 1)] * (0 in kinds) + [(i, j) for i in range(n - 1) for j in range(i + 2, n)] * (1 in kinds)
    L = n - min(i for i, _ in rows)
    si = np.full((len(rows), L), -1, np.int64)
    for c, (i, j) in enumerate(rows):
        o = list(order)
        o[i], o[j] = o[j], o[i]
        si[c, : n - i] = o[i:]
    return np.array([i for i, _ in rows], np.int64), si, si.copy()


ARG_ORDER = ["prefix", "starts", "seq_in", "seq_out", "W_in", "b_in", "W_out", "b_out", "W_last", "b_last", "target"]


def timed(fn, repeats, slow_s=2.0):
    """Best wall time of `repeats` calls after a warm-up call, and the result. A first call slower than
    slow_s is taken as the measurement itself (warm-up effects are negligible next to it)."""
    t = time.perf_counter()
    out = fn()
    best = time.perf_counter() - t
    if best > slow_s:
        return best, out
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def gemm_gflops(threads, n=2048, repeats=3):
    a, b = torch.randn(n, n), torch.randn(n, n)
    t, _ = timed(lambda: a @ b, repeats)
    return 2.0 * n**3 / t / 1e9


def scorers(p, threads, include_reference, ref_limit):
    """name -> (callable returning losses (K,) float64 numpy, candidate index subset or None)."""
    T = {k: torch.from_numpy(v) for k, v in p.items()}
    targs = [T[k] for k in ARG_ORDER]
    out = {}
    if include_reference:
        K = p["starts"].shape[0]
        sub = np.linspace(0, K - 1, min(K, ref_limit)).astype(np.int64)  # spread over all lengths
        ra = list(targs)
        for i, k in ((1, "starts"), (2, "seq_in"), (3, "seq_out")):
            ra[i] = T[k][torch.from_numpy(sub)]
        out["reference"] = (lambda: reference.score_candidates(*ra).numpy(), sub)
    if TORCH_SCORER is not None:
        out["torch"] = (lambda: TORCH_SCORER.score(*targs).numpy(), None)
    else:
        out["torch"] = (lambda: _torch_bmm_score(*targs).numpy(), None)
    if _core is not None:
        nargs = [p[k] for k in ARG_ORDER]
        out["cpp"] = (lambda: np.asarray(_core.score_candidates(*nargs, n_threads=threads)), None)
    if torch.cuda.is_available():
        try:
            sc = get_scorer("triton")
            dev = [a.cuda() for a in targs]

            def run_triton():
                r = sc._fn(*dev)
                torch.cuda.synchronize()
                return r.double().cpu().numpy()

            out["triton"] = (run_triton, None)
        except Exception as exc:  # noqa: BLE001 - report, do not fail the benchmark
            print(f"triton unavailable: {exc}", file=sys.stderr)
    return out


def bench_shape(shape, threads, gemm, repeats, include_reference=True, ref_limit=64):
    N, d, h, k, R, kinds = (shape[x] for x in ("N", "d", "h", "k", "R", "kinds"))
    p = make_problem(N, d, h, k, R, kinds)
    lengths = (p["seq_in"] >= 0).sum(axis=1)
    fpbr = 4 * d * h
    res = {}
    losses = {}
    for name, (fn, sub) in scorers(p, threads, include_reference, ref_limit).items():
        t, out = timed(fn, repeats)
        br = R * int(lengths[sub].sum() if sub is not None else lengths.sum())
        losses[name] = (out, sub)
        res[name] = dict(seconds=t, block_rows=br, block_rows_per_s=br / t, gflops=br * fpbr / t / 1e9,
                         pct_gemm=100.0 * br * fpbr / t / 1e9 / gemm,
                         candidates=int(len(sub) if sub is not None else len(lengths)))
    base = losses.get("torch")
    for name, r in res.items():
        if "torch" in res:
            r["speedup_vs_torch"] = r["block_rows_per_s"] / res["torch"]["block_rows_per_s"]
        if base is not None and name != "torch":
            out, sub = losses[name]
            ref = base[0] if sub is None else base[0][sub]
            r["max_rel_diff_vs_torch"] = float(np.max(np.abs(out - ref) / np.maximum(np.abs(ref), 1e-30)))
            r["same_argmin_as_torch"] = bool(np.argmin(out) == np.argmin(ref))
    return res, fpbr, int(len(lengths))


def print_table(title, res, gemm):
    print(f"\n{title}")
    print(f"  {'scorer':<10} {'cands':>6} {'seconds':>9} {'Mblock-rows/s':>14} {'GFLOP/s':>9} {'% GEMM':>7} {'vs torch':>9}")
    for name, r in res.items():
        sp = r.get("speedup_vs_torch", float("nan"))
        print(f"  {name:<10} {r['candidates']:>6} {r['seconds']:>9.4f} {r['block_rows_per_s'] / 1e6:>14.3f} "
              f"{r['gflops']:>9.1f} {r['pct_gemm']:>6.1f}% {sp:>8.2f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and shapes (< 1 minute)")
    ap.add_argument("--json", metavar="FILE", help="write the default shape's results as JSON")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for torch and cpp")
    ap.add_argument("--rows", type=int, default=None, help="rows of the default shape (1024; 256 with --quick)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else 5
    gemm = gemm_gflops(args.threads, repeats=repeats)
    print(f"torch {torch.__version__}, {args.threads} threads; batched torch = {TORCH_SOURCE}")
    print(f"fp32 GEMM ceiling (torch 2048^3 matmul): {gemm:.1f} GFLOP/s")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average before measuring: {load:.2f} (numbers are noisy if this exceeds the thread count)")

    rows = args.rows or (256 if args.quick else 1024)
    default = dict(N=48, d=48, h=96, k=1, R=rows, kinds=[0, 1])
    res, fpbr, K = bench_shape(default, args.threads, gemm, repeats, ref_limit=8 if args.quick else 16)
    print_table(f"default: N=48 d=48 h=96 k=1 R={rows} K={K} (adjacent+swap)", res, gemm)

    variants = [dict(N=48, d=48, h=96, k=1, R=rows, kinds=[0])]
    if not args.quick:
        variants += [
            dict(N=48, d=48, h=96, k=1, R=256, kinds=[0, 1]),
            dict(N=48, d=48, h=96, k=1, R=rows, kinds=[1, 2]),
            dict(N=48, d=48, h=96, k=1, R=4096, kinds=[0, 1]),
            dict(N=24, d=32, h=64, k=2, R=1000, kinds=[0, 1]),
        ]
    other = []
    for v in variants:
        r, _, k = bench_shape(v, args.threads, gemm, repeats, include_reference=False)
        print_table(f"N={v['N']} d={v['d']} h={v['h']} k={v['k']} R={v['R']} K={k} kinds={v['kinds']}", r, gemm)
        other.append(dict(shape={**v, "K": k}, backends=r))

    if args.json:
        doc = dict(gemm_gflops=gemm, flops_per_block_row=fpbr, threads=args.threads, torch_scorer=TORCH_SOURCE,
                   load_average=load, shape={**default, "K": K}, backends=res, other_shapes=other)
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
