"""Benchmark: the Triton scoring kernel vs the reference and vs batched torch (bmm), one run, one table.

Default shape (the public puzzle's): d=48, h=96, N=48 blocks, 1,024 rows, k=1, and K = N(N-1)/2 = 1,128
candidates: every swap of two block positions i < j of the current order (candidate (i, j) starts at
prefix[i] and runs the N - i blocks of the swapped order from i on, so lengths are mixed).

Timed on the CUDA device, after warm-up (the kernel's JIT compile is excluded), with
torch.cuda.synchronize() around each run; the figure is the median of --repeats runs. The reference
(one candidate at a time) is run --ref-repeats times (it is slow). Correctness is checked in the same run:
the kernel's losses against the reference (relative error, same argmin) before any time is reported.

Without CUDA there is no speed figure: the script says so and exits 0. --smoke then runs a tiny problem
through the kernel under triton's interpreter and checks it against the reference: a correctness smoke
test only, its time is NOT a speed figure and is not reported as one.

Usage: python benchmarks/bench_kernels_scoring.py [--rows 1024] [--N 48] [--d 48] [--h 96] [--k 1]
       [--repeats 10] [--ref-repeats 1] [--block-r 64] [--block-h 64] [--num-warps 4] [--allow-tf32]
       [--no-reference] [--smoke] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from unshuffle.reference import forward_prefixes, score_candidates


def make_problem(N, d, h, k, R, device, seed=0):
    """Random pieces scaled to keep activations O(1), a random current order, its prefixes, and the
    all-pair-swap candidates (start i, blocks of the order with positions i and j swapped, from i on)."""
    g = torch.Generator().manual_seed(seed)
    W_in = torch.randn(N, h, d, generator=g) / d**0.5
    b_in = torch.randn(N, h, generator=g) * 0.1
    W_out = torch.randn(N, d, h, generator=g) * (0.5 / h**0.5) / N**0.5
    b_out = torch.randn(N, d, generator=g) * 0.05
    W_last = torch.randn(k, d, generator=g) / d**0.5
    b_last = torch.randn(k, generator=g) * 0.1
    X = torch.randn(R, d, generator=g)
    order_in = torch.randperm(N, generator=g)
    order_out = torch.randperm(N, generator=g)
    pairs = [(i, j) for i in range(N) for j in range(i + 1, N)]
    K = len(pairs)
    starts = torch.tensor([i for i, _ in pairs], dtype=torch.int64)
    seq_in = torch.full((K, N), -1, dtype=torch.int64)
    seq_out = torch.full((K, N), -1, dtype=torch.int64)
    for c, (i, j) in enumerate(pairs):
        oi, oo = order_in.clone(), order_out.clone()
        oi[[i, j]], oo[[i, j]] = oi[[j, i]], oo[[j, i]]
        seq_in[c, : N - i] = oi[i:]
        seq_out[c, : N - i] = oo[i:]
    W = [t.to(device) for t in (W_in, b_in, W_out, b_out)]
    prefix = forward_prefixes(X.to(device), order_in.tolist(), order_out.tolist(), *W)
    # Target: the current order's own outputs plus noise, so the losses are of a realistic size.
    y0 = prefix[N] @ W_last.to(device).T + b_last.to(device)
    target = (y0 + 0.01 * torch.randn(R, k, generator=g).to(device)).contiguous()
    return [prefix, starts.to(device), seq_in.to(device), seq_out.to(device), *W,
            W_last.to(device), b_last.to(device), target]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn, device, repeats, warmup=1):
    """Median wall time (s) of fn() over `repeats` runs after `warmup` runs, synchronized."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def rel_err(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return float(((a - b).abs() / b.abs().clamp_min(1e-30)).max()) if a.numel() else 0.0


