"""Benchmark: the device-search kernel (kernels/search.py) beside every other scorer, one run, one table.

On the same candidates (all adjacent swaps, or all swaps + insertions, of a random current order) it times:
  triton_moves  the search kernel: move rows decoded on the device, pieces resident (one launch)
  triton_round  the same plus what a search round adds: segmented argmin and one copy back
  triton_seq    the scorer kernel (kernels/scoring.py) on resident (K, L) block-sequence arrays
  torch         batched torch (unshuffle.backends.TorchScorer) on the same device
  reference     the reference loop, on a spread of at most --ref-limit candidates (CPU)
  cpp           the fused C++ scorer on the CPU (all threads)
Triton rows report the first call (cold: includes the JIT compile, with a fresh TRITON_CACHE_DIR the
caller may set) apart from the warm median. GFLOP/s count 4*d*h FLOPs per block and row (the unpadded
work); the dense-matmul ceiling (torch matmul, fp32 and tf32) is measured in the same run. Every scorer's
losses are checked against the reference subset in the same run (max relative error, same argmin).

    python benchmarks/bench_kernels_search.py [--rows 1024] [--kinds adjacent|swap_insert] [--json FILE]
    python benchmarks/bench_kernels_search.py --smoke    # CPU interpreter, tiny: correctness only

Without CUDA only --smoke runs (interpreter times are never speed figures; they are labelled so).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

from unshuffle import moves as mv
from unshuffle import reference
from unshuffle.testing import deep_scales, random_net

try:
    from unshuffle import _core
except ImportError:
    _core = None

KINDS = {"adjacent": (mv.ADJACENT,), "swap_insert": (mv.SWAP, mv.INSERT)}


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int):
    """(cold seconds of the first call, warm median of ``repeats`` more calls, last result), synchronized."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    cold = time.perf_counter() - t
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        sync(device)
        runs.append(time.perf_counter() - t)
    return cold, (statistics.median(runs) if runs else cold), out


def make_problem(N, d, h, k, R, kinds, seed=0):
    """A random net (activations kept O(1)), a random current order, its reference prefixes, a target near
    its outputs (realistic loss sizes), and the candidates both as moves and as block sequences."""
    net = random_net(seed, n=N, d=d, h=h, k=k, rows=R, **deep_scales(N), target="random")
    t = net.tensors()
    X, oi, oo = t["X"], net.order_in, net.order_out
    w = tuple(t[n] for n in ("W_in", "b_in", "W_out", "b_out", "W_last", "b_last"))
    prefix = reference.forward_prefixes(X, oi, oo, *w[:4])
    W_last, b_last = w[4:]
    target = (prefix[-1] @ W_last.T + b_last + 0.01 * t["target"]).contiguous()  # near the outputs
    if _core is not None:
        starts, si, so, moves = _core.generate_candidates(np.asarray(oi, np.int64), np.asarray(oo, np.int64), list(kinds))
    else:
        starts, si, so, moves = mv.generate_candidates(oi, oo, kinds)
    return dict(N=N, d=d, h=h, k=k, R=R, X=X, target=target, w=w, oi=oi, oo=oo, prefix=prefix,
                starts=np.asarray(starts), seq_in=np.asarray(si), seq_out=np.asarray(so), moves=np.asarray(moves))


def device_problem(p, dev):
    """``make_problem``'s net uploaded for the device search (kernels/search.py): (prepared problem, its
    prefixes for the current order, order_in, order_out (1, N) int32, move rows (K, 4) [search 0, kind, i, j])."""
    from unshuffle.kernels import search as ks

    prob = ks.prepare(p["X"], p["target"], *p["w"], device=dev)
    oin = torch.tensor([p["oi"]], dtype=torch.int32, device=dev)
    oout = torch.tensor([p["oo"]], dtype=torch.int32, device=dev)
    prefix = ks.new_prefix(prob, 1, p["N"])
    ks.forward_rows(prob, prefix, oin, oout, torch.tensor([[0, ks.FORWARD, 0, 0]], dtype=torch.int32, device=dev))
    rows = torch.zeros((len(p["moves"]), 4), dtype=torch.int32)
    rows[:, 1:] = torch.as_tensor(p["moves"]).to(torch.int32)
    return prob, prefix, oin, oout, rows.to(dev)


