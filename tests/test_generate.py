"""Tests of the puzzle generator (unshuffle.generate.make_puzzle)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from unshuffle import load_puzzle
from unshuffle.generate import make_puzzle, make_task

# small shapes and short runs keep each test to a few seconds
SMALL = dict(blocks=8, dim=24, hidden=40, rows=400, epochs=3)


def _assemble_pred(out_dir, answer, k):
    """Run the network in the answer's order in plain float32 from the written files."""
    p = load_puzzle(out_dir)
    pieces = {}
    for f in (out_dir / "pieces").glob("piece_*.pth"):
        obj = torch.load(f, map_location="cpu", weights_only=True)
        pieces[int(f.stem.split("_")[1])] = (obj["weight"], obj["bias"])
    x = p.X.clone()
    n = (len(answer) - 1) // 2
    for i in range(n):
        (wi, bi), (wo, bo) = pieces[answer[2 * i]], pieces[answer[2 * i + 1]]
        x = x + torch.relu(x @ wi.T + bi) @ wo.T + bo
    w, b = pieces[answer[-1]]
    y = x @ w.T + b
    assert y.dtype == torch.float32 and y.shape == p.pred.shape == (p.n_rows, k)
    return p, y


@pytest.mark.parametrize("k", [1, 3])
def test_written_puzzle_loads_and_answer_reproduces_pred(tmp_path, k):
    g = make_puzzle(tmp_path, outputs=k, seed=3, **SMALL)
    saved = json.loads((tmp_path / "answer.json").read_text())
    assert saved["answer"] == g.answer
    assert saved["sha256"] == hashlib.sha256(",".join(map(str, g.answer)).encode()).hexdigest()
    p, y = _assemble_pred(tmp_path, saved["answer"], k)
    assert (p.n_blocks, p.d, p.h, p.k, p.n_rows) == (8, 24, 40, k, 400)
    assert p.true is not None and p.true.shape == (400, k)
    scale = float(p.pred.abs().max())
    assert float((y - p.pred).abs().max()) <= 1e-5 * max(scale, 1.0)
    # and the network is not trivial: a wrong order (two blocks swapped) gives a visibly different pred
    wrong = list(saved["answer"])
    wrong[0:2], wrong[2:4] = wrong[2:4], wrong[0:2]
    _, y2 = _assemble_pred(tmp_path, wrong, k)
    assert float((y2 - p.pred).abs().max()) > 1e-3


def test_csv_columns_and_float32_round_trip(tmp_path):
    make_puzzle(tmp_path, outputs=2, seed=1, **SMALL)
    header = (tmp_path / "historical_data.csv").read_text().splitlines()[0].split(",")
    assert header == [f"measurement_{i}" for i in range(24)] + ["pred_0", "pred_1", "true_0", "true_1"]
    make_puzzle(tmp_path / "k1", outputs=1, seed=1, **SMALL)
    header1 = (tmp_path / "k1" / "historical_data.csv").read_text().splitlines()[0].split(",")
    assert header1[-2:] == ["pred", "true"]
    # the CSV holds the exact float32 inputs and targets (shortest float32 repr round-trips)
    X, _, Y = make_task(400, 24, 2, 1)
    p = load_puzzle(tmp_path)
    assert torch.equal(p.X, X) and torch.equal(p.true, Y)


def test_ids_are_a_permutation(tmp_path):
    g = make_puzzle(tmp_path, seed=5, **SMALL)
    n = 2 * SMALL["blocks"] + 1
    assert sorted(g.answer) == list(range(n))
    files = sorted(int(f.stem.split("_")[1]) for f in (tmp_path / "pieces").glob("piece_*.pth"))
    assert files == list(range(n))
    # roles by shape follow the answer's positions
    for pos, pid in enumerate(g.answer):
        w = torch.load(tmp_path / "pieces" / f"piece_{pid}.pth", weights_only=True)["weight"]
        assert w.dtype == torch.float32
        want = (1, 24) if pos == n - 1 else ((40, 24) if pos % 2 == 0 else (24, 40))
        assert tuple(w.shape) == want


def test_deterministic_for_a_seed(tmp_path):
    a = make_puzzle(tmp_path / "a", seed=11, **SMALL)
    b = make_puzzle(tmp_path / "b", seed=11, **SMALL)
    c = make_puzzle(tmp_path / "c", seed=12, **SMALL)
    assert a.answer == b.answer and a.sha256 == b.sha256
    assert (tmp_path / "a" / "historical_data.csv").read_bytes() == (tmp_path / "b" / "historical_data.csv").read_bytes()
    for pid in a.answer:
        wa = torch.load(tmp_path / "a" / "pieces" / f"piece_{pid}.pth", weights_only=True)
        wb = torch.load(tmp_path / "b" / "pieces" / f"piece_{pid}.pth", weights_only=True)
        assert torch.equal(wa["weight"], wb["weight"]) and torch.equal(wa["bias"], wb["bias"])
    assert c.answer != a.answer
    assert (tmp_path / "c" / "historical_data.csv").read_bytes() != (tmp_path / "a" / "historical_data.csv").read_bytes()


def test_atomic_no_temp_files_and_regeneration_replaces(tmp_path):
    make_puzzle(tmp_path, seed=2, **dict(SMALL, blocks=10))
    g = make_puzzle(tmp_path, seed=2, **SMALL)  # fewer blocks into the same folder
    names = sorted(f.name for f in tmp_path.rglob("*") if f.is_file())
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")]
    assert len(list((tmp_path / "pieces").glob("piece_*.pth"))) == 2 * SMALL["blocks"] + 1  # stale ones gone
    assert load_puzzle(tmp_path).n_blocks == SMALL["blocks"]
    assert json.loads((tmp_path / "answer.json").read_text())["answer"] == g.answer


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import unshuffle.generate as gen

    def boom(obj, fh):
        fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(gen.torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        make_puzzle(tmp_path, seed=4, **SMALL)
    assert not list(tmp_path.rglob("*.pth")) and not list(tmp_path.rglob("*.tmp"))
    assert not (tmp_path / "answer.json").exists()


@pytest.mark.parametrize("regime", ["fast", "paper", "brief"])
def test_regimes_run(tmp_path, regime):
    g = make_puzzle(tmp_path, regime=regime, seed=0, blocks=8, dim=16, hidden=24, rows=200, epochs=2)
    assert g.regime == regime and g.config.epochs == 2
    assert np.isfinite(g.stats["mse_pred_true"])


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        make_puzzle(tmp_path, regime="nope")
    with pytest.raises(ValueError):
        make_puzzle(tmp_path, dim=32, hidden=32)