def smoke(args):
    """Tiny interpreter run: correctness only, never a speed figure."""
    from unshuffle.kernels.scoring import score_candidates_triton

    torch.set_num_threads(1)
    prob = make_problem(5, 17, 33, 1, 33, torch.device("cpu"), seed=1)
    got = score_candidates_triton(*prob, BLOCK_R=16)
    ref = score_candidates(*prob)
    err = rel_err(got, ref)
    same_argmin = int(got.argmin()) == int(ref.argmin())
    ok = err < 2e-5 and same_argmin
    print(f"interpreter smoke (N=5, d=17, h=33, R=33, K={len(ref)}): max rel err {err:.2e}, "
          f"same argmin: {same_argmin} -> {'OK' if ok else 'MISMATCH'} "
          "(correctness only; interpreter time is NOT a speed figure)")
    return {"ok": ok, "max_rel_err": err, "same_argmin": same_argmin, "K": len(ref)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--N", type=int, default=48)
    p.add_argument("--d", type=int, default=48)
    p.add_argument("--h", type=int, default=96)
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--ref-repeats", type=int, default=1)
    p.add_argument("--block-r", type=int, default=64)
    p.add_argument("--block-h", type=int, default=None)
    p.add_argument("--num-warps", type=int, default=4)
    p.add_argument("--allow-tf32", action="store_true", help="let tl.dot use TF32 (less exact)")
    p.add_argument("--no-reference", action="store_true", help="skip timing the (slow) reference")
    p.add_argument("--smoke", action="store_true", help="without CUDA: tiny interpreter correctness run")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    a = p.parse_args(argv)

    from unshuffle.kernels.scoring import score_candidates_triton, triton_available

    ok, why = triton_available()
    result = {
        "benchmark": "kernels_scoring",
        "shape": {"N": a.N, "d": a.d, "h": a.h, "k": a.k, "rows": a.rows, "K": a.N * (a.N - 1) // 2},
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": ok,
        "reason": why,
        "timings_s": None,
    }
    try:
        import triton

        result["triton"] = triton.__version__
    except ImportError:
        result["triton"] = None

    if not ok:
        print(f"No GPU timing: {why}. Nothing measured, no speed figure reported.")
        if a.smoke:
            result["smoke"] = smoke(a)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(result, f, indent=2)
        return 0

    dev = torch.device("cuda")
    result["device"] = torch.cuda.get_device_name(dev)
    prob = make_problem(a.N, a.d, a.h, a.k, a.rows, dev)
    K = prob[1].shape[0]
    kw = dict(BLOCK_R=a.block_r, BLOCK_H=a.block_h, allow_tf32=a.allow_tf32, num_warps=a.num_warps)
    result["kernel_options"] = {k: v for k, v in kw.items()}

    impls = {"triton": lambda: score_candidates_triton(*prob, **kw)}
    try:
        from unshuffle.backends import TorchScorer

        bmm = TorchScorer()
        impls["torch_bmm"] = lambda: bmm.score(*prob)
    except Exception as exc:  # noqa: BLE001 - the comparator is optional; say why it is missing
        print(f"(batched torch comparator unavailable: {type(exc).__name__}: {exc})")
    if not a.no_reference:
        impls["reference"] = lambda: score_candidates(*prob)

    # Correctness first, in the same run: every implementation against the reference (or bmm).
    outs = {name: fn() for name, fn in impls.items()}
    base = "reference" if "reference" in outs else ("torch_bmm" if "torch_bmm" in outs else None)
    checks = {}
    if base is not None:
        for name, out in outs.items():
            if name != base:
                checks[name] = {"vs": base, "max_rel_err": rel_err(out, outs[base]),
                                "same_argmin": int(out.argmin()) == int(outs[base].argmin())}
    result["checks"] = checks
    tol = 5e-2 if a.allow_tf32 else 1e-4
    bad = [n for n, c in checks.items() if c["max_rel_err"] > tol or not c["same_argmin"]]

    timings = {}
    for name, fn in impls.items():
        reps = a.ref_repeats if name == "reference" else a.repeats
        med, all_t = time_it(fn, dev, reps, warmup=0 if name == "reference" else 1)
        timings[name] = {"median_s": med, "runs_s": all_t}
    result["timings_s"] = timings

    t_k = timings["triton"]["median_s"]
    print(f"device: {result['device']}  shape: N={a.N} d={a.d} h={a.h} k={a.k} rows={a.rows} K={K}  "
          f"tl.dot precision: {'tf32' if a.allow_tf32 else 'ieee'}")
    print(f"{'impl':<12}{'median ms':>12}{'cand/s':>14}{'time / triton':>15}{'max rel err':>14}")
    for name, t in timings.items():
        med = t["median_s"]
        err = checks.get(name, {}).get("max_rel_err")
        print(f"{name:<12}{med * 1e3:>12.3f}{K / med:>14.0f}{med / t_k:>15.2f}"
              f"{(f'{err:.1e}' if err is not None else '(base)'):>14}")
    if bad:
        print(f"CORRECTNESS MISMATCH in {bad}: {checks}", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
