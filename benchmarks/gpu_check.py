"""The steps of benchmarks/gpu_check.sh, one subcommand each (each runs in its own process, time-boxed by
the shell script, and writes one JSON file); ``summarize`` merges them into gpu_check.json.

    python benchmarks/gpu_check.py env        --json F [--smoke]
    python benchmarks/gpu_check.py selftest   --json F [--smoke]   # the GPU tests' checks, without pytest
    python benchmarks/gpu_check.py scoring    --json F [--smoke]
    python benchmarks/gpu_check.py precision  --json F [--smoke]
    python benchmarks/gpu_check.py search     --json F [--smoke]   # device vs C++ search, multi-start, crossover
    python benchmarks/gpu_check.py solve      --json F --puzzle DIR [--smoke]
    python benchmarks/gpu_check.py generated  --json F --workdir DIR [--smoke]
    python benchmarks/gpu_check.py summarize  --workdir DIR --out OUTDIR

``--smoke``: CPU tensors under TRITON_INTERPRET=1, tiny shapes (the shell script's --cpu-smoke): every step
runs its code path, but no time it prints is a speed figure.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_kernels_search as bks  # noqa: E402

from unshuffle import moves as mv  # noqa: E402

# sha256 of the public puzzle's answer, as published in its README (the answer itself is nowhere here).
PUBLIC_SHA256 = "093be1cf2d24094db903cbc3e8d33d306ebca49c6accaa264e44b0b675e7d9c4"
SECTIONS = ("env", "install", "tests", "selftest", "scoring", "precision", "search", "public", "generated")


def device_of(smoke: bool) -> str:
    return "cpu" if smoke or not torch.cuda.is_available() else "cuda"


def write(path, doc) -> None:
    Path(path).write_text(json.dumps(doc, indent=1, default=str))


def log(msg: str) -> None:
    print(msg, flush=True)


_CKPT = {"path": None}


def checkpoint(doc) -> None:
    """Write what a step has so far: if its time box kills it, the summary still has the finished parts."""
    if _CKPT["path"]:
        write(_CKPT["path"], {**doc, "partial": True})


# ---------------------------------------------------------------------------------------------- env
def step_env(a):
    """Device, versions, backends, and what auto would choose (and why) for a few puzzle sizes."""
    from unshuffle.backends import auto_choice, available_backends, explain_auto, round_gflop

    doc = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.cuda.is_available(),
               cpu_count=os.cpu_count(), smoke=a.smoke, triton_interpret=os.environ.get("TRITON_INTERPRET"))
    if torch.cuda.is_available():
        doc.update(device=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                   cuda_version=torch.version.cuda, memory_gib=torch.cuda.get_device_properties(0).total_memory / 2**30)
    try:
        import triton

        doc["triton"] = triton.__version__
    except ImportError as exc:
        doc["triton"] = f"missing ({exc})"
    doc["backends"] = {k: list(v) for k, v in available_backends().items()}
    doc["auto_unknown_size"] = explain_auto()
    for name, size in (("public_N48_R256", (48, 48, 96, 256)), ("N96_R256", (96, 48, 96, 256)), ("N96_R1024", (96, 48, 96, 1024))):
        doc[f"auto_{name}"] = list(auto_choice(round_gflop(*size)))
    for k, v in doc.items():
        log(f"  {k}: {v}")
    return doc


# ---------------------------------------------------------------------------------------------- selftest
def step_selftest(a):
    """The GPU tests' essential checks as plain code (runs where pytest is missing): compiled kernels vs the
    reference at the solver's shape, and the device search's trajectory vs the reference loop."""
    from unshuffle.backends import get_scorer
    from unshuffle.gpu_search import device_local_search
    from unshuffle.search import local_search

    sys.path.insert(0, str(HERE.parent / "tests"))
    from conftest import make_random_net

    dev = device_of(a.smoke)
    N, R = (4, 32) if a.smoke else (48, 1024)
    d, h = (16, 32) if a.smoke else (48, 96)
    out = {"checks": {}}
    p = bks.make_problem(N, d, h, 1, R, (mv.ADJACENT, mv.SWAP, mv.INSERT), seed=3)
    res = bks.bench(p, dev, repeats=0, ref_limit=4 if a.smoke else 24, only={"triton_moves", "triton_seq"})
    for prec in ("tf32", "tf32x3", "bf16"):
        r = bks.bench(p, dev, repeats=0, ref_limit=4 if a.smoke else 24, precision=prec, only={"triton_moves"})
        res[f"triton_moves_{prec}"] = r["triton_moves"]
    # fp32 paths: float32 rounding over <= 48 blocks (tests/test_kernels_search.py); tf32/bf16: reported, and
    # only checked to be sane (< 100%): this target sits near the outputs, so the loss is a small residual
    # whose relative error the reduced precisions inflate (the precision step measures them properly)
    bounds = {"triton_moves": 1e-4, "triton_seq": 1e-4, "triton_moves_tf32x3": 1e-4, "triton_moves_tf32": 1.0,
              "triton_moves_bf16": 1.0}
    for name, bound in bounds.items():
        r = res[name]
        ok = r["max_rel_err_vs_reference"] < bound and (r["same_argmin_as_reference"] or bound >= 1.0)
        out["checks"][f"{name}_vs_reference"] = dict(ok=bool(ok), max_rel_err=r["max_rel_err_vs_reference"], bound=bound,
                                                      same_argmin=r["same_argmin_as_reference"])
    pz, pi, po = make_random_net(n=6 if a.smoke else 16, d=5 if a.smoke else 24, h=9 if a.smoke else 40,
                                 rows=40 if a.smoke else 256, seed=11)
    w = (pz.W_in, pz.b_in, pz.W_out, pz.b_out, pz.W_last, pz.b_last)
    rng = np.random.default_rng(0)
    oi = rng.permutation(len(pi)).tolist()
    kw = dict(stop_loss=1e-10, kicks=0 if a.smoke else 2, seed=1, multi=True, max_rounds=6 if a.smoke else 40)
    ref = local_search(get_scorer("reference"), pz.X, pz.pred, *w, oi, list(po), **kw)
    got = device_local_search(None, pz.X, pz.pred, *w, oi, list(po), device=dev, **kw)
    same = [h[:4] for h in ref.history] == [h[:4] for h in got.history] and ref.order_in == got.order_in
    out["checks"]["device_search_trajectory_vs_reference"] = dict(
        ok=bool(same and ref.stopped == got.stopped), rounds=(ref.rounds, got.rounds), stopped=(ref.stopped, got.stopped))
    out["ok"] = all(c["ok"] for c in out["checks"].values())
    for k, v in out["checks"].items():
        log(f"  {'ok  ' if v['ok'] else 'FAIL'} {k}: {v}")
    return out


# ---------------------------------------------------------------------------------------------- scoring
def step_scoring(a):
    """Scoring throughput of every scorer at R = 256 and 1024, adjacent and swap+insert candidates, beside the
    dense matmul rate of the same run; then a small launch-configuration sweep of the search kernel."""
    dev = device_of(a.smoke)
    N, d, h = (4, 16, 32) if a.smoke else (48, 48, 96)
    rows = [32] if a.smoke else [256, 1024]
    gemm = bks.gemm_rates(dev, n=256 if a.smoke else None, repeats=1 if a.smoke else 5)
    log(f"  dense matmul GFLOP/s on {dev}: {gemm}")
    doc = {"device": dev, "gemm_gflops": gemm, "shape": dict(N=N, d=d, h=h, k=1), "shapes": []}
    for R in rows:
        for kinds in ("adjacent", "swap_insert"):
            p = bks.make_problem(N, d, h, 1, R, bks.KINDS[kinds])
            res = bks.bench(p, dev, repeats=1 if a.smoke else 5, ref_limit=4 if a.smoke else 8)
            bks.add_ratios(res, gemm)
            bks.print_table(f"N={N} d={d} h={h} R={R} {kinds} (K={len(p['starts'])})", res, gemm)
            doc["shapes"].append({"R": R, "kinds": kinds, "K": int(len(p["starts"])), "scorers": res})
            checkpoint(doc)
    # a small launch-configuration sweep of the search kernel (warm), where the GPU is
    p = bks.make_problem(N, d, h, 1, rows[-1], bks.KINDS["swap_insert"])
    configs = [(32, 4)] if a.smoke else [(16, 4), (32, 4), (32, 8), (64, 8), (128, 16)]
    doc["tuning"] = []
    for br, nw in configs:
        try:
            r = bks.bench(p, dev, repeats=1 if a.smoke else 5, ref_limit=2, only={"triton_moves"}, block_r=br, num_warps=nw)
            t = r["triton_moves"]
            doc["tuning"].append(dict(block_r=br, num_warps=nw, warm_s=t["warm_s"], gflops=t["gflops"],
                                      frac_of_gemm_fp32=t["gflops"] / gemm["fp32"], max_rel_err=t["max_rel_err_vs_reference"]))
            log(f"  tuning block_r={br} num_warps={nw}: {t['gflops']:.0f} GFLOP/s ({t['warm_s'] * 1e3:.2f} ms)")
        except Exception as exc:  # noqa: BLE001 - one config failing must not lose the rest
            doc["tuning"].append(dict(block_r=br, num_warps=nw, error=f"{type(exc).__name__}: {exc}"))
    return doc


# ---------------------------------------------------------------------------------------------- precision
def step_precision(a):
    """Accuracy and speed of each scoring precision on the same candidates, against float64."""
    from unshuffle.backends import TorchScorer
    from unshuffle.gpu_search import device_local_search
    from unshuffle.kernels import search as ks
    from unshuffle.ordering import search_threshold
    dev = device_of(a.smoke)
    N, d, h, R = (4, 16, 32, 32) if a.smoke else (48, 48, 96, 1024)
    p = bks.make_problem(N, d, h, 1, R, bks.KINDS["swap_insert"], seed=5)
    K = len(p["starts"])
    T = torch.from_numpy
    # plant an exact candidate: the target is candidate c*'s own float64 outputs
    cstar = K // 3
    w64 = [t.double().to(dev) for t in p["w"]]
    args64 = [p["prefix"].double().to(dev), T(p["starts"]).to(dev), T(p["seq_in"]).to(dev), T(p["seq_out"]).to(dev), *w64]
    x = args64[0][int(p["starts"][cstar])]
    for t in range(p["seq_in"].shape[1]):
        ai, bo = int(p["seq_in"][cstar, t]), int(p["seq_out"][cstar, t])
        if ai < 0:
            break
        x = x + torch.relu(x @ w64[0][ai].T + w64[1][ai]) @ w64[2][bo].T + w64[3][bo]
    target64 = x @ w64[4].T + w64[5]
    p["target"] = target64.float().cpu()
    ref64 = TorchScorer().score(*args64, target64).cpu().numpy()  # float64 throughout: the accuracy yardstick
    stop = R * search_threshold(p["target"]) ** 2  # what the search calls exact (ordering.order's stop_loss)
    doc = {"device": dev, "shape": dict(N=N, d=d, h=h, R=R, K=K), "stop_loss": stop, "planted_candidate": cstar,
           "planted_loss_float64": float(ref64[cstar]), "precisions": {}}
    for prec in ks.PRECISIONS:
        res = bks.bench(p, dev, repeats=1 if a.smoke else 5, ref_limit=2, precision=prec, only={"triton_moves"})["triton_moves"]
        prob, prefix, oin, oout, rows = bks.device_problem(p, dev)
        got = ks.score_moves(prob, prefix, oin, oout, rows, precision=prec).cpu().numpy()
        others = np.ones(K, bool)
        others[cstar] = False
        rel = np.abs(got[others] - ref64[others]) / np.abs(ref64[others])
        doc["precisions"][prec] = dict(
            warm_s=res["warm_s"], gflops=res["gflops"], max_rel_err_vs_float64=float(rel.max()),
            median_rel_err_vs_float64=float(np.median(rel)), argmin_is_planted=bool(int(np.argmin(got)) == cstar),
            planted_loss=float(got[cstar]), planted_recognised_exact=bool(got[cstar] <= stop))
        checkpoint(doc)
        log(f"  {prec:7s} {res['gflops']:9.1f} GFLOP/s  max rel err {rel.max():.2e}  median {np.median(rel):.2e}  "
            f"planted loss {got[cstar]:.3e} (stop {stop:.3e})  argmin ok {int(np.argmin(got)) == cstar}")
    # a search scored in each precision, its chosen moves re-scored in fp32: does it still end exact?
    Ns, Rs = (4, 40) if a.smoke else (24, 256)
    ds, hs = (5, 9) if a.smoke else (48, 96)
    sys.path.insert(0, str(HERE.parent / "tests"))
    from conftest import make_random_net

    pz, pi, po = make_random_net(n=Ns, d=ds, h=hs, rows=Rs, seed=21)
    w = (pz.W_in, pz.b_in, pz.W_out, pz.b_out, pz.W_last, pz.b_last)
    oi, oo = list(pi), list(po)
    for i in range(0, Ns - 1, 3):
        oi, oo = mv.apply_move(oi, oo, mv.ADJACENT, i, i + 1)
    oi, oo = mv.apply_move(oi, oo, mv.INSERT, 0, Ns - 1)
    stop_s = Rs * search_threshold(pz.pred) ** 2
    doc["search"] = {"N": Ns, "rows": Rs, "runs": {}}
    for prec in ks.PRECISIONS:
        t = time.perf_counter()
        r = device_local_search(None, pz.X, pz.pred, *w, oi, oo, stop_loss=stop_s, kicks=3, multi=True,
                                precision=prec, device=dev, max_rounds=200)
        wall = time.perf_counter() - t
        right = (r.order_in, r.order_out) == (list(pi), list(po))
        doc["search"]["runs"][prec] = dict(stopped=r.stopped, right_answer=right, rounds=r.rounds, loss=r.loss, seconds=wall)
        checkpoint(doc)
        log(f"  search in {prec:7s}: {r.stopped}, right answer {right}, {r.rounds} rounds, loss {r.loss:.3e}, {wall:.2f}s")
    return doc


# ---------------------------------------------------------------------------------------------- search
def step_search(a):
    """Device vs C++ search loop on one problem, many searches per launch, and the CPU/GPU crossover (saved
    as this GPU's calibration for ``auto``)."""
    from unshuffle.backends import round_gflop, save_calibration, triton_threshold
    from unshuffle.gpu_search import device_local_search, device_multi_search
    from unshuffle.kernels import search as ks
    from unshuffle.search import local_search_native

    sys.path.insert(0, str(HERE.parent / "tests"))
    from conftest import make_random_net

    dev = device_of(a.smoke)
    doc = {"device": dev}
    # (a) one search, device vs the C++ loop, same start: trajectory and time per round
    N, d, h, R = (5, 5, 9, 40) if a.smoke else (48, 48, 96, 256)
    pz, pi, po = make_random_net(n=N, d=d, h=h, rows=R, seed=31)
    other, _, _ = make_random_net(n=N, d=d, h=h, rows=R, seed=32)  # a target no order fits: long searches
    w = (pz.W_in, pz.b_in, pz.W_out, pz.b_out, pz.W_last, pz.b_last)
    target = other.pred
    rng = np.random.default_rng(3)
    oi, oo = rng.permutation(N).tolist(), rng.permutation(N).tolist()
    kw = dict(stop_loss=0.0, kicks=2, seed=4, multi=True, max_rounds=3 if a.smoke else 60)
    t = time.perf_counter()
    cpp = local_search_native(pz.X, target, *w, oi, oo, **kw) if _has_core() else None
    t_cpp = time.perf_counter() - t
    runs = {}
    for label in ("cold", "warm"):
        st = {}
        t = time.perf_counter()
        r = device_local_search(None, pz.X, target, *w, oi, oo, device=dev, stats=st, **kw)
        runs[label] = (r, time.perf_counter() - t, st)
    r, t_dev, st = runs["warm"]
    doc["single"] = dict(N=N, rows=R, rounds=r.rounds, device_cold_s=runs["cold"][1], device_warm_s=t_dev,
                         device_per_round_s=t_dev / max(r.rounds, 1), stats=st, stopped=r.stopped)
    if cpp is not None:
        same = [x[:4] for x in cpp.history] == [x[:4] for x in r.history]
        doc["single"].update(cpp_s=t_cpp, cpp_per_round_s=t_cpp / max(cpp.rounds, 1), cpp_rounds=cpp.rounds,
                             same_trajectory_as_cpp=same, speedup_vs_cpp=t_cpp / t_dev)
    log(f"  single search: {doc['single']}")
    checkpoint(doc)
    # (b) many searches in one launch per round
    doc["multi_start"] = []
    for S in ((1, 2) if a.smoke else (1, 4, 16, 32)):
        starts = [(rng.permutation(N).tolist(), rng.permutation(N).tolist()) for _ in range(S)]
        st = {}
        t = time.perf_counter()
        res = device_multi_search(None, pz.X, target, *w, starts, seeds=list(range(S)), device=dev, stats=st,
                                  stop_loss=0.0, kicks=1, multi=True, max_rounds=2 if a.smoke else 25)
        wall = time.perf_counter() - t
        cands = sum(x.candidates_scored for x in res)
        rec = dict(searches=S, seconds=wall, lockstep_rounds=st["lockstep_rounds"], candidates=cands,
                   candidates_per_s=cands / wall, launches=st["launches"], syncs=st["syncs"])
        if S == (2 if a.smoke else 4) and _has_core():  # the same searches one after the other in the C++ loop
            t = time.perf_counter()
            c4 = [local_search_native(pz.X, target, *w, s[0], s[1], seed=i, stop_loss=0.0, kicks=1, multi=True,
                                      max_rounds=2 if a.smoke else 25) for i, s in enumerate(starts)]
            rec["cpp_sequential_s"] = time.perf_counter() - t
            rec["speedup_vs_cpp"] = rec["cpp_sequential_s"] / wall
            rec["same_results_as_cpp"] = all(x.order_in == y.order_in for x, y in zip(res, c4))
        doc["multi_start"].append(rec)
        checkpoint(doc)
        log(f"  multi-start: {rec}")
    # (c) crossover: one adjacent round (score + argmin + copy back + prefix update) vs the C++ scorer's
    sizes = [(3, 32), (4, 32)] if a.smoke else [(8, 256), (16, 256), (32, 256), (48, 256), (48, 1024), (96, 256), (96, 1024)]
    table = []
    for n_b, rows in sizes:
        p = bks.make_problem(n_b, 16 if a.smoke else 48, 32 if a.smoke else 96, 1, rows, (mv.ADJACENT,))
        table.append(_round_times(p, dev, ks, repeats=1 if a.smoke else 5))
        table[-1]["round_gflop"] = round_gflop(n_b, p["d"], p["h"], rows)
        log(f"  crossover point: {table[-1]}")
        checkpoint({**doc, "crossover": table})
    doc["crossover"] = table
    ok = [row for row in table if row.get("speedup") is not None]
    win = None
    for i, row in enumerate(sorted(ok, key=lambda r: r["round_gflop"])):
        rest = sorted(ok, key=lambda r: r["round_gflop"])[i:]
        if all(r["speedup"] >= 1.5 for r in rest):  # margin for the GPU's fixed costs (CUDA init, JIT)
            win = row["round_gflop"]
            break
    doc["min_round_gflop"] = win
    if not a.smoke and dev == "cuda":
        path = save_calibration(win, {"table": table, "rule": "device round >= 1.5x the C++ round from here up"})
        doc["calibration_file"] = str(path)
        doc["threshold_now"] = list(triton_threshold())
    log(f"  crossover (GFLOP per adjacent round from which the GPU wins by >= 1.5x): {win}")
    return doc


def _has_core() -> bool:
    try:
        from unshuffle import _core  # noqa: F401

        return True
    except ImportError:
        return False


def _round_times(p, dev, ks, repeats):
    """Seconds of one adjacent round on the device (launch, argmin, copy back, prefix update from the middle)
    and in the C++ core (scoring the same candidates, then the prefixes)."""
    N = p["N"]
    prob = ks.prepare(p["X"], p["target"], *p["w"], device=dev)
    oin = torch.tensor([p["oi"]], dtype=torch.int32, device=dev)
    oout = torch.tensor([p["oo"]], dtype=torch.int32, device=dev)
    prefix = ks.new_prefix(prob, 1, N)
    fwd0 = torch.tensor([[0, ks.FORWARD, 0, 0]], dtype=torch.int32, device=dev)
    fwdm = torch.tensor([[0, ks.FORWARD, N // 2, N // 2]], dtype=torch.int32, device=dev)
    ks.forward_rows(prob, prefix, oin, oout, fwd0)
    rows = torch.zeros((len(p["moves"]), 4), dtype=torch.int32)
    rows[:, 1:] = torch.from_numpy(p["moves"]).to(torch.int32)
    rows = rows.to(dev)

    def dev_round():
        losses = ks.score_moves(prob, prefix, oin, oout, rows)
        v, i = losses.min(dim=0)
        back = torch.stack([v, i.double()]).cpu()
        ks.forward_rows(prob, prefix, oin, oout, fwdm)
        return back

    _, t_dev, _ = bks.timed(dev_round, dev, repeats)
    out = dict(N=N, rows=p["R"], K=len(p["moves"]), device_round_s=t_dev)
    if _has_core():
        from unshuffle import _core

        f = lambda t: np.ascontiguousarray(t.numpy() if isinstance(t, torch.Tensor) else t)
        nargs = [f(p["prefix"]), f(p["starts"]), f(p["seq_in"]), f(p["seq_out"]), *[f(t) for t in p["w"]], f(p["target"])]
        oi = np.asarray(p["oi"], np.int64)
        oo = np.asarray(p["oo"], np.int64)

        def cpp_round():
            _core.score_candidates(*nargs)
            return _core.forward_prefixes(f(p["X"]), oi, oo, *[f(t) for t in p["w"][:4]])

        _, t_cpp, _ = bks.timed(cpp_round, "cpu", repeats)
        out.update(cpp_round_s=t_cpp, speedup=t_cpp / t_dev)
    return out


# ---------------------------------------------------------------------------------------------- solves
def _hook_wired() -> bool:
    from unshuffle import ordering

    return "gpu_search" in inspect.getsource(ordering)


def _solve_all(puzzle_dir, backends, time_limit, expect_sha=None, python_loop_too=False, on_run=None):
    """solve() on each backend in this process (triton twice: cold JIT, then warm). If ordering.py does not
    call the device search yet, it is patched in here for the triton runs (and said so)."""
    import unshuffle.ordering as ordering
    from unshuffle import gpu_search, load_puzzle
    from unshuffle.solver import solve

    pz = load_puzzle(puzzle_dir)
    doc = {"puzzle": dict(N=pz.n_blocks, d=pz.d, h=pz.h, k=pz.k, rows=pz.n_rows), "hook_wired_in_ordering": _hook_wired(),
           "runs": []}
    orig = ordering.local_search

    def routed(scorer, *args, **kw):  # the hook order() will have: the triton backend searches on the device
        if scorer.name == "triton":
            return gpu_search.device_local_search(scorer, *args, **kw)
        return orig(scorer, *args, **kw)

    plan = []
    for b in backends:
        if b == "triton":
            if python_loop_too and not doc["hook_wired_in_ordering"]:
                plan.append(("triton", "python_loop", False))
            plan += [("triton", "device_cold", True), ("triton", "device_warm", True)]
        else:
            plan.append((b, "run", False))
    for backend, label, patch in plan:
        before = dict(gpu_search.CALLS)
        if patch and not doc["hook_wired_in_ordering"]:
            ordering.local_search = routed
        try:
            t = time.perf_counter()
            sol = solve(pz, backend=backend, seed=0, time_limit=time_limit)
            wall = time.perf_counter() - t
            o = sol.order_result
            rec = dict(backend=backend, label=label, exact=sol.exact, sha256=sol.sha256, stopped=sol.stopped,
                       wall_s=wall, timings=sol.timings, rounds=o.rounds, moves=o.moves_used, start=o.start,
                       max_abs_err=sol.max_abs_err, device_search_used=gpu_search.CALLS != before)
            if expect_sha:
                rec["sha256_matches_published"] = sol.sha256 == expect_sha
        except Exception as exc:  # noqa: BLE001 - record and go on
            rec = dict(backend=backend, label=label, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc()[-1500:])
        finally:
            ordering.local_search = orig
        doc["runs"].append(rec)
        (on_run or checkpoint)(doc)
        log(f"  {backend:7s} {label:12s} " + ", ".join(f"{k}={rec[k]}" for k in ("exact", "stopped", "rounds", "wall_s", "error") if k in rec))
    shas = {r.get("sha256") for r in doc["runs"] if "sha256" in r}
    doc["same_answer_all_backends"] = len(shas) == 1
    return doc


def step_solve(a):
    """The puzzle given with --puzzle (the public one on the GPU machine) on triton and cpp; skipped cleanly
    when absent."""
    if not a.puzzle or not (Path(a.puzzle) / "historical_data.csv").is_file():
        log(f"  no puzzle at {a.puzzle!r}: skipped")
        return {"skipped": f"no puzzle folder given or found ({a.puzzle!r})"}
    backends = ("triton", "cpp") if _has_core() else ("triton",)
    doc = _solve_all(a.puzzle, backends, time_limit=60.0, expect_sha=PUBLIC_SHA256, python_loop_too=True)
    # and through the command line, as a user would (order() as wired in this checkout)
    import subprocess

    doc["cli"] = []
    for b in (("triton",) if a.smoke else backends):  # smoke: the code path once, not the timing
        cmd = [sys.executable, "-m", "unshuffle", "solve", a.puzzle, "--backend", b, "--json", "--quiet",
               "--expect-sha256", PUBLIC_SHA256, "--time-limit", "60"]
        t = time.perf_counter()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            rec = dict(backend=b, exit_code=r.returncode, wall_s=time.perf_counter() - t)
            try:
                out = json.loads(r.stdout)
                rec.update(exact=out.get("exact"), sha256_matches_published=out.get("sha256") == PUBLIC_SHA256,
                           stopped=out.get("stopped"), timings=out.get("timings"))
            except ValueError:
                rec["stderr"] = r.stderr[-1500:]
        except subprocess.TimeoutExpired:
            rec = dict(backend=b, error="timeout after 120 s")
        doc["cli"].append(rec)
        checkpoint(doc)
        log(f"  cli --backend {b}: {rec}")
    return doc


def step_generated(a):
    """Generated puzzles (fixed seeds), each solved on cpp and triton; the generator's answer is the check."""
    from unshuffle import make_puzzle

    specs = [(3, 8, 12, 200, 1)] if a.smoke else [(16, 48, 96, 2000, 1), (32, 48, 96, 2000, 2)]
    backends = ("triton", "cpp") if _has_core() else ("triton",)
    doc = {"puzzles": []}
    for n, dim, hid, rows, seed in specs:
        folder = Path(a.workdir) / f"gen_N{n}_s{seed}"
        t = time.perf_counter()
        make_puzzle(folder, blocks=n, dim=dim, hidden=hid, rows=rows, seed=seed)
        gen_s = time.perf_counter() - t
        log(f"  generated N={n} d={dim} h={hid} rows={rows} seed={seed} in {gen_s:.1f}s")
        spec = dict(spec=dict(N=n, d=dim, h=hid, rows=rows, seed=seed), generate_s=gen_s)
        rec = _solve_all(folder, ("cpp",) + tuple(b for b in backends if b != "cpp") if "cpp" in backends else backends,
                         time_limit=30.0 if a.smoke else 45.0,
                         on_run=lambda part: checkpoint({"puzzles": doc["puzzles"] + [{**part, **spec}]}))
        truth = json.loads((folder / "answer.json").read_text())["sha256"]  # the generator's own answer
        for r in rec["runs"]:
            if "sha256" in r:
                r["right_answer"] = r["sha256"] == truth
        rec.update(spec)
        doc["puzzles"].append(rec)
        checkpoint(doc)
    return doc


# ---------------------------------------------------------------------------------------------- summary
def step_summarize(a):
    """Merge the step JSONs and statuses into OUT/gpu_check.json and print the compact table."""
    work, out = Path(a.workdir), Path(a.out)
    steps = {}
    status_file = work / "steps.tsv"
    if status_file.is_file():
        for line in status_file.read_text().splitlines():
            name, rc, secs, limit = line.split("\t")
            steps[name] = dict(rc=int(rc), seconds=float(secs), limit_s=float(limit),
                               status="ok" if rc == "0" else ("timeout" if rc in ("124", "137") else ("skipped" if rc == "-1" else "failed")))
    doc = {"mode": "cpu-smoke" if a.smoke else "gpu", "written": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": steps}
    for name in SECTIONS:
        f = work / f"{name}.json"
        try:
            doc[name] = json.loads(f.read_text()) if f.is_file() else {"missing": True, **steps.get(name, {})}
        except ValueError as exc:
            doc[name] = {"unreadable": str(exc)}
        if name in steps:
            if "skipped" in doc[name] and steps[name]["status"] == "ok":
                steps[name]["status"] = "skipped"  # the step ran and found nothing to do (no --puzzle)
            doc[name].setdefault("step", steps[name])
    lines = _summary_lines(doc)
    doc["summary"] = lines
    write(out / "gpu_check.json", doc)
    print("\n".join(lines), flush=True)
    return None


def _fmt(v, spec=".3g"):
    return "-" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def _summary_lines(doc):
    L = [f"== gpu_check summary ({doc['mode']}) ==", f"{'step':<10}{'status':<9}{'seconds':>8}"]
    for name, s in doc["steps"].items():
        L.append(f"{name:<10}{s['status']:<9}{s['seconds']:>8.1f}")
    env = doc.get("env", {})
    L.append(f"device: {env.get('device', 'cpu')}  torch {env.get('torch')}  triton {env.get('triton')}")
    sc = doc.get("scoring", {})
    g = sc.get("gemm_gflops", {})
    if sc.get("shapes"):
        L.append(f"scoring (GFLOP/s; dense matmul fp32 {_fmt(g.get('fp32'), '.0f')}, tf32 {_fmt(g.get('tf32'), '.0f')}):")
        L.append(f"  {'R':>5} {'cands':<12}{'triton':>9}{'%fp32':>7}{'cold s':>8}{'torch':>9}{'cpp':>9}{'ref':>8}{'x cpp':>7}")
        for s in sc["shapes"]:
            r = s["scorers"]
            t = r.get("triton_moves", {})
            L.append(f"  {s['R']:>5} {s['kinds']:<12}{_fmt(t.get('gflops'), '.0f'):>9}"
                     f"{_fmt(100 * t['frac_of_gemm_fp32'] if 'frac_of_gemm_fp32' in t else None, '.0f'):>7}"
                     f"{_fmt(t.get('cold_s'), '.2f'):>8}{_fmt(r.get('torch', {}).get('gflops'), '.0f'):>9}"
                     f"{_fmt(r.get('cpp', {}).get('gflops'), '.0f'):>9}{_fmt(r.get('reference', {}).get('gflops'), '.1f'):>8}"
                     f"{_fmt(t.get('x_vs_cpp'), '.1f'):>7}")
    pr = doc.get("precision", {}).get("precisions")
    if pr:
        L.append("precision (max rel err vs float64 | planted exact recognised | search exact):")
        runs = doc["precision"].get("search", {}).get("runs", {})
        for k, v in pr.items():
            L.append(f"  {k:<7} {_fmt(v.get('gflops'), '.0f'):>7} GFLOP/s  err {_fmt(v.get('max_rel_err_vs_float64'), '.1e')}"
                     f"  planted {v.get('planted_recognised_exact')}  search {runs.get(k, {}).get('stopped')}")
    se = doc.get("search", {})
    if se.get("single"):
        s = se["single"]
        L.append(f"search N={s.get('N')}: device {_fmt(s.get('device_per_round_s'), '.2e')} s/round, cpp "
                 f"{_fmt(s.get('cpp_per_round_s'), '.2e')} s/round, x{_fmt(s.get('speedup_vs_cpp'), '.2f')}, "
                 f"same trajectory {s.get('same_trajectory_as_cpp')}")
        L.append(f"crossover: GPU wins from {_fmt(se.get('min_round_gflop'))} GFLOP per adjacent round")
    for key in ("public", "generated"):
        sec = doc.get(key, {})
        groups = [sec] if key == "public" else sec.get("puzzles", [])
        if sec.get("skipped"):
            L.append(f"{key}: skipped ({sec['skipped']})")
        for r in sec.get("cli", []):
            L.append(f"{key} cli --backend {r['backend']}: exit {r.get('exit_code')}  exact {r.get('exact')}  "
                     f"{_fmt(r.get('wall_s'), '.2f')} s  sha ok {r.get('sha256_matches_published')}")
        for gdoc in groups:
            for r in gdoc.get("runs", []):
                L.append(f"{key} {str(gdoc.get('puzzle', {}).get('N')):>3}: {r['backend']:<7}{r['label']:<12} exact "
                         f"{r.get('exact')}  {_fmt(r.get('wall_s'), '.2f')} s  search {_fmt(r.get('timings', {}).get('order.search'), '.2f')} s"
                         f"  sha ok {r.get('sha256_matches_published', r.get('right_answer'))}"
                         f"{'  ERROR ' + r['error'] if 'error' in r else ''}")
    tests = doc.get("tests", {})
    if "summary" in tests:
        L.append(f"tests: {tests['summary']}")
    st = doc.get("selftest", {})
    if "ok" in st:
        L.append(f"selftest: {'ok' if st['ok'] else 'FAILED'}")
    return L


STEPS = {"env": step_env, "selftest": step_selftest, "scoring": step_scoring, "precision": step_precision,
         "search": step_search, "solve": step_solve, "generated": step_generated, "summarize": step_summarize}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=sorted(STEPS))
    ap.add_argument("--json", help="where this step writes its JSON")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--puzzle")
    ap.add_argument("--workdir")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if a.smoke:
        torch.set_num_threads(1)
    t = time.perf_counter()
    _CKPT["path"] = a.json if a.step != "summarize" else None
    doc = STEPS[a.step](a)
    if doc is not None and a.json:
        doc["seconds"] = time.perf_counter() - t
        write(a.json, doc)
    return 0 if not (isinstance(doc, dict) and doc.get("ok") is False) else 1


if __name__ == "__main__":
    sys.exit(main())
