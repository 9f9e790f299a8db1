"""The public puzzle, solved exactly through the API and the CLI (read from ../shared, never copied)."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import PUBLIC_SHA256
from unshuffle import load_puzzle
from unshuffle.backends import available_backends
from unshuffle.pairing import pair
from unshuffle.solver import answer_sha256, solve, verify

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def public_solution(public_puzzle):
    return solve(public_puzzle)


def test_api_solves_public_exactly(public_solution, public_puzzle):
    s = public_solution
    assert s.sha256 == PUBLIC_SHA256
    assert s.exact and s.max_abs_err <= s.tolerance
    assert s.max_abs_err < 1e-5  # the README's figure for the true order is 5e-7 (nn.Linear arithmetic)
    assert sorted(s.permutation) == list(range(2 * public_puzzle.n_blocks + 1))
    assert s.permutation[-1] == public_puzzle.last_id
    assert set(s.timings) >= {"pair", "order", "verify", "total"}


def test_public_runs_the_plain_search(public_solution):
    """The public puzzle's seeds are close (easy): the search starts from the best seed, with no fingerprint
    race (docs/ORDERING.md section 3), so it is no slower than before the race existed."""
    o = public_solution.order_result
    assert not any(k.startswith("fingerprint") for k in o.seed_mse)
    assert o.runs[0][0] == min(o.seed_mse, key=lambda k: (o.seed_mse[k], k))


def test_pairing_public_is_confident(public_puzzle, public_solution):
    pr = pair(public_puzzle)
    assert pr.confident and pr.agree
    assert (pr.margin_row > 0).all() and (pr.margin_col > 0).all()
    # the search kept the weight-only pairing: every block of the answer is one of pair()'s pairs
    assert {tuple(p) for p in public_solution.pairs} == set(pr.pairs)


def test_wrong_orders_are_not_exact(public_puzzle, public_solution):
    """The exactness check must reject near-misses: one adjacent swap of the answer, anywhere."""
    o = public_solution.order_result
    for i in (0, 23, 46):
        oi, oo = list(o.order), list(o.order_out)
        oi[i], oi[i + 1] = oi[i + 1], oi[i]
        oo[i], oo[i + 1] = oo[i + 1], oo[i]
        v = verify(public_puzzle, oi, oo)
        assert not v.exact and v.max_abs_err > 100 * v.tolerance


def test_relabelled_and_shuffled_copy(public_dir, tmp_path):
    """Same network under new random ids and shuffled rows: solved exactly, and maps back to the answer."""
    rng = np.random.default_rng(123)
    src = load_puzzle(public_dir)
    n_pieces = 2 * src.n_blocks + 1
    new_of_old = {old: int(new) for old, new in zip(range(n_pieces), rng.permutation(n_pieces))}
    (tmp_path / "pieces").mkdir()
    for old in range(n_pieces):
        blob = torch.load(public_dir / "pieces" / f"piece_{old}.pth", map_location="cpu", weights_only=True)
        torch.save(blob, tmp_path / "pieces" / f"piece_{new_of_old[old]}.pth")
    df = pd.read_csv(public_dir / "historical_data.csv")
    df.sample(frac=1.0, random_state=7).to_csv(tmp_path / "historical_data.csv", index=False)
    s = solve(tmp_path, seed=3)
    assert s.exact
    old_of_new = {v: k for k, v in new_of_old.items()}
    assert answer_sha256([old_of_new[i] for i in s.permutation]) == PUBLIC_SHA256


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "unshuffle", *args], capture_output=True, text=True, env=env, timeout=900)


def test_cli_json(public_dir, tmp_path):
    out = tmp_path / "result.json"
    r = _cli("solve", str(public_dir), "--json", "--quiet", "--out", str(out), "--expect-sha256", PUBLIC_SHA256)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    assert len(lines) == 1  # exactly one JSON object on stdout
    d = json.loads(lines[0])
    assert d["sha256"] == PUBLIC_SHA256 and d["exact"] is True
    assert isinstance(d["permutation"], list) and all(isinstance(i, int) for i in d["permutation"])
    assert answer_sha256(d["permutation"]) == PUBLIC_SHA256
    for key in ("max_abs_err", "mse", "pairs", "order", "timings", "backend"):
        assert key in d
    assert json.loads(out.read_text()) == d


def test_cli_expect_sha_mismatch_exits_1(public_dir):
    r = _cli("solve", str(public_dir), "--quiet", "--expect-sha256", "0" * 64)
    assert r.returncode == 1
    assert "does not match" in r.stderr


def test_cli_time_limit_zero_means_no_limit(public_dir):
    r = _cli("solve", str(public_dir), "--json", "--quiet", "--time-limit", "0")
    assert r.returncode == 0
    d = json.loads(r.stdout)
    assert d["exact"] is True and d["budget"]["time_limit"] is None and d["budget"]["stopped"] == "exact"


@pytest.mark.parametrize("backend", [b for b, (ok, _) in available_backends().items() if ok and b != "reference"])
def test_public_exact_on_each_backend(public_puzzle, backend):
    s = solve(public_puzzle, backend=backend)
    assert s.backend == backend
    assert s.sha256 == PUBLIC_SHA256 and s.exact


def test_certificate_public(public_puzzle, public_solution):
    """Every single-move neighbour of the answer misses pred by far more than the tolerance (NOTES.md records
    the figure), and the nearest one reported is exactly that far: its own all-rows check agrees bit for bit."""
    from unshuffle import moves as mv

    c = public_solution.certificate
    N = public_puzzle.n_blocks
    adjacent, swaps, inserts, repairs = N - 1, (N - 1) * (N - 2) // 2, N * N - N - 2 * (N - 1), N * (N - 1) // 2
    assert c.complete and c.neighbours == c.neighbours_checked == adjacent + swaps + inserts + repairs
    assert c.min_neighbour_error_ratio > 1000  # measured ~1.0e4: no neighbour comes within 1000 tolerances
    o = public_solution.order_result
    kind = {v: k for k, v in mv.KIND_NAMES.items()}[c.move["kind"]]
    ni, no = mv.apply_move(o.order, o.order_out, kind, c.move["i"], c.move["j"])
    assert verify(public_puzzle, ni, no).max_abs_err == c.min_neighbour_max_abs_err
    rng = np.random.default_rng(0)  # and a few other neighbours are no nearer
    for k in rng.integers(0, 4, size=6):
        i, j = mv.enumerate_moves(N, int(k))[int(rng.integers(len(mv.enumerate_moves(N, int(k)))))]
        ni, no = mv.apply_move(o.order, o.order_out, int(k), i, j)
        assert verify(public_puzzle, ni, no).max_abs_err >= c.min_neighbour_max_abs_err
