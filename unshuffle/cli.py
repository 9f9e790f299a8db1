"""Command line: ``unshuffle solve | demo | make-puzzle | info``.

Exit codes: 0 exact answer; 1 best answer found is not exact (or does not match --expect-sha256);
2 bad input or usage (one line on stderr naming the file and the problem); 130 interrupted (the best
answer so far is still printed).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

from .cancel import DEFAULT_TIME_LIMIT, INTERRUPTED
from .errors import BackendUnavailable, PuzzleError

EXIT_EXACT, EXIT_INEXACT, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

log = logging.getLogger("unshuffle")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors: exit 2 with one line
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _progress(enabled: bool):
    """A tqdm bar on stderr showing search round, last move and loss; None when disabled."""
    if not enabled:
        return None, None
    from tqdm import tqdm

    from .ordering import BEST

    bar = tqdm(total=None, desc="search", unit="move", file=sys.stderr, leave=False)

    best = [float("inf")]

    def update(round_no: int, move: str, loss: float):
        if round_no == BEST:  # a run finished with a better order: the best mse so far (anytime)
            best[0] = min(best[0], loss)
            bar.set_description(f"search (best mse {best[0]:.3g})")
            bar.refresh()
            return
        if round_no < 0:  # the C++ loops report only a label and the elapsed time while they run
            bar.set_postfix_str(f"{move} running, {loss:.1f}s")
            bar.refresh()
            return
        bar.set_postfix_str(f"round {round_no} {move} sse {loss:.3e}")
        bar.update(1)

    return update, bar


def _human(sol, puzzle) -> str:
    o = sol.order_result
    pr = sol.pair_result
    b = sol.budget or {}
    limit = "none" if not b.get("time_limit") else f"{b['time_limit']:g}s"
    budget = f"time limit {limit}, spent {b.get('spent', 0.0):.2f}s, stopped: {sol.stopped}" + (
        f" (during {b['stopped_in']})" if b.get("stopped_in") else "")
    if sol.permutation is None:
        return "\n".join([
            f"puzzle     : {puzzle.path or '(given files)'}  N={puzzle.n_blocks} d={puzzle.d} h={puzzle.h} k={puzzle.k} rows={puzzle.n_rows}",
            f"budget     : {budget}",
            "answer     : none yet (stopped before any order was found)",
        ])
    lines = [
        f"puzzle     : {puzzle.path or '(given files)'}  N={puzzle.n_blocks} d={puzzle.d} h={puzzle.h} k={puzzle.k} rows={puzzle.n_rows}",
        f"pairing    : {pr.method}, confident={pr.confident}, min gap {pr.min_gap:.3g}, min margin {min(pr.margin_row.min(), pr.margin_col.min()):.3g}",
        f"seeds (mse): " + ", ".join(f"{k} {v:.3g}" for k, v in o.seed_mse.items()),
        f"search     : start {o.start}, {o.rounds} rounds, moves {o.moves_used or '{}'}, stopped: {sol.stopped}, backend {sol.backend}",
        f"verify     : max abs err {sol.max_abs_err:.3g} (tolerance {sol.tolerance:.3g}), mse {sol.mse:.3g}",
    ] + ([] if sol.exact else [
        f"how close  : mse {sol.mse:.3g}; " + (
            f"about {o.estimated_wrong} of {puzzle.n_blocks} positions estimated wrong (differ from {o.runner_up})"
            if o.estimated_wrong is not None else "wrong positions not estimated (no independent second run)"),
    ]) + [
        f"certificate: " + (sol.certificate.summary() if sol.certificate is not None else
                            "not computed (--no-certificate)" if sol.exact else "none (the answer is not exact)"),
        f"time       : " + ", ".join(f"{k} {v:.2f}s" for k, v in sol.timings.items() if "." not in k),
        f"budget     : {budget}",
        f"exact      : {sol.exact}",
        f"sha256     : {sol.sha256}",
        f"answer     : {','.join(map(str, sol.permutation))}",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def _sigint_cancels(token):
    """While solving, the first Ctrl-C cancels ``token`` (every phase winds down and the best answer so far
    is printed); a second one raises KeyboardInterrupt at once. Outside this block Ctrl-C is Python's."""
    def handler(signum, frame):
        if token.cancelled:
            raise KeyboardInterrupt
        token.cancel(INTERRUPTED)
        print("interrupted: stopping, printing the best answer so far (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    try:
        old = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread (main() called from a thread): keep Python's handling
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _no_answer_payload(reason: str, phase: str) -> dict:
    return {"permutation": None, "sha256": None, "exact": False, "stopped": reason,
            "budget": {"stopped": reason, "stopped_in": phase}}


def _solve_and_print(args, puzzle) -> int:
    from .cancel import CancelToken
    from .safeio import atomic_write_text
    from .solver import solve

    start = None
    if getattr(args, "start", None):  # a warm start (PuzzleError naming the file when it does not fit)
        from .puzzle import load_order

        start = load_order(args.start, puzzle)
    show = not args.quiet and sys.stderr.isatty()
    update, bar = _progress(show)
    token = CancelToken()  # the time limit is solve()'s (a child token)
    limit = None if not args.time_limit else args.time_limit
    try:
        with _sigint_cancels(token):
            sol = solve(puzzle, backend=args.backend, seed=args.seed, time_limit=limit, token=token, bt=args.bt,
                        progress=update, kicks=args.kicks, starts=args.starts, search_rows=args.search_rows,
                        certificate=not args.no_certificate, start=start)
    finally:
        if bar is not None:
            bar.close()
    payload = sol.to_dict()
    text = json.dumps(payload) if args.json else _human(sol, puzzle)
    print(text, flush=True)
    if args.out:
        atomic_write_text(args.out, json.dumps(payload, indent=1) + "\n")
    if getattr(args, "report", None):
        from .report import write_report

        write_report(args.report, puzzle, sol)
    if sol.stopped == "interrupted":
        what = "the best answer so far" if sol.permutation is not None else "that no answer exists yet"
        print(f"interrupted: printed {what}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.expect_sha256 and sol.sha256 != args.expect_sha256.lower():
        print(f"answer sha256 {sol.sha256} does not match --expect-sha256 {args.expect_sha256}", file=sys.stderr)
        return EXIT_INEXACT
    return EXIT_EXACT if sol.exact else EXIT_INEXACT


def _add_solve_options(p):
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.add_argument("--out", help="also write the JSON result to this file (atomically)")
    p.add_argument("--seed", type=int, default=0, help="seed for row sampling and search kicks (default 0)")
    p.add_argument("--backend", default="auto", choices=["auto", "reference", "torch", "cpp", "triton"])
    p.add_argument("--expect-sha256", metavar="HEX", help="exit 1 unless the answer has this sha256")
    p.add_argument("--time-limit", type=float, metavar="S", default=DEFAULT_TIME_LIMIT,
                   help=f"time budget for the whole solve in seconds (default {DEFAULT_TIME_LIMIT:g}; 0 = none); "
                        "when it runs out the best answer so far is printed (exit 1 if not exact)")
    p.add_argument("--bt", action="store_true", help="also run the paper's Bradley-Terry ranking step as a seed")
    p.add_argument("--kicks", type=int, default=30, help="random restarts per start when stuck (default 30)")
    p.add_argument("--starts", type=int, default=3, help="distinct seeds the search may start from (default 3)")
    p.add_argument("--search-rows", type=int, default=256, help="rows scoring the search (default 256; the answer is verified on all)")
    p.add_argument("--no-certificate", action="store_true",
                   help="skip the certificate (every single-move neighbour of an exact answer scored on all rows)")
    p.add_argument("--report", metavar="DIR", help="write a Markdown report with plots to DIR (needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or notes on stderr")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="unshuffle", description="Reassemble a shuffled residual network, exactly.")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    s = sub.add_parser("solve", help="solve a puzzle folder")
    s.add_argument("puzzle_dir", nargs="?", help="folder with historical_data.csv and pieces (pieces/ or beside it)")
    s.add_argument("--pieces", help="pieces folder or single state-dict file (overrides the default)")
    s.add_argument("--data", help="data CSV (overrides PUZZLE_DIR/historical_data.csv)")
    s.add_argument("--start", metavar="FILE",
                   help="warm start: an earlier answer to continue from (solve --json/--out output, or ids)")
    _add_solve_options(s)

    d = sub.add_parser("demo", help="generate the default puzzle, solve it and print the result")
    d.add_argument("--dir", help="where to write the generated puzzle (default: a temporary folder)")
    _add_solve_options(d)

    m = sub.add_parser("make-puzzle", help="train a residual MLP, shuffle its layers and write a puzzle")
    m.add_argument("out_dir")
    m.add_argument("--blocks", type=int, default=16)
    m.add_argument("--dim", type=int, default=32)
    m.add_argument("--hidden", type=int, default=64)
    m.add_argument("--outputs", type=int, default=1)
    m.add_argument("--rows", type=int, default=2000)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--regime", default=None, help="training regime (see unshuffle.generate.REGIMES)")

    sub.add_parser("info", help="what is available here: extension, Triton/CUDA, torch, threads")
    return ap


def _info() -> int:
    import platform

    import torch

    from . import __version__
    from .backends import available_backends, explain_auto, resolve_backend

    print(f"unshuffle {__version__}  python {platform.python_version()}  torch {torch.__version__}  threads {torch.get_num_threads()}")
    try:
        import triton

        print(f"triton {triton.__version__}  CUDA available: {torch.cuda.is_available()}")
    except ImportError:
        print(f"triton not installed  CUDA available: {torch.cuda.is_available()}")
    for name, (ok, why) in available_backends().items():
        print(f"  {name:9s} {'yes' if ok else 'no ':3s}  {why}")
    try:
        print(f"auto backend: {resolve_backend('auto')} ({explain_auto()})")
    except BackendUnavailable as exc:
        print(f"auto backend: unavailable ({exc})")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s",
                        force=True)
    try:
        if args.cmd == "info":
            return _info()
        if args.cmd == "make-puzzle":
            from .generate import make_puzzle

            kw = {} if args.regime is None else {"regime": args.regime}
            g = make_puzzle(args.out_dir, blocks=args.blocks, dim=args.dim, hidden=args.hidden,
                            outputs=args.outputs, rows=args.rows, seed=args.seed, **kw)
            print(f"wrote puzzle to {args.out_dir} (answer in {Path(args.out_dir) / 'answer.json'})")
            return 0
        from .puzzle import load_puzzle

        phase = "load"
        log.info("phase load")
        if os.environ.get("UNSHUFFLE_TEST_HOLD") == "load":  # test hook: hold here (bounded) for a Ctrl-C
            time.sleep(60)
        if args.cmd == "demo":
            from .generate import make_puzzle

            folder = args.dir or tempfile.mkdtemp(prefix="unshuffle-demo-")
            if not args.quiet:
                print(f"generating the default demo puzzle in {folder} ...", file=sys.stderr)
            make_puzzle(folder, blocks=16, dim=32, hidden=64, rows=2000, seed=args.seed)  # the embedded default
            puzzle = load_puzzle(folder)
        else:
            if args.puzzle_dir is None and args.data is None:
                print("unshuffle solve: error: give PUZZLE_DIR or --data", file=sys.stderr)
                return EXIT_USAGE
            puzzle = load_puzzle(args.puzzle_dir, pieces=args.pieces, data=args.data)
        if not args.quiet:
            for note in puzzle.notes:
                print(f"note: {note}", file=sys.stderr)
        return _solve_and_print(args, puzzle)
    except PuzzleError as exc:
        print(f"unshuffle: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BackendUnavailable as exc:
        print(f"unshuffle: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before the solve began (loading, generating): no answer exists yet
        if getattr(args, "json", False):
            print(json.dumps(_no_answer_payload(INTERRUPTED, locals().get("phase", "setup"))), flush=True)
        print("interrupted: no answer yet (stopped while loading)", file=sys.stderr)
        return EXIT_INTERRUPTED


def run() -> None:
    """Console entry point: ``main()``, then exit. After an interrupt the process ends at once (os._exit,
    once stdout/stderr are flushed and every file is written): tearing down torch and friends can take
    seconds on a loaded machine, and Ctrl-C should feel immediate."""
    code = main()
    if code == EXIT_INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
