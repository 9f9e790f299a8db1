"""Cost of the uniqueness certificate (unshuffle.certificate) as a fraction of the solve, one run, one machine.

In process, alternating, medians of ``--repeat`` (wall and CPU seconds): ``solve(puzzle, certificate=False)``
(the whole solve without the certificate) and ``certify()`` of its answer (what ``solve()`` adds by default). Also, once each,
the yardsticks the certificate is measured against: brute force (every neighbour on every row) in
neighbour-rows, and the time ``score_candidates`` over cached prefixes takes to score every neighbour on one
24-row tile (its smallest unit of work), from which scoring every neighbour on every row that way is
extrapolated. The move found is recorded by kind and positions only (never piece ids: no part of an answer
is written anywhere).

    python benchmarks/bench_certificate.py [PUZZLE_DIR] [--repeat 7] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "puzzles" / "droppedaneuralnet"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("puzzle", nargs="?", default=str(DEFAULT))
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    from unshuffle import load_puzzle, native
    from unshuffle.certificate import certify, neighbours
    from unshuffle.solver import solve, verify

    load0 = os.getloadavg()
    pz = load_puzzle(args.puzzle)
    sol = solve(pz, certificate=False)  # warm-up (thread pools, page faults)
    if not sol.exact:
        raise SystemExit("the solve is not exact: no certificate to measure")
    o = sol.order_result
    v = verify(pz, o.order, o.order_out)
    certify(pz, o.order, o.order_out, v.tolerance, row_errors=v.row_err)
    t_solve, t_cert, c_solve, c_cert = [], [], [], []
    for _ in range(args.repeat):
        t, c = time.perf_counter(), time.process_time()
        solve(pz, certificate=False)
        t_solve.append(time.perf_counter() - t)
        c_solve.append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        cert = certify(pz, o.order, o.order_out, v.tolerance, row_errors=v.row_err)
        t_cert.append(time.perf_counter() - t)
        c_cert.append(time.process_time() - c)
    solve_s, cert_s = statistics.median(t_solve), statistics.median(t_cert)
    solve_cpu, cert_cpu = statistics.median(c_solve), statistics.median(c_cert)

    # Yardstick: score_candidates over the answer's cached prefixes, every neighbour on one 24-row tile.
    starts, seq_in, seq_out, _ = neighbours(o.order, o.order_out)
    a, core = pz.arrays, native.core()
    rows = np.linspace(0, pz.n_rows - 1, 24).astype(np.int64)
    w = [native._f32(x) for x in (a.W_in, a.b_in, a.W_out, a.b_out, a.W_last, a.b_last)]
    prefix = core.forward_prefixes(native._f32(a.X[rows]), native._i64(o.order), native._i64(o.order_out), *w[:4])
    t = time.perf_counter()
    core.score_candidates(prefix, starts, seq_in, seq_out, *w, native._f32(a.pred[rows]))
    tile_s = time.perf_counter() - t

    m = cert.move
    res = {
        "puzzle": str(args.puzzle), "N": pz.n_blocks, "rows": pz.n_rows, "repeat": args.repeat,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_before": load0,
                    "loadavg_after": os.getloadavg()},
        "solve_without_certificate_s": solve_s, "certificate_s": cert_s, "certificate_over_solve": cert_s / solve_s,
        "solve_runs_s": t_solve, "certificate_runs_s": t_cert,
        "solve_cpu_s": solve_cpu, "certificate_cpu_s": cert_cpu, "certificate_over_solve_cpu": cert_cpu / solve_cpu,
        "certificate": {"neighbours": cert.neighbours, "neighbours_checked": cert.neighbours_checked,
                        "complete": cert.complete, "min_neighbour_error_ratio": cert.min_neighbour_error_ratio,
                        "min_neighbour_max_abs_err": cert.min_neighbour_max_abs_err, "tolerance": cert.tolerance,
                        "move": {"kind": m["kind"], "i": m["i"], "j": m["j"]} if m else None,
                        "full_scored": cert.full_scored, "neighbour_rows": cert.neighbour_rows},
        "brute_force_neighbour_rows": cert.neighbours * pz.n_rows,
        "neighbour_rows_over_brute_force": cert.neighbour_rows / (cert.neighbours * pz.n_rows),
        "score_candidates_one_tile_s": tile_s,
        "score_candidates_all_rows_extrapolated_s": tile_s * pz.n_rows / 24,
    }
    print(f"solve (no certificate) {solve_s:.3f} s, certificate {cert_s:.3f} s = {cert_s / solve_s:.2f} of the solve; "
          f"CPU {solve_cpu:.3f} s vs {cert_cpu:.3f} s = {cert_cpu / solve_cpu:.2f} (medians of {args.repeat}; "
          f"load {load0[0]:.1f} -> {os.getloadavg()[0]:.1f})")
    print(f"ratio {cert.min_neighbour_error_ratio:.5g} ({m['kind']} {m['i']},{m['j']}); {cert.neighbour_rows} neighbour-rows "
          f"= {res['neighbour_rows_over_brute_force']:.2%} of brute force; score_candidates: {tile_s:.3f} s per 24-row "
          f"tile of all {cert.neighbours} neighbours, ~{res['score_candidates_all_rows_extrapolated_s']:.0f} s for all rows")
    if args.json:
        from unshuffle.safeio import atomic_write_text

        atomic_write_text(args.json, json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
