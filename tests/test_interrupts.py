"""Ctrl-C, cancel tokens and time budgets, end to end.

The signal tests never sleep a fixed time: they start the CLI with ``-v`` (phase markers on stderr) and send
SIGINT once the marker of the phase they target has appeared. ``UNSHUFFLE_TEST_HOLD=<phase>`` makes that
phase wait (up to 60 s) for the interrupt, so the target phase cannot end before the signal arrives.
"""
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from test_cli import _noise_puzzle
from unshuffle.cancel import CancelToken, Cancelled
from unshuffle.puzzle import load_puzzle
from unshuffle.solver import solve
from unshuffle.testing import random_net


def _start(args, hold=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if hold:
        env["UNSHUFFLE_TEST_HOLD"] = hold
    return subprocess.Popen([sys.executable, "-m", "unshuffle", "-v", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_marker(p, marker):
    """Read stderr lines until one contains ``marker``; return the lines read (fails if the process ends)."""
    seen = []
    for line in p.stderr:
        seen.append(line)
        if marker in line:
            return seen
    pytest.fail(f"process ended before {marker!r}; stderr:\n{''.join(seen)}")


def _interrupt(p, marker):
    before = _wait_for_marker(p, marker)
    p.send_signal(signal.SIGINT)
    stdout, rest = p.communicate(timeout=120)  # a hang guard, not a timing assertion
    return stdout, "".join(before) + rest


def test_sigint_during_search_prints_best_so_far(tmp_path):
    _noise_puzzle(tmp_path)
    out = tmp_path / "result.json"
    out.write_text("previous\n")
    p = _start(["solve", str(tmp_path), "--json", "--quiet", "--kicks", "100000000", "--out", str(out)])
    stdout, stderr = _interrupt(p, "search start")
    assert p.returncode == 130, stderr
    d = json.loads(stdout)
    assert d["stopped"] == "interrupted" and d["exact"] is False
    assert sorted(d["permutation"]) == list(range(21))
    assert d["budget"]["stopped_in"] == "order" and d["verified"] is True
    assert "best answer so far" in stderr
    assert json.loads(out.read_text()) == d  # written whole


def test_sigint_during_a_fallback_pairing(tmp_path):
    _noise_puzzle(tmp_path)  # never exact, so the fallback pairings run
    p = _start(["solve", str(tmp_path), "--json", "--quiet", "--kicks", "0", "--starts", "1"], hold="fallback.trace")
    stdout, stderr = _interrupt(p, "phase fallback.trace")
    assert p.returncode == 130, stderr
    d = json.loads(stdout)
    assert d["stopped"] == "interrupted" and d["budget"]["stopped_in"] == "fallback.trace"
    # the best answer so far comes from a pairing tried before the trace fallback
    assert sorted(d["permutation"]) == list(range(21)) and d["pairing"]["method"] in ("fused", "data_fo")


def test_sigint_during_loading_says_no_answer(tmp_path):
    _noise_puzzle(tmp_path)
    p = _start(["solve", str(tmp_path), "--json", "--quiet"], hold="load")
    stdout, stderr = _interrupt(p, "phase load")
    assert p.returncode == 130, stderr
    d = json.loads(stdout)
    assert d["permutation"] is None and d["stopped"] == "interrupted"
    assert "no answer yet" in stderr


def test_sigint_text_output_without_answer_and_with(tmp_path):
    _noise_puzzle(tmp_path)
    p = _start(["solve", str(tmp_path), "--quiet"], hold="pair")
    stdout, stderr = _interrupt(p, "phase pair")
    assert p.returncode == 130, stderr
    assert "none yet" in stdout and "during pair" in stdout


def test_two_solves_in_two_threads_one_cancelled(tmp_path, small_puzzle):
    _noise_puzzle(tmp_path)
    noise = load_puzzle(tmp_path)
    searching = threading.Event()
    tok_a, tok_b = CancelToken(), CancelToken()
    res = {}

    def a():
        res["a"] = solve(noise, token=tok_a, time_limit=None, kicks=10**8, backend="cpp",
                         on_phase=lambda name: searching.set() if name == "order" else None)

    def b():
        searching.wait(60)
        res["b"] = solve(small_puzzle, token=tok_b, backend="cpp")

    ta, tb = threading.Thread(target=a), threading.Thread(target=b)
    ta.start(), tb.start()
    tb.join(120)
    assert res["b"].exact and res["b"].stopped == "exact"  # ran to the end while A was searching
    assert ta.is_alive()  # A's search is not stopped by B's token
    tok_a.cancel()
    ta.join(60)
    assert not ta.is_alive()
    assert res["a"].stopped == "interrupted" and res["a"].permutation is not None and not tok_b.cancelled


def test_default_budget_and_deadline(small_puzzle, tmp_path):
    s = solve(small_puzzle, backend="cpp")
    assert s.budget["time_limit"] == 600.0 and s.budget["stopped"] == "exact" and s.budget["stopped_in"] is None
    assert set(s.budget["phases"]) >= {"pair", "order", "verify"}
    _noise_puzzle(tmp_path)
    t = solve(load_puzzle(tmp_path), backend="cpp", time_limit=0.5, kicks=10**8)
    assert t.stopped == "time_limit" and t.permutation is not None and t.budget["time_limit"] == 0.5
    u = solve(load_puzzle(tmp_path), backend="cpp", time_limit=None, token=CancelToken(1e-9))
    assert u.stopped == "time_limit" and u.permutation is None  # spent before any order existed


def test_python_search_loop_obeys_the_token(tmp_path):
    from unshuffle.backends import get_scorer
    from unshuffle.search import local_search

    _noise_puzzle(tmp_path)
    pz = load_puzzle(tmp_path)
    w = (pz.W_in, pz.b_in, pz.W_out, pz.b_out, pz.W_last, pz.b_last)
    tok = CancelToken()
    tok.cancel()
    r = local_search(get_scorer("torch"), pz.X, pz.pred, *w, list(range(10)), list(range(10)), token=tok)
    assert r.stopped == "interrupted" and r.rounds == 0
    r = local_search(get_scorer("torch"), pz.X, pz.pred, *w, list(range(10)), list(range(10)),
                     token=CancelToken(1e-9))
    assert r.stopped == "time_limit"


def test_kick_redraws_are_bounded():
    """N=3: only two distinct kicks exist; once both are visited the loop gives up instead of spinning."""
    from unshuffle.backends import get_scorer
    from unshuffle.search import local_search

    t = random_net(0, n=3, d=4, h=6, rows=16, target="random").tensors()
    r = local_search(get_scorer("torch"), t["X"], t["target"], t["W_in"], t["b_in"], t["W_out"], t["b_out"],
                     t["W_last"], t["b_last"], [0, 1, 2], [0, 1, 2], kicks=10**6, stop_loss=-1.0)
    assert r.stopped == "local_optimum"


def test_token_children_share_the_flag_not_the_deadline():
    parent = CancelToken(None)
    child = parent.limited(1e-9)
    assert child.reason() == "time_limit" and parent.reason() is None
    with pytest.raises(Cancelled):
        child.check()
    parent.cancel()
    assert child.cancelled and child.reason() == "interrupted"
    assert parent.core_flag().is_set() and child.core_flag() is parent.core_flag()


def test_cli_time_limit_returns_best_so_far(tmp_path):
    _noise_puzzle(tmp_path)
    r = subprocess.run([sys.executable, "-m", "unshuffle", "solve", str(tmp_path), "--json", "--quiet",
                        "--time-limit", "1", "--kicks", "100000000"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    d = json.loads(r.stdout)
    assert d["exact"] is False and d["stopped"] == "time_limit" and d["budget"]["time_limit"] == 1.0
    assert sorted(d["permutation"]) == list(range(21))
