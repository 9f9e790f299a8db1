"""CLI behaviour: exit codes, demo, make-puzzle, report, Ctrl-C, and README/CI consistency."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from unshuffle.cli import main


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "unshuffle", *args], capture_output=True, text=True, timeout=timeout)


def test_missing_folder_exit_2(tmp_path, capsys):
    assert main(["solve", str(tmp_path / "nope"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and "does not exist" in err[0]


def test_usage_error_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["solve", "--backend", "fortran"])
    assert e.value.code == 2


def test_unavailable_backend_exit_2(tmp_path, capsys, monkeypatch):
    from unshuffle.generate import make_puzzle

    make_puzzle(tmp_path, blocks=4, dim=8, hidden=12, rows=200, seed=1)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if torch.cuda.is_available():
        pytest.skip("CUDA present: triton may be available")
    assert main(["solve", str(tmp_path), "--backend", "triton", "--quiet"]) == 2
    assert "unavailable" in capsys.readouterr().err


def test_make_puzzle_then_solve_json_and_report(tmp_path):
    pz = tmp_path / "p"
    r = run_cli("make-puzzle", str(pz), "--blocks", "6", "--dim", "16", "--hidden", "32", "--rows", "500", "--seed", "4")
    assert r.returncode == 0, r.stderr
    answer = json.loads((pz / "answer.json").read_text())
    rep = tmp_path / "report"
    r = run_cli("solve", str(pz), "--json", "--quiet", "--report", str(rep), "--expect-sha256", answer["sha256"])
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["permutation"] == answer["answer"] and d["exact"] is True
    text = (rep / "report.md").read_text()
    for png in ("pairing.png", "search.png", "positions.png"):
        assert f"({png})" in text
        assert (rep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in rep.iterdir() if ".tmp" in p.name]  # atomic writes left no temp files


def test_demo_runs(tmp_path):
    r = run_cli("demo", "--dir", str(tmp_path / "demo"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "exact      : True" in r.stdout


def _noise_puzzle(folder: Path):
    """Pieces of a random net with a pred no order can reproduce: the search never finishes by itself."""
    g = torch.Generator().manual_seed(0)
    n, d, h = 10, 8, 12
    (folder / "pieces").mkdir(parents=True)
    shapes = [(h, d)] * n + [(d, h)] * n + [(1, d)]
    for i, (a, b) in enumerate(shapes):
        torch.save({"weight": torch.randn(a, b, generator=g) * 0.3, "bias": torch.randn(a, generator=g) * 0.1}, folder / "pieces" / f"piece_{i}.pth")
    X = torch.randn(300, d, generator=g)
    lines = [",".join([f"measurement_{j}" for j in range(d)] + ["pred"])]
    for row, p in zip(X.tolist(), torch.randn(300, generator=g).tolist()):
        lines.append(",".join(repr(v) for v in row + [p]))
    (folder / "historical_data.csv").write_text("\n".join(lines) + "\n")


def test_readme_commands_and_ci_agree():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    test_cmd = next(b for b in blocks if "pytest" in b)
    demo_cmd = next(b for b in blocks if "unshuffle demo" in b)
    assert test_cmd.strip() in ci
    assert "torch==2.13.0" in demo_cmd and "torch==2.13.0" in test_cmd
    assert "UNSHUFFLE_REQUIRE_EXT=1" in test_cmd


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("reference", "torch", "cpp", "triton", "auto backend:"):
        assert name in out


def test_progress_callback_handles_both_loops(capsys):
    from unshuffle.cli import _progress
    from unshuffle.ordering import BEST

    update, bar = _progress(True)
    update(3, "adjacent", 1.5e-3)  # Python loop: one move
    update(-1, "native", 2.0)  # C++ loop: elapsed seconds while it runs
    update(BEST, "greedy", 0.25)  # a run finished with a better order
    update(BEST, "beam16#0", 0.5)  # a worse one does not replace the best so far
    bar.close()
    err = capsys.readouterr().err
    assert "native running" in err and "best mse 0.25" in err and "best mse 0.5" not in err
    assert _progress(False) == (None, None)


def test_solve_warm_start_from_a_file_and_a_bad_one(tmp_path, capsys):
    """--start: an earlier answer continues the solve (here the answer itself: the start run is exact); a file
    that is not an order of this puzzle is exit 2 with one line naming it."""
    from unshuffle.generate import make_puzzle

    g = make_puzzle(tmp_path / "p", blocks=6, dim=16, hidden=32, rows=500, seed=4)
    (tmp_path / "prev.json").write_text(json.dumps({"permutation": g.answer, "exact": False}))
    assert main(["solve", str(tmp_path / "p"), "--start", str(tmp_path / "prev.json"), "--json", "--quiet",
                 "--no-certificate"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["permutation"] == g.answer and d["exact"] is True
    bad = tmp_path / "bad.txt"
    bad.write_text(",".join(str(i) for i in g.answer[:-2]))
    assert main(["solve", str(tmp_path / "p"), "--start", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.txt" in err[0] and "expected 13 piece ids" in err[0]