def gemm_rates(device, n=None, repeats=5) -> dict:
    """Dense matmul GFLOP/s with torch on ``device``: fp32 (no TF32), tf32, bf16 (CUDA only for the last two)."""
    dev = torch.device(device)
    n = n or (8192 if dev.type == "cuda" else 512)
    out = {"n": n}
    modes = ["fp32", "tf32", "bf16"] if dev.type == "cuda" else ["fp32"]
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        for mode in modes:
            torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
            dt = torch.bfloat16 if mode == "bf16" else torch.float32
            a = torch.randn(n, n, device=dev, dtype=dt)
            b = torch.randn(n, n, device=dev, dtype=dt)
            _, t, _ = timed(lambda: a @ b, dev, repeats)
            out[mode] = 2.0 * n**3 / t / 1e9
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return out


def bench(p, device, repeats=5, ref_limit=16, threads=None, precision="fp32", only=None, block_r=None, num_warps=None) -> dict:
    """Time every scorer on problem ``p`` (see the module docstring). Returns name -> measurements.
    ``only``: names to run (the reference always runs: it is the check). ``block_r``/``num_warps``: knobs
    of the search kernel."""
    from unshuffle.backends import TorchScorer
    from unshuffle.kernels import search as ks
    from unshuffle.kernels.scoring import score_candidates_triton

    dev = torch.device(device)
    N, d, h, R = p["N"], p["d"], p["h"], p["R"]
    K = len(p["starts"])
    lengths = N - p["starts"]
    flop_br = 4.0 * d * h
    T = torch.from_numpy
    res = {}

    def record(name, cold, warm, n_cand, blocks, losses, sub=None):
        res[name] = dict(cold_s=cold, warm_s=warm, candidates=int(n_cand), block_rows=int(blocks * R),
                         gflops=blocks * R * flop_br / warm / 1e9, _losses=losses, _sub=sub)

    want = lambda name: only is None or name in only
    # the reference: a spread of candidates over all lengths (it is slow), on the CPU
    sub = np.unique(np.linspace(0, K - 1, min(K, ref_limit)).astype(np.int64))
    ref_args = [p["prefix"], T(p["starts"][sub]), T(p["seq_in"][sub]), T(p["seq_out"][sub]), *p["w"], p["target"]]
    cold, warm, ref = timed(lambda: reference.score_candidates(*ref_args), "cpu", 1)
    record("reference", cold, warm, len(sub), int(lengths[sub].sum()), ref.numpy(), sub)

    if want("triton_moves") or want("triton_round"):
        prob, prefix, oin, oout, rows = device_problem(p, dev)
        knobs = dict(precision=precision, block_r=block_r, num_warps=num_warps)
        cold, warm, out = timed(lambda: ks.score_moves(prob, prefix, oin, oout, rows, **knobs), dev, repeats)
        record("triton_moves", cold, warm, K, int(lengths.sum()), out.cpu().numpy())

        def one_round():
            losses = ks.score_moves(prob, prefix, oin, oout, rows, **knobs)
            v, i = losses.min(dim=0)
            return torch.stack([v, i.double()]).cpu()

        if want("triton_round"):
            cold, warm, _ = timed(one_round, dev, repeats)
            record("triton_round", cold, warm, K, int(lengths.sum()), out.cpu().numpy())
    dargs = [p["prefix"].to(dev), T(p["starts"]).to(dev), T(p["seq_in"]).to(dev), T(p["seq_out"]).to(dev),
             *[t.to(dev) for t in p["w"]], p["target"].to(dev)]
    if want("triton_seq") and precision == "fp32":
        cold, warm, out = timed(lambda: score_candidates_triton(*dargs, check_indices=False), dev, repeats)
        record("triton_seq", cold, warm, K, int(lengths.sum()), out.cpu().numpy())
    if want("torch"):
        ts = TorchScorer()
        try:
            cold, warm, out = timed(lambda: ts.score(*dargs), dev, max(1, repeats // 2))
            record("torch", cold, warm, K, int(lengths.sum()), out.cpu().numpy())
        except Exception as exc:  # noqa: BLE001 - report and go on
            res["torch"] = {"error": f"{type(exc).__name__}: {exc}"}
    if want("cpp") and _core is not None:
        f = lambda t: np.ascontiguousarray(t.numpy() if isinstance(t, torch.Tensor) else t)
        nargs = [f(p["prefix"]), f(p["starts"]), f(p["seq_in"]), f(p["seq_out"]), *[f(t) for t in p["w"]], f(p["target"])]
        nt = threads or os.cpu_count() or 1
        cold, warm, out = timed(lambda: np.asarray(_core.score_candidates(*nargs, n_threads=nt)), "cpu", max(1, repeats // 2))
        record("cpp", cold, warm, K, int(lengths.sum()), out)
    # correctness in the same run: every scorer against the reference subset
    for name, r in res.items():
        if "_losses" not in r:
            continue
        got = r.pop("_losses")
        rsub = r.pop("_sub")
        got_sub = got if rsub is not None else got[sub]
        r["max_rel_err_vs_reference"] = float(np.max(np.abs(got_sub - ref.numpy()) / np.maximum(np.abs(ref.numpy()), 1e-30)))
        r["same_argmin_as_reference"] = bool(np.argmin(got_sub) == np.argmin(ref.numpy()))
    return res


def add_ratios(res: dict, gemm: dict) -> None:
    """GFLOP/s as a fraction of the dense fp32/tf32 matmul rate, and speed vs the other scorers."""
    base = {n: r["gflops"] for n, r in res.items() if "gflops" in r}
    for name, r in res.items():
        if "gflops" not in r:
            continue
        for mode in ("fp32", "tf32"):
            if gemm.get(mode):
                r[f"frac_of_gemm_{mode}"] = r["gflops"] / gemm[mode]
        for other in ("cpp", "torch", "reference"):
            if other in base and other != name:
                r[f"x_vs_{other}"] = r["gflops"] / base[other]


def print_table(title, res, gemm):
    print(f"\n{title}   (GEMM fp32 {gemm.get('fp32', float('nan')):.0f} GFLOP/s, tf32 {gemm.get('tf32') or float('nan'):.0f})")
    print(f"  {'scorer':<13}{'cands':>7}{'cold s':>9}{'warm s':>10}{'GFLOP/s':>10}{'%fp32':>7}{'x cpp':>7}{'max rel err':>12}{'argmin':>7}")
    for name, r in res.items():
        if "error" in r:
            print(f"  {name:<13} error: {r['error']}")
            continue
        print(f"  {name:<13}{r['candidates']:>7}{r['cold_s']:>9.4f}{r['warm_s']:>10.5f}{r['gflops']:>10.1f}"
              f"{100 * r.get('frac_of_gemm_fp32', float('nan')):>6.1f}%{r.get('x_vs_cpp', float('nan')):>7.2f}"
              f"{r['max_rel_err_vs_reference']:>12.1e}{str(r['same_argmin_as_reference']):>7}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--N", type=int, default=48)
    ap.add_argument("--d", type=int, default=48)
    ap.add_argument("--h", type=int, default=96)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--rows", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ref-limit", type=int, default=16)
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shapes: correctness only")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args(argv)
    if a.smoke:
        torch.set_num_threads(1)
        device, a.N, a.d, a.h, a.rows, a.repeats, a.ref_limit = "cpu", 5, 16, 32, [32], 1, 6
    elif not torch.cuda.is_available():
        print("no CUDA device: nothing to time (use --smoke for an interpreter correctness run)")
        return 0
    else:
        device = "cuda"
    gemm = gemm_rates(device, n=256 if a.smoke else None, repeats=1 if a.smoke else 5)
    doc = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (interpreter: not a speed figure)",
           "gemm_gflops": gemm, "shapes": []}
    for R in a.rows:
        for kinds in a.kinds:
            p = make_problem(a.N, a.d, a.h, a.k, R, KINDS[kinds])
            res = bench(p, device, a.repeats, a.ref_limit)
            add_ratios(res, gemm)
            print_table(f"N={a.N} d={a.d} h={a.h} k={a.k} R={R} {kinds} (K={len(p['starts'])})", res, gemm)
            doc["shapes"].append({"R": R, "kinds": kinds, "K": int(len(p["starts"])), "scorers": res})
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(doc, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
